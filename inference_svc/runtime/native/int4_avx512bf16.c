/* Weight-only int4 products for decode rows (and, on AMX, short prefills): y[M,N] = x[M,K] @ W[N,K]^T,
 * bf16 in and out. (int4_avx2.c does the same for CPUs
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
#include "int4.h"

int reprise_int4_avx512bf16_supported(void) {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
           __builtin_cpu_supports("avx512bf16");
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
