/* Causal attention of many query tokens (prefill, judging) for grouped-query models on AVX2/FMA
 * CPUs (fp32), lower-right aligned: the L queries are the last L of S positions, query i sees keys
 * 0 .. S - L + i, and, with a key mask, only the keys it marks (left padding, gaps).
 *
 * PyTorch's CPU flash attention computes every key block up to the last query of a 64-query
 * block against 512-key blocks: at 500-700 tokens that is almost the whole square, and a mask
 * (padding, or a cached prefix: lower-right) makes it the whole square. Here keys are processed
 * up to each tile's own last key, so causal attention costs about half the square.
 *
 * A tile is up to 6 (query, head) rows sharing one kv head (3 heads of a query at once for
 * SmolLM2's 9 heads on 3 kv heads: their keys and values are read once for all three). Per block
 * of 64 keys: scores in 6x16 register blocks (lanes across keys, so the keys are transposed once
 * per call into (d, S)), an online softmax (running max and sum, exact), then the weighted values
 * in 6x16 register blocks (lanes across d). Tiles are spread over threads, the longest first.
 *
 * Layouts (fp32, d contiguous; other strides in floats):
 *   q     (B, H, L, d)     strides qsb, qsh, qsl   (rotary embedding applied)
 *   k, v  (B, KVH, S, d)   strides ksb, ksh, kss / vsb, vsh, vss   (H = g * KVH)
 *   mask  (B, S) bytes, nonzero = key visible; or NULL
 *   out   (B, L, H, d)     contiguous
 *   kt    B * KVH * d * ceil16(S) floats of scratch
 */
#include <immintrin.h>
#include <math.h>
#include <stdint.h>
#include <float.h>
#include <string.h>

#define ROWS 6      /* (query, head) rows per tile: 12 accumulators of 16 lanes */
#define KEYS 64     /* keys per softmax block */
#define MAX_D 256
#define MASKED (-FLT_MAX)

static inline int64_t ceil16(int64_t n) { return (n + 15) & ~(int64_t)15; }

/* s[r][0..16) = q_r . kt[:, j..j+16) for ROWS rows (qt: ROWS x d, rows past the tile are zero). */
static inline void score_block(const float *qt, const float *kt, int64_t stride, int64_t d, float *s)
{
    __m256 a[ROWS][2];
    for (int r = 0; r < ROWS; r++) a[r][0] = a[r][1] = _mm256_setzero_ps();
    for (int64_t e = 0; e < d; e++) {
        const __m256 k0 = _mm256_loadu_ps(kt + e * stride), k1 = _mm256_loadu_ps(kt + e * stride + 8);
        for (int r = 0; r < ROWS; r++) {
            const __m256 x = _mm256_broadcast_ss(qt + r * d + e);
            a[r][0] = _mm256_fmadd_ps(x, k0, a[r][0]);
            a[r][1] = _mm256_fmadd_ps(x, k1, a[r][1]);
        }
    }
    for (int r = 0; r < ROWS; r++) {
        _mm256_storeu_ps(s + r * KEYS, a[r][0]);
        _mm256_storeu_ps(s + r * KEYS + 8, a[r][1]);
    }
}

/* acc[r][e0..e0+16) += sum_j p[r][j] * v_j[e0..e0+16) over n value rows. */
static inline void value_block(const float *p, const float *v, int64_t vss, int64_t n, int64_t e0, float *acc, int64_t d)
{
    __m256 a[ROWS][2];
    for (int r = 0; r < ROWS; r++) {
        a[r][0] = _mm256_loadu_ps(acc + r * d + e0);
        a[r][1] = _mm256_loadu_ps(acc + r * d + e0 + 8);
    }
    for (int64_t j = 0; j < n; j++) {
        const float *vj = v + j * vss + e0;
        const __m256 v0 = _mm256_loadu_ps(vj), v1 = _mm256_loadu_ps(vj + 8);
        for (int r = 0; r < ROWS; r++) {
            const __m256 x = _mm256_broadcast_ss(p + r * KEYS + j);
            a[r][0] = _mm256_fmadd_ps(x, v0, a[r][0]);
            a[r][1] = _mm256_fmadd_ps(x, v1, a[r][1]);
        }
    }
    for (int r = 0; r < ROWS; r++) {
        _mm256_storeu_ps(acc + r * d + e0, a[r][0]);
        _mm256_storeu_ps(acc + r * d + e0 + 8, a[r][1]);
    }
}

/* dst[e * ds + j] = src[j * ss + e] for an 8x8 block. */
static inline void transpose8(const float *src, int64_t ss, float *dst, int64_t ds)
{
    __m256 r[8], t[8];
    for (int i = 0; i < 8; i++) r[i] = _mm256_loadu_ps(src + i * ss);
    for (int i = 0; i < 8; i += 2) {
        t[i] = _mm256_unpacklo_ps(r[i], r[i + 1]);
        t[i + 1] = _mm256_unpackhi_ps(r[i], r[i + 1]);
    }
    for (int i = 0; i < 8; i += 4) {
        r[i] = _mm256_shuffle_ps(t[i], t[i + 2], 0x44);
        r[i + 1] = _mm256_shuffle_ps(t[i], t[i + 2], 0xEE);
        r[i + 2] = _mm256_shuffle_ps(t[i + 1], t[i + 3], 0x44);
        r[i + 3] = _mm256_shuffle_ps(t[i + 1], t[i + 3], 0xEE);
    }
    for (int i = 0; i < 4; i++) {
        _mm256_storeu_ps(dst + i * ds, _mm256_permute2f128_ps(r[i], r[i + 4], 0x20));
        _mm256_storeu_ps(dst + (i + 4) * ds, _mm256_permute2f128_ps(r[i], r[i + 4], 0x31));
    }
}

/* Returns 0, or -1 for shapes this kernel does not handle (d not a multiple of 16 or > 256,
 * H not a multiple of KVH). */
int causal_attention(const float *q, int64_t qsb, int64_t qsh, int64_t qsl,
                     const float *k, int64_t ksb, int64_t ksh, int64_t kss,
                     const float *v, int64_t vsb, int64_t vsh, int64_t vss,
                     const uint8_t *mask, int64_t B, int64_t H, int64_t KVH, int64_t L, int64_t S, int64_t d,
                     float scale, float *out, float *kt)
{
    if (d % 16 != 0 || d > MAX_D || KVH < 1 || H % KVH != 0 || L > S)
        return -1;
    const int64_t g = H / KVH, SP = ceil16(S);
    /* A tile: `tq` queries x `hc` heads of one kv head (tq * hc <= ROWS). */
    const int64_t hc = g < ROWS ? g : ROWS, tq = ROWS / hc, chunks = (g + hc - 1) / hc;
    const int64_t qblocks = (L + tq - 1) / tq, per_head = qblocks * chunks, tiles = B * KVH * per_head;
    const int64_t offset = S - L;

#pragma omp parallel
    {
#pragma omp for schedule(static)
        for (int64_t bh = 0; bh < B * KVH; bh++) {
            const float *kb = k + (bh / KVH) * ksb + (bh % KVH) * ksh;
            float *t = kt + bh * d * SP;
            int64_t j = 0;
            for (; j + 8 <= S; j += 8)
                for (int64_t e = 0; e < d; e += 8) transpose8(kb + j * kss + e, kss, t + e * SP + j, SP);
            for (; j < SP; j++)
                for (int64_t e = 0; e < d; e++) t[e * SP + j] = j < S ? kb[j * kss + e] : 0.f;
        }
#pragma omp for schedule(dynamic, 1)
        for (int64_t w = 0; w < tiles; w++) {
            /* Longest tiles (last queries) first: the dynamic schedule then ends evenly. */
            const int64_t bh = w / per_head, rest = w % per_head;
            const int64_t qb = qblocks - 1 - rest / chunks, c = rest % chunks;
            const int64_t b = bh / KVH, h = bh % KVH;
            const float *kth = kt + bh * d * SP;
            const float *vh = v + b * vsb + h * vsh;
            const uint8_t *mb = mask ? mask + b * S : NULL;

            float qt[ROWS * MAX_D] __attribute__((aligned(32)));
            float acc[ROWS * MAX_D] __attribute__((aligned(32)));
            float s[ROWS * KEYS] __attribute__((aligned(32)));
            float m[ROWS], l[ROWS];
            int64_t lim[ROWS], qi[ROWS], head[ROWS];
            int rows = 0;
            for (int64_t i = qb * tq; i < qb * tq + tq && i < L; i++)
                for (int64_t hh = c * hc; hh < c * hc + hc && hh < g; hh++) {
                    qi[rows] = i;
                    head[rows] = h * g + hh;
                    lim[rows] = offset + i;
                    rows++;
                }
            memset(qt, 0, sizeof(float) * ROWS * d);
            memset(acc, 0, sizeof(float) * ROWS * d);
            for (int r = 0; r < rows; r++) {
                const float *qr = q + b * qsb + head[r] * qsh + qi[r] * qsl;
                for (int64_t e = 0; e < d; e++) qt[r * d + e] = qr[e] * scale;
                m[r] = MASKED;
                l[r] = 0.f;
            }
            const int64_t last = lim[rows - 1]; /* rows go query-major */
            for (int64_t j0 = 0; j0 <= last; j0 += KEYS) {
                const int64_t n = last + 1 - j0 < KEYS ? last + 1 - j0 : KEYS;
                for (int64_t jb = 0; jb < n; jb += 16)
                    score_block(qt, kth + j0 + jb, SP, d, s + jb);
                int hidden[KEYS], nh = 0; /* keys of this block the mask hides */
                if (mb)
                    for (int64_t j = 0; j < n; j++)
                        if (!mb[j0 + j]) hidden[nh++] = (int)j;
                for (int r = 0; r < rows; r++) {
                    float *sr = s + r * KEYS;
                    for (int64_t j = lim[r] + 1 - j0 > 0 ? lim[r] + 1 - j0 : 0; j < n; j++) sr[j] = MASKED;
                    for (int x = 0; x < nh; x++) sr[hidden[x]] = MASKED;
                    float bm = MASKED;
                    for (int64_t j = 0; j < n; j++) bm = sr[j] > bm ? sr[j] : bm;
                    if (bm == MASKED) { /* nothing visible in this block */
                        for (int64_t j = 0; j < n; j++) sr[j] = 0.f;
                        continue;
                    }
                    const float mn = m[r] > bm ? m[r] : bm;
                    const float factor = m[r] == MASKED ? 0.f : expf(m[r] - mn);
                    float total = 0.f;
#pragma omp simd reduction(+ : total)
                    for (int64_t j = 0; j < n; j++) {
                        const float p = sr[j] == MASKED ? 0.f : expf(sr[j] - mn);
                        sr[j] = p;
                        total += p;
                    }
                    l[r] = l[r] * factor + total;
                    m[r] = mn;
                    if (factor != 1.f)
                        for (int64_t e = 0; e < d; e++) acc[r * d + e] *= factor;
                }
                for (int r = rows; r < ROWS; r++)
                    for (int64_t j = 0; j < n; j++) s[r * KEYS + j] = 0.f;
                for (int64_t e0 = 0; e0 < d; e0 += 16)
                    value_block(s, vh + j0 * vss, vss, n, e0, acc, d);
            }
            for (int r = 0; r < rows; r++) {
                float *o = out + ((b * L + qi[r]) * H + head[r]) * d;
                const float inv = l[r] > 0.f ? 1.f / l[r] : 0.f;
                for (int64_t e = 0; e < d; e++) o[e] = acc[r * d + e] * inv;
            }
        }
    }
    return 0;
}
