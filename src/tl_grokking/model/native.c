/* Compiled CPU kernels of the fast path (tl_grokking.model.native compiles and loads this file).
 *
 * Each kernel is one pass over the batch that replaces several torch operations, each of which
 * would read and write a whole [batch, width] buffer: the step is bound by memory traffic, not
 * arithmetic. Every result is independent of the number of threads (work is split into
 * ranges of rows whose results do not interact, and the one reduction over the batch, the column
 * sums, is taken in fixed blocks of samples), so the same inputs always give the same bits.
 *
 * Threads: OpenMP, on the runtime torch itself uses (native.py links this file against the
 * libgomp torch has loaded and refuses to use it otherwise), so the kernels and torch's own
 * operations share one pool of threads instead of contending for the cores.
 *
 * Layouts (row-major, contiguous; see tl_grokking.model.fastforward.TokenGroups):
 *   K = 2 * H table rows per sample, entry k = 2 * head + position (positions 0 and 1);
 *   rows[b, k]       row of table_M / table_L that sample b reads at entry k;
 *   token_rows[b, j] row of the score table of sample b's token at position j
 *                    (j * V + token); the score table's last row (2 * V) is the final token's;
 *   order, offsets   the entries b * K + k grouped by table row (the transposed layout).
 */
#include <math.h>
#include <omp.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define TLG_ABI_VERSION 2

/* 16 floats: one AVX-512 register (two AVX2 ones, four NEON ones: the compiler splits it). */
typedef float vf __attribute__((vector_size(64)));
typedef int32_t vi __attribute__((vector_size(64)));
typedef float vf_unaligned __attribute__((vector_size(64), aligned(4), may_alias));
#define VL 16

static inline vf vload(const float *p) { return *(const vf_unaligned *)p; }
static inline void vstore(float *p, vf v) { *(vf_unaligned *)p = v; }
static inline vf vsplat(float x) { return (vf){0} + x; }
/* v where keep is true (all bits set), else +0 */
static inline vf vselect(vi keep, vf v) { return (vf)((vi)v & keep); }
static inline float vsum(vf v) {
    float s = 0.0f;
    for (int i = 0; i < VL; ++i) s += v[i];
    return s;
}

int tlg_abi_version(void) { return TLG_ABI_VERSION; }

typedef void (*range_fn)(const void *ctx, int64_t lo, int64_t hi);

/* fn over [0, n), split into nthreads contiguous ranges on torch's OpenMP pool. */
static void parallel_for(int nthreads, int64_t n, range_fn fn, const void *ctx) {
    if (nthreads > n) nthreads = (int)n;
    if (nthreads <= 1) {
        fn(ctx, 0, n);
        return;
    }
#pragma omp parallel num_threads(nthreads)
    {
        int64_t t = omp_get_num_threads(), i = omp_get_thread_num();
        int64_t chunk = (n + t - 1) / t, lo = i * chunk, hi = lo + chunk < n ? lo + chunk : n;
        if (lo < hi) fn(ctx, lo, hi);
    }
}

/* ------------------------------------------------------------------------------------------ */
/* Cross-entropy in float64: loss of every row, and its gradient (softmax - onehot) * scale.  */

/* exp(x) in float64 for x <= 0: Cody-Waite reduction x = n ln2 + r, |r| <= ln2 / 2, and the
   Taylor polynomial of degree 13 (truncation below 1e-17 relative); 0 below -708, where the
   value would be subnormal (it cannot change a sum that holds exp(0) = 1, and the gradient it
   gives is flushed to zero in float32 anyway). Within 2 ulp of the correctly rounded value. */
static inline double exp_nonpositive(double x) {
    const double log2e = 1.4426950408889634, ln2_hi = 6.93147180369123816490e-01,
                 ln2_lo = 1.90821492927058770002e-10;
    double xc = x < -708.0 ? -708.0 : x;
    double n = floor(xc * log2e + 0.5);
    double r = (xc - n * ln2_hi) - n * ln2_lo;
    double p = 1.0 / 6227020800.0;
    p = p * r + 1.0 / 479001600.0;
    p = p * r + 1.0 / 39916800.0;
    p = p * r + 1.0 / 3628800.0;
    p = p * r + 1.0 / 362880.0;
    p = p * r + 1.0 / 40320.0;
    p = p * r + 1.0 / 5040.0;
    p = p * r + 1.0 / 720.0;
    p = p * r + 1.0 / 120.0;
    p = p * r + 1.0 / 24.0;
    p = p * r + 1.0 / 6.0;
    p = p * r + 0.5;
    p = p * r + 1.0;
    p = p * r + 1.0;
    int64_t bits = ((int64_t)n + 1023) << 52;
    double scale;
    memcpy(&scale, &bits, sizeof scale);
    return x < -708.0 ? 0.0 : p * scale;
}

typedef struct {
    const float *logits;
    const int64_t *labels;
    int64_t V;
    double scale;
    float tiny;
    float *grad;
    double *row_loss;
} ce_ctx;

enum { CE_STACK = 2048 }; /* widths up to this keep their exponentials on the stack */

static void ce_range(const void *vctx, int64_t lo, int64_t hi) {
    const ce_ctx *c = vctx;
    int64_t V = c->V;
    double stack[CE_STACK];
    double *eb = V <= CE_STACK ? stack : malloc(sizeof(double) * V);
    for (int64_t b = lo; b < hi; ++b) {
        const float *x = c->logits + b * V;
        if (!eb) { /* out of memory: the caller recomputes the batch with torch */
            c->row_loss[b] = NAN;
            continue;
        }
        float m = x[0];
        int finite = 1;
        for (int64_t j = 0; j < V; ++j) {
            finite &= isfinite(x[j]) != 0;
            m = x[j] > m ? x[j] : m;
        }
        int64_t y = c->labels[b];
        if (!finite || y < 0 || y >= V) { /* the caller recomputes such a batch with torch */
            c->row_loss[b] = NAN;
            continue;
        }
        double md = (double)m, s = 0.0;
#pragma omp simd reduction(+ : s)
        for (int64_t j = 0; j < V; ++j) {
            eb[j] = exp_nonpositive((double)x[j] - md);
            s += eb[j];
        }
        c->row_loss[b] = log(s) - ((double)x[y] - md);
        if (c->grad) {
            float *g = c->grad + b * V;
            double sc = c->scale;
            float tiny = c->tiny;
#pragma omp simd
            for (int64_t j = 0; j < V; ++j) {
                float f = (float)((eb[j] / s - (j == y ? 1.0 : 0.0)) * sc);
                g[j] = fabsf(f) < tiny ? 0.0f : f;
            }
        }
    }
    if (eb != stack) free(eb);
}

/* Row losses log(sum_j exp x_j) - x_y in float64 and, if grad is not NULL, the float32
   gradient (softmax(x) - onehot(y)) * scale with entries below tiny in magnitude set to zero.
   A row with a non-finite logit or a label outside [0, V) gets a NaN loss. */
int tlg_cross_entropy64(const float *logits, const int64_t *labels, int64_t batch, int64_t V,
                        double scale, float tiny, float *grad, double *row_loss, int nthreads) {
    ce_ctx c = {logits, labels, V, scale, tiny, grad, row_loss};
    parallel_for(nthreads, batch, ce_range, &c);
    return 0;
}

/* ------------------------------------------------------------------------------------------ */
/* Read-out forward: the attention pattern, the mixed table rows, the ReLU.                    */

typedef struct {
    const float *scores, *table_M, *table_L, *c;
    const int64_t *rows, *token_rows;
    int64_t H, V, D, L;
    float rate;
    float *post, *direct, *pattern, *soft;
} fwd_ctx;

/* out[d] = sum_k w[k] * t[k][d] (+ bias[d], then ReLU if relu) for d < n */
static inline void mix_rows(float *out, const float *const *t, const float *w, int64_t K,
                            int64_t n, const float *bias, int relu) {
    int64_t d = 0;
    for (; d + VL <= n; d += VL) {
        vf a = vsplat(0.0f);
        for (int64_t k = 0; k < K; ++k) a += vsplat(w[k]) * vload(t[k] + d);
        a += vload(bias + d);
        if (relu) a = vselect(~(a < 0.0f), a); /* NaN stays NaN, as in torch */
        vstore(out + d, a);
    }
    for (; d < n; ++d) {
        float a = 0.0f;
        for (int64_t k = 0; k < K; ++k) a += w[k] * t[k][d];
        a += bias[d];
        out[d] = relu && a < 0.0f ? 0.0f : a;
    }
}

static void fwd_range(const void *vctx, int64_t lo, int64_t hi) {
    const fwd_ctx *c = vctx;
    int64_t H = c->H, K = 2 * c->H, D = c->D, L = c->L;
    const float *s_eq = c->scores + 2 * c->V * H;
    float rate = c->rate, uniform = (1.0f - c->rate) / 3.0f;
    const float *tm[K], *tl[K];
    for (int64_t b = lo; b < hi; ++b) {
        const float *s0 = c->scores + c->token_rows[2 * b] * H;
        const float *s1 = c->scores + c->token_rows[2 * b + 1] * H;
        float *w = c->pattern + b * K, *soft = c->soft + b * K;
        for (int64_t h = 0; h < H; ++h) { /* softmax over the three positions, per head */
            float m = s0[h] > s1[h] ? s0[h] : s1[h];
            m = s_eq[h] > m ? s_eq[h] : m;
            float e0 = expf(s0[h] - m), e1 = expf(s1[h] - m), e2 = expf(s_eq[h] - m);
            float sum = e0 + e1 + e2;
            soft[2 * h] = e0 / sum;
            soft[2 * h + 1] = e1 / sum;
            for (int j = 0; j < 2; ++j)
                w[2 * h + j] = rate >= 1.0f ? soft[2 * h + j] : rate * soft[2 * h + j] + uniform;
        }
        const int64_t *r = c->rows + b * K;
        for (int64_t k = 0; k < K; ++k) {
            tm[k] = c->table_M + r[k] * D;
            tl[k] = c->table_L + r[k] * L;
        }
        mix_rows(c->post + b * D, tm, w, K, D, c->c, 1);
        mix_rows(c->direct + b * L, tl, w, K, L, c->c + D, 0);
    }
}

/* post = relu(c_M + sum_k P[b, k] table_M[rows[b, k]]), direct = c_L + sum_k P table_L[...],
   with P the pattern (softmax of the scores, mixed with uniform attention at rate); also writes
   P (pattern) and the softmax itself (soft), [batch, K] each. */
int tlg_readout_forward(const float *scores, const float *table_M, const float *table_L,
                        const float *c, const int64_t *rows, const int64_t *token_rows,
                        int64_t batch, int64_t H, int64_t V, int64_t D, int64_t L, float rate,
                        float *post, float *direct, float *pattern, float *soft, int nthreads) {
    fwd_ctx ctx = {scores, table_M, table_L, c,      rows,    token_rows, H,    V,
                   D,      L,       rate,    post,   direct,  pattern,    soft};
    parallel_for(nthreads, batch, fwd_range, &ctx);
    return 0;
}

/* ------------------------------------------------------------------------------------------ */
/* Read-out backward, pass 1 (per sample): ReLU mask, pattern gradient, softmax backward,      */
/* column sums.                                                                                */

typedef struct {
    float *d_pre;
    const float *post, *d_logits, *table_M, *table_L, *soft;
    const int64_t *rows;
    int64_t batch, H, D, L, block;
    float rate;
    float *d_own, *colsum;
} bw1_ctx;

/* out[k] = sum_d x[d] * t[k][d] for k < K, four rows at a time */
static inline void dots(float *out, const float *x, const float *const *t, int64_t K, int64_t n) {
    int64_t k = 0;
    for (; k + 4 <= K; k += 4) {
        vf a0 = vsplat(0.0f), a1 = a0, a2 = a0, a3 = a0;
        int64_t d = 0;
        for (; d + VL <= n; d += VL) {
            vf v = vload(x + d);
            a0 += v * vload(t[k] + d);
            a1 += v * vload(t[k + 1] + d);
            a2 += v * vload(t[k + 2] + d);
            a3 += v * vload(t[k + 3] + d);
        }
        float s0 = vsum(a0), s1 = vsum(a1), s2 = vsum(a2), s3 = vsum(a3);
        for (; d < n; ++d) {
            s0 += x[d] * t[k][d];
            s1 += x[d] * t[k + 1][d];
            s2 += x[d] * t[k + 2][d];
            s3 += x[d] * t[k + 3][d];
        }
        out[k] = s0, out[k + 1] = s1, out[k + 2] = s2, out[k + 3] = s3;
    }
    for (; k < K; ++k) {
        vf a = vsplat(0.0f);
        int64_t d = 0;
        for (; d + VL <= n; d += VL) a += vload(x + d) * vload(t[k] + d);
        float s = vsum(a);
        for (; d < n; ++d) s += x[d] * t[k][d];
        out[k] = s;
    }
}

static void bw1_range(const void *vctx, int64_t lo, int64_t hi) {
    const bw1_ctx *c = vctx;
    int64_t H = c->H, K = 2 * c->H, D = c->D, L = c->L;
    const float *tm[K], *tl[K];
    float gm[K], gl[K];
    for (int64_t blk = lo; blk < hi; ++blk) {
        float *cs = c->colsum + blk * (D + L);
        memset(cs, 0, sizeof(float) * (D + L));
        int64_t b1 = (blk + 1) * c->block < c->batch ? (blk + 1) * c->block : c->batch;
        for (int64_t b = blk * c->block; b < b1; ++b) {
            float *dp = c->d_pre + b * D;
            const float *po = c->post + b * D, *dl = c->d_logits + b * L;
            int64_t d = 0;
            for (; d + VL <= D; d += VL) { /* ReLU's backward, in place */
                vf v = vload(dp + d);
                v = vselect(~(vload(po + d) <= 0.0f), v); /* as threshold_backward */
                vstore(dp + d, v);
                vstore(cs + d, vload(cs + d) + v);
            }
            for (; d < D; ++d) {
                dp[d] = po[d] <= 0.0f ? 0.0f : dp[d];
                cs[d] += dp[d];
            }
            for (d = 0; d < L; ++d) cs[D + d] += dl[d];
            const int64_t *r = c->rows + b * K;
            for (int64_t k = 0; k < K; ++k) {
                tm[k] = c->table_M + r[k] * D;
                tl[k] = c->table_L + r[k] * L;
            }
            dots(gm, dp, tm, K, D);
            dots(gl, dl, tl, K, L);
            const float *soft = c->soft + b * K;
            float *d_own = c->d_own + b * K;
            for (int64_t h = 0; h < H; ++h) { /* dS_j = P_j (g_j - sum_k P_k g_k) */
                float g0 = (gm[2 * h] + gl[2 * h]) * c->rate;
                float g1 = (gm[2 * h + 1] + gl[2 * h + 1]) * c->rate;
                float p0 = soft[2 * h], p1 = soft[2 * h + 1];
                float dot = p0 * g0 + p1 * g1;
                d_own[2 * h] = (g0 - dot) * p0;
                d_own[2 * h + 1] = (g1 - dot) * p1;
            }
        }
    }
}

/* d_pre <- d_pre * (post > 0) in place; d_own[b, k]: the gradient of the attention score of
   entry k of sample b (through the softmax, from the pattern's gradient
   rate * (d_pre . table_M[row] + d_logits . table_L[row])); colsum[i]: the column sums of
   [d_pre | d_logits] over samples [i * block, (i + 1) * block). */
int tlg_readout_backward_samples(float *d_pre, const float *post, const float *d_logits,
                                 const float *table_M, const float *table_L, const float *soft,
                                 const int64_t *rows, int64_t batch, int64_t H, int64_t D,
                                 int64_t L, int64_t block, float rate, float *d_own,
                                 float *colsum, int nthreads) {
    bw1_ctx c = {d_pre, post, d_logits, table_M, table_L, soft, rows, batch, H, D, L, block,
                 rate,  d_own, colsum};
    parallel_for(nthreads, (batch + block - 1) / block, bw1_range, &c);
    return 0;
}

/* ------------------------------------------------------------------------------------------ */
/* Read-out backward, pass 2 (per table row): the table gradients and the score gradients.    */
/* The rows of one (position, token) pair, one per head, are read by the same samples (in the */
/* same order), so they are computed together: each sample's gradient row is read once for   */
/* all heads, four heads at a time.                                                            */

typedef struct {
    const int64_t *offsets, *order;
    const float *pattern, *d_own, *d_pre, *d_logits;
    int64_t n_entries, n_groups, H, D, L;
    float *d_table_M, *d_table_L, *d_row_score;
} bw2_ctx;

enum { HB = 4 }; /* heads per block */

/* For heads h < nh (nh <= HB): out[h * out_stride + d] = sum_i w[e_i + 2 h] * x[(e_i / K) n + d]
   with e_i = entries[i] (the entries of head 0); w and out already point at the block's first
   head. Four vectors of d at a time, then one, then single floats. */
static void gather_heads(float *out, int64_t out_stride, const float *x, const float *w,
                         const int64_t *entries, int64_t count, int64_t K, int64_t n, int nh) {
    int64_t d = 0;
    for (; d + 4 * VL <= n; d += 4 * VL) {
        vf a[HB][4];
        for (int h = 0; h < HB; ++h)
            for (int j = 0; j < 4; ++j) a[h][j] = vsplat(0.0f);
        for (int64_t i = 0; i < count; ++i) {
            const float *row = x + (entries[i] / K) * n + d;
            vf x0 = vload(row), x1 = vload(row + VL), x2 = vload(row + 2 * VL),
               x3 = vload(row + 3 * VL);
            for (int h = 0; h < HB; ++h) {
                if (h >= nh) break;
                vf wh = vsplat(w[entries[i] + 2 * h]);
                a[h][0] += wh * x0, a[h][1] += wh * x1, a[h][2] += wh * x2, a[h][3] += wh * x3;
            }
        }
        for (int h = 0; h < nh; ++h)
            for (int j = 0; j < 4; ++j) vstore(out + h * out_stride + d + j * VL, a[h][j]);
    }
    for (; d + VL <= n; d += VL) {
        vf a[HB];
        for (int h = 0; h < HB; ++h) a[h] = vsplat(0.0f);
        for (int64_t i = 0; i < count; ++i) {
            vf xv = vload(x + (entries[i] / K) * n + d);
            for (int h = 0; h < HB; ++h) {
                if (h >= nh) break;
                a[h] += vsplat(w[entries[i] + 2 * h]) * xv;
            }
        }
        for (int h = 0; h < nh; ++h) vstore(out + h * out_stride + d, a[h]);
    }
    for (; d < n; ++d) {
        float a[HB] = {0.0f};
        for (int64_t i = 0; i < count; ++i) {
            float xv = x[(entries[i] / K) * n + d];
            for (int h = 0; h < nh; ++h) a[h] += w[entries[i] + 2 * h] * xv;
        }
        for (int h = 0; h < nh; ++h) out[h * out_stride + d] = a[h];
    }
}

static void bw2_range(const void *vctx, int64_t lo, int64_t hi) {
    const bw2_ctx *c = vctx;
    int64_t K = 2 * c->H, G = c->n_groups, D = c->D, L = c->L;
    for (int64_t g = lo; g < hi; ++g) {
        int64_t i0 = c->offsets[g], i1 = g + 1 < c->H * G ? c->offsets[g + 1] : c->n_entries;
        const int64_t *entries = c->order + i0;
        for (int64_t h0 = 0; h0 < c->H; h0 += HB) {
            int nh = c->H - h0 < HB ? (int)(c->H - h0) : HB;
            int64_t r0 = h0 * G + g; /* table row of head h0 */
            gather_heads(c->d_table_M + r0 * D, G * D, c->d_pre, c->pattern + 2 * h0, entries,
                         i1 - i0, K, D, nh);
            gather_heads(c->d_table_L + r0 * L, G * L, c->d_logits, c->pattern + 2 * h0, entries,
                         i1 - i0, K, L, nh);
            for (int h = 0; h < nh; ++h) {
                float ds = 0.0f;
                for (int64_t i = 0; i < i1 - i0; ++i) ds += c->d_own[entries[i] + 2 * (h0 + h)];
                c->d_row_score[r0 + h * G] = ds;
            }
        }
    }
}

/* For every table row r = h * n_groups + g: d_table_M[r] = sum over the row's entries
   e = b * K + k (in order) of pattern[e] * d_pre[b], d_table_L[r] likewise from d_logits,
   d_row_score[r] = sum of d_own[e]. offsets / order: the transposed layout, of which the
   first n_groups rows (head 0's) are read: head h's entries are head 0's plus 2 h. */
int tlg_readout_backward_rows(const int64_t *offsets, const int64_t *order, int64_t n_entries,
                              int64_t n_groups, int64_t H, const float *pattern,
                              const float *d_own, const float *d_pre, const float *d_logits,
                              int64_t D, int64_t L, float *d_table_M, float *d_table_L,
                              float *d_row_score, int nthreads) {
    bw2_ctx c = {offsets,  order, pattern, d_own,     d_pre,     d_logits,   n_entries,
                 n_groups, H,     D,       L,         d_table_M, d_table_L, d_row_score};
    parallel_for(nthreads, n_groups, bw2_range, &c);
    return 0;
}
