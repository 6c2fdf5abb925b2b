/* ---- several rows at once on AMX (Sapphire Rapids and later Xeons) ----
 * The same nibble -> (128 + q) bf16 conversion, written as one 16-row x 32-input B tile (VNNI pairs:
 * tile row p = the converted vector of pair p, int4_avx512bf16.c's layout already is), multiplied by TDPBF16PS
 * against up to 16 input rows at once. The conversion is paid once for all rows; the per-group
 * scale/zero step runs on each 16 x 16 fp32 result. Used for a few to a few dozen rows (a short
 * prefill chunk, a small sentiment batch), where the dense bf16 copy is bound by reading 4x the bytes. */
#include <sys/syscall.h>
#include <unistd.h>

#include "int4.h"

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

/* Re-lay torch's CPU int4 weights out for the kernel (the layout at the top of int4_avx512bf16.c): q4 is
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
