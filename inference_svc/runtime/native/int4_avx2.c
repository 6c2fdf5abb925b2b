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
#include "int4.h"

#define F32_TILE_ROWS 48  /* input rows per pass of the many-row path (its totals live on the stack) */
/* ... and fewer for wide inputs, so that a pass's input rows stay in L2 while every superblock reads them
 * (down_proj's 4,864 inputs: 48 rows are 934 KB). */
#define F32_TILE_INPUT_BYTES (256 * 1024)


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
