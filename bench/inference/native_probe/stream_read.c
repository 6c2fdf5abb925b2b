/* Memory-bandwidth probe: how fast can this machine stream-read a buffer much larger than L3?
 *
 * What a decode step does with its weights: read each byte once, in order, with wide loads, on
 * every core. A sum in torch or numpy measures that only when the reduction keeps up with memory;
 * in practice it measures the reduction (see bench/inference/bandwidth.py). Here each thread,
 * pinned to its own CPU, reads its slice with AVX-512 (or AVX2) loads into eight independent
 * integer accumulators (an add per 64 bytes: never the bottleneck), and a run's time is from the
 * earliest thread start to the latest thread end. The best of several runs is reported: noise from
 * other processes only ever makes a run slower.
 *
 * Built by bench/inference/bandwidth.py with the system compiler; plain C + pthreads, the vector
 * paths chosen at run time (__builtin_cpu_supports), so one build runs on any x86-64 CPU.
 */
#define _GNU_SOURCE
#include <immintrin.h>
#include <pthread.h>
#include <sched.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static double now_s(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec * 1e-9;
}

__attribute__((target("avx512f"))) static uint64_t read_avx512(const uint8_t *p, size_t n, size_t ahead) {
    __m512i a0 = _mm512_setzero_si512(), a1 = a0, a2 = a0, a3 = a0, a4 = a0, a5 = a0, a6 = a0, a7 = a0;
    for (size_t i = 0; i + 512 <= n; i += 512) {
        if (ahead)
            for (size_t line = 0; line < 512; line += 64) _mm_prefetch((const char *)p + i + ahead + line, _MM_HINT_T1);
        a0 = _mm512_add_epi64(a0, _mm512_load_si512((const void *)(p + i)));
        a1 = _mm512_add_epi64(a1, _mm512_load_si512((const void *)(p + i + 64)));
        a2 = _mm512_add_epi64(a2, _mm512_load_si512((const void *)(p + i + 128)));
        a3 = _mm512_add_epi64(a3, _mm512_load_si512((const void *)(p + i + 192)));
        a4 = _mm512_add_epi64(a4, _mm512_load_si512((const void *)(p + i + 256)));
        a5 = _mm512_add_epi64(a5, _mm512_load_si512((const void *)(p + i + 320)));
        a6 = _mm512_add_epi64(a6, _mm512_load_si512((const void *)(p + i + 384)));
        a7 = _mm512_add_epi64(a7, _mm512_load_si512((const void *)(p + i + 448)));
    }
    __m512i s = _mm512_add_epi64(_mm512_add_epi64(_mm512_add_epi64(a0, a1), _mm512_add_epi64(a2, a3)),
                                 _mm512_add_epi64(_mm512_add_epi64(a4, a5), _mm512_add_epi64(a6, a7)));
    return (uint64_t)_mm512_reduce_add_epi64(s);
}

__attribute__((target("avx2"))) static uint64_t read_avx2(const uint8_t *p, size_t n, size_t ahead) {
    __m256i a0 = _mm256_setzero_si256(), a1 = a0, a2 = a0, a3 = a0, a4 = a0, a5 = a0, a6 = a0, a7 = a0;
    for (size_t i = 0; i + 256 <= n; i += 256) {
        if (ahead)
            for (size_t line = 0; line < 256; line += 64) _mm_prefetch((const char *)p + i + ahead + line, _MM_HINT_T1);
        a0 = _mm256_add_epi64(a0, _mm256_load_si256((const __m256i *)(p + i)));
        a1 = _mm256_add_epi64(a1, _mm256_load_si256((const __m256i *)(p + i + 32)));
        a2 = _mm256_add_epi64(a2, _mm256_load_si256((const __m256i *)(p + i + 64)));
        a3 = _mm256_add_epi64(a3, _mm256_load_si256((const __m256i *)(p + i + 96)));
        a4 = _mm256_add_epi64(a4, _mm256_load_si256((const __m256i *)(p + i + 128)));
        a5 = _mm256_add_epi64(a5, _mm256_load_si256((const __m256i *)(p + i + 160)));
        a6 = _mm256_add_epi64(a6, _mm256_load_si256((const __m256i *)(p + i + 192)));
        a7 = _mm256_add_epi64(a7, _mm256_load_si256((const __m256i *)(p + i + 224)));
    }
    __m256i s = _mm256_add_epi64(_mm256_add_epi64(_mm256_add_epi64(a0, a1), _mm256_add_epi64(a2, a3)),
                                 _mm256_add_epi64(_mm256_add_epi64(a4, a5), _mm256_add_epi64(a6, a7)));
    uint64_t out[4];
    _mm256_storeu_si256((__m256i *)out, s);
    return out[0] + out[1] + out[2] + out[3];
}

static uint64_t read_scalar(const uint8_t *p, size_t n) {
    const uint64_t *q = (const uint64_t *)p;
    uint64_t a = 0, b = 0, c = 0, d = 0;
    for (size_t i = 0; i + 4 <= n / 8; i += 4) {
        a += q[i];
        b += q[i + 1];
        c += q[i + 2];
        d += q[i + 3];
    }
    return a + b + c + d;
}

/* 2: AVX-512, 1: AVX2, 0: scalar; -1: the best this CPU has. */
static int pick(int simd) {
    __builtin_cpu_init();
    if (simd < 0) simd = __builtin_cpu_supports("avx512f") ? 2 : __builtin_cpu_supports("avx2") ? 1 : 0;
    if (simd >= 2 && !__builtin_cpu_supports("avx512f")) simd = 1;
    if (simd >= 1 && !__builtin_cpu_supports("avx2")) simd = 0;
    return simd;
}

int reprise_probe_simd(int simd) { return pick(simd); }

typedef struct {
    const uint8_t *p;
    size_t n;
    int cpu, simd, runs;
    size_t ahead;
    pthread_barrier_t *start, *done;
    pthread_mutex_t *gate_lock;
    pthread_cond_t *gate_cond;
    int *gate; /* 0: wait, 1: go, -1: give up (a thread could not be started) */
    double *t0, *t1; /* per run */
    volatile uint64_t sink;
} worker_t;

static void *work(void *arg) {
    worker_t *w = (worker_t *)arg;
    pthread_mutex_lock(w->gate_lock);
    while (*w->gate == 0) pthread_cond_wait(w->gate_cond, w->gate_lock);
    int go = *w->gate;
    pthread_mutex_unlock(w->gate_lock);
    if (go < 0) return NULL;
    if (w->cpu >= 0) {
        cpu_set_t set;
        CPU_ZERO(&set);
        CPU_SET(w->cpu, &set);
        pthread_setaffinity_np(pthread_self(), sizeof set, &set);
    }
    /* First touch by the reader: the pages sit on its memory node, and no page fault is timed. */
    memset((void *)w->p, 1, w->n);
    for (int r = 0; r < w->runs; r++) {
        pthread_barrier_wait(w->start);
        double a = now_s();
        uint64_t s = w->simd == 2 ? read_avx512(w->p, w->n, w->ahead) : w->simd == 1 ? read_avx2(w->p, w->n, w->ahead) : read_scalar(w->p, w->n);
        w->t1[r] = now_s();
        w->t0[r] = a;
        w->sink += s;
        pthread_barrier_wait(w->done);
    }
    return NULL;
}

/* Best read rate in GB/s (1e9 bytes/s) of `runs` runs over `bytes` bytes split between `threads`
 * threads pinned to `cpus[0..threads)` (NULL: not pinned), with vector path `simd` (-1: the best
 * this CPU has), prefetching into L2 `ahead` bytes ahead of the loads (0: the hardware prefetchers
 * alone; the int4 kernel prefetches 40 KiB ahead). Prefetches past a slice's end touch mapped pages
 * of the next slice or, for the last one, may fault-free miss (prefetch never faults).
 * Returns a negative number when the buffer or the threads cannot be had. */
double reprise_probe_read_gbps(size_t bytes, int threads, const int *cpus, int runs, int simd, size_t ahead) {
    if (threads < 1 || runs < 1 || bytes < (size_t)threads * 4096) return -1.0;
    simd = pick(simd);
    size_t slice = (bytes / (size_t)threads) & ~(size_t)4095; /* whole pages, a multiple of 512 bytes */
    uint8_t *buf = NULL;
    if (posix_memalign((void **)&buf, 4096, slice * (size_t)threads) != 0) return -2.0;
    worker_t *w = calloc((size_t)threads, sizeof *w);
    pthread_t *tid = calloc((size_t)threads, sizeof *tid);
    double *times = calloc((size_t)threads * (size_t)runs * 2, sizeof *times);
    pthread_barrier_t start, done;
    pthread_mutex_t gate_lock = PTHREAD_MUTEX_INITIALIZER;
    pthread_cond_t gate_cond = PTHREAD_COND_INITIALIZER;
    int gate = 0;
    double best = -3.0;
    if (!w || !tid || !times) goto out;
    pthread_barrier_init(&start, NULL, (unsigned)threads);
    pthread_barrier_init(&done, NULL, (unsigned)threads);
    int started = 0;
    for (int t = 0; t < threads; t++) {
        w[t] = (worker_t){.p = buf + (size_t)t * slice, .n = slice, .cpu = cpus ? cpus[t] : -1, .simd = simd, .runs = runs, .ahead = ahead,
                          .start = &start, .done = &done, .gate_lock = &gate_lock, .gate_cond = &gate_cond, .gate = &gate, .t0 = times + (size_t)t * runs * 2, .t1 = times + (size_t)t * runs * 2 + runs};
        if (pthread_create(&tid[t], NULL, work, &w[t]) != 0) break;
        started++;
    }
    /* The barriers wait for every thread: the started ones go only once all of them exist. */
    pthread_mutex_lock(&gate_lock);
    gate = started == threads ? 1 : -1;
    pthread_cond_broadcast(&gate_cond);
    pthread_mutex_unlock(&gate_lock);
    for (int t = 0; t < started; t++) pthread_join(tid[t], NULL);
    if (started != threads) {
        best = -4.0;
        goto barriers;
    }
    for (int r = 0; r < runs; r++) {
        double lo = w[0].t0[r], hi = w[0].t1[r];
        for (int t = 1; t < threads; t++) {
            if (w[t].t0[r] < lo) lo = w[t].t0[r];
            if (w[t].t1[r] > hi) hi = w[t].t1[r];
        }
        double gbps = (double)(slice * (size_t)threads) / (hi - lo) / 1e9;
        if (gbps > best) best = gbps;
    }
barriers:
    pthread_barrier_destroy(&start);
    pthread_barrier_destroy(&done);
out:
    free(times);
    free(tid);
    free(w);
    free(buf);
    return best;
}
