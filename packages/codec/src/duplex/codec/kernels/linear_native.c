/* y = x @ w^T (+ bias) for a few rows of x, in float32: the matmul of streaming inference.
 *
 * With one to a few input rows, a matmul only has to read each weight once; BLAS libraries tuned
 * for large products read it at a fraction of the memory bandwidth there. Here every block of
 * ROWS weight rows is read once per PAIR of input rows (from cache after the first pair), with
 * 8-wide vector accumulators. The threads split the output columns.
 *
 * A single input row takes its own loop over blocks of ROWS_ALONE weight rows (more independent
 * accumulators, no second row to pair with).
 *
 * Each output is summed in the same order whatever the number of input rows, threads or the
 * row's position in the batch, so a row's result never depends on the other rows.
 */
#include <stdint.h>
#include <string.h>
#include "duplex_team.h"

#include "duplex_vec8.h"

#define ROWS 4
#define PAIR 2
#define ROWS_ALONE 8

static void single_row(const float* x, const float* w, const float* bias, float* y, int64_t k_count,
                       int64_t n_begin, int64_t n_end) {
    for (int64_t n = n_begin; n < n_end; n += ROWS_ALONE) {
        int rows = n_end - n < ROWS_ALONE ? (int)(n_end - n) : ROWS_ALONE;
        const float* wr[ROWS_ALONE];
        for (int r = 0; r < ROWS_ALONE; r++) wr[r] = w + (n + (r < rows ? r : 0)) * k_count;
        vec8 acc[ROWS_ALONE] = {{0}};
        int64_t k = 0;
        for (; k + 8 <= k_count; k += 8) {
            vec8 a = load8(x + k);
            for (int r = 0; r < ROWS_ALONE; r++) acc[r] += a * load8(wr[r] + k);
        }
        for (int r = 0; r < rows; r++) {
            float s = lanes_sum(acc[r]);
            for (int64_t t = k; t < k_count; t++) s += x[t] * wr[r][t];
            y[n + r] = bias ? s + bias[n + r] : s;
        }
    }
}

static void columns(const float* x, int64_t ldx, const float* w, const float* bias, float* y, int64_t ldy,
                    int64_t m_count, int64_t k_count, int64_t n_begin, int64_t n_end) {
    for (int64_t n = n_begin; n < n_end; n += ROWS) {
        int rows = n_end - n < ROWS ? (int)(n_end - n) : ROWS;
        const float* wr[ROWS];
        for (int r = 0; r < ROWS; r++) wr[r] = w + (n + (r < rows ? r : 0)) * k_count;
        for (int64_t m = 0; m < m_count; m += PAIR) {
            int pair = m_count - m < PAIR ? (int)(m_count - m) : PAIR;
            const float* xr[PAIR] = {x + m * ldx, x + (m + pair - 1) * ldx};
            vec8 acc[PAIR][ROWS] = {{{0}}};
            int64_t k = 0;
            /* The first pair pulls the next block into cache at the pace it reads this one: the
             * ROWS short streams of a block alone leave the hardware prefetcher behind. */
            const char* next_block = (const char*)(w + (n + ROWS) * k_count);
            int prefetch = m == 0 && n + ROWS < n_end;
            for (; k + 8 <= k_count; k += 8) {
                if (prefetch) {
                    __builtin_prefetch(next_block + k * ROWS * 4, 0, 3);
                    __builtin_prefetch(next_block + k * ROWS * 4 + 64, 0, 3);
                }
                vec8 a = load8(xr[0] + k), b = load8(xr[1] + k);
                for (int r = 0; r < ROWS; r++) {
                    vec8 wv = load8(wr[r] + k);
                    acc[0][r] += a * wv;
                    acc[1][r] += b * wv;
                }
            }
            for (int p = 0; p < pair; p++) {
                for (int r = 0; r < rows; r++) {
                    float s = lanes_sum(acc[p][r]);
                    for (int64_t t = k; t < k_count; t++) s += xr[p][t] * wr[r][t];
                    y[(m + p) * ldy + n + r] = bias ? s + bias[n + r] : s;
                }
            }
        }
    }
}

void duplex_linear_f32(const float* x, int64_t ldx, const float* w, const float* bias, float* y, int64_t ldy,
                       int64_t m_count, int64_t n_count, int64_t k_count, int threads) {
#ifdef _OPENMP
#pragma omp parallel num_threads(threads)
#endif
    {
        int t = team_member(), team = team_size();
        int64_t share = ((n_count + team - 1) / team + ROWS_ALONE - 1) / ROWS_ALONE * ROWS_ALONE;
        int64_t begin = t * share, end = begin + share < n_count ? begin + share : n_count;
        if (begin < end) {
            if (m_count == 1)
                single_row(x, w, bias, y, k_count, begin, end);
            else
                columns(x, ldx, w, bias, y, ldy, m_count, k_count, begin, end);
        }
    }
}
