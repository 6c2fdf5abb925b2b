/* Weight-only int4 products for decode rows (and, on AMX, short prefills): y[M,N] = x[M,K] @ W[N,K]^T,
 * bf16 in and out. (The second half of this file, "fp32 activations on AVX2", does the same for CPUs
 * without bf16, fp32 in and out, in its own layout.)
 *
 * Built by inference_svc/runtime/native/library.py (gcc -O3 -fopenmp), called through int4_gemv.py (ctypes). The weights
 * are torch's int4 values q (0..15) with one bf16 scale and zero per 32 inputs and output row,
 * W = (q - 8) * scale + zero, re-laid out at load time for AVX512-BF16's VDPBF16PS:
 *
 *   superblock s (64 output rows), group g (32 inputs), block b (16 rows): 320 bytes =
 *     256 bytes of nibbles: 4 zmm j = 0..3; word w = 2r + h of zmm j holds, at bits 4i (i = 0..3),
 *       q[64s + 16b + r][32g + 2(4j + i) + h]
 *     then 16 bf16 scales and 16 bf16 zeros of rows 64s + 16b + 0..15.
 *
 * A nibble becomes a bf16 number with one shift and one VPTERNLOG: 0x4300 | q is exactly 128 + q,
 * so VDPBF16PS against a broadcast pair of inputs adds (128 + q) x for two inputs and 16 rows in
 * one instruction, accumulating in fp32. Per group, sum((q - 8) x) = acc - 136 sum(x), so
 *   y += scale * acc + (zero - 136 scale) * sum(x)   (fp32; sum(x) once per row and group).
 * torch's _weight_int4pack_mm_for_cpu converts each nibble to fp32 and multiplies per element;
 * this does 32 multiply-adds per instruction, which matters where decode is bound by the kernel
 * rather than by memory (2-core Xeon and Zen 4 VMs, see docs/inference.md).
 *
 * The OpenMP runtime is the one torch already loaded (same soname), so these threads are torch's.
 */
#include <immintrin.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "bf16.h"

#define GROUP 32
#define BLOCK_BYTES 320
#define SUPER_ROWS 64
/* Prefetch into L2 this many groups (x 1,280 bytes) ahead. The hardware prefetchers alone let the
 * kernel read 11-12 GB/s on a 2-core Xeon VM where a plain read streams ~21; 16-64 groups ahead gave
 * 14+ (nearer ahead, or into L1, helped less; 256 ahead less again). */
#ifndef PREFETCH_GROUPS
#define PREFETCH_GROUPS 32
#endif
#ifndef PREFETCH_HINT
#define PREFETCH_HINT _MM_HINT_T1
#endif

/* Per row and group: the fp32 sum of the group's 32 inputs, summed in order. */
static void group_sums(const uint16_t *x, int m, int k, float *sums) {
    int groups = k / GROUP;
    for (int r = 0; r < m; r++)
        for (int g = 0; g < groups; g++) {
            float s = 0.0f;
            for (int t = 0; t < GROUP; t++) s += bf16_to_float(x[(size_t)r * k + g * GROUP + t]);
            sums[r * groups + g] = s;
        }
}

int reprise_int4_avx512bf16_supported(void) {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
           __builtin_cpu_supports("avx512bf16");
}

__attribute__((target("avx512f,avx512bw,avx512bf16"))) static inline __m512 load_bf16x16(const uint8_t *p) {
    __m256i h = _mm256_loadu_si256((const __m256i *)p);
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
}

__attribute__((target("avx512f,avx512bw,avx512bf16"))) static void superblock_avx512(
    const uint8_t *w, const uint16_t *x, const float *sums, int k, uint16_t *y) {
    const __m512i low = _mm512_set1_epi16(0x000F);
    const __m512i one28 = _mm512_set1_epi16(0x4300);
    const __m512 minus136 = _mm512_set1_ps(-136.0f);
    __m512 total[4] = {_mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps()};
    const uint32_t *pairs = (const uint32_t *)x;
    int groups = k / GROUP;
    for (int g = 0; g < groups; g++) {
        const uint8_t *blk = w + (size_t)g * 4 * BLOCK_BYTES;
        for (int line = 0; line < 4 * BLOCK_BYTES; line += 64) /* past the end: the next superblock, harmless */
            _mm_prefetch((const char *)blk + PREFETCH_GROUPS * 4 * BLOCK_BYTES + line, PREFETCH_HINT);
        __m512 acc[4] = {_mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps()};
        for (int j = 0; j < 4; j++) {
            __m512i q[4];
            for (int b = 0; b < 4; b++) q[b] = _mm512_loadu_si512((const void *)(blk + b * BLOCK_BYTES + j * 64));
            for (int i = 0; i < 4; i++) {
                __m512bh xb = (__m512bh)_mm512_set1_epi32((int)pairs[g * 16 + 4 * j + i]);
                for (int b = 0; b < 4; b++) {
                    __m512i t = i == 0 ? q[b] : _mm512_srli_epi16(q[b], 4 * i);
                    __m512i v = _mm512_ternarylogic_epi32(t, low, one28, 0xEA); /* (t & 0xF) | 0x4300 */
                    acc[b] = _mm512_dpbf16_ps(acc[b], (__m512bh)v, xb);
                }
            }
        }
        __m512 s = _mm512_set1_ps(sums[g]);
        for (int b = 0; b < 4; b++) {
            const uint8_t *sz = blk + b * BLOCK_BYTES + 256;
            __m512 scale = load_bf16x16(sz), zero = load_bf16x16(sz + 32);
            total[b] = _mm512_fmadd_ps(scale, acc[b], total[b]);
            total[b] = _mm512_fmadd_ps(_mm512_fmadd_ps(minus136, scale, zero), s, total[b]);
        }
    }
    for (int b = 0; b < 4; b++) _mm256_storeu_si256((__m256i *)(y + 16 * b), (__m256i)_mm512_cvtneps_pbh(total[b]));
}

/* Input rows per pass of superblock_avx512_rows: one accumulator register per row and 16-row block. */
#define ROWS_TILE 16

/* superblock_avx512 for up to ROWS_TILE rows at once (continuous batching: one decode row per stream).
 * Each weight vector is loaded and its nibbles converted once for every row, then one VDPBF16PS per row:
 * per row and group 64 multiply-adds instead of 64 plus 128 shift/convert operations, and the superblock's
 * weights leave L2 once per pass instead of once per row. Several rows run fewer blocks (16 output rows)
 * per pass so the accumulators fit the registers; every row's accumulator of a block still takes the same
 * instructions in the same order as in superblock_avx512, and its total the same two FMAs per group, so
 * each row's bits are the one-row path's (tested): a reply does not depend on which streams share its step. */
__attribute__((target("avx512f,avx512bw,avx512bf16"), always_inline)) static inline void superblock_rows_body(
    const uint8_t *w, const uint16_t *x, const float *sums, const int rows, int k, uint16_t *y, int n) {
    /* Blocks per pass: rows x blocks accumulators, at most 16 registers, and at least four independent
     * chains of VDPBF16PS (its latency, not its throughput, would set the pace with fewer). */
    const int per = rows <= 4 ? 4 : rows <= 8 ? 2 : 1;
    const __m512i low = _mm512_set1_epi16(0x000F);
    const __m512i one28 = _mm512_set1_epi16(0x4300);
    const __m512 minus136 = _mm512_set1_ps(-136.0f);
    float total[ROWS_TILE][SUPER_ROWS] __attribute__((aligned(64)));
    memset(total, 0, sizeof total);
    int groups = k / GROUP;
    for (int g = 0; g < groups; g++) {
        const uint8_t *blk = w + (size_t)g * 4 * BLOCK_BYTES;
        for (int line = 0; line < 4 * BLOCK_BYTES; line += 64)
            _mm_prefetch((const char *)blk + PREFETCH_GROUPS * 4 * BLOCK_BYTES + line, PREFETCH_HINT);
        for (int b0 = 0; b0 < 4; b0 += per) {
            __m512 acc[ROWS_TILE][4];
#pragma GCC unroll 16
            for (int r = 0; r < rows; r++)
#pragma GCC unroll 4
                for (int c = 0; c < per; c++) acc[r][c] = _mm512_setzero_ps();
            for (int j = 0; j < 4; j++) {
                __m512i q[4];
#pragma GCC unroll 4
                for (int c = 0; c < per; c++) q[c] = _mm512_loadu_si512((const void *)(blk + (b0 + c) * BLOCK_BYTES + j * 64));
#pragma GCC unroll 4
                for (int i = 0; i < 4; i++) {
                    const uint32_t *pair = (const uint32_t *)x + g * 16 + 4 * j + i;
#pragma GCC unroll 4
                    for (int c = 0; c < per; c++) {
                        __m512i t = i == 0 ? q[c] : _mm512_srli_epi16(q[c], 4 * i);
                        __m512bh v = (__m512bh)_mm512_ternarylogic_epi32(t, low, one28, 0xEA); /* (t & 0xF) | 0x4300 */
#pragma GCC unroll 16
                        for (int r = 0; r < rows; r++)
                            acc[r][c] = _mm512_dpbf16_ps(acc[r][c], v, (__m512bh)_mm512_set1_epi32((int)pair[(size_t)r * k / 2]));
                    }
                }
            }
#pragma GCC unroll 4
            for (int c = 0; c < per; c++) {
                const uint8_t *sz = blk + (b0 + c) * BLOCK_BYTES + 256;
                __m512 scale = load_bf16x16(sz), zero = load_bf16x16(sz + 32);
                __m512 zadj = _mm512_fmadd_ps(minus136, scale, zero);
                for (int r = 0; r < rows; r++) {
                    float *tr = total[r] + 16 * (b0 + c);
                    __m512 t = _mm512_fmadd_ps(scale, acc[r][c], _mm512_load_ps(tr));
                    _mm512_store_ps(tr, _mm512_fmadd_ps(zadj, _mm512_set1_ps(sums[r * groups + g]), t));
                }
            }
        }
    }
    for (int r = 0; r < rows; r++)
        for (int b = 0; b < 4; b++)
            _mm256_storeu_si256((__m256i *)(y + (size_t)r * n + 16 * b), (__m256i)_mm512_cvtneps_pbh(_mm512_load_ps(total[r] + 16 * b)));
}

/* The row count as a constant per instance, so the accumulators stay in registers. */
#define ROWS_CASE(R)                                                                                       \
    case R:                                                                                                \
        superblock_rows_body(w, x, sums, R, k, y, n);                                                      \
        break;

__attribute__((target("avx512f,avx512bw,avx512bf16"))) static void superblock_avx512_rows(
    const uint8_t *w, const uint16_t *x, const float *sums, int rows, int k, uint16_t *y, int n) {
    switch (rows) {
        ROWS_CASE(1) ROWS_CASE(2) ROWS_CASE(3) ROWS_CASE(4) ROWS_CASE(5) ROWS_CASE(6) ROWS_CASE(7) ROWS_CASE(8)
        ROWS_CASE(9) ROWS_CASE(10) ROWS_CASE(11) ROWS_CASE(12) ROWS_CASE(13) ROWS_CASE(14) ROWS_CASE(15) ROWS_CASE(16)
    }
}

/* Same layout and arithmetic order per group, plain C: the reference the tests hold the kernel to. */
static void superblock_scalar(const uint8_t *w, const uint16_t *x, const float *sums, int k, uint16_t *y) {
    float total[SUPER_ROWS] = {0};
    int groups = k / GROUP;
    for (int g = 0; g < groups; g++) {
        const uint8_t *blk = w + (size_t)g * 4 * BLOCK_BYTES;
        for (int b = 0; b < 4; b++) {
            const uint16_t *words = (const uint16_t *)(blk + b * BLOCK_BYTES);
            const uint16_t *sz = (const uint16_t *)(blk + b * BLOCK_BYTES + 256);
            for (int r = 0; r < 16; r++) {
                float acc = 0.0f;
                for (int p = 0; p < 16; p++) {
                    int j = p / 4, i = p % 4;
                    for (int h = 0; h < 2; h++) {
                        int q = (words[j * 32 + 2 * r + h] >> (4 * i)) & 0xF;
                        acc += (float)(q - 8) * bf16_to_float(x[g * GROUP + 2 * p + h]);
                    }
                }
                float scale = bf16_to_float(sz[r]), zero = bf16_to_float(sz[16 + r]);
                total[16 * b + r] += scale * acc + zero * sums[g];
            }
        }
    }
    for (int r = 0; r < SUPER_ROWS; r++) y[r] = float_to_bf16(total[r]);
}

/* y[m, n] (bf16) = x[m, k] (bf16) @ W^T for W packed as above; n % 64 == 0, k % 32 == 0.
 * fast = 1 takes the AVX512-BF16 kernel (the caller checks reprise_int4_avx512bf16_supported).
 * Returns 0, or -1 when out of memory (more than 2048 row-groups need a heap buffer). */
int reprise_int4_gemv(const uint8_t *w, const uint16_t *x, uint16_t *y, int m, int n, int k, int threads, int fast) {
    int groups = k / GROUP, supers = n / SUPER_ROWS;
    float sums_stack[2048];
    int small = (size_t)m * groups <= sizeof sums_stack / sizeof *sums_stack;
    float *sums = small ? sums_stack : malloc((size_t)m * groups * sizeof *sums);
    if (sums == NULL) return -1;
    group_sums(x, m, k, sums);
    size_t super_bytes = (size_t)groups * 4 * BLOCK_BYTES;
#pragma omp parallel for num_threads(threads) schedule(static)
    for (int s = 0; s < supers; s++) {
        if (fast && m > 1) { /* several rows: each tile of rows converts the superblock's weights once */
            for (int r0 = 0; r0 < m; r0 += ROWS_TILE)
                superblock_avx512_rows(w + (size_t)s * super_bytes, x + (size_t)r0 * k, sums + r0 * groups,
                                       m - r0 < ROWS_TILE ? m - r0 : ROWS_TILE, k, y + (size_t)r0 * n + (size_t)s * SUPER_ROWS, n);
            continue;
        }
        for (int r = 0; r < m; r++) {
            const uint8_t *ws = w + (size_t)s * super_bytes;
            const uint16_t *xr = x + (size_t)r * k;
            uint16_t *yr = y + (size_t)r * n + (size_t)s * SUPER_ROWS;
            if (fast)
                superblock_avx512(ws, xr, sums + r * groups, k, yr);
            else
                superblock_scalar(ws, xr, sums + r * groups, k, yr);
        }
    }
    if (!small) free(sums);
    return 0;
}

/* ---- several rows at once on AMX (Sapphire Rapids and later Xeons) ----
 * The same nibble -> (128 + q) bf16 conversion, written as one 16-row x 32-input B tile (VNNI pairs:
 * tile row p = the converted vector of pair p, the layout above already is), multiplied by TDPBF16PS
 * against up to 16 input rows at once. The conversion is paid once for all rows; the per-group
 * scale/zero step runs on each 16 x 16 fp32 result. Used for a few to a few dozen rows (a short
 * prefill chunk, a small sentiment batch), where the dense bf16 copy is bound by reading 4x the bytes. */
#define ARCH_REQ_XCOMP_PERM 0x1023
#define XFEATURE_XTILEDATA 18
/* gcc 12's tile load/store intrinsics are inline asm without a memory clobber: around each one that
 * touches a buffer written or read here, this barrier keeps gcc from dropping or moving the stores a
 * TILELOADD reads, or reading a TILESTORED result before it is written (seen, in a variant: NaNs). */
#define TILE_MEMORY() __asm__ __volatile__("" ::: "memory")

struct tile_config {
    uint8_t palette, start_row, reserved[14];
    uint16_t colsb[16];
    uint8_t rows[16];
};

int reprise_int4_amx_supported(void) {
    if (!reprise_int4_avx512bf16_supported() || !__builtin_cpu_supports("amx-tile") || !__builtin_cpu_supports("amx-bf16"))
        return 0;
    return syscall(SYS_arch_prctl, ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA) == 0; /* Linux asks first */
}

#define AMX_ROWS 64 /* rows per pass: four 16-row A tiles share each converted B tile */

/* One A tile (inputs) per 16-row chunk: tiles 2..5. TDPBF16PS names its tiles by immediates. */
#define AMX_CHUNK(C, A)                                                                                      \
    case C:                                                                                                \
        _tile_zero(0);                                                                                     \
        _tile_dpbf16ps(0, A, 1);                                                                           \
        break;

__attribute__((target("amx-tile,amx-bf16,avx512f,avx512bw,avx512bf16"))) static void superblock_amx(
    const uint8_t *w, const uint16_t *xpad, const float *sums, int rows, int k, uint16_t *y, int n) {
    const __m512i low = _mm512_set1_epi16(0x000F);
    const __m512i one28 = _mm512_set1_epi16(0x4300);
    const __m512 minus136 = _mm512_set1_ps(-136.0f);
    float total[AMX_ROWS * SUPER_ROWS] __attribute__((aligned(64)));
    float c[16 * 16] __attribute__((aligned(64)));
    uint16_t bt[16 * 32] __attribute__((aligned(64)));
    int groups = k / GROUP, chunks = (rows + 15) / 16;
    memset(total, 0, sizeof(float) * rows * SUPER_ROWS);
    for (int g = 0; g < groups; g++) {
        const uint8_t *blk = w + (size_t)g * 4 * BLOCK_BYTES;
        for (int line = 0; line < 4 * BLOCK_BYTES; line += 64)
            _mm_prefetch((const char *)blk + PREFETCH_GROUPS * 4 * BLOCK_BYTES + line, PREFETCH_HINT);
        const uint16_t *xg = xpad + g * GROUP; /* A: 16 rows x 32 inputs per chunk, row stride k */
        _tile_loadd(2, xg, k * 2);
        if (chunks > 1) _tile_loadd(3, xg + (size_t)16 * k, k * 2);
        if (chunks > 2) _tile_loadd(4, xg + (size_t)32 * k, k * 2);
        if (chunks > 3) _tile_loadd(5, xg + (size_t)48 * k, k * 2);
        for (int b = 0; b < 4; b++) {
            for (int j = 0; j < 4; j++) {
                __m512i q = _mm512_loadu_si512((const void *)(blk + b * BLOCK_BYTES + j * 64));
                for (int i = 0; i < 4; i++) {
                    __m512i t = i == 0 ? q : _mm512_srli_epi16(q, 4 * i);
                    _mm512_store_si512((void *)(bt + (4 * j + i) * 32), _mm512_ternarylogic_epi32(t, low, one28, 0xEA));
                }
            }
            TILE_MEMORY();
            _tile_loadd(1, bt, 64); /* B: the 16 pairs of inputs x 16 output rows */
            TILE_MEMORY();
            const uint8_t *sz = blk + b * BLOCK_BYTES + 256;
            __m512 scale = load_bf16x16(sz), zero = load_bf16x16(sz + 32);
            __m512 zadj = _mm512_fmadd_ps(minus136, scale, zero);
            for (int ch = 0; ch < chunks; ch++) {
                switch (ch) { AMX_CHUNK(0, 2) AMX_CHUNK(1, 3) AMX_CHUNK(2, 4) AMX_CHUNK(3, 5) }
                TILE_MEMORY();
                _tile_stored(0, c, 64);
                TILE_MEMORY();
                int last = rows - 16 * ch < 16 ? rows - 16 * ch : 16;
                for (int r = 0; r < last; r++) {
                    int m = 16 * ch + r;
                    float *t = total + m * SUPER_ROWS + 16 * b;
                    __m512 acc = _mm512_fmadd_ps(scale, _mm512_load_ps(c + 16 * r), _mm512_load_ps(t));
                    _mm512_store_ps(t, _mm512_fmadd_ps(zadj, _mm512_set1_ps(sums[m * groups + g]), acc));
                }
            }
        }
    }
    for (int m = 0; m < rows; m++)
        for (int b = 0; b < 4; b++)
            _mm256_storeu_si256((__m256i *)(y + (size_t)m * n + 16 * b),
                                (__m256i)_mm512_cvtneps_pbh(_mm512_load_ps(total + m * SUPER_ROWS + 16 * b)));
}

/* Tiles 0 (C, fp32), 1 (B, weights) and 2-5 (A, inputs): 16 rows of 64 bytes each. A constant: gcc 12
 * drops stores to a local config before LDTILECFG (it does not see the instruction read them). */
static const struct tile_config TILES __attribute__((aligned(64))) = {
    .palette = 1, .colsb = {64, 64, 64, 64, 64, 64}, .rows = {16, 16, 16, 16, 16, 16}};

__attribute__((target("amx-tile,amx-bf16"))) static void tiles_on(void) { _tile_loadconfig(&TILES); }

__attribute__((target("amx-tile"))) static void tiles_off(void) { _tile_release(); }

/* As reprise_int4_gemv, on AMX (the caller checks reprise_int4_amx_supported). Returns 0, or -1 when
 * out of memory. */
int reprise_int4_gemm_amx(const uint8_t *w, const uint16_t *x, uint16_t *y, int m, int n, int k, int threads) {
    int groups = k / GROUP, supers = n / SUPER_ROWS;
    size_t super_bytes = (size_t)groups * 4 * BLOCK_BYTES;
    uint16_t *xpad = malloc((size_t)AMX_ROWS * k * sizeof *xpad);
    float *sums = malloc((size_t)AMX_ROWS * groups * sizeof *sums);
    if (xpad == NULL || sums == NULL) {
        free(xpad);
        free(sums);
        return -1;
    }
    for (int m0 = 0; m0 < m; m0 += AMX_ROWS) {
        int rows = m - m0 < AMX_ROWS ? m - m0 : AMX_ROWS, padded = (rows + 15) / 16 * 16;
        memcpy(xpad, x + (size_t)m0 * k, (size_t)rows * k * sizeof *xpad);
        memset(xpad + (size_t)rows * k, 0, (size_t)(padded - rows) * k * sizeof *xpad); /* the last tile's spare rows */
        group_sums(xpad, rows, k, sums);
#pragma omp parallel num_threads(threads)
        {
            tiles_on();
#pragma omp for schedule(static)
            for (int s = 0; s < supers; s++)
                superblock_amx(w + (size_t)s * super_bytes, xpad, sums, rows, k, y + (size_t)m0 * n + (size_t)s * SUPER_ROWS, n);
            tiles_off();
        }
    }
    free(xpad);
    free(sums);
    return 0;
}

/* Re-lay torch's CPU int4 weights out for the kernel (the layout at the top of this file): q4 is
 * _convert_weight_to_int4pack_for_cpu's [n/B][k][B/2] bytes, B = block (64 where torch was built for
 * AVX512, 32 for AVX2; byte j of (t, col): row Bt + j in the low nibble, row Bt + B/2 + j in the high
 * one), sz its [k/32][n][2] bf16 scales and zeros, out [n/64][k/32][4][320] bytes. Python's
 * Int4Kernel.pack_reference does the same in torch (tests). */
void reprise_int4_pack(const uint8_t *q4, const uint16_t *sz, uint8_t *out, int n, int k, int threads, int block) {
    int half = block / 2;
    int groups = k / GROUP, supers = n / SUPER_ROWS;
#pragma omp parallel for num_threads(threads) schedule(static)
    for (int s = 0; s < supers; s++)
        for (int g = 0; g < groups; g++)
            for (int b = 0; b < 4; b++) {
                uint8_t *blk = out + (((size_t)s * groups + g) * 4 + b) * BLOCK_BYTES;
                uint16_t words[128];
                for (int j = 0; j < 4; j++)
                    for (int r = 0; r < 16; r++)
                        for (int h = 0; h < 2; h++) {
                            int row = SUPER_ROWS * s + 16 * b + r, tb = row / block, tr = row % block;
                            uint16_t word = 0;
                            for (int i = 0; i < 4; i++) {
                                size_t col = (size_t)g * GROUP + 2 * (4 * j + i) + h;
                                uint8_t byte = q4[((size_t)tb * k + col) * half + tr % half];
                                word |= (uint16_t)((tr < half ? byte & 0xF : byte >> 4) << (4 * i));
                            }
                            words[j * 32 + 2 * r + h] = word;
                        }
                uint16_t scales[32];
                for (int r = 0; r < 16; r++) {
                    size_t at = ((size_t)g * n + (size_t)s * SUPER_ROWS + 16 * b + r) * 2;
                    scales[r] = sz[at];
                    scales[16 + r] = sz[at + 1];
                }
                memcpy(blk, words, sizeof words); /* little-endian words, as the kernel loads them */
                memcpy(blk + 256, scales, sizeof scales);
            }
}


/* ---- fp32 activations on AVX2 (CPUs without bf16: AMD Zen 2/3, Intel before Cooper Lake) ----
 * y[M,N] (fp32) = x[M,K] (fp32) @ W[N,K]^T with W = (q - 8) * scale + zero, one fp16 scale and zero per
 * 32 inputs and output row. Layout, written at conversion time (Python's pack_fp32_reference):
 *
 *   superblock s (32 output rows), group g (32 inputs): 640 bytes =
 *     512 bytes of nibbles: chunk c = 0..3 (8 inputs), vector v = 0..3 (8 rows), lane l = 0..7: the dword
 *       at byte 4 * (8 * (4c + v) + l) holds, at bits 4i (i = 0..7), q[32s + 8v + l][32g + 8c + i];
 *     then 32 fp16 scales and 32 fp16 zeros of rows 32s + 0..31.
 *
 * A nibble becomes an fp32 number with a shift, an AND and VCVTDQ2PS (8 rows at once), then one FMA
 * against the broadcast input. Per group, sum((q - 8) x) = acc - 8 sum(x), so
 *   y += scale * acc + (zero - 8 scale) * sum(x)   (fp32; sum(x) once per row and group).
 * One row (decode) and several rows (a short prefill chunk) take two paths that sum in different orders;
 * within a path a row's operations never depend on the other rows of its call. */
#define F32_ROWS 32       /* output rows per superblock */
#define F32_BLOCK 640     /* bytes per superblock and group */
#define F32_TILE_ROWS 48  /* input rows per pass of the many-row path (its totals live on the stack) */
/* ... and fewer for wide inputs, so that a pass's input rows stay in L2 while every superblock reads them
 * (down_proj's 4,864 inputs: 48 rows are 934 KB). */
#define F32_TILE_INPUT_BYTES (256 * 1024)
#ifndef F32_PREFETCH_GROUPS
#define F32_PREFETCH_GROUPS 16
#endif

/* Into L2, the group F32_PREFETCH_GROUPS ahead of blk (past the end: the next superblock, harmless). */
static inline void prefetch_ahead_f32(const uint8_t *blk) {
    for (int line = 0; line < F32_BLOCK; line += 64)
        _mm_prefetch((const char *)blk + F32_PREFETCH_GROUPS * F32_BLOCK + line, _MM_HINT_T1);
}

/* A group's fp16 scales and (zero - 8 scale) of its 32 rows, as fp32 (every AVX2 path of this layout). */
__attribute__((target("avx2,fma,f16c"))) static inline void group_scales_f32(const uint8_t *blk, __m256 scale[4],
                                                                            __m256 zadj[4]) {
    for (int v = 0; v < 4; v++) {
        scale[v] = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(blk + 512 + 16 * v)));
        __m256 zero = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(blk + 576 + 16 * v)));
        zadj[v] = _mm256_fmadd_ps(_mm256_set1_ps(-8.0f), scale[v], zero);
    }
}

static inline float half_to_float(uint16_t h) { /* IEEE binary16 -> binary32, exact (for the scalar path) */
    uint32_t sign = (uint32_t)(h >> 15) << 31, exp = (h >> 10) & 0x1F, mant = h & 0x3FF, bits;
    if (exp == 0) {
        if (mant == 0) {
            bits = sign;
        } else { /* subnormal: normalize */
            exp = 127 - 15 + 1;
            while (!(mant & 0x400)) {
                mant <<= 1;
                exp--;
            }
            bits = sign | (exp << 23) | ((mant & 0x3FF) << 13);
        }
    } else if (exp == 31) {
        bits = sign | 0x7F800000 | (mant << 13);
    } else {
        bits = sign | ((exp + 127 - 15) << 23) | (mant << 13);
    }
    float f;
    memcpy(&f, &bits, sizeof f);
    return f;
}

int reprise_int4_avx2_supported(void) {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c");
}

static void group_sums_f32(const float *x, int m, int k, float *sums) {
    int groups = k / GROUP;
    for (int r = 0; r < m; r++)
        for (int g = 0; g < groups; g++) {
            float s = 0.0f;
            for (int t = 0; t < GROUP; t++) s += x[(size_t)r * k + g * GROUP + t];
            sums[r * groups + g] = s;
        }
}

/* The masks that keep nibble i = 0..6 of each dword in place (nibble 7 is shifted down instead). */
static const uint32_t NIBBLE_MASKS[7][8] __attribute__((aligned(32))) = {
#define M8(v) {v, v, v, v, v, v, v, v}
    M8(0xFu), M8(0xF0u), M8(0xF00u), M8(0xF000u), M8(0xF0000u), M8(0xF00000u), M8(0xF000000u)
#undef M8
};

/* One input row against one superblock, the weights converted in registers. Nibble i (< 7) is masked in
 * place, so VCVTDQ2PS gives q * 16^i exactly, and the input was scaled by 16^-i beforehand (xs, exact: a
 * power of two): the product is q * x to the last bit, one shift per nibble cheaper. Two accumulators
 * per 8 rows (even and odd inputs) keep the FMAs from waiting on each other. */
__attribute__((target("avx2,fma,f16c"))) static void superblock_avx2(const uint8_t *w, const float *xs, const float *sums,
                                                                     int k, float *y) {
    __m256 total[4] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps()};
    int groups = k / GROUP;
    for (int g = 0; g < groups; g++) {
        const uint8_t *blk = w + (size_t)g * F32_BLOCK;
        prefetch_ahead_f32(blk);
        __m256 even[4] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps()};
        __m256 odd[4] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps()};
        for (int c = 0; c < 4; c++) {
            __m256i q[4];
            for (int v = 0; v < 4; v++) q[v] = _mm256_loadu_si256((const __m256i *)(blk + 32 * (4 * c + v)));
#pragma GCC unroll 8
            for (int i = 0; i < 8; i++) {
                __m256 xb = _mm256_broadcast_ss(xs + g * GROUP + 8 * c + i);
                for (int v = 0; v < 4; v++) {
                    __m256i t = i == 7 ? _mm256_srli_epi32(q[v], 28)
                                       : _mm256_and_si256(q[v], _mm256_load_si256((const __m256i *)NIBBLE_MASKS[i]));
                    if (i & 1)
                        odd[v] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(t), xb, odd[v]);
                    else
                        even[v] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(t), xb, even[v]);
                }
            }
        }
        __m256 s = _mm256_set1_ps(sums[g]), scale[4], zadj[4];
        group_scales_f32(blk, scale, zadj);
        for (int v = 0; v < 4; v++) {
            total[v] = _mm256_fmadd_ps(scale[v], _mm256_add_ps(even[v], odd[v]), total[v]);
            total[v] = _mm256_fmadd_ps(zadj[v], s, total[v]);
        }
    }
    for (int v = 0; v < 4; v++) _mm256_storeu_ps(y + 8 * v, total[v]);
}

/* x scaled for superblock_avx2: input 8c + i times 16^-i for i < 7 (exact: a power of two). */
static void scale_nibble_inputs(const float *x, int k, float *xs) {
    static const float SCALE[8] = {1.0f, 0x1p-4f, 0x1p-8f, 0x1p-12f, 0x1p-16f, 0x1p-20f, 0x1p-24f, 1.0f};
    for (int t = 0; t < k; t++) xs[t] = x[t] * SCALE[t % 8];
}

/* Three input rows (x0, x1, x2) against one group's converted weights wf[32 inputs][4 vectors]: twelve
 * named accumulators (arrays were spilled to the stack by gcc 12), each weight vector loaded once for three
 * FMAs. A short last block repeats its last row (the extra results are dropped). */
__attribute__((target("avx2,fma,f16c"))) static inline void gemm_group_3rows(const __m256 *wf, const float *x0,
                                                                            const float *x1, const float *x2,
                                                                            __m256 *out) {
    __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps(), a2 = _mm256_setzero_ps(), a3 = _mm256_setzero_ps();
    __m256 b0 = _mm256_setzero_ps(), b1 = _mm256_setzero_ps(), b2 = _mm256_setzero_ps(), b3 = _mm256_setzero_ps();
    __m256 c0 = _mm256_setzero_ps(), c1 = _mm256_setzero_ps(), c2 = _mm256_setzero_ps(), c3 = _mm256_setzero_ps();
#pragma GCC unroll 4
    for (int p = 0; p < 32; p++) {
        __m256 u = _mm256_broadcast_ss(x0 + p), t = _mm256_broadcast_ss(x1 + p), z = _mm256_broadcast_ss(x2 + p);
        __m256 w = wf[4 * p];
        a0 = _mm256_fmadd_ps(w, u, a0);
        b0 = _mm256_fmadd_ps(w, t, b0);
        c0 = _mm256_fmadd_ps(w, z, c0);
        w = wf[4 * p + 1];
        a1 = _mm256_fmadd_ps(w, u, a1);
        b1 = _mm256_fmadd_ps(w, t, b1);
        c1 = _mm256_fmadd_ps(w, z, c1);
        w = wf[4 * p + 2];
        a2 = _mm256_fmadd_ps(w, u, a2);
        b2 = _mm256_fmadd_ps(w, t, b2);
        c2 = _mm256_fmadd_ps(w, z, c2);
        w = wf[4 * p + 3];
        a3 = _mm256_fmadd_ps(w, u, a3);
        b3 = _mm256_fmadd_ps(w, t, b3);
        c3 = _mm256_fmadd_ps(w, z, c3);
    }
    out[0] = a0, out[1] = a1, out[2] = a2, out[3] = a3, out[4] = b0, out[5] = b1, out[6] = b2, out[7] = b3;
    out[8] = c0, out[9] = c1, out[10] = c2, out[11] = c3;
}

/* Up to F32_TILE_ROWS input rows against one superblock: each group's 32 x 32 weights are converted once
 * into an L1 buffer, then rows go three at a time through gemm_group_3rows (the FMAs, not the loads, set
 * the pace). A row's operations do not depend on the other rows of the call. */
__attribute__((target("avx2,fma,f16c"))) static void superblock_avx2_rows(const uint8_t *w, const float *x,
                                                                          const float *sums, int rows, int k,
                                                                          float *y, int n) {
    const __m256i low = _mm256_set1_epi32(0xF);
    __m256 wf[32 * 4] __attribute__((aligned(32))); /* [8c + i][v]: the converted weights of one group */
    __m256 total[F32_TILE_ROWS][4] __attribute__((aligned(32)));
    int groups = k / GROUP;
    for (int r = 0; r < rows; r++)
        for (int v = 0; v < 4; v++) total[r][v] = _mm256_setzero_ps();
    for (int g = 0; g < groups; g++) {
        const uint8_t *blk = w + (size_t)g * F32_BLOCK;
        prefetch_ahead_f32(blk);
        for (int c = 0; c < 4; c++)
            for (int v = 0; v < 4; v++) {
                __m256i q = _mm256_loadu_si256((const __m256i *)(blk + 32 * (4 * c + v)));
#pragma GCC unroll 8
                for (int i = 0; i < 8; i++)
                    wf[(8 * c + i) * 4 + v] = _mm256_cvtepi32_ps(_mm256_and_si256(i == 0 ? q : _mm256_srli_epi32(q, 4 * i), low));
            }
        __m256 scale[4], zadj[4];
        group_scales_f32(blk, scale, zadj);
        for (int r = 0; r < rows; r += 3) {
            __m256 acc[12];
            const float *x0 = x + (size_t)r * k + g * GROUP, *x1 = r + 1 < rows ? x0 + k : x0;
            const float *x2 = r + 2 < rows ? x1 + k : x1;
            gemm_group_3rows(wf, x0, x1, x2, acc);
            for (int t = 0; t < 3 && r + t < rows; t++) {
                __m256 s = _mm256_set1_ps(sums[(r + t) * groups + g]);
                for (int v = 0; v < 4; v++) {
                    total[r + t][v] = _mm256_fmadd_ps(scale[v], acc[4 * t + v], total[r + t][v]);
                    total[r + t][v] = _mm256_fmadd_ps(zadj[v], s, total[r + t][v]);
                }
            }
        }
    }
    for (int r = 0; r < rows; r++)
        for (int v = 0; v < 4; v++) _mm256_storeu_ps(y + (size_t)r * n + 8 * v, total[r][v]);
}

/* The one-row path's layout and arithmetic order in plain C: the reference the tests hold the AVX2 paths to. */
static void superblock_f32_scalar(const uint8_t *w, const float *x, const float *sums, int k, float *y) {
    float total[F32_ROWS] = {0};
    int groups = k / GROUP;
    for (int g = 0; g < groups; g++) {
        const uint8_t *blk = w + (size_t)g * F32_BLOCK;
        const uint32_t *words = (const uint32_t *)blk;
        const uint16_t *sz = (const uint16_t *)(blk + 512);
        for (int row = 0; row < F32_ROWS; row++) {
            int v = row / 8, l = row % 8;
            float acc[2] = {0.0f, 0.0f}; /* even and odd inputs */
            for (int c = 0; c < 4; c++)
                for (int i = 0; i < 8; i++) {
                    float q = (float)((words[8 * (4 * c + v) + l] >> (4 * i)) & 0xF);
                    acc[i & 1] = fmaf(q, x[g * GROUP + 8 * c + i], acc[i & 1]);
                }
            float scale = half_to_float(sz[row]), zero = half_to_float(sz[32 + row]);
            total[row] = fmaf(scale, acc[0] + acc[1], total[row]);
            total[row] = fmaf(fmaf(-8.0f, scale, zero), sums[g], total[row]);
        }
    }
    memcpy(y, total, sizeof total);
}

/* y[m, n] (fp32) = x[m, k] (fp32) @ W^T for W packed as above; n % 32 == 0, k % 32 == 0. mode: 0 the plain C
 * reference of mode 1 (the same bits), 1 AVX2 one row at a time, 2 AVX2 with each group converted once for
 * up to F32_TILE_ROWS rows (the caller checks reprise_int4_avx2_supported). Returns 0, or -1 when out of
 * memory. */
int reprise_int4_gemm_f32(const uint8_t *w, const float *x, float *y, int m, int n, int k, int threads, int mode) {
    int groups = k / GROUP, supers = n / F32_ROWS;
    float sums_stack[2048];
    int small = (size_t)m * groups <= sizeof sums_stack / sizeof *sums_stack;
    float *sums = small ? sums_stack : malloc((size_t)m * groups * sizeof *sums);
    if (sums == NULL) return -1;
    group_sums_f32(x, m, k, sums);
    float *xs = NULL;
    if (mode == 1) {
        xs = malloc((size_t)m * k * sizeof *xs);
        if (xs == NULL) {
            if (!small) free(sums);
            return -1;
        }
        for (int r = 0; r < m; r++) scale_nibble_inputs(x + (size_t)r * k, k, xs + (size_t)r * k);
    }
    size_t super_bytes = (size_t)groups * F32_BLOCK;
    int fit = F32_TILE_INPUT_BYTES / (k * (int)sizeof(float)), tile = F32_TILE_ROWS;
    if (fit < tile) tile = fit < 3 ? 3 : fit / 3 * 3;
#pragma omp parallel for num_threads(threads) schedule(static)
    for (int s = 0; s < supers; s++) {
        const uint8_t *ws = w + (size_t)s * super_bytes;
        if (mode == 2) {
            for (int r0 = 0; r0 < m; r0 += tile) {
                int rows = m - r0 < tile ? m - r0 : tile;
                superblock_avx2_rows(ws, x + (size_t)r0 * k, sums + r0 * groups, rows, k,
                                     y + (size_t)r0 * n + (size_t)s * F32_ROWS, n);
            }
            continue;
        }
        for (int r = 0; r < m; r++) {
            const float *xr = x + (size_t)r * k;
            float *yr = y + (size_t)r * n + (size_t)s * F32_ROWS;
            if (mode == 1)
                superblock_avx2(ws, xs + (size_t)r * k, sums + r * groups, k, yr);
            else
                superblock_f32_scalar(ws, xr, sums + r * groups, k, yr);
        }
    }
    if (!small) free(sums);
    free(xs);
    return 0;
}


/* ---- int8 activations against the same int4 layout (AVX2; Q8_0-like, as llama.cpp on CPUs without bf16) ----
 * Each input row is quantized per group of 32 inputs: d = max|x| / 127, qx = round(x / d) in -127..127 (a
 * row's codes depend on that row alone). A group's products are then integers:
 *   y += (scale * d) * sum(q * qx) + (zero - 8 scale) * (d * sum(qx))
 * with sum(q * qx) exact in int32 (VPMADDUBSW: nibble (unsigned) x code (signed), pairs summed into int16;
 * sixteen products per int16 lane at most 16 * 15 * 127 = 30,480, so nothing saturates). The second term
 * must use the quantized inputs' sum, not the exact one: with it y is exactly the dequantized weights times
 * the dequantized inputs (error sum(W e)); with sum(x) the error is scale * sum(q e), q being 0..15 rather
 * than centred, twice as large (measured: 1.2% vs 0.54% on Gaussian inputs). The fp32 combine per group
 * runs in one fixed order, so the one-row path (decode), the several-row path (prefill) and the scalar
 * reference give the same bits for a row whatever else is in its call: a token's KV is the same computed
 * alone or in a chunk. Four multiply instructions cover what thirty-two FMAs do in the fp32 paths. */
#define Q8_TILE_ROWS 64 /* input rows per pass of the several-row path (totals on the stack: 8 KB) */

/* Where code t of a group goes: per 8 inputs the even ones, then the odd ones (a dword's low and high
 * nibbles hold inputs 2j and 2j + 1, see the layout above). */
static inline int code_slot(int t) { return (t & ~7) + (t & 1) * 4 + (t & 7) / 2; }

/* Round half away from zero, as roundf, written as the vector path computes it. */
static inline int round_code(float v) {
    int q = (int)(v + copysignf(0.5f, v)); /* |v| <= 127 but for the last bit */
    return q > 127 ? 127 : q < -127 ? -127 : q;
}

/* x (k floats) -> per group of 32: codes in code_slot order, the scale d = max|x| / 127, and d * (sum of
 * the codes), the group's sum of the quantized inputs (exact integers, one rounding). The AVX2 version
 * below gives the same bits. */
static void quantize_row_q8_scalar(const float *x, int k, int8_t *codes, float *d, float *sums) {
    for (int g = 0; g < k / GROUP; g++) {
        const float *xg = x + g * GROUP;
        float amax = 0.0f;
        for (int t = 0; t < GROUP; t++) amax = fmaxf(amax, fabsf(xg[t]));
        float inv = amax > 0.0f ? 127.0f / amax : 0.0f;
        int total = 0;
        d[g] = amax / 127.0f;
        for (int t = 0; t < GROUP; t++) {
            int code = round_code(xg[t] * inv);
            codes[g * GROUP + code_slot(t)] = (int8_t)code;
            total += code;
        }
        sums[g] = d[g] * (float)total;
    }
}

__attribute__((target("avx2,fma,f16c"))) static void quantize_row_q8_avx2(const float *x, int k, int8_t *codes, float *d,
                                                                         float *sums) {
    const __m256 sign = _mm256_set1_ps(-0.0f), half = _mm256_set1_ps(0.5f);
    const __m256 hi = _mm256_set1_ps(127.0f), lo = _mm256_set1_ps(-127.0f);
    const __m256i order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
    const __m256i slots = _mm256_setr_epi8(0, 2, 4, 6, 1, 3, 5, 7, 8, 10, 12, 14, 9, 11, 13, 15, 0, 2, 4, 6, 1, 3, 5, 7, 8,
                                           10, 12, 14, 9, 11, 13, 15);
    for (int g = 0; g < k / GROUP; g++) {
        const float *xg = x + g * GROUP;
        __m256 v[4], amax = _mm256_setzero_ps();
        for (int j = 0; j < 4; j++) {
            v[j] = _mm256_loadu_ps(xg + 8 * j);
            amax = _mm256_max_ps(amax, _mm256_andnot_ps(sign, v[j]));
        }
        __m128 m = _mm_max_ps(_mm256_castps256_ps128(amax), _mm256_extractf128_ps(amax, 1));
        m = _mm_max_ps(m, _mm_movehl_ps(m, m));
        float top = _mm_cvtss_f32(_mm_max_ss(m, _mm_shuffle_ps(m, m, 1)));
        __m256 inv = _mm256_set1_ps(top > 0.0f ? 127.0f / top : 0.0f);
        d[g] = top / 127.0f;
        __m256i c[4];
        for (int j = 0; j < 4; j++) {
            __m256 t = _mm256_mul_ps(v[j], inv);
            t = _mm256_add_ps(t, _mm256_or_ps(half, _mm256_and_ps(sign, t)));
            c[j] = _mm256_cvttps_epi32(_mm256_max_ps(_mm256_min_ps(t, hi), lo));
        }
        __m256i total = _mm256_add_epi32(_mm256_add_epi32(c[0], c[1]), _mm256_add_epi32(c[2], c[3]));
        __m128i t4 = _mm_add_epi32(_mm256_castsi256_si128(total), _mm256_extracti128_si256(total, 1));
        t4 = _mm_add_epi32(t4, _mm_shuffle_epi32(t4, 0x4E));
        t4 = _mm_add_epi32(t4, _mm_shuffle_epi32(t4, 0xB1));
        sums[g] = d[g] * (float)_mm_cvtsi128_si32(t4);
        __m256i b = _mm256_packs_epi16(_mm256_packs_epi32(c[0], c[1]), _mm256_packs_epi32(c[2], c[3]));
        b = _mm256_shuffle_epi8(_mm256_permutevar8x32_epi32(b, order), slots);
        _mm256_storeu_si256((__m256i *)(codes + g * GROUP), b);
    }
}

static inline int32_t codes4(const int8_t *p) { /* four codes as one dword (memcpy: no aliasing question) */
    int32_t v;
    memcpy(&v, p, sizeof v);
    return v;
}

/* One input row's int16 pair sums for a group (acc, 8 rows per vector) added into its totals, in the one
 * order every path uses: total += (scale * d) * dot; total += zadj * sum. */
__attribute__((target("avx2,fma,f16c"))) static inline void q8_combine(const __m256i acc[4], const __m256 scale[4],
                                                                     const __m256 zadj[4], float d, float sum,
                                                                     __m256 total[4]) {
    const __m256i ones = _mm256_set1_epi16(1);
    __m256 dv = _mm256_set1_ps(d), s = _mm256_set1_ps(sum);
    for (int v = 0; v < 4; v++) {
        __m256 dot = _mm256_cvtepi32_ps(_mm256_madd_epi16(acc[v], ones));
        total[v] = _mm256_fmadd_ps(_mm256_mul_ps(scale[v], dv), dot, total[v]);
        total[v] = _mm256_fmadd_ps(zadj[v], s, total[v]);
    }
}

/* One input row against one superblock, nibbles split in registers. */
__attribute__((target("avx2,fma,f16c"))) static void superblock_q8(const uint8_t *w, const int8_t *codes, const float *d,
                                                                  const float *sums, int k, float *y) {
    const __m256i low = _mm256_set1_epi8(0x0F);
    __m256 total[4] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps()};
    int groups = k / GROUP;
    for (int g = 0; g < groups; g++) {
        const uint8_t *blk = w + (size_t)g * F32_BLOCK;
        prefetch_ahead_f32(blk);
        const int8_t *xq = codes + g * GROUP;
        __m256i acc[4] = {_mm256_setzero_si256(), _mm256_setzero_si256(), _mm256_setzero_si256(), _mm256_setzero_si256()};
        for (int c = 0; c < 4; c++) {
            __m256i even = _mm256_set1_epi32(codes4(xq + 8 * c)), odd = _mm256_set1_epi32(codes4(xq + 8 * c + 4));
            for (int v = 0; v < 4; v++) {
                __m256i q = _mm256_loadu_si256((const __m256i *)(blk + 32 * (4 * c + v)));
                acc[v] = _mm256_add_epi16(acc[v], _mm256_maddubs_epi16(_mm256_and_si256(q, low), even));
                acc[v] = _mm256_add_epi16(acc[v], _mm256_maddubs_epi16(_mm256_and_si256(_mm256_srli_epi16(q, 4), low), odd));
            }
        }
        __m256 scale[4], zadj[4];
        group_scales_f32(blk, scale, zadj);
        q8_combine(acc, scale, zadj, d[g], sums[g], total);
    }
    for (int v = 0; v < 4; v++) _mm256_storeu_ps(y + 8 * v, total[v]);
}

/* Up to Q8_TILE_ROWS input rows against one superblock: each group's nibbles are split once into bytes
 * (1 KB, in L1) and its scales converted once; then rows go two at a time, each weight vector loaded once
 * for both (three at a time measured no faster, four slower; ~135 GMAC/s on two Zen 3 cores, 2.1 billion
 * VPMADDUBSW per second per core). */
__attribute__((target("avx2,fma,f16c"))) static void superblock_q8_rows(const uint8_t *w, const int8_t *codes,
                                                                       const float *d, const float *sums, int rows,
                                                                       int k, float *y, int n) {
    const __m256i low = _mm256_set1_epi8(0x0F);
    __m256i wb[32] __attribute__((aligned(32))); /* [2c + half][v]: the group's weights as bytes */
    __m256 total[Q8_TILE_ROWS][4] __attribute__((aligned(32)));
    int groups = k / GROUP;
    for (int r = 0; r < rows; r++)
        for (int v = 0; v < 4; v++) total[r][v] = _mm256_setzero_ps();
    for (int g = 0; g < groups; g++) {
        const uint8_t *blk = w + (size_t)g * F32_BLOCK;
        prefetch_ahead_f32(blk);
        for (int c = 0; c < 4; c++)
            for (int v = 0; v < 4; v++) {
                __m256i q = _mm256_loadu_si256((const __m256i *)(blk + 32 * (4 * c + v)));
                wb[(2 * c) * 4 + v] = _mm256_and_si256(q, low);
                wb[(2 * c + 1) * 4 + v] = _mm256_and_si256(_mm256_srli_epi16(q, 4), low);
            }
        __m256 scale[4], zadj[4];
        group_scales_f32(blk, scale, zadj);
        for (int r = 0; r < rows; r += 2) {
            int r1 = r + 1 < rows ? r + 1 : r; /* an odd last row pairs with itself (its copy is dropped) */
            const int8_t *x0 = codes + (size_t)r * k + g * GROUP, *x1 = codes + (size_t)r1 * k + g * GROUP;
            __m256i a0[4] = {_mm256_setzero_si256(), _mm256_setzero_si256(), _mm256_setzero_si256(), _mm256_setzero_si256()};
            __m256i a1[4] = {_mm256_setzero_si256(), _mm256_setzero_si256(), _mm256_setzero_si256(), _mm256_setzero_si256()};
#pragma GCC unroll 8
            for (int h = 0; h < 8; h++) {
                __m256i u = _mm256_set1_epi32(codes4(x0 + 4 * h)), t = _mm256_set1_epi32(codes4(x1 + 4 * h));
                for (int v = 0; v < 4; v++) {
                    a0[v] = _mm256_add_epi16(a0[v], _mm256_maddubs_epi16(wb[4 * h + v], u));
                    a1[v] = _mm256_add_epi16(a1[v], _mm256_maddubs_epi16(wb[4 * h + v], t));
                }
            }
            q8_combine(a0, scale, zadj, d[(size_t)r * groups + g], sums[(size_t)r * groups + g], total[r]);
            if (r1 != r) q8_combine(a1, scale, zadj, d[(size_t)r1 * groups + g], sums[(size_t)r1 * groups + g], total[r1]);
        }
    }
    for (int r = 0; r < rows; r++)
        for (int v = 0; v < 4; v++) _mm256_storeu_ps(y + (size_t)r * n + 8 * v, total[r][v]);
}

int reprise_int4_vnni_supported(void) {
    __builtin_cpu_init();
    return reprise_int4_avx2_supported() && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
           __builtin_cpu_supports("avx512vnni");
}

#define Q8_VNNI_ROWS 4 /* input rows per step of the AVX512-VNNI path (weights in 16 zmm, 8 accumulators) */

/* group_scales_f32 for 16 output rows per zmm: scale and zero - 8 scale of rows 16h..16h + 15. */
__attribute__((target("avx512f,f16c,fma"))) static inline void group_scales_f32x16(const uint8_t *blk, __m512 scale[2],
                                                                                  __m512 zadj[2]) {
    for (int h = 0; h < 2; h++) {
        scale[h] = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(blk + 512 + 32 * h)));
        __m512 zero = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(blk + 576 + 32 * h)));
        zadj[h] = _mm512_fmadd_ps(_mm512_set1_ps(-8.0f), scale[h], zero);
    }
}

/* q8_combine for 16 output rows per zmm: the same two FMAs per output row, in the same order. */
__attribute__((target("avx512f,fma"))) static inline void q8_combine_x16(const __m512i acc[2], const __m512 scale[2],
                                                                         const __m512 zadj[2], float d, float sum,
                                                                         __m512 total[2]) {
    __m512 dv = _mm512_set1_ps(d), sv = _mm512_set1_ps(sum);
    for (int h = 0; h < 2; h++) {
        total[h] = _mm512_fmadd_ps(_mm512_mul_ps(scale[h], dv), _mm512_cvtepi32_ps(acc[h]), total[h]);
        total[h] = _mm512_fmadd_ps(zadj[h], sv, total[h]);
    }
}

/* superblock_q8_rows on AVX512-VNNI: the same split bytes, 16 output rows per zmm (a block's vectors v and
 * v + 1 are adjacent: one 64-byte load), and VPDPBUSD adds four nibble x code products straight into int32
 * where VPMADDUBSW + VPADDW (+ VPMADDWD at the end) did two. The integer dots are the same exact numbers and
 * the fp32 combine the same operations per output row in the same order, so the bits equal the AVX2 paths'. */
__attribute__((target("avx2,fma,f16c,avx512f,avx512bw,avx512vnni"))) static void superblock_q8_rows_vnni(
    const uint8_t *w, const int8_t *codes, const float *d, const float *sums, int rows, int k, float *y, int n) {
    const __m512i low = _mm512_set1_epi8(0x0F);
    __m512 total[Q8_TILE_ROWS][2] __attribute__((aligned(64)));
    int groups = k / GROUP;
    for (int r = 0; r < rows; r++) total[r][0] = total[r][1] = _mm512_setzero_ps();
    for (int g = 0; g < groups; g++) {
        const uint8_t *blk = w + (size_t)g * F32_BLOCK;
        prefetch_ahead_f32(blk);
        __m512i wb[16]; /* [2c + half][h]: chunk c's low (half 0) or high (1) nibbles of rows 16h..16h + 15 */
        for (int c = 0; c < 4; c++)
            for (int h = 0; h < 2; h++) {
                __m512i q = _mm512_loadu_si512((const void *)(blk + 128 * c + 64 * h));
                wb[4 * c + h] = _mm512_and_si512(q, low);
                wb[4 * c + 2 + h] = _mm512_and_si512(_mm512_srli_epi16(q, 4), low);
            }
        __m512 scale[2], zadj[2];
        group_scales_f32x16(blk, scale, zadj);
        for (int r0 = 0; r0 < rows; r0 += Q8_VNNI_ROWS) {
            int rr[Q8_VNNI_ROWS]; /* a short last step repeats its last row (the copies are dropped) */
            for (int i = 0; i < Q8_VNNI_ROWS; i++) rr[i] = r0 + i < rows ? r0 + i : rows - 1;
            __m512i acc[Q8_VNNI_ROWS][2];
            for (int i = 0; i < Q8_VNNI_ROWS; i++) acc[i][0] = acc[i][1] = _mm512_setzero_si512();
#pragma GCC unroll 8
            for (int t = 0; t < 8; t++) { /* t = 2c + half: the codes of the even / odd inputs of chunk c */
                for (int i = 0; i < Q8_VNNI_ROWS; i++) {
                    __m512i u = _mm512_set1_epi32(codes4(codes + (size_t)rr[i] * k + g * GROUP + 4 * t));
                    acc[i][0] = _mm512_dpbusd_epi32(acc[i][0], wb[2 * t], u);
                    acc[i][1] = _mm512_dpbusd_epi32(acc[i][1], wb[2 * t + 1], u);
                }
            }
            for (int i = 0; i < Q8_VNNI_ROWS && r0 + i < rows; i++) {
                int r = r0 + i;
                q8_combine_x16(acc[i], scale, zadj, d[(size_t)r * groups + g], sums[(size_t)r * groups + g], total[r]);
            }
        }
    }
    for (int r = 0; r < rows; r++)
        for (int h = 0; h < 2; h++) _mm512_storeu_ps(y + (size_t)r * n + 16 * h, total[r][h]);
}

/* superblock_q8 (one input row) on AVX512-VNNI: the rows path's arithmetic for one row, weights split in
 * registers as they stream in. */
__attribute__((target("avx2,fma,f16c,avx512f,avx512bw,avx512vnni"))) static void superblock_q8_vnni(
    const uint8_t *w, const int8_t *codes, const float *d, const float *sums, int k, float *y) {
    const __m512i low = _mm512_set1_epi8(0x0F);
    __m512 total[2] = {_mm512_setzero_ps(), _mm512_setzero_ps()};
    int groups = k / GROUP;
    for (int g = 0; g < groups; g++) {
        const uint8_t *blk = w + (size_t)g * F32_BLOCK;
        prefetch_ahead_f32(blk);
        const int8_t *xq = codes + g * GROUP;
        __m512i acc[2] = {_mm512_setzero_si512(), _mm512_setzero_si512()};
        for (int c = 0; c < 4; c++) {
            __m512i even = _mm512_set1_epi32(codes4(xq + 8 * c)), odd = _mm512_set1_epi32(codes4(xq + 8 * c + 4));
            for (int h = 0; h < 2; h++) {
                __m512i q = _mm512_loadu_si512((const void *)(blk + 128 * c + 64 * h));
                acc[h] = _mm512_dpbusd_epi32(acc[h], _mm512_and_si512(q, low), even);
                acc[h] = _mm512_dpbusd_epi32(acc[h], _mm512_and_si512(_mm512_srli_epi16(q, 4), low), odd);
            }
        }
        __m512 scale[2], zadj[2];
        group_scales_f32x16(blk, scale, zadj);
        q8_combine_x16(acc, scale, zadj, d[g], sums[g], total);
    }
    for (int h = 0; h < 2; h++) _mm512_storeu_ps(y + 16 * h, total[h]);
}

/* The same arithmetic in plain C: the reference the tests hold the AVX2 paths to (bit for bit). */
static void superblock_q8_scalar(const uint8_t *w, const int8_t *codes, const float *d, const float *sums, int k,
                                 float *y) {
    float total[F32_ROWS] = {0};
    int groups = k / GROUP;
    for (int g = 0; g < groups; g++) {
        const uint8_t *blk = w + (size_t)g * F32_BLOCK;
        const uint32_t *words = (const uint32_t *)blk;
        const uint16_t *sz = (const uint16_t *)(blk + 512);
        for (int row = 0; row < F32_ROWS; row++) {
            int v = row / 8, l = row % 8;
            int32_t dot = 0;
            for (int c = 0; c < 4; c++)
                for (int i = 0; i < 8; i++) {
                    int q = (words[8 * (4 * c + v) + l] >> (4 * i)) & 0xF;
                    dot += q * codes[g * GROUP + 8 * c + (i & 1) * 4 + i / 2];
                }
            float scale = half_to_float(sz[row]), zero = half_to_float(sz[32 + row]);
            total[row] = fmaf(scale * d[g], (float)dot, total[row]);
            total[row] = fmaf(fmaf(-8.0f, scale, zero), sums[g], total[row]);
        }
    }
    memcpy(y, total, sizeof total);
}

/* y[m, n] = x[m, k] @ W^T as reprise_int4_gemm_f32, with each row's inputs quantized to int8 per group of 32.
 * mode: 0 the plain C reference, 1 AVX2 one row at a time, 2 AVX2 with each group's weights split once for
 * up to Q8_TILE_ROWS rows, 3 the same on AVX512-VNNI, 4 AVX512-VNNI one row at a time (the caller checks
 * reprise_int4_vnni_supported for 3 and 4); all five give the same bits. Returns 0, or -1 when out of memory. */
int reprise_int4_gemm_q8(const uint8_t *w, const float *x, float *y, int m, int n, int k, int threads, int mode) {
    int groups = k / GROUP, supers = n / F32_ROWS;
    size_t per_row = (size_t)k + 2 * (size_t)groups * sizeof(float);
    unsigned char stack[16384] __attribute__((aligned(32)));
    int small = (size_t)m * per_row <= sizeof stack;
    unsigned char *buffer = small ? stack : malloc((size_t)m * per_row);
    if (buffer == NULL) return -1;
    float *d = (float *)buffer, *sums = d + (size_t)m * groups;
    int8_t *codes = (int8_t *)(sums + (size_t)m * groups);
    void (*quantize)(const float *, int, int8_t *, float *, float *) =
        mode && reprise_int4_avx2_supported() ? quantize_row_q8_avx2 : quantize_row_q8_scalar;
#pragma omp parallel for num_threads(m > 1 ? threads : 1) schedule(static)
    for (int r = 0; r < m; r++)
        quantize(x + (size_t)r * k, k, codes + (size_t)r * k, d + (size_t)r * groups, sums + (size_t)r * groups);
#pragma omp parallel for num_threads(threads) schedule(static)
    for (int s = 0; s < supers; s++) {
        const uint8_t *ws = w + (size_t)s * groups * F32_BLOCK;
        if (mode == 2 || mode == 3) {
            void (*rows_fn)(const uint8_t *, const int8_t *, const float *, const float *, int, int, float *, int) =
                mode == 3 ? superblock_q8_rows_vnni : superblock_q8_rows;
            for (int r0 = 0; r0 < m; r0 += Q8_TILE_ROWS) {
                int rows = m - r0 < Q8_TILE_ROWS ? m - r0 : Q8_TILE_ROWS;
                rows_fn(ws, codes + (size_t)r0 * k, d + (size_t)r0 * groups, sums + (size_t)r0 * groups, rows, k,
                        y + (size_t)r0 * n + (size_t)s * F32_ROWS, n);
            }
            continue;
        }
        for (int r = 0; r < m; r++) {
            const int8_t *cr = codes + (size_t)r * k;
            float *yr = y + (size_t)r * n + (size_t)s * F32_ROWS;
            if (mode == 4)
                superblock_q8_vnni(ws, cr, d + (size_t)r * groups, sums + (size_t)r * groups, k, yr);
            else if (mode == 1)
                superblock_q8(ws, cr, d + (size_t)r * groups, sums + (size_t)r * groups, k, yr);
            else
                superblock_q8_scalar(ws, cr, d + (size_t)r * groups, sums + (size_t)r * groups, k, yr);
        }
    }
    if (!small) free(buffer);
    return 0;
}
