/* Weight-only int4 matrix-vector product for decode: y[M,N] = x[M,K] @ W[N,K]^T, bf16 in and out.
 *
 * Built and loaded by inference_svc/core/native/__init__.py (gcc -O3 -fopenmp, ctypes). The weights
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
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

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

static inline float bf16_to_float(uint16_t v) {
    uint32_t bits = (uint32_t)v << 16;
    float f;
    memcpy(&f, &bits, sizeof f);
    return f;
}

static inline uint16_t float_to_bf16(float f) { /* round to nearest even, as torch does (no NaNs here) */
    uint32_t bits;
    memcpy(&bits, &f, sizeof bits);
    bits += 0x7FFF + ((bits >> 16) & 1);
    return (uint16_t)(bits >> 16);
}

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

/* Re-lay torch's CPU int4 weights out for the kernel (the layout at the top of this file): q4 is
 * _convert_weight_to_int4pack_for_cpu's [n/64][k][32] bytes (byte j of (s, col): row 64s + j in the
 * low nibble, row 64s + 32 + j in the high one), sz its [k/32][n][2] bf16 scales and zeros, out
 * [n/64][k/32][4][320] bytes. Python's Int4Kernel.pack_reference does the same in torch (tests). */
void reprise_int4_pack(const uint8_t *q4, const uint16_t *sz, uint8_t *out, int n, int k, int threads) {
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
                            int row = 16 * b + r; /* within the superblock */
                            uint16_t word = 0;
                            for (int i = 0; i < 4; i++) {
                                size_t col = (size_t)g * GROUP + 2 * (4 * j + i) + h;
                                uint8_t byte = q4[((size_t)s * k + col) * 32 + row % 32];
                                word |= (uint16_t)((row < 32 ? byte & 0xF : byte >> 4) << (4 * i));
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

