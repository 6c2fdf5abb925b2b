/* The small operations of a one-token decode step, fused (like vLLM's fused_add_rms_norm, rotary
 * embedding + cache write, single-query paged attention and silu_and_mul kernels).
 *
 * Around its four matmuls, a decode layer ran ~35 torch operations of 3-10 us each (norms, RoPE,
 * cache writes, reshapes, attention, SiLU): ~8 ms of a ~25 ms step on a 2-core Xeon, where the
 * matmuls themselves take ~13. Here it is three calls per layer, and where every layer is int4
 * through Reprise's kernels, one call for the whole step (reprise_decode_step, at the end). Built
 * into the same library as the int4 kernels (inference_svc/runtime/native/library.py), called through
 * decode_ops.py; used by runtime/model.py for one-token steps when the library builds, with torch's
 * operations otherwise (and for every multi-token pass).
 *
 * Tensors are fp32 (DT_F32) or bf16 (DT_BF16), the model's compute dtype; the residual stream and
 * the norm weights are always fp32. Where the torch path rounds an intermediate to the compute dtype
 * (RoPE's products and sum, SiLU before the multiply), so does this code, so bf16 results match it
 * but for exp/rsqrt's last bits and the summation order of the norms and the attention.
 */
#include <immintrin.h>
#include <math.h>
#include <omp.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "bf16.h"

/* The dot products, norms and conversions are plain loops, cloned for AVX-512 and AVX2 (picked when
 * the library loads) and vectorized by the compiler (-ffp-contract=off in FLAGS keeps fp32 a*b + c two
 * roundings, as torch computes them). The exponential (softmax, SiLU) is AVX2 intrinsics where the CPU
 * has AVX2: gcc 12 does not vectorize the clamp's comparisons for AVX targets. */
#define VECTOR_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))

enum { DT_F32 = 0, DT_BF16 = 1 };

static inline float load(const void *p, size_t i, int dt) {
    return dt == DT_BF16 ? bf16_to_float(((const uint16_t *)p)[i]) : ((const float *)p)[i];
}

static inline void store(void *p, size_t i, float v, int dt) {
    if (dt == DT_BF16)
        ((uint16_t *)p)[i] = float_to_bf16(v);
    else
        ((float *)p)[i] = v;
}

/* v rounded to the compute dtype and back (the torch path stores this intermediate in it). */
static inline float round_dt(float v, int dt) { return dt == DT_BF16 ? bf16_to_float(float_to_bf16(v)) : v; }

/* exp(x): Cephes' expf polynomial (~1 ulp), here and in exp8 below. libm's expf is a call per value
 * (no vector version without -ffast-math), and softmax and SiLU need ~100,000 per step. */
static inline float exp_approx(float x) {
    x = x < -87.3f ? -87.3f : x > 89.0f ? 89.0f : x; /* above ~88.7 the scale is 2^128 = inf, as expf overflows */
    float t = x * 1.44269504088896341f; /* n = round(t), by truncation: floorf is a call below SSE4.1 */
    float n = (float)(int32_t)(t + (t < 0.0f ? -0.5f : 0.5f));
    float r = x - n * 0.693359375f;
    r = r - n * -2.12194440e-4f;
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    float y = p * r * r + r + 1.0f;
    int32_t bits = ((int32_t)n + 127) << 23;
    float scale;
    memcpy(&scale, &bits, sizeof scale);
    return y * scale;
}

static int has_avx2(void) {
    static int known = -1; /* benign race: every thread computes the same value */
    if (known < 0) {
        __builtin_cpu_init();
        known = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    }
    return known;
}

__attribute__((target("avx2,fma"))) static inline __m256 exp8(__m256 x) {
    x = _mm256_max_ps(_mm256_min_ps(x, _mm256_set1_ps(89.0f)), _mm256_set1_ps(-87.3f));
    __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                               _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);
    r = _mm256_fmadd_ps(n, _mm256_set1_ps(2.12194440e-4f), r);
    __m256 p = _mm256_set1_ps(1.9875691500e-4f);
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.3981999507e-3f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.3334519073e-3f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.1665795894e-2f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.6666665459e-1f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(5.0000001201e-1f));
    __m256 y = _mm256_add_ps(_mm256_fmadd_ps(p, _mm256_mul_ps(r, r), r), _mm256_set1_ps(1.0f));
    __m256i bits = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
    return _mm256_mul_ps(y, _mm256_castsi256_ps(bits));
}

/* scores[j] = exp(scores[j] - top) for j < n; returns their sum. */
__attribute__((target("avx2,fma"))) static float softmax_exp_avx2(float *scores, int n, float top) {
    __m256 sum = _mm256_setzero_ps(), shift = _mm256_set1_ps(top);
    int j = 0;
    for (; j + 8 <= n; j += 8) {
        __m256 e = exp8(_mm256_sub_ps(_mm256_loadu_ps(scores + j), shift));
        _mm256_storeu_ps(scores + j, e);
        sum = _mm256_add_ps(sum, e);
    }
    float lanes[8], total = 0.0f;
    _mm256_storeu_ps(lanes, sum);
    for (int i = 0; i < 8; i++) total += lanes[i];
    for (; j < n; j++) total += scores[j] = exp_approx(scores[j] - top);
    return total;
}

static float softmax_exp(float *scores, int n, float top, int avx2) {
    if (avx2) return softmax_exp_avx2(scores, n, top);
    float total = 0.0f;
    for (int j = 0; j < n; j++) total += scores[j] = exp_approx(scores[j] - top);
    return total;
}

/* x += delta (when given, in dt_delta); out = x / rms(x) * w in dt_out. x, w: fp32 [n]. */
VECTOR_CLONES void reprise_add_rmsnorm(float *x, const void *delta, int dt_delta, const float *w, void *out, int dt_out, int n,
                         float eps) {
    if (delta) {
        if (dt_delta == DT_BF16)
            for (int i = 0; i < n; i++) x[i] += bf16_to_float(((const uint16_t *)delta)[i]);
        else
            for (int i = 0; i < n; i++) x[i] += ((const float *)delta)[i];
    }
    float ss = 0.0f;
#pragma omp simd reduction(+ : ss)
    for (int i = 0; i < n; i++) ss += x[i] * x[i];
    float r = 1.0f / sqrtf(ss / (float)n + eps);
    if (dt_out == DT_BF16)
        for (int i = 0; i < n; i++) ((uint16_t *)out)[i] = float_to_bf16((x[i] * r) * w[i]);
    else
        for (int i = 0; i < n; i++) ((float *)out)[i] = (x[i] * r) * w[i];
}

/* RoPE (rotate-half form) of one head at one position, in the torch path's order of roundings:
 * out = round(round(x * cos) + round(rotate_half(x) * sin)). */
static void rope(const void *x, const void *cos, const void *sin, int d, int dt, float *out) {
    int half = d / 2;
    for (int i = 0; i < d; i++) {
        float xi = load(x, i, dt);
        float rot = i < half ? -load(x, i + half, dt) : load(x, i - half, dt);
        out[i] = round_dt(round_dt(xi * load(cos, i, dt), dt) + round_dt(rot * load(sin, i, dt), dt), dt);
    }
}

/* One query head against keys/values [0, len) of its KV head: out = softmax(q.K^T / sqrt(d)) V. */
VECTOR_CLONES static void attend_head(const float *q, const void *k, const void *v, int len, int d, int dt, float *scores,
                                      float *acc, int avx2) {
    float scale = 1.0f / sqrtf((float)d), top = -INFINITY;
    for (int j = 0; j < len; j++) {
        float s = 0.0f;
        if (dt == DT_BF16) {
            const uint16_t *kj = (const uint16_t *)k + (size_t)j * d;
#pragma omp simd reduction(+ : s)
            for (int i = 0; i < d; i++) s += q[i] * bf16_to_float(kj[i]);
        } else {
            const float *kj = (const float *)k + (size_t)j * d;
#pragma omp simd reduction(+ : s)
            for (int i = 0; i < d; i++) s += q[i] * kj[i];
        }
        scores[j] = s * scale;
        top = scores[j] > top ? scores[j] : top;
    }
    float total = softmax_exp(scores, len, top, avx2);
    for (int i = 0; i < d; i++) acc[i] = 0.0f;
    for (int j = 0; j < len; j++) {
        float p = scores[j];
        if (dt == DT_BF16) {
            const uint16_t *vj = (const uint16_t *)v + (size_t)j * d;
#pragma omp simd
            for (int i = 0; i < d; i++) acc[i] += p * bf16_to_float(vj[i]);
        } else {
            const float *vj = (const float *)v + (size_t)j * d;
#pragma omp simd
            for (int i = 0; i < d; i++) acc[i] += p * vj[i];
        }
    }
    for (int i = 0; i < d; i++) acc[i] /= total;
}

__attribute__((target("avx2,fma"))) static inline __m256 load8_bf16(const uint16_t *p) {
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)p)), 16));
}

/* Keys (or values) per block converted to fp32 once for all query heads of their KV head (16 KB). */
#define KV_BLOCK_FLOATS 4096

__attribute__((target("avx2,fma"))) static inline __m256 load8(const void *p, size_t i, int dt) {
    return dt == DT_BF16 ? load8_bf16((const uint16_t *)p + i) : _mm256_loadu_ps((const float *)p + i);
}

/* Lane t: the sum of the eight lanes of s[t]. */
__attribute__((target("avx2,fma"))) static inline __m256 sum8x8(const __m256 *s) {
    __m256 a = _mm256_hadd_ps(_mm256_hadd_ps(s[0], s[1]), _mm256_hadd_ps(s[2], s[3]));
    __m256 b = _mm256_hadd_ps(_mm256_hadd_ps(s[4], s[5]), _mm256_hadd_ps(s[6], s[7]));
    return _mm256_add_ps(_mm256_permute2f128_ps(a, b, 0x20), _mm256_permute2f128_ps(a, b, 0x31));
}

/* Rows [j0, j0 + n) of a [len, d] cache as fp32: the rows themselves (fp32) or converted into buf (bf16). */
__attribute__((target("avx2,fma"))) static const float *rows_f32(const void *c, int j0, int n, int d, int dt, float *buf) {
    if (dt != DT_BF16) return (const float *)c + (size_t)j0 * d;
    for (size_t i = 0; i < (size_t)n * d; i += 8) _mm256_storeu_ps(buf + i, load8(c, (size_t)j0 * d + i, dt));
    return buf;
}

/* The `group` query heads q [group, d] (fp32) of one KV head against its keys/values [0, len): out
 * [group, d] fp32. Each block of keys and values is converted once for all the group's heads; the
 * scores are eight keys per step (one horizontal sum for eight dot products). d: a multiple of 64. */
__attribute__((target("avx2,fma"))) static void attend_group_avx2(const float *q, int group, const void *k, const void *v,
                                                                  int len, int d, int dt, float *scores, float *out) {
    float buf[KV_BLOCK_FLOATS];
    int block = KV_BLOCK_FLOATS / d, chunks = d / 8;
    __m256 scale = _mm256_set1_ps(1.0f / sqrtf((float)d));
    for (int j0 = 0; j0 < len; j0 += block) {
        int n = len - j0 < block ? len - j0 : block;
        const float *kf = rows_f32(k, j0, n, d, dt, buf);
        for (int h = 0; h < group; h++) {
            const float *qh = q + (size_t)h * d;
            float *sh = scores + (size_t)h * len + j0;
            int j = 0;
            for (; j + 8 <= n; j += 8) {
                /* The eight keys' sums advance together, chunk by chunk: eight independent FMA chains
                 * instead of one chain per key (the FMA latency set the pace: ~40% of a long-context
                 * step's attention sat on it). Each sum still adds its chunks in order: the same bits. */
                const float *kr = kf + (size_t)j * d;
                __m256 dots[8], qc = _mm256_loadu_ps(qh);
#pragma GCC unroll 8
                for (int t = 0; t < 8; t++) dots[t] = _mm256_mul_ps(qc, _mm256_loadu_ps(kr + (size_t)t * d));
                for (int c = 1; c < chunks; c++) {
                    qc = _mm256_loadu_ps(qh + 8 * c);
#pragma GCC unroll 8
                    for (int t = 0; t < 8; t++) dots[t] = _mm256_fmadd_ps(qc, _mm256_loadu_ps(kr + (size_t)t * d + 8 * c), dots[t]);
                }
                _mm256_storeu_ps(sh + j, _mm256_mul_ps(sum8x8(dots), scale));
            }
            for (; j < n; j++) {
                float a = 0.0f;
                for (int i = 0; i < d; i++) a += qh[i] * kf[(size_t)j * d + i];
                sh[j] = a * (1.0f / sqrtf((float)d));
            }
        }
    }
    float inv[256];
    for (int h = 0; h < group; h++) {
        float *sh = scores + (size_t)h * len, top = -INFINITY, lanes[8];
        __m256 m = _mm256_set1_ps(-INFINITY);
        int j = 0;
        for (; j + 8 <= len; j += 8) m = _mm256_max_ps(m, _mm256_loadu_ps(sh + j));
        _mm256_storeu_ps(lanes, m);
        for (int t = 0; t < 8; t++) top = lanes[t] > top ? lanes[t] : top;
        for (; j < len; j++) top = sh[j] > top ? sh[j] : top;
        inv[h] = 1.0f / softmax_exp_avx2(sh, len, top);
    }
    for (size_t i = 0; i < (size_t)group * d; i++) out[i] = 0.0f;
    for (int j0 = 0; j0 < len; j0 += block) {
        int n = len - j0 < block ? len - j0 : block;
        const float *vf = rows_f32(v, j0, n, d, dt, buf);
        for (int h = 0; h < group; h++)
            for (int c0 = 0; c0 < d; c0 += 64) { /* eight accumulators in registers per 64 columns */
                float *oh = out + (size_t)h * d + c0;
                const float *sh = scores + (size_t)h * len + j0;
                __m256 acc[8];
                for (int c = 0; c < 8; c++) acc[c] = _mm256_loadu_ps(oh + 8 * c);
                for (int j = 0; j < n; j++) {
                    __m256 p = _mm256_set1_ps(sh[j]);
                    for (int c = 0; c < 8; c++) acc[c] = _mm256_fmadd_ps(p, _mm256_loadu_ps(vf + (size_t)j * d + c0 + 8 * c), acc[c]);
                }
                for (int c = 0; c < 8; c++) _mm256_storeu_ps(oh + 8 * c, acc[c]);
            }
    }
    for (int h = 0; h < group; h++)
        for (int i = 0; i < d; i++) out[(size_t)h * d + i] *= inv[h];
}

/* fp32 scratch reprise_decode_attention needs at pos: scores [heads, pos + 1], then rotated queries and
 * outputs [heads, d] each. */
size_t reprise_decode_attention_scratch(int heads, int d, int pos) { return (size_t)heads * (pos + 1 + 2 * d); }

/* Rotate the key of position pos and write it, with its value, into the caches (row pos of each KV head). */
static void write_kv(const void *qkv, const void *cos, const void *sin, void *kc, void *vc, int cap, int pos, int heads,
                     int kv_heads, int d, int dt) {
    size_t esize = dt == DT_BF16 ? 2 : 4;
    float rotated[256];
    for (int h = 0; h < kv_heads; h++) {
        const char *kx = (const char *)qkv + (size_t)(heads + h) * d * esize;
        const char *vx = (const char *)qkv + (size_t)(heads + kv_heads + h) * d * esize;
        char *kdst = (char *)kc + ((size_t)h * cap + pos) * d * esize;
        rope(kx, cos, sin, d, dt, rotated);
        for (int i = 0; i < d; i++) store(kdst, i, rotated[i], dt);
        memcpy((char *)vc + ((size_t)h * cap + pos) * d * esize, vx, (size_t)d * esize);
    }
}

/* Whether attend_kv_head serves (else attend_head, one query head at a time). */
static int grouped_attention(int heads, int kv_heads, int d, int simd) {
    return simd && has_avx2() && d % 64 == 0 && heads / kv_heads <= 256;
}

/* The query heads of KV head kh (rotated here) against positions 0..pos, written to out's rows of those heads.
 * work: fp32, group * (pos + 1 + 2d) floats (scores, rotated queries, outputs). */
static void attend_kv_head(const void *qkv, const void *cos, const void *sin, const void *kc, const void *vc, int cap,
                           int pos, int heads, int kv_heads, int d, int dt, void *out, int kh, float *work) {
    int group = heads / kv_heads, len = pos + 1;
    size_t esize = dt == DT_BF16 ? 2 : 4, base = (size_t)kh * cap * d * esize;
    float *q = work + (size_t)group * len, *acc = q + (size_t)group * d;
    for (int g = 0; g < group; g++) rope((const char *)qkv + (size_t)(kh * group + g) * d * esize, cos, sin, d, dt, q + (size_t)g * d);
    attend_group_avx2(q, group, (const char *)kc + base, (const char *)vc + base, len, d, dt, work, acc);
    for (int i = 0; i < group * d; i++) store(out, (size_t)kh * group * d + i, acc[i], dt);
}

/* Attention of one new token. qkv: [heads*d | kv_heads*d | kv_heads*d] (the fused projection's
 * output, bias included); cos/sin: this position's rows of the tables [d]; kc/vc: this layer's
 * caches [kv_heads, cap, d]. Rotates q and k, writes k and v at pos, attends over positions
 * 0..pos, writes out [heads*d] (query head h reads KV head h / (heads / kv_heads)). scores: fp32
 * scratch of reprise_decode_attention_scratch() floats. simd 0: the portable path even where AVX2 is present (tests).
 * Returns 0, or 1 when d is larger than the stack buffers (the caller checks d at load). */
int reprise_decode_attention(const void *qkv, const void *cos, const void *sin, void *kc, void *vc, int cap, int pos,
                             int heads, int kv_heads, int d, int dt, void *out, float *scores, int threads, int simd) {
    if (d > 256) return 1;
    int group = heads / kv_heads, len = pos + 1;
    size_t esize = dt == DT_BF16 ? 2 : 4;
    write_kv(qkv, cos, sin, kc, vc, cap, pos, heads, kv_heads, d, dt);
    int team = len * heads >= 2048 ? threads : 1; /* enough work to pay for waking the second thread */
    if (grouped_attention(heads, kv_heads, d, simd)) {
        /* Parallel over KV heads: each converts its keys and values once for its query heads. */
        if (team > kv_heads) team = kv_heads;
#pragma omp parallel for num_threads(team) schedule(static)
        for (int kh = 0; kh < kv_heads; kh++)
            attend_kv_head(qkv, cos, sin, kc, vc, cap, pos, heads, kv_heads, d, dt, out, kh,
                           scores + (size_t)kh * group * (len + 2 * d));
        return 0;
    }
    int avx2 = simd && has_avx2();
#pragma omp parallel for num_threads(team) schedule(static)
    for (int h = 0; h < heads; h++) {
        float q[256], acc[256];
        rope((const char *)qkv + (size_t)h * d * esize, cos, sin, d, dt, q);
        size_t base = (size_t)(h / group) * cap * d * esize;
        attend_head(q, (const char *)kc + base, (const char *)vc + base, len, d, dt, scores + (size_t)h * len, acc, avx2);
        for (int i = 0; i < d; i++) store(out, (size_t)h * d + i, acc[i], dt);
    }
    return 0;
}

/* m rows' attention at positions pos..pos+m-1 (a step's prompt rows): every row's K/V written first, then
 * the (row, KV head) pairs in parallel, each through the one-row path's attend_kv_head. Row r reads
 * positions 0..pos+r only, all written by then, so each row gets the bits reprise_decode_attention gives it
 * alone; one parallel region for all rows instead of one per row (or, under 2048 scores, none). Returns
 * 0, 1 (d too large) or -1 (no memory for more work buffers than the scratch holds). */
static int attend_rows(const char *qkv, const char *cos, const char *sin, void *kc, void *vc, int cap, int pos, int m,
                       int heads, int kv_heads, int d, int dt, char *out, float *scratch, int threads, int simd) {
    size_t esize = dt == DT_BF16 ? 2 : 4, nqkv = (size_t)(heads + 2 * kv_heads) * d, nq = (size_t)heads * d;
    if (m == 1 || d > 256 || !grouped_attention(heads, kv_heads, d, simd)) {
        for (int r = 0; r < m; r++) {
            int rc = reprise_decode_attention(qkv + r * nqkv * esize, cos + (size_t)r * d * esize, sin + (size_t)r * d * esize,
                                              kc, vc, cap, pos + r, heads, kv_heads, d, dt, out + r * nq * esize, scratch,
                                              threads, simd);
            if (rc) return rc;
        }
        return 0;
    }
    for (int r = 0; r < m; r++)
        write_kv(qkv + r * nqkv * esize, cos + (size_t)r * d * esize, sin + (size_t)r * d * esize, kc, vc, cap, pos + r,
                 heads, kv_heads, d, dt);
    int tasks = m * kv_heads, team = threads < tasks ? threads : tasks;
    size_t per = (size_t)(heads / kv_heads) * (pos + m + 2 * d); /* the longest row's work buffer */
    float *work = team <= kv_heads ? scratch : malloc((size_t)team * per * sizeof(float)); /* scratch holds kv_heads */
    if (work == NULL) return -1;
#pragma omp parallel for num_threads(team) schedule(static, 1)
    for (int t = 0; t < tasks; t++) {
        int r = t / kv_heads;
        attend_kv_head(qkv + r * nqkv * esize, cos + (size_t)r * d * esize, sin + (size_t)r * d * esize, kc, vc, cap,
                       pos + r, heads, kv_heads, d, dt, out + r * nq * esize, t % kv_heads,
                       work + (size_t)omp_get_thread_num() * per);
    }
    if (work != scratch) free(work);
    return 0;
}

static inline float silu(float x) { return x / (1.0f + exp_approx(-x)); }

/* Rounded to bf16 (nearest even, as float_to_bf16), kept in the high half of each fp32 lane. */
__attribute__((target("avx2,fma"))) static inline __m256i round8_bf16(__m256 v) {
    __m256i bits = _mm256_castps_si256(v);
    __m256i odd = _mm256_and_si256(_mm256_srli_epi32(bits, 16), _mm256_set1_epi32(1));
    bits = _mm256_add_epi32(bits, _mm256_add_epi32(_mm256_set1_epi32(0x7FFF), odd));
    return _mm256_and_si256(bits, _mm256_set1_epi32((int)0xFFFF0000u));
}

__attribute__((target("avx2,fma"))) static int silu_mul_avx2(const void *gu, int n, int dt, void *out) {
    const __m256 one = _mm256_set1_ps(1.0f), sign = _mm256_set1_ps(-0.0f);
    int i = 0;
    if (dt == DT_BF16) {
        const uint16_t *g = (const uint16_t *)gu, *u = g + n;
        for (; i + 8 <= n; i += 8) {
            __m256 x = load8_bf16(g + i);
            __m256 s = _mm256_castsi256_ps(round8_bf16(_mm256_div_ps(x, _mm256_add_ps(one, exp8(_mm256_xor_ps(x, sign))))));
            __m256i y = _mm256_srli_epi32(round8_bf16(_mm256_mul_ps(s, load8_bf16(u + i))), 16);
            __m128i packed = _mm_packus_epi32(_mm256_castsi256_si128(y), _mm256_extracti128_si256(y, 1));
            _mm_storeu_si128((__m128i *)((uint16_t *)out + i), packed);
        }
    } else {
        const float *g = (const float *)gu, *u = g + n;
        for (; i + 8 <= n; i += 8) {
            __m256 x = _mm256_loadu_ps(g + i);
            __m256 s = _mm256_div_ps(x, _mm256_add_ps(one, exp8(_mm256_xor_ps(x, sign))));
            _mm256_storeu_ps((float *)out + i, _mm256_mul_ps(s, _mm256_loadu_ps(u + i)));
        }
    }
    return i;
}

/* out[i] = silu(gate[i]) * up[i] for gu = [gate (n) | up (n)], rounding silu to dt first as torch does.
 * simd 0: the portable path even where AVX2 is present (tests). */
void reprise_silu_mul(const void *gu, int n, int dt, void *out, int simd) {
    int i = simd && has_avx2() ? silu_mul_avx2(gu, n, dt, out) : 0;
    if (dt == DT_BF16) {
        const uint16_t *g = (const uint16_t *)gu, *u = g + n;
        for (; i < n; i++) ((uint16_t *)out)[i] = float_to_bf16(bf16_to_float(float_to_bf16(silu(bf16_to_float(g[i])))) * bf16_to_float(u[i]));
    } else {
        const float *g = (const float *)gu, *u = g + n;
        for (; i < n; i++) ((float *)out)[i] = silu(g[i]) * u[i];
    }
}

/* ---- a whole one-token step of int4 layers, in one call ----
 * Between separate calls from Python, the int4 kernel streams megabytes of weights through the caches,
 * so every small operation started cold (a residual add + norm: ~4 us alone, ~13 us after a 2-thread
 * matmul, measured on the Xeon) and paid the interpreter's dispatch. Where every layer is int4 through
 * one of Reprise's kernels, the step loops over the layers here: the same functions, in the same
 * order, on the same buffers as DecodeOps' per-operation path in Python, so the same bits. */

int reprise_int4_gemv(const uint8_t *w, const uint16_t *x, uint16_t *y, int m, int n, int k, int threads, int fast);
int reprise_int4_gemm_f32(const uint8_t *w, const float *x, float *y, int m, int n, int k, int threads, int mode);
int reprise_int4_gemm_q8(const uint8_t *w, const float *x, float *y, int m, int n, int k, int threads, int mode);

struct reprise_linear {
    const uint8_t *w;   /* the kernel's layout */
    const void *bias;   /* [n] in the compute dtype, or NULL */
    int32_t n, k;
};

struct reprise_layer {
    const float *ln1, *ln2; /* fp32 norm weights [hidden] */
    struct reprise_linear qkv, o, gate_up, down;
};

/* y = x @ W^T (+ bias) for m rows. kernel_arg: reprise_int4_gemv's fast flag (bf16) or
 * reprise_int4_gemm_f32's mode (fp32), with STEP_INT8 set for reprise_int4_gemm_q8's. */
#define STEP_INT8 0x10
#define STEP_VNNI 0x20 /* with STEP_INT8: rows take the AVX512-VNNI paths (mode 3 for several, 4 for one) */
#define STEP_ROW_AVX2 0x40 /* with STEP_VNNI: one row takes the AVX2 path (mode 1; faster on AMD Zen 4) */
static int linear(const struct reprise_linear *l, const void *x, void *y, int m, int dt, int kernel_arg, int threads) {
    int mode = kernel_arg & ~(STEP_INT8 | STEP_VNNI | STEP_ROW_AVX2);
    if (kernel_arg & STEP_INT8 && mode == 1) /* by row count and CPU; several rows read the weights once (same bits) */
        mode = m > 1 ? (kernel_arg & STEP_VNNI ? 3 : 2) : (kernel_arg & STEP_VNNI && !(kernel_arg & STEP_ROW_AVX2) ? 4 : 1);
    int failed = dt == DT_BF16            ? reprise_int4_gemv(l->w, x, y, m, l->n, l->k, threads, kernel_arg)
                 : kernel_arg & STEP_INT8 ? reprise_int4_gemm_q8(l->w, x, y, m, l->n, l->k, threads, mode)
                                          : reprise_int4_gemm_f32(l->w, x, y, m, l->n, l->k, threads, mode);
    if (failed || !l->bias) return failed;
    for (int r = 0; r < m; r++) /* as y.add_(bias) */
        for (int i = 0; i < l->n; i++) {
            size_t at = (size_t)r * l->n + i;
            store(y, at, load(y, at, dt) + load(l->bias, i, dt), dt);
        }
    return 0;
}

/* Sizes of the buffers one row of a step needs, in floats (bf16 values take a float slot each). */
static size_t step_buffer(int hidden, int qkv, int q, int gate_up) { return (size_t)2 * hidden + qkv + q + gate_up + gate_up / 2; }

/* Layers [0, n_layers) for m tokens at positions pos..pos+m-1: x (fp32 residual [m, hidden]) in place,
 * K/V written at those positions of the caches [n_layers, kv_heads, cap, d]; cos/sin: the tables' rows
 * pos..pos+m-1. scratch: fp32, reprise_decode_step_scratch() floats: the attention's, then the rows' buffers.
 *
 * Each row goes through the same operations as a one-token step: its norms, its attention (rows in order,
 * each writing its K/V and then attending over 0..its position), its SiLU; the matmuls take the m rows at
 * once. So where the kernel's product of a row does not depend on the other rows of its call (int8
 * activations, STEP_INT8: one code path for every row count), m tokens stepped at once write the same KV and
 * residuals, bit for bit, as the same tokens stepped one at a time: a prompt's KV equals the KV its tokens
 * get when decoded, and reuse equals recompute exactly. Returns 0, 1 (d too large) or -1 (no memory). */
int reprise_decode_step(const struct reprise_layer *layers, int n_layers, float *x, int m, int hidden, int heads,
                        int kv_heads, int d, float eps, const void *cos, const void *sin, void *k_cache, void *v_cache,
                        int cap, int pos, int dt, int kernel_arg, float *scratch, int threads, int simd) {
    size_t esize = dt == DT_BF16 ? 2 : 4, cache_layer = (size_t)kv_heads * cap * d * esize;
    int nqkv = (heads + 2 * kv_heads) * d, nq = heads * d;
    char *h = (char *)(scratch + reprise_decode_attention_scratch(heads, d, pos + m - 1));
    char *y = h + (size_t)m * hidden * esize, *qkv = y + (size_t)m * hidden * esize;
    char *attn = qkv + (size_t)m * nqkv * esize, *gu = attn + (size_t)m * nq * esize;
    for (int i = 0; i < n_layers; i++) {
        const struct reprise_layer *l = layers + i;
        int ngu = l->gate_up.n, half = ngu / 2;
        char *act = gu + (size_t)m * ngu * esize;
        char *kc = (char *)k_cache + i * cache_layer, *vc = (char *)v_cache + i * cache_layer;
        for (int r = 0; r < m; r++)
            reprise_add_rmsnorm(x + (size_t)r * hidden, NULL, dt, l->ln1, h + (size_t)r * hidden * esize, dt, hidden, eps);
        int rc = linear(&l->qkv, h, qkv, m, dt, kernel_arg, threads);
        if (!rc)
            rc = attend_rows(qkv, (const char *)cos, (const char *)sin, kc, vc, cap, pos, m, heads, kv_heads, d, dt, attn, scratch,
                             threads, simd);
        if (!rc) rc = linear(&l->o, attn, y, m, dt, kernel_arg, threads);
        if (rc) return rc;
        for (int r = 0; r < m; r++)
            reprise_add_rmsnorm(x + (size_t)r * hidden, y + (size_t)r * hidden * esize, dt, l->ln2,
                                h + (size_t)r * hidden * esize, dt, hidden, eps);
        if ((rc = linear(&l->gate_up, h, gu, m, dt, kernel_arg, threads))) return rc;
        for (int r = 0; r < m; r++)
            reprise_silu_mul(gu + (size_t)r * ngu * esize, half, dt, act + (size_t)r * half * esize, simd);
        if ((rc = linear(&l->down, act, y, m, dt, kernel_arg, threads))) return rc;
        for (size_t j = 0; j < (size_t)m * hidden; j++) x[j] += load(y, j, dt);
    }
    return 0;
}

size_t reprise_decode_step_scratch(int hidden, int heads, int kv_heads, int d, int gate_up, int pos, int m) {
    return reprise_decode_attention_scratch(heads, d, pos + m - 1) +
           (size_t)m * step_buffer(hidden, (heads + 2 * kv_heads) * d, heads * d, gate_up);
}

/* ---- one decode token of each of m sequences, in one call (continuous batching) ----
 * As reprise_decode_step for one token, but row r is the next token of its own sequence: its K/V caches
 * (k_caches[r], v_caches[r], [n_layers, kv_heads, caps[r], d]) and its position (pos[r]); cos/sin hold each
 * row's table row. The norms, SiLU and residual adds run row by row and the matmuls take the m rows at once,
 * as in reprise_decode_step; each row's attention is the one-token path's attend over its own cache. So a
 * row gets the bits it gets stepped alone wherever the kernel's product of a row does not depend on the other
 * rows of its call (every path of both kernels here; tested). scratch: reprise_decode_batch_scratch() floats.
 * Returns 0, 1 (d too large) or -1 (no memory). */
static int attend_batch(const char *qkv, const char *cos, const char *sin, void *const *kcs, void *const *vcs,
                        const int *caps, const int *pos, size_t layer_offset_elems, int m, int heads, int kv_heads,
                        int d, int dt, char *out, float *work, size_t per, int threads, int simd) {
    size_t esize = dt == DT_BF16 ? 2 : 4, nqkv = (size_t)(heads + 2 * kv_heads) * d, nq = (size_t)heads * d;
    if (d > 256) return 1;
    if (!grouped_attention(heads, kv_heads, d, simd)) {
        for (int r = 0; r < m; r++) {
            size_t off = layer_offset_elems * caps[r] * esize;
            int rc = reprise_decode_attention(qkv + r * nqkv * esize, cos + (size_t)r * d * esize, sin + (size_t)r * d * esize,
                                              (char *)kcs[r] + off, (char *)vcs[r] + off, caps[r], pos[r], heads, kv_heads,
                                              d, dt, out + r * nq * esize, work, threads, simd);
            if (rc) return rc;
        }
        return 0;
    }
    long long scores = 0;
    for (int r = 0; r < m; r++) {
        size_t off = layer_offset_elems * caps[r] * esize;
        write_kv(qkv + r * nqkv * esize, cos + (size_t)r * d * esize, sin + (size_t)r * d * esize, (char *)kcs[r] + off,
                 (char *)vcs[r] + off, caps[r], pos[r], heads, kv_heads, d, dt);
        scores += (long long)(pos[r] + 1) * heads;
    }
    int tasks = m * kv_heads, team = scores >= 2048 ? (threads < tasks ? threads : tasks) : 1;
#pragma omp parallel for num_threads(team) schedule(dynamic, 1)
    for (int t = 0; t < tasks; t++) {
        int r = t / kv_heads;
        size_t off = layer_offset_elems * caps[r] * esize;
        attend_kv_head(qkv + r * nqkv * esize, cos + (size_t)r * d * esize, sin + (size_t)r * d * esize,
                       (char *)kcs[r] + off, (char *)vcs[r] + off, caps[r], pos[r], heads, kv_heads, d, dt,
                       out + r * nq * esize, t % kv_heads, work + (size_t)omp_get_thread_num() * per);
    }
    return 0;
}

static int max_pos(const int *pos, int m) {
    int top = 0;
    for (int r = 0; r < m; r++) top = pos[r] > top ? pos[r] : top;
    return top;
}

size_t reprise_decode_batch_scratch(int hidden, int heads, int kv_heads, int d, int gate_up, const int *pos, int m,
                                    int threads) {
    size_t per = (size_t)(heads / kv_heads) * (max_pos(pos, m) + 1 + 2 * d);
    size_t attention = reprise_decode_attention_scratch(heads, d, max_pos(pos, m));
    size_t parallel = (size_t)(threads > 0 ? threads : 1) * per;
    return (attention > parallel ? attention : parallel) + (size_t)m * step_buffer(hidden, (heads + 2 * kv_heads) * d, heads * d, gate_up);
}

int reprise_decode_batch(const struct reprise_layer *layers, int n_layers, float *x, int m, int hidden, int heads,
                         int kv_heads, int d, float eps, const void *cos, const void *sin, void *const *k_caches,
                         void *const *v_caches, const int *caps, const int *pos, int dt, int kernel_arg, float *scratch,
                         int threads, int simd) {
    size_t esize = dt == DT_BF16 ? 2 : 4;
    int nqkv = (heads + 2 * kv_heads) * d, nq = heads * d;
    size_t per = (size_t)(heads / kv_heads) * (max_pos(pos, m) + 1 + 2 * d);
    size_t attention = reprise_decode_attention_scratch(heads, d, max_pos(pos, m));
    size_t parallel = (size_t)(threads > 0 ? threads : 1) * per;
    char *h = (char *)(scratch + (attention > parallel ? attention : parallel));
    char *y = h + (size_t)m * hidden * esize, *qkv = y + (size_t)m * hidden * esize;
    char *attn = qkv + (size_t)m * nqkv * esize, *gu = attn + (size_t)m * nq * esize;
    for (int i = 0; i < n_layers; i++) {
        const struct reprise_layer *l = layers + i;
        int ngu = l->gate_up.n, half = ngu / 2;
        char *act = gu + (size_t)m * ngu * esize;
        for (int r = 0; r < m; r++)
            reprise_add_rmsnorm(x + (size_t)r * hidden, NULL, dt, l->ln1, h + (size_t)r * hidden * esize, dt, hidden, eps);
        int rc = linear(&l->qkv, h, qkv, m, dt, kernel_arg, threads);
        /* layer i of a cache [n_layers, kv_heads, cap, d] starts kv_heads * d * cap elements per layer in */
        if (!rc)
            rc = attend_batch(qkv, (const char *)cos, (const char *)sin, k_caches, v_caches, caps, pos,
                              (size_t)i * kv_heads * d, m, heads, kv_heads, d, dt, attn, scratch, per, threads, simd);
        if (!rc) rc = linear(&l->o, attn, y, m, dt, kernel_arg, threads);
        if (rc) return rc;
        for (int r = 0; r < m; r++)
            reprise_add_rmsnorm(x + (size_t)r * hidden, y + (size_t)r * hidden * esize, dt, l->ln2,
                                h + (size_t)r * hidden * esize, dt, hidden, eps);
        if ((rc = linear(&l->gate_up, h, gu, m, dt, kernel_arg, threads))) return rc;
        for (int r = 0; r < m; r++)
            reprise_silu_mul(gu + (size_t)r * ngu * esize, half, dt, act + (size_t)r * half * esize, simd);
        if ((rc = linear(&l->down, act, y, m, dt, kernel_arg, threads))) return rc;
        for (size_t j = 0; j < (size_t)m * hidden; j++) x[j] += load(y, j, dt);
    }
    return 0;
}
