/* What the int4 kernels' files share (int4_avx512bf16.c, int4_amx.c, int4_avx2.c, int4_q8.c): the two
 * weight layouts' constants, small inline helpers and the entry points one path calls in another.
 * One file per instruction-set path; all are compiled into one library (library.py). */
#ifndef REPRISE_INT4_H
#define REPRISE_INT4_H

#include <immintrin.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "bf16.h"

/* ---- the bf16-activation layout (int4_avx512bf16.c's header describes it; AMX reads it too) ---- */
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
static inline void group_sums(const uint16_t *x, int m, int k, float *sums) {
    int groups = k / GROUP;
    for (int r = 0; r < m; r++)
        for (int g = 0; g < groups; g++) {
            float s = 0.0f;
            for (int t = 0; t < GROUP; t++) s += bf16_to_float(x[(size_t)r * k + g * GROUP + t]);
            sums[r * groups + g] = s;
        }
}

__attribute__((target("avx512f,avx512bw,avx512bf16"))) static inline __m512 load_bf16x16(const uint8_t *p) {
    __m256i h = _mm256_loadu_si256((const __m256i *)p);
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
}

int reprise_int4_avx512bf16_supported(void);
int reprise_int4_gemv(const uint8_t *w, const uint16_t *x, uint16_t *y, int m, int n, int k, int threads, int fast);

/* ---- the fp32-activation layout (int4_avx2.c's header describes it; the int8 path reads it too) ---- */
#define F32_ROWS 32       /* output rows per superblock */
#define F32_BLOCK 640     /* bytes per superblock and group */
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

int reprise_int4_avx2_supported(void);
int reprise_int4_gemm_f32(const uint8_t *w, const float *x, float *y, int m, int n, int k, int threads, int mode);

#endif
