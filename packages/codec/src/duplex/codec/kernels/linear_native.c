/* y = x @ w^T (+ bias) for a few rows of x, accumulated in float32: the matmul of streaming inference.
 *
 * With one to a few input rows, a matmul only has to read each weight once; BLAS libraries tuned
 * for large products read it at a fraction of the memory bandwidth there. Here every block of
 * ROWS weight rows is read once per group of input rows (two, or four for narrow weights, whose
 * widening then serves more rows; from cache after the first group), with 8-wide vector
 * accumulators. The threads split the output columns.
 *
 * A single input row takes its own loop over blocks of ROWS_ALONE weight rows (more independent
 * accumulators, no second row to pair with).
 *
 * The weight may be float32, bfloat16 or int8 with per-group scales (duplex_weight.h): fewer bytes
 * to read per step, widened to float32 in registers. Each int8 group's partial sums are scaled once.
 * Each output is summed in the same order whatever the number of input rows, threads or the
 * row's position in the batch, so a row's result never depends on the other rows.
 */
#include <stdint.h>
#include <string.h>
#include "duplex_team.h"

#include "duplex_vec8.h"
#include "duplex_weight.h"

#define ROWS 4
#define TOGETHER_MAX 4 /* input rows sharing one read of a weight block */
#define ROWS_ALONE 8

#define INLINE static inline __attribute__((always_inline))

/* The scale of a weight row's group holding column k (int8), else 1. */
INLINE float scale_at(const duplex_weight* w, int64_t row, int64_t k, int64_t k_count, int kind) {
    if (kind != WEIGHT_INT8) return 1.0f;
    return w->scales[row * (k_count / w->group) + k / w->group];
}

/* Sums over [0, k8) in 8-wide lanes into ACC (USED of its SIZE accumulators). Per-row scales (and
 * none) apply once to the finished sum; per-group scales (grouped) to each group's partial sums,
 * which then add up in ACC. */
#define GROUPED_SUMS(SIZE, USED, ACC, BODY, ROW_OF)                                                   \
    if (!grouped) {                                                                                \
        for (int64_t k = 0; k < k8; k += 8) BODY(ACC);                                             \
    } else {                                                                                       \
        for (int64_t g = 0; g < k8; g += w->group) {                                               \
            vec8 part[SIZE] = {{0}};                                                               \
            for (int64_t k = g; k < g + w->group; k += 8) BODY(part);                              \
            for (int i = 0; i < (USED); i++) ACC[i] += part[i] * splat(scale_at(w, ROW_OF(i), g, k_count, kind)); \
        }                                                                                          \
    }

/* The finished output of weight row `row` for input row x: lanes, tail columns, row scale, bias. */
INLINE float finish(vec8 acc, const float* x, const char* w_row, const duplex_weight* w, int64_t row,
                    int64_t k8, int64_t k_count, int kind, int grouped) {
    float s = lanes_sum(acc), tail = 0;
    for (int64_t t = k8; t < k_count; t++) tail += x[t] * weight1(w_row, t, kind) * (grouped ? scale_at(w, row, t, k_count, kind) : 1.0f);
    return grouped ? s + tail : (s + tail) * scale_at(w, row, 0, k_count, kind);
}

INLINE void single_row(const float* x, const duplex_weight* w, const float* bias, float* y, int64_t k_count,
                       int64_t n_begin, int64_t n_end, int kind, int grouped) {
    const int64_t row_bytes = k_count * weight_element_size(kind), k8 = k_count / 8 * 8;
    for (int64_t n = n_begin; n < n_end; n += ROWS_ALONE) {
        int rows = n_end - n < ROWS_ALONE ? (int)(n_end - n) : ROWS_ALONE;
        int64_t row[ROWS_ALONE];
        const char* wr[ROWS_ALONE];
        for (int r = 0; r < ROWS_ALONE; r++) {
            row[r] = n + (r < rows ? r : 0);
            wr[r] = (const char*)w->data + row[r] * row_bytes;
        }
        vec8 acc[ROWS_ALONE] = {{0}};
        /* The next block of rows (contiguous) is pulled into cache at the pace this one is read:
         * ROWS_ALONE short streams (1 KiB for a row of 1024 int8) leave the hardware prefetcher
         * behind. */
        const char* next_block = (const char*)w->data + (n + ROWS_ALONE) * row_bytes;
        const int prefetch = n + 2 * ROWS_ALONE <= n_end;
        const int64_t block_step = ROWS_ALONE * 8 * weight_element_size(kind); /* bytes per k step */
#define ROW_OF(i) row[i]
#define BODY(A)                                                                  \
    {                                                                            \
        if (prefetch)                                                            \
            for (int64_t line = 0; line < block_step; line += 64)                \
                __builtin_prefetch(next_block + k / 8 * block_step + line, 0, 3); \
        vec8 a = load8(x + k);                                                   \
        for (int r = 0; r < ROWS_ALONE; r++) A[r] += a * weight8(wr[r], k, kind); \
    }
        GROUPED_SUMS(ROWS_ALONE, ROWS_ALONE, acc, BODY, ROW_OF)
#undef BODY
#undef ROW_OF
        for (int r = 0; r < rows; r++) {
            float s = finish(acc[r], x, wr[r], w, row[r], k8, k_count, kind, grouped);
            y[n + r] = bias ? s + bias[n + r] : s;
        }
    }
}

INLINE void columns(const float* x, int64_t ldx, const duplex_weight* w, const float* bias, float* y, int64_t ldy,
                    int64_t m_count, int64_t k_count, int64_t n_begin, int64_t n_end, int kind, int grouped,
                    int together) {
    const int64_t size = weight_element_size(kind), row_bytes = k_count * size, k8 = k_count / 8 * 8;
    for (int64_t n = n_begin; n < n_end; n += ROWS) {
        int rows = n_end - n < ROWS ? (int)(n_end - n) : ROWS;
        int64_t row[ROWS];
        const char* wr[ROWS];
        for (int r = 0; r < ROWS; r++) {
            row[r] = n + (r < rows ? r : 0);
            wr[r] = (const char*)w->data + row[r] * row_bytes;
        }
        for (int64_t m = 0; m < m_count; m += together) {
            int present = m_count - m < together ? (int)(m_count - m) : together;
            const float* xr[TOGETHER_MAX];
            for (int p = 0; p < together; p++) xr[p] = x + (m + (p < present ? p : present - 1)) * ldx;
            /* acc[p * ROWS + r]: input row m + p times weight row n + r */
            vec8 acc[TOGETHER_MAX * ROWS] = {{0}};
            /* The first group pulls the next block into cache at the pace it reads this one: the
             * ROWS short streams of a block alone leave the hardware prefetcher behind. */
            const char* next_block = (const char*)w->data + (n + ROWS) * row_bytes;
            int prefetch = m == 0 && n + ROWS < n_end;
#define ROW_OF(i) row[(i) % ROWS]
#define BODY(A)                                                                     \
    {                                                                               \
        if (prefetch && (k * ROWS * size) % 64 == 0) __builtin_prefetch(next_block + k * ROWS * size, 0, 3); \
        if (prefetch && size == 4) __builtin_prefetch(next_block + k * ROWS * size + 64, 0, 3); \
        vec8 in[TOGETHER_MAX];                                                      \
        for (int p = 0; p < together; p++) in[p] = load8(xr[p] + k);                \
        for (int r = 0; r < ROWS; r++) {                                            \
            vec8 wv = weight8(wr[r], k, kind);                                      \
            for (int p = 0; p < together; p++) A[p * ROWS + r] += in[p] * wv;       \
        }                                                                           \
    }
            GROUPED_SUMS(TOGETHER_MAX * ROWS, together * ROWS, acc, BODY, ROW_OF)
#undef BODY
#undef ROW_OF
            for (int p = 0; p < present; p++) {
                for (int r = 0; r < rows; r++) {
                    float s = finish(acc[p * ROWS + r], xr[p], wr[r], w, row[r], k8, k_count, kind, grouped);
                    y[(m + p) * ldy + n + r] = bias ? s + bias[n + r] : s;
                }
            }
        }
    }
}

/* One specialisation per weight format, so that the inner loops hold no branch on it. */
#define SPECIALISE(kind, grouped, together, suffix)                                                                \
    static void single_row_##suffix(const float* x, const duplex_weight* w, const float* bias, float* y,  \
                                    int64_t k_count, int64_t n_begin, int64_t n_end) {                    \
        single_row(x, w, bias, y, k_count, n_begin, n_end, kind, grouped);                                \
    }                                                                                                      \
    static void columns_##suffix(const float* x, int64_t ldx, const duplex_weight* w, const float* bias,  \
                                 float* y, int64_t ldy, int64_t m_count, int64_t k_count, int64_t n_begin, \
                                 int64_t n_end) {                                                          \
        columns(x, ldx, w, bias, y, ldy, m_count, k_count, n_begin, n_end, kind, grouped, together);      \
    }
SPECIALISE(WEIGHT_F32, 0, 2, f32)
SPECIALISE(WEIGHT_BF16, 0, 4, bf16)
SPECIALISE(WEIGHT_INT8, 0, 4, int8_rows)
SPECIALISE(WEIGHT_INT8, 1, 2, int8_groups) /* with its per-group partial sums: registers for two */

void duplex_linear(const float* x, int64_t ldx, const duplex_weight* w, const float* bias, float* y, int64_t ldy,
                   int64_t m_count, int64_t n_count, int64_t k_count, int threads) {
#ifdef _OPENMP
#pragma omp parallel num_threads(threads)
#endif
    {
        int t = team_member(), team = team_size();
        int64_t share = ((n_count + team - 1) / team + ROWS_ALONE - 1) / ROWS_ALONE * ROWS_ALONE;
        int64_t begin = t * share, end = begin + share < n_count ? begin + share : n_count;
        if (begin < end) {
            const int grouped = w->kind == WEIGHT_INT8 && w->group < k_count;
#define CALL(suffix)                                                                              \
    (m_count == 1 ? single_row_##suffix(x, w, bias, y, k_count, begin, end)                      \
                  : columns_##suffix(x, ldx, w, bias, y, ldy, m_count, k_count, begin, end))
            if (w->kind == WEIGHT_F32) CALL(f32);
            else if (w->kind == WEIGHT_BF16) CALL(bf16);
            else if (!grouped) CALL(int8_rows);
            else CALL(int8_groups);
#undef CALL
        }
    }
}
