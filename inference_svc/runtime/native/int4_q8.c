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
#include "int4.h"

#define Q8_TILE_ROWS 64 /* input rows per pass of the several-row path (totals on the stack: 8 KB) */

/* Where code t of a group goes: per 8 inputs the even ones, then the odd ones (a dword's low and high
 * nibbles hold inputs 2j and 2j + 1, see the layout in int4_avx2.c). */
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
