/* The small element-wise parts of a decode step, one call each instead of 3-10 torch ops.
 *
 * At 16 rows these tensors hold a few thousand floats; torch spends ~40-90 us per call on them
 * in dispatch and temporaries (RMSNorm ~40, SiLU-gate ~60, rotary embedding ~90), 30 layers
 * deep. Here each is a plain loop over memory that is already in cache.
 */
#include <float.h>
#include <math.h>
#include <stdint.h>

/* y = x / sqrt(mean(x^2) + eps) * w, rows of h. Prefill-sized inputs are split between threads. */
void rms_norm(const float *x, int64_t rows, int64_t h, const float *w, float eps, float *y)
{
#pragma omp parallel for schedule(static) if (rows >= 64)
    for (int64_t r = 0; r < rows; r++) {
        const float *xr = x + r * h;
        float *yr = y + r * h;
        float ss = 0.f;
#pragma omp simd reduction(+ : ss)
        for (int64_t i = 0; i < h; i++) ss += xr[i] * xr[i];
        const float inv = 1.f / sqrtf(ss / (float)h + eps);
#pragma omp simd
        for (int64_t i = 0; i < h; i++) yr[i] = xr[i] * inv * w[i];
    }
}

/* y[r, i] = silu(g[r, i]) * u[r, i] for rows of n, g and u rows `stride` floats apart (2n with
 * u = g + n: the halves of a fused gate/up projection; n: separate tensors).
 * exp's argument is capped at 88 (exp(88) < FLT_MAX): built with -ffast-math, 1 / (1 + inf)
 * becomes a reciprocal estimate that turns inf into NaN. */
void silu_mul(const float *gate, const float *up, int64_t rows, int64_t n, int64_t stride, float *y)
{
#pragma omp parallel for schedule(static) if (rows >= 64)
    for (int64_t r = 0; r < rows; r++) {
        const float *g = gate + r * stride, *u = up + r * stride;
        float *yr = y + r * n;
#pragma omp simd
        for (int64_t i = 0; i < n; i++) yr[i] = g[i] / (1.f + expf(fminf(-g[i], 88.f))) * u[i];
    }
}

/* Rotary embedding (rotate-half form) of one head of d floats at its row's cos/sin. */
static inline void rotate(const float *x, const float *cos, const float *sin, int64_t d, float *out)
{
    const int64_t half = d / 2;
#pragma omp simd
    for (int64_t i = 0; i < half; i++) {
        out[i] = x[i] * cos[i] - x[i + half] * sin[i];
        out[i + half] = x[i + half] * cos[i + half] + x[i] * sin[i + half];
    }
}

/* Split one step's fused q/k/v projection (rows, (h + 2 kv) d): rotate q into q_out (rows, h, d)
 * and k into the key buffer, copy v into the value buffer, both (rows, kv, T, d) at `column`.
 * cos/sin: (rows, d) for each row's position. */
void rope_store(const float *qkv, int64_t rows, int64_t h, int64_t kv, int64_t d, const float *cos, const float *sin,
                float *q_out, float *k_buf, float *v_buf, int64_t T, int64_t column)
{
    const int64_t width = (h + 2 * kv) * d;
    for (int64_t r = 0; r < rows; r++) {
        const float *src = qkv + r * width, *c = cos + r * d, *s = sin + r * d;
        for (int64_t j = 0; j < h; j++)
            rotate(src + j * d, c, s, d, q_out + (r * h + j) * d);
        for (int64_t j = 0; j < kv; j++) {
            rotate(src + (h + j) * d, c, s, d, k_buf + ((r * kv + j) * T + column) * d);
            const float *v = src + (h + kv + j) * d;
            float *dst = v_buf + ((r * kv + j) * T + column) * d;
            for (int64_t i = 0; i < d; i++) dst[i] = v[i];
        }
    }
}

/* One token per row drawn from softmax(logits / temperature) with `banned` tokens (EOS before the
 * minimum length) at probability zero, by inverse CDF at the row's uniform number u in [0, 1):
 * the first token whose cumulative weight exceeds u * total. Weights exp((l - max) / T) are
 * summed in float over chunks of 1024 and in double across chunks; the draw finds its chunk
 * from those sums, then its token inside. `scratch`: rows x V floats. */
#define CHUNK 1024
void sample_rows(const float *logits, int64_t rows, int64_t V, float inv_temperature, const int64_t *banned,
                 int64_t n_banned, const double *u, float *scratch, int64_t *out)
{
#pragma omp parallel for schedule(static)
    for (int64_t r = 0; r < rows; r++) {
        const float *l = logits + r * V;
        float *w = scratch + r * V;
        for (int64_t i = 0; i < V; i++) w[i] = l[i];
        for (int64_t b = 0; b < n_banned; b++)
            if (banned[b] >= 0 && banned[b] < V) w[banned[b]] = -FLT_MAX;
        float m = -FLT_MAX;
#pragma omp simd reduction(max : m)
        for (int64_t i = 0; i < V; i++) m = w[i] > m ? w[i] : m;
        double sums[(V + CHUNK - 1) / CHUNK], total = 0.0;
        for (int64_t c = 0; c * CHUNK < V; c++) {
            const int64_t end = (c + 1) * CHUNK < V ? (c + 1) * CHUNK : V;
            float partial = 0.f;
#pragma omp simd reduction(+ : partial)
            for (int64_t i = c * CHUNK; i < end; i++) {
                w[i] = w[i] == -FLT_MAX ? 0.f : expf((w[i] - m) * inv_temperature);
                partial += w[i];
            }
            sums[c] = partial;
            total += partial;
        }
        const double target = u[r] * total;
        double cum = 0.0;
        int64_t c = 0, pick = -1;
        while (c * CHUNK < V && cum + sums[c] <= target) cum += sums[c++];
        if (c * CHUNK >= V) c--, cum -= sums[c]; /* rounding at the very end: draw in the last chunk */
        const int64_t end = (c + 1) * CHUNK < V ? (c + 1) * CHUNK : V;
        for (int64_t i = c * CHUNK; i < end; i++) {
            if (w[i] > 0.f) {
                cum += w[i];
                pick = i;
                if (cum > target) break;
            }
        }
        out[r] = pick;
    }
}
