/* Residual vector quantization of a few rows in float32: the encoder side of streaming Mimi.
 *
 * Level after level, each row takes the centroid nearest to its residual and subtracts it. A level
 * reads its whole table (K x D floats) once for all the rows, so the cost is the memory traffic of
 * the tables. The distance is summed directly, sum_d (r_d - e_d)^2, in 8-wide vector lanes, and
 * ties go to the lowest index, as argmin's do. torch.cdist expands the square instead
 * (||r||^2 - 2 r.e + ||e||^2): the two agree except on rare near-ties.
 *
 * The threads split each level's centroids and their minima are merged in index order: the codes
 * do not depend on the thread count, nor on the other rows.
 */
#include <math.h>
#include <stdint.h>
#include <string.h>
#include "duplex_team.h"

#include "duplex_vec8.h"

#define CENTROIDS 4 /* centroids in flight: independent accumulator chains */
#define ROWS 2

/* The nearest centroid in [begin, end) of `table` for each of the rows, with its distance. */
static void nearest_in(const float* residual, int64_t rows, const float* table, int64_t dim, int64_t begin,
                       int64_t end, float* best_distance, int64_t* best_index) {
    for (int64_t m = 0; m < rows; m++) {
        best_distance[m] = INFINITY;
        best_index[m] = begin;
    }
    for (int64_t m = 0; m < rows; m += ROWS) {
        int pair = rows - m < ROWS ? (int)(rows - m) : ROWS;
        const float* xr[ROWS] = {residual + m * dim, residual + (m + pair - 1) * dim};
        for (int64_t k = begin; k < end; k += CENTROIDS) {
            int count = end - k < CENTROIDS ? (int)(end - k) : CENTROIDS;
            const float* er[CENTROIDS];
            for (int c = 0; c < CENTROIDS; c++) er[c] = table + (k + (c < count ? c : 0)) * dim;
            vec8 acc[ROWS][CENTROIDS] = {{{0}}};
            int64_t d = 0;
            for (; d + 8 <= dim; d += 8) {
                vec8 a = load8(xr[0] + d), b = load8(xr[1] + d);
                for (int c = 0; c < CENTROIDS; c++) {
                    vec8 e = load8(er[c] + d);
                    vec8 da = a - e, db = b - e;
                    acc[0][c] += da * da;
                    acc[1][c] += db * db;
                }
            }
            for (int p = 0; p < pair; p++) {
                for (int c = 0; c < count; c++) {
                    float s = lanes_sum(acc[p][c]);
                    for (int64_t t = d; t < dim; t++) {
                        float diff = xr[p][t] - er[c][t];
                        s += diff * diff;
                    }
                    if (s < best_distance[m + p]) {
                        best_distance[m + p] = s;
                        best_index[m + p] = k + c;
                    }
                }
            }
        }
    }
}

/* codes[n * levels + l] for rows n < rows; `residual` [rows, dim] starts as the input and ends as
 * what the levels leave of it. Level l's table starts at centroids + l * level_stride. */
void duplex_rvq_encode_f32(float* residual, int64_t rows, const float* centroids, int64_t level_stride,
                           int64_t levels, int64_t size, int64_t dim, int64_t* codes, int threads) {
    if (threads < 1) threads = 1;
    float distances[threads * rows];
    int64_t indices[threads * rows];
#ifdef _OPENMP
#pragma omp parallel num_threads(threads)
#endif
    {
        int t = team_member(), team = team_size();
        int64_t share = ((size + team - 1) / team + CENTROIDS - 1) / CENTROIDS * CENTROIDS;
        int64_t begin = t * share < size ? t * share : size;
        int64_t end = begin + share < size ? begin + share : size;
        for (int64_t level = 0; level < levels; level++) {
            const float* table = centroids + level * level_stride;
            if (begin < end)
                nearest_in(residual, rows, table, dim, begin, end, distances + t * rows, indices + t * rows);
#ifdef _OPENMP
#pragma omp barrier
#pragma omp single
#endif
            for (int64_t m = 0; m < rows; m++) {
                float best = INFINITY;
                int64_t index = 0;
                int found = 0;
                for (int u = 0; u < team; u++) {
                    int64_t u_begin = u * share;
                    if (u_begin >= size) break;
                    if (!found || distances[u * rows + m] < best) {
                        best = distances[u * rows + m];
                        index = indices[u * rows + m];
                        found = 1;
                    }
                }
                codes[m * levels + level] = index;
                const float* chosen = table + index * dim;
                for (int64_t d = 0; d < dim; d++) residual[m * dim + d] -= chosen[d];
            }
            /* the implicit barrier of `single` publishes the residuals before the next level */
        }
    }
}
