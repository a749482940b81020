/* Residual-VQ codes with torch.cdist's arithmetic, bit for bit, without torch's per-op overhead.
 *
 * The reference picks each code as the argmin of cdist's matmul-path distances
 * sqrt(max([-2x, |x|^2, 1] . [e, 1, |e|^2], 0)). Near-ties are decided by that rounding, so a
 * code equal to the reference's needs the same bits at every step:
 *   - |x|^2 is the float32 sum of x*x in the order of torch's vectorized inner sum (ATen's
 *     cascade sum: vectors of `lanes` floats, four interleaved vector accumulators, a scalar tail,
 *     then the lanes added one after another), emulated by torch_sum_of_squares;
 *   - the product is torch's own BLAS: the caller passes the sgemm_ that torch links (MKL in the
 *     x86 wheels) and this calls it with the arguments torch's matmul uses; for one row, where
 *     BLAS runs its gemv, linear_blas_order.c's kernel gives the same sums (when the caller
 *     found it does);
 *   - the square root is torch's too: MKL's vsSqrt (not always correctly rounded; its results do
 *     not depend on where an element sits in the call);
 *   - clamp, argmin (first minimum) and the residual update are exact operations.
 * Python checks all of it against torch on this machine before using it (rvq_reference_order.py).
 * The file is compiled with fused multiply-adds off (the pragma): they would change the sums.
 */
#pragma GCC optimize("fp-contract=off")
#pragma STDC FP_CONTRACT OFF
#include <math.h> /* isnan */
#include <stddef.h>
#include <stdint.h>
#include "duplex_team.h"

typedef void (*sgemm_fn)(const char* transa, const char* transb, const int* m, const int* n, const int* k,
                         const float* alpha, const float* a, const int* lda, const float* b, const int* ldb,
                         const float* beta, float* c, const int* ldc);
typedef void (*vsqrt_fn)(int n, const float* a, float* y);

void duplex_linear_blas_order_f32(const float* x, int64_t ldx, const float* w, const float* bias, float* y,
                                  int64_t ldy, int64_t m_count, int64_t n_count, int64_t k_count, int threads);

#define MAX_LANES 16
#define ILP 4    /* vector accumulators of torch's row_sum */
#define LEVELS 4 /* cascade levels of torch's multi_row_sum */
#define SPLIT_ROWS 4
#define SPLIT_ALIGN 64

static int64_t ceil_log2(int64_t x) {
    int64_t bits = 0;
    while (((int64_t)1 << bits) < x) bits++;
    return bits;
}

/* Lane-wise acc += squares of the vector at `v` (lanes floats). */
static inline void add_squares(float* acc, const float* v, int lanes) {
    for (int l = 0; l < lanes; l++) acc[l] += v[l] * v[l];
}

/* torch's x.pow(2).sum(-1) of one contiguous row of n floats. A row shorter than a vector is
 * summed as scalars, in the same pattern (one lane). */
static float torch_sum_of_squares(const float* x, int64_t n, int lanes) {
    if (n < lanes) lanes = 1;
    const int64_t vectors = n / lanes, groups = vectors / ILP;
    const int64_t level_power = ceil_log2(groups) / LEVELS > 4 ? ceil_log2(groups) / LEVELS : 4;
    const int64_t level_step = (int64_t)1 << level_power, level_mask = level_step - 1;
    float acc[LEVELS][ILP][MAX_LANES] = {{{0}}};
    int64_t i = 0;
    /* multi_row_sum over groups of ILP vectors: a chunk of level_step groups, then carry up */
    while (i + level_step <= groups) {
        for (int64_t j = 0; j < level_step; j++, i++)
            for (int k = 0; k < ILP; k++) add_squares(acc[0][k], x + (i * ILP + k) * lanes, lanes);
        for (int j = 1; j < LEVELS; j++) {
            for (int k = 0; k < ILP; k++)
                for (int l = 0; l < lanes; l++) {
                    acc[j][k][l] += acc[j - 1][k][l];
                    acc[j - 1][k][l] = 0.0f;
                }
            if ((i & (level_mask << (j * level_power))) != 0) break;
        }
    }
    for (; i < groups; i++)
        for (int k = 0; k < ILP; k++) add_squares(acc[0][k], x + (i * ILP + k) * lanes, lanes);
    for (int j = 1; j < LEVELS; j++)
        for (int k = 0; k < ILP; k++)
            for (int l = 0; l < lanes; l++) acc[0][k][l] += acc[j][k][l];
    /* row_sum: the vectors left over by the groups, then the accumulators in order */
    for (int64_t v = groups * ILP; v < vectors; v++) add_squares(acc[0][0], x + v * lanes, lanes);
    for (int k = 1; k < ILP; k++)
        for (int l = 0; l < lanes; l++) acc[0][0][l] += acc[0][k][l];
    /* vectorized_inner_sum: the scalar tail first, then the lanes */
    float total = 0.0f;
    for (int64_t e = vectors * lanes; e < n; e++) total += x[e] * x[e];
    for (int l = 0; l < lanes; l++) total += acc[0][0][l];
    return total;
}

/* Codes of `rows` residual rows [rows, dim] (updated in place) through `levels` codebooks.
 * augmented: [levels][size][dim + 2] rows [e, 1, |e|^2]; centroids: [levels][size][dim];
 * codes: [rows][levels]; lhs: scratch [rows][dim + 2]; distances: [rows][size], holding the last
 * level's distances on return. */
void duplex_rvq_encode_reference_order(float* residual, int64_t rows, int64_t dim, const float* augmented,
                                       const float* centroids, int64_t levels, int64_t size, int64_t* codes,
                                       float* lhs, float* distances, sgemm_fn sgemm, vsqrt_fn vsqrt,
                                       int lanes, int one_row_gemv, int threads) {
    const int m = (int)size, n = (int)rows, k = (int)(dim + 2);
    const float one = 1.0f, zero = 0.0f;
    for (int64_t level = 0; level < levels; level++) {
        const float* table = augmented + level * size * (dim + 2);
        const float* vectors = centroids + level * size * dim;
        for (int64_t r = 0; r < rows; r++) {
            const float* x = residual + r * dim;
            float* row = lhs + r * (dim + 2);
            for (int64_t d = 0; d < dim; d++) row[d] = x[d] * -2.0f;
            row[dim] = torch_sum_of_squares(x, dim, lanes);
            row[dim + 1] = 1.0f;
        }
        /* torch's lhs.matmul(augmented.mT), in BLAS's column-major terms. BLAS runs one thread
         * for a few rows, and the table comes from memory: for up to SPLIT_ROWS rows, each thread
         * takes an equal part of the centroids, a multiple of SPLIT_ALIGN (BLAS then sums each
         * distance as in one call; checked in Python). */
        if (rows == 1 && one_row_gemv && size % 4 == 0) {
            /* one row is BLAS's gemv, whose order linear_blas_order.c follows at full bandwidth */
            duplex_linear_blas_order_f32(lhs, k, table, NULL, distances, m, 1, m, k, threads);
        } else {
            const int parts = rows <= SPLIT_ROWS && size % (SPLIT_ALIGN * threads) == 0 ? threads : 1;
#pragma omp parallel num_threads(parts)
            {
                const int count = m / team_size(), begin = team_member() * count;
                sgemm("T", "N", &count, &n, &k, &one, table + (int64_t)begin * k, &k, lhs, &k, &zero,
                      distances + begin, &m);
            }
        }
        for (int64_t c = 0; c < rows * size; c++)
            if (distances[c] < 0.0f) distances[c] = 0.0f; /* clamp_min_(0), which keeps a NaN */
        vsqrt(m * n, distances, distances);
        for (int64_t r = 0; r < rows; r++) {
            const float* row = distances + r * size;
            int64_t best = 0;
            for (int64_t c = 1; c < size; c++)
                if (row[c] < row[best] || (isnan(row[c]) && !isnan(row[best]))) best = c; /* argmin's */
            codes[r * levels + level] = best;
            float* x = residual + r * dim;
            const float* e = vectors + best * dim;
            for (int64_t d = 0; d < dim; d++) x[d] = x[d] - e[d];
        }
    }
}

/* The |x|^2 of each of `rows` rows [rows, n], for the check against torch. */
void duplex_sum_of_squares_reference_order(const float* x, int64_t rows, int64_t n, float* out, int lanes) {
    for (int64_t r = 0; r < rows; r++) out[r] = torch_sum_of_squares(x + r * n, n, lanes);
}
