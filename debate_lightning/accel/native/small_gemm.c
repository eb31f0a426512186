/* y = x W^T + b for the few rows of a decode step (fp32, AVX2/FMA).
 *
 * At 16 rows a decode step's linears stream the weights from memory while doing 32 flops per
 * weight: both the memory (~19 GB/s here) and the FMA units are near their limits, so the kernel
 * must keep both busy at once. The rows go across the vector lanes: x is transposed per call into
 * xT (K, 8 or 16 lanes, zero padded), and the weight is packed once into blocks of 6 output
 * columns, (ceil(N/6), K, 6). For each k, one or two registers of xT meet 6 broadcast weights in
 * 12 accumulators, so every weight is loaded exactly once, in one sequential stream per thread,
 * while the FMAs run: no pass re-reads a strip from cache and the memory never idles between passes
 * (the earlier 6-row x 16-column register blocks did both, ~11 GB/s against ~14.5 now at 16 rows).
 * More than 16 rows go in groups of 16 (the weight is streamed once per group). Column blocks are
 * split between threads.
 */
#include <immintrin.h>
#include <stdint.h>
#include <stdlib.h>

#define NB 6           /* output columns per block: 12 accumulators at 16 lanes */
#define LANES 16       /* rows per group: two 8-float registers */
#define PREFETCH_K 64  /* k rows of a block ahead (1.5 KB) */

/* 16 lanes: y[rows, block's columns] from xT (K, 16). */
static inline void block16(const float *xT, int64_t K, const float *w, float out[NB][LANES])
{
    __m256 c[NB][2];
    for (int j = 0; j < NB; j++)
        c[j][0] = c[j][1] = _mm256_setzero_ps();
    for (int64_t k = 0; k < K; k++) {
        if ((k & 1) == 0) /* a block row is 24 bytes: one line per ~2.7 k */
            _mm_prefetch((const char *)(w + (k + PREFETCH_K) * NB), _MM_HINT_T0);
        const __m256 x0 = _mm256_load_ps(xT + k * LANES), x1 = _mm256_load_ps(xT + k * LANES + 8);
        for (int j = 0; j < NB; j++) {
            const __m256 a = _mm256_broadcast_ss(w + k * NB + j);
            c[j][0] = _mm256_fmadd_ps(a, x0, c[j][0]);
            c[j][1] = _mm256_fmadd_ps(a, x1, c[j][1]);
        }
    }
    for (int j = 0; j < NB; j++) {
        _mm256_store_ps(out[j], c[j][0]);
        _mm256_store_ps(out[j] + 8, c[j][1]);
    }
}

/* 8 lanes (at most 8 rows): two column blocks at once, so 12 accumulators still hide the FMA latency. */
static inline void block8x2(const float *xT, int64_t K, const float *w, const float *w2, float out[2 * NB][LANES])
{
    __m256 c[2 * NB];
    for (int j = 0; j < 2 * NB; j++)
        c[j] = _mm256_setzero_ps();
    for (int64_t k = 0; k < K; k++) {
        if ((k & 1) == 0) {
            _mm_prefetch((const char *)(w + (k + PREFETCH_K) * NB), _MM_HINT_T0);
            _mm_prefetch((const char *)(w2 + (k + PREFETCH_K) * NB), _MM_HINT_T0);
        }
        const __m256 x0 = _mm256_load_ps(xT + k * 8);
        for (int j = 0; j < NB; j++) {
            c[j] = _mm256_fmadd_ps(_mm256_broadcast_ss(w + k * NB + j), x0, c[j]);
            c[NB + j] = _mm256_fmadd_ps(_mm256_broadcast_ss(w2 + k * NB + j), x0, c[NB + j]);
        }
    }
    for (int j = 0; j < 2 * NB; j++)
        _mm256_store_ps(out[j], c[j]);
}

/* out[j][r] (+ bias) into y rows [0, rows) of columns [n0, n0 + NB) clipped to N. */
static inline void scatter(float out[][LANES], int64_t rows, int64_t n0, int64_t N, const float *bias, float *y)
{
    const int64_t width = N - n0 < NB ? N - n0 : NB;
    for (int64_t r = 0; r < rows; r++)
        for (int64_t j = 0; j < width; j++)
            y[r * N + n0 + j] = out[j][r] + (bias ? bias[n0 + j] : 0.f);
}

/* x (M, K) row-major, packed (ceil(N/6), K, 6), bias (N) or NULL, y (M, N) row-major.
 * Returns -1 if the transposed input cannot be allocated, else 0. */
int small_gemm(const float *x, int64_t M, int64_t K, const float *packed, int64_t N, const float *bias, float *y)
{
    const int64_t blocks = (N + NB - 1) / NB, groups = (M + LANES - 1) / LANES;
    float *xT = aligned_alloc(32, (size_t)(groups * K * LANES * sizeof(float)));
    if (xT == NULL)
        return -1;
    for (int64_t g = 0; g < groups; g++) {
        const int64_t m0 = g * LANES, rows = M - m0 < LANES ? M - m0 : LANES, lanes = rows <= 8 ? 8 : LANES;
        float *t = xT + g * K * LANES;
        for (int64_t k = 0; k < K; k++)
            for (int64_t r = 0; r < lanes; r++)
                t[k * lanes + r] = r < rows ? x[(m0 + r) * K + k] : 0.f;
    }
#pragma omp parallel
    {
        float out[2 * NB][LANES] __attribute__((aligned(32)));
        for (int64_t g = 0; g < groups; g++) {
            const int64_t m0 = g * LANES, rows = M - m0 < LANES ? M - m0 : LANES;
            const float *t = xT + g * K * LANES;
            if (rows > 8) {
#pragma omp for schedule(static) nowait
                for (int64_t b = 0; b < blocks; b++) {
                    block16(t, K, packed + b * K * NB, out);
                    scatter(out, rows, b * NB, N, bias, y + m0 * N);
                }
            } else {
#pragma omp for schedule(static) nowait
                for (int64_t p = 0; p < (blocks + 1) / 2; p++) {
                    const int64_t b = 2 * p, two = b + 1 < blocks;
                    const float *w = packed + b * K * NB;
                    block8x2(t, K, w, two ? w + K * NB : w, out);
                    scatter(out, rows, b * NB, N, bias, y + m0 * N);
                    if (two)
                        scatter(out + NB, rows, (b + 1) * NB, N, bias, y + m0 * N);
                }
            }
        }
    }
    free(xT);
    return 0;
}
