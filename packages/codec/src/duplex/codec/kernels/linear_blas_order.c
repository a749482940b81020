/* y = x @ w^T (+ bias) for 1, 2 or 3 rows, summed in the order of MKL's small-row kernels here.
 *
 * Where a result feeds an argmin (Mimi's codes), the reference's own rounding decides near-ties;
 * matching its codes needs its sums bit for bit, not just close. For 2-3 rows MKL reads each
 * weight row as 4-float vectors: four partial sums, element k going to sum k % 4, each step a
 * separate multiply and add (no fused multiply-add), then (s0 + s2) + (s1 + s3), then the bias.
 * One row (its gemv: torch's 1-row matmul, a one-frame convolution, cdist of one row) starts with
 * the first h = (K - 1) % 4 + 1 products summed in turn into partial sum 0, then takes 4-float
 * vectors from element h on, the same way. These kernels do the same sums at the speed of a
 * few-row kernel (MKL's is 3-5x slower there). Python checks them against torch on this machine
 * before using them (linear_blas_order.py).
 *
 * The file is compiled with -ffp-contract=off semantics (the pragma): a fused multiply-add would
 * change the rounding.
 */
#pragma GCC optimize("fp-contract=off")
#pragma STDC FP_CONTRACT OFF
#include <stdint.h>
#include <string.h>
#include "duplex_team.h"

typedef float vec4 __attribute__((vector_size(16)));
typedef float vec8 __attribute__((vector_size(32)));

#define ROWS 8 /* weight rows per block, two per 8-float vector */
#define MAX_M 3

/* Lanes 0-3: a[0..3], lanes 4-7: b[0..3]. */
static inline vec8 load_halves(const float* a, const float* b) {
    vec4 low, high;
    memcpy(&low, a, sizeof low);
    memcpy(&high, b, sizeof high);
    return __builtin_shufflevector(low, high, 0, 1, 2, 3, 4, 5, 6, 7);
}

/* Inlined with a constant m_count, so that the accumulators stay in registers. Vector lane j of
 * row r's half holds the partial sum of elements k = j (mod 4). */
static inline __attribute__((always_inline)) void block_rows(const float* x, int64_t ldx, const float* w,
                                                             const float* bias, float* y, int64_t ldy,
                                                             const int m_count, int64_t k_count,
                                                             int64_t n_begin, int64_t n_end) {
    for (int64_t n = n_begin; n < n_end; n += ROWS) {
        int rows = n_end - n < ROWS ? (int)(n_end - n) : ROWS;
        const float* wr[ROWS];
        for (int r = 0; r < ROWS; r++) wr[r] = w + (n + (r < rows ? r : 0)) * k_count;
        vec8 acc[MAX_M][ROWS / 2] = {{{0}}};
        /* pull the next block into cache at the pace this one is read (the ROWS short streams of
         * a block alone leave the hardware prefetcher behind) */
        const char* next_block = (const char*)(w + (n + ROWS) * k_count);
        const int prefetch = n + ROWS < n_end;
        for (int64_t k = 0; k < k_count; k += 4) {
            if (prefetch) {
                __builtin_prefetch(next_block + k * ROWS * 4, 0, 3);
                __builtin_prefetch(next_block + k * ROWS * 4 + 64, 0, 3);
            }
            vec8 xs[MAX_M];
            for (int m = 0; m < m_count; m++) xs[m] = load_halves(x + m * ldx + k, x + m * ldx + k);
            for (int r = 0; r < ROWS / 2; r++) {
                vec8 wv = load_halves(wr[2 * r] + k, wr[2 * r + 1] + k);
                for (int m = 0; m < m_count; m++) {
                    vec8 product = xs[m] * wv;
                    acc[m][r] = acc[m][r] + product;
                }
            }
        }
        for (int m = 0; m < m_count; m++) {
            for (int r = 0; r < rows; r++) {
                vec8 a = acc[m][r / 2];
                int h = (r % 2) * 4;
                float s = (a[h] + a[h + 2]) + (a[h + 1] + a[h + 3]);
                y[m * ldy + n + r] = bias ? s + bias[n + r] : s;
            }
        }
    }
}

/* One row: the head of h products into partial sum 0, then 4-float vectors. Any k_count. */
static void block_gemv(const float* x, const float* w, const float* bias, float* y, int64_t k_count,
                       int64_t n_begin, int64_t n_end) {
    const int64_t head = (k_count - 1) % 4 + 1;
    for (int64_t n = n_begin; n < n_end; n += ROWS) {
        int rows = n_end - n < ROWS ? (int)(n_end - n) : ROWS;
        const float* wr[ROWS];
        for (int r = 0; r < ROWS; r++) wr[r] = w + (n + (r < rows ? r : 0)) * k_count;
        vec8 acc[ROWS / 2] = {{0}};
        for (int r = 0; r < ROWS; r++) {
            float s = 0.0f;
            for (int64_t k = 0; k < head; k++) s = s + x[k] * wr[r][k];
            acc[r / 2][(r % 2) * 4] = s;
        }
        const char* next_block = (const char*)(w + (n + ROWS) * k_count);
        const int prefetch = n + ROWS < n_end;
        for (int64_t k = head; k < k_count; k += 4) {
            if (prefetch) {
                __builtin_prefetch(next_block + (k - head) * ROWS * 4, 0, 3);
                __builtin_prefetch(next_block + (k - head) * ROWS * 4 + 64, 0, 3);
            }
            const vec8 xs = load_halves(x + k, x + k);
            for (int r = 0; r < ROWS / 2; r++) {
                vec8 product = xs * load_halves(wr[2 * r] + k, wr[2 * r + 1] + k);
                acc[r] = acc[r] + product;
            }
        }
        for (int r = 0; r < rows; r++) {
            vec8 a = acc[r / 2];
            int h = (r % 2) * 4;
            float s = (a[h] + a[h + 2]) + (a[h + 1] + a[h + 3]);
            y[n + r] = bias ? s + bias[n + r] : s;
        }
    }
}

/* m_count in 1..3; for 2-3 rows k_count a multiple of 4 (the caller checks). Rows of one call
 * are independent: one row takes the gemv order, 2-3 rows the small-row sgemm order. */
void duplex_linear_blas_order_f32(const float* x, int64_t ldx, const float* w, const float* bias, float* y,
                                  int64_t ldy, int64_t m_count, int64_t n_count, int64_t k_count, int threads) {
#ifdef _OPENMP
#pragma omp parallel num_threads(threads)
#endif
    {
        int t = team_member(), team = team_size();
        int64_t share = ((n_count + team - 1) / team + ROWS - 1) / ROWS * ROWS;
        int64_t begin = t * share, end = begin + share < n_count ? begin + share : n_count;
        if (begin < end) {
            if (m_count == 1)
                block_gemv(x, w, bias, y, k_count, begin, end);
            else if (m_count == 2)
                block_rows(x, ldx, w, bias, y, ldy, 2, k_count, begin, end);
            else
                block_rows(x, ldx, w, bias, y, ldy, 3, k_count, begin, end);
        }
    }
}

/* y[m, :] = bias, then y[m, :] += x[m, k] * w[:, k] for k = 0, 1, ... in turn: one rounded
 * multiply and one rounded add per term, the order torch's CPU convolution takes for streaming
 * Mimi's few-output convolutions (x holds the unfolded windows). The weight comes in panels of
 * PANEL outputs, [ceil(N / PANEL), K, PANEL] (zero-padded), so that vectors run along the outputs
 * (each sum keeps its sequential order) and each panel is one contiguous stream. */
#define PANEL 16
#define PANEL_ROWS 4

static inline __attribute__((always_inline)) void panel_rows(const float* x, int64_t ldx, const float* panel,
                                                             const float* bias, float* y, int64_t ldy,
                                                             const int rows, int64_t k_count, int64_t width) {
    vec8 acc[PANEL_ROWS][2];
    float start[PANEL] = {0};
    for (int64_t j = 0; j < width; j++) start[j] = bias ? bias[j] : 0.0f;
    for (int m = 0; m < rows; m++) {
        memcpy(&acc[m][0], start, 32);
        memcpy(&acc[m][1], start + 8, 32);
    }
    for (int64_t k = 0; k < k_count; k++) {
        vec8 w0, w1;
        memcpy(&w0, panel + k * PANEL, 32);
        memcpy(&w1, panel + k * PANEL + 8, 32);
        for (int m = 0; m < rows; m++) {
            const float s = x[m * ldx + k];
            vec8 p0 = w0 * s, p1 = w1 * s;
            acc[m][0] = acc[m][0] + p0;
            acc[m][1] = acc[m][1] + p1;
        }
    }
    for (int m = 0; m < rows; m++) {
        float out[PANEL];
        memcpy(out, &acc[m][0], 32);
        memcpy(out + 8, &acc[m][1], 32);
        memcpy(y + m * ldy, out, width * sizeof(float));
    }
}

void duplex_matmul_sequential_f32(const float* x, int64_t ldx, const float* panels, const float* bias,
                                  float* y, int64_t ldy, int64_t m_count, int64_t n_count, int64_t k_count,
                                  int threads) {
    const int64_t panel_count = (n_count + PANEL - 1) / PANEL;
#ifdef _OPENMP
#pragma omp parallel for schedule(static) num_threads(threads)
#endif
    for (int64_t p = 0; p < panel_count; p++) {
        const int64_t n = p * PANEL, width = n_count - n < PANEL ? n_count - n : PANEL;
        const float* panel = panels + p * k_count * PANEL;
        const float* b = bias ? bias + n : NULL;
        for (int64_t m = 0; m < m_count; m += PANEL_ROWS) {
            const int64_t rows = m_count - m < PANEL_ROWS ? m_count - m : PANEL_ROWS;
            const float* xm = x + m * ldx;
            float* ym = y + m * ldy + n;
            switch (rows) {
                case 1: panel_rows(xm, ldx, panel, b, ym, ldy, 1, k_count, width); break;
                case 2: panel_rows(xm, ldx, panel, b, ym, ldy, 2, k_count, width); break;
                case 3: panel_rows(xm, ldx, panel, b, ym, ldy, 3, k_count, width); break;
                default: panel_rows(xm, ldx, panel, b, ym, ldy, 4, k_count, width); break;
            }
        }
    }
}
