/* One streaming step of Mimi's transformer with torch's own arithmetic, bit for bit, in one call.
 *
 * The reference-exact encode needs the encoder transformer's output to the last bit (a near-tie
 * in the RVQ flips on any other rounding). Done with torch ops, a 2-row step spends most of its
 * time in dispatch; this file does the same arithmetic in plain loops. Each op follows the CPU
 * kernel torch runs for it, in the order and with the fused multiply-adds that kernel uses:
 *   - LayerNorm: ATen's RowwiseMoments (Welford over chunks of 16 vectors, the vectors merged as
 *     a stack, then the lanes one after another), 1 / sqrt(var + eps), then
 *     fma((x - mean) * rstd, gamma, beta);
 *   - matmuls: duplex_linear_blas_order_f32 (linear_blas_order.c, MKL's small-row order);
 *   - rotary embedding: torch's complex mul, two rounded products and their sum over its
 *     vectorized chunks, fused multiply-adds in its scalar tail;
 *   - attention: the CPU flash-attention kernel for one key block: q @ k^T through torch's own
 *     sgemm_ (with torch's buffer layout: BLAS's small-matrix paths depend on the alignment),
 *     scale and mask, the row max, exp_u20 over whole vectors and double's exp over the tail, the
 *     lane sums reduced as a butterfly, p @ v through sgemm_, times 1 / sum;
 *   - exact GELU: oneDNN's AVX-512 gelu_erf, to which torch hands it on such CPUs (a piecewise
 *     minimax polynomial for erf); where that is not torch's GELU, the step runs in parts with
 *     torch's GELU between them;
 *   - layer scales and residuals: exact elementwise products and sums.
 * The vector widths of torch's kernels (`torch_math`) are found by trial: 8 floats for LayerNorm
 * and the complex mul (ATen runs them on its AVX2 kernels even on AVX-512 CPUs), 16 for the flash
 * attention there. Python checks every op and whole steps against torch before using any of it
 * (transformer_reference_order.py). fp-contract is off: only the fmaf calls fuse.
 */
#pragma GCC optimize("fp-contract=off")
#pragma STDC FP_CONTRACT OFF
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include "duplex_layer.h"
#include "duplex_team.h"

typedef void (*sgemm_fn)(const char* transa, const char* transb, const int* m, const int* n, const int* k,
                         const float* alpha, const float* a, const int* lda, const float* b, const int* ldb,
                         const float* beta, float* c, const int* ldc);

void duplex_linear_blas_order_f32(const float* x, int64_t ldx, const float* w, const float* bias, float* y,
                                  int64_t ldy, int64_t m_count, int64_t n_count, int64_t k_count, int threads);

#define MAX_LANES 16
#define CHUNK 16 /* vectors per Welford chunk (kChunkSize) */
#define MAX_DEPTH 64

/* ---- LayerNorm ------------------------------------------------------------------------------ */

typedef struct {
    int64_t count;
    float m1[MAX_LANES], m2[MAX_LANES];
} moments;

/* AddMomentsVec: merge `add` into `into`, lane by lane. */
static void merge_vec(const moments* add, moments* into, int lanes) {
    const int64_t n = into->count + add->count;
    const float c = n == 0 ? 0.0f : (float)add->count / (float)n;
    for (int l = 0; l < lanes; l++) {
        const float delta = add->m1[l] - into->m1[l];
        const float m2 = into->m2[l] + add->m2[l];
        const float c_delta = c * delta;
        const float count_delta = delta * (float)into->count;
        into->m1[l] = into->m1[l] + c_delta;
        into->m2[l] = fmaf(count_delta, c_delta, m2);
    }
    into->count = n;
}

/* torch's RowwiseMoments(x, n): mean and biased variance of one row. */
static void row_moments(const float* x, int64_t n, int lanes, float* mean, float* variance) {
    const int64_t vectors = n / lanes, chunks = (vectors + CHUNK - 1) / CHUNK;
    int64_t depth = 0;
    while (((int64_t)1 << depth) < chunks) depth++;
    moments stack[MAX_DEPTH];
    memset(stack, 0, sizeof(moments) * (depth > 0 ? depth : 1));
    for (int64_t i = 0; i < chunks; i++) {
        const float* xc = x + i * CHUNK * lanes;
        const int64_t count = vectors - i * CHUNK < CHUNK ? vectors - i * CHUNK : CHUNK;
        moments chunk = {count, {0}, {0}};
        for (int64_t j = 0; j < count; j++) {
            const float c = 1.0f / (float)(j + 1);
            for (int l = 0; l < lanes; l++) {
                const float v = xc[j * lanes + l];
                const float delta = v - chunk.m1[l];
                chunk.m1[l] = fmaf(c, delta, chunk.m1[l]);
                chunk.m2[l] = fmaf(delta, v - chunk.m1[l], chunk.m2[l]);
            }
        }
        merge_vec(&chunk, &stack[0], lanes);
        int64_t mask = i + 1;
        for (int64_t j = 1; j < depth && (mask & 1) == 0; j++) {
            merge_vec(&stack[j - 1], &stack[j], lanes);
            memset(&stack[j - 1], 0, sizeof(moments));
            mask >>= 1;
        }
    }
    for (int64_t j = 1; j < depth; j++) merge_vec(&stack[j], &stack[0], lanes);
    int64_t count = 0;
    float m1 = 0.0f, m2 = 0.0f;
    for (int64_t i = vectors * lanes; i < n; i++) {
        const float delta = x[i] - m1;
        count++;
        m1 += delta / (float)count;
        m2 = m2 + delta * (x[i] - m1);
    }
    for (int l = 0; l < lanes; l++) { /* AddMoments, scalar: each lane holds `vectors` values */
        const int64_t total = count + vectors;
        const float c = total == 0 ? 0.0f : (float)vectors / (float)total;
        const float delta = stack[0].m1[l] - m1;
        m1 = fmaf(c, delta, m1);
        m2 += fmaf(delta * delta * c, (float)count, stack[0].m2[l]);
        count = total;
    }
    *mean = m1;
    *variance = m2 / (float)n;
}

static void layer_norm(const float* x, int64_t rows, int64_t n, const float* weight, const float* bias,
                       float eps, float* y, int lanes) {
    for (int64_t r = 0; r < rows; r++) {
        float mean, variance;
        row_moments(x + r * n, n, lanes, &mean, &variance);
        const float rstd = 1.0f / sqrtf(variance + eps);
        const float* xr = x + r * n;
        float* yr = y + r * n;
        for (int64_t i = 0; i < n; i++) yr[i] = fmaf((xr[i] - mean) * rstd, weight[i], bias[i]);
    }
}

void duplex_layer_norm_reference_order(const float* x, int64_t rows, int64_t n, const float* weight,
                                       const float* bias, float eps, float* y, int lanes) {
    layer_norm(x, rows, n, weight, bias, eps, y, lanes);
}

/* ---- attention ------------------------------------------------------------------------------ */

/* ATen's Vectorized<float>::exp_u20, one float. */
static inline float exp_u20(float x) {
    const float log2e = 1.44269504f, ln2 = 0.693147182f; /* 0x3fb8aa3b, 0x3f317218 */
    const float ln_min = -87.3365479f, ln_max = 88.7228394f; /* 0xc2aeac50, 0x42b17218 */
    const int below = x < ln_min;
    float src = x < ln_max ? x : ln_max; /* min_ps(x, max): x unless x >= max */
    src = src > ln_min ? src : ln_min;
    const float fx = floorf(fmaf(src, log2e, 0.5f));
    const float r = fmaf(-fx, ln2, src);
    float y = fmaf(r, 0.00828929059f, 0.0418978221f);
    y = fmaf(r, y, 0.166676521f);
    y = fmaf(r, y, 0.499991506f);
    y = fmaf(r, y, 0.999999701f);
    y = fmaf(r, y, 1.0f);
    const uint32_t bits = below ? 0u : (uint32_t)((int32_t)(fx - 1.0f) + 127) << 23;
    float scale;
    memcpy(&scale, &bits, 4);
    return y * scale * 2.0f;
}

/* Vectorized sum of `lanes` accumulators as ATen's vec_reduce_all: a butterfly, halves first. */
static float butterfly_sum(float* v, int lanes) {
    for (int half = lanes / 2; half >= 1; half /= 2)
        for (int l = 0; l < half; l++) v[l] = v[l] + v[l + half];
    return v[0];
}

/* The softmax of one query row as ATen's CPU flash attention computes it with a single key
 * block: `scores` [n] (q @ k^T from sgemm) becomes exp(scores * scale + mask - max), unnormalised;
 * returns their sum. */
static float softmax_row(float* scores, const unsigned char* allowed, int64_t n, float scale, int lanes) {
    float max = -INFINITY;
    for (int64_t i = 0; i < n; i++) {
        scores[i] = allowed[i] ? scores[i] * scale : -INFINITY;
        max = scores[i] > max ? scores[i] : max;
    }
    if (max == -INFINITY) {
        for (int64_t i = 0; i < n; i++) scores[i] = 0.0f;
        return 0.0f;
    }
    float acc[MAX_LANES] = {0};
    const int64_t whole = n / lanes * lanes;
    for (int64_t i = 0; i < whole; i++) scores[i] = exp_u20(scores[i] - max); /* vectorized by the compiler */
    for (int64_t i = 0; i < whole; i += lanes)
        for (int l = 0; l < lanes; l++) acc[l] = acc[l] + scores[i + l];
    float sum = butterfly_sum(acc, lanes);
    for (int64_t i = whole; i < n; i++) {
        scores[i] = (float)exp((double)(scores[i] - max)); /* the tail's exp is double's */
        sum = sum + scores[i];
    }
    return sum;
}

/* Attention of `queries` new rows over `keys` cache slots, every head, as torch's
 * scaled_dot_product_attention(q, k, v, attn_mask) with a 0 / -inf mask on the CPU (one key
 * block: keys <= 512). q: [queries, q_stride] (head h at h * head_dim); k, v: [heads][slot
 * stride ..][head_dim] cache rows; allowed: [queries][keys]; out: [queries][heads * head_dim].
 * scratch: 64-byte aligned, threads * attention_scratch(queries, keys, head_dim) floats, laid
 * out as torch's per-thread buffer (BLAS's small-matrix paths depend on the alignment). */
static int64_t attention_scratch(int64_t queries, int64_t keys, int64_t head_dim) {
    return queries * keys + queries + queries + queries * head_dim; /* scores, max, sum, out */
}

static void attention(const float* q, int64_t q_stride, const float* k, const float* v, int64_t head_stride,
                      const unsigned char* allowed, int64_t queries, int64_t keys, int64_t heads,
                      int64_t head_dim, float* out, float* scratch, sgemm_fn sgemm, int lanes, int threads) {
    const float scale = (float)(1.0 / sqrt((double)head_dim)); /* sdp::calculate_scale */
    const int64_t per_thread = attention_scratch(queries, keys, head_dim);
#pragma omp parallel for num_threads(threads) schedule(static)
    for (int64_t h = 0; h < heads; h++) {
        float* scores = scratch + (int64_t)team_member() * per_thread;
        float* sums = scores + queries * keys + queries;
        float* weighted = sums + queries;
        const int m = (int)keys, n = (int)queries, dim = (int)head_dim, ldq = (int)q_stride;
        const float one = 1.0f, zero = 0.0f;
        sgemm("T", "N", &m, &n, &dim, &one, k + h * head_stride, &dim, q + h * head_dim, &ldq, &zero, scores,
              &m);
        for (int64_t r = 0; r < queries; r++)
            sums[r] = softmax_row(scores + r * keys, allowed + r * keys, keys, scale, lanes);
        sgemm("N", "N", &dim, &n, &m, &one, v + h * head_stride, &dim, scores, &m, &zero, weighted, &dim);
        for (int64_t r = 0; r < queries; r++) {
            const float reciprocal = 1.0f / (sums[r] == 0.0f ? 1.0f : sums[r]);
            for (int64_t d = 0; d < head_dim; d++)
                out[r * heads * head_dim + h * head_dim + d] = weighted[r * head_dim + d] * reciprocal;
        }
    }
}

int duplex_attention_reference_order(const float* q, int64_t q_stride, const float* k, const float* v,
                                     int64_t head_stride, const unsigned char* allowed, int64_t queries,
                                     int64_t keys, int64_t heads, int64_t head_dim, float* out,
                                     sgemm_fn sgemm, int lanes, int threads) {
    if (lanes > MAX_LANES) return -1;
    const int64_t bytes = sizeof(float) * threads * attention_scratch(queries, keys, head_dim);
    float* scratch = aligned_alloc(64, (bytes + 63) / 64 * 64);
    if (!scratch) return -2;
    attention(q, q_stride, k, v, head_stride, allowed, queries, keys, heads, head_dim, out, scratch, sgemm,
              lanes, threads);
    free(scratch);
    return 0;
}

/* ---- GELU ----------------------------------------------------------------------------------- */

/* torch's exact GELU on x86 is oneDNN's eltwise gelu_erf; its AVX-512 kernel evaluates erf(s / sqrt 2)
 * as a degree-5 polynomial in |s| picked from 24 pieces by the float's exponent and two mantissa bits
 * (coefficients: oneDNN's gelu_erf_minimax_polynomial table), then gelu = s * (1 + erf) * 0.5. */
static const uint32_t GELU_POLYNOMIAL[6][25] = {
    {0xa6f2cb94, 0x32827792, 0x3381cc0c, 0x34523d4a, 0x351ac44d, 0x35f36d88, 0x36ee8229, 0x37b8a3bb, 0x3867a213,
     0x3940033b, 0x3a2a5a1d, 0x3ae35863, 0x3b7828f2, 0x3c08b14b, 0x3c515ed3, 0xbb503236, 0xbd8d8e5e, 0xbe8abcd9,
     0xbf0c19a2, 0xbeccb328, 0x3e176ced, 0x3f470d99, 0x3f7abb28, 0x3f800000, 0x00000000},
    {0x3f4c422a, 0x3f4c421f, 0x3f4c4207, 0x3f4c41cb, 0x3f4c413b, 0x3f4c3fad, 0x3f4c3a2f, 0x3f4c2d40, 0x3f4c146a,
     0x3f4bc341, 0x3f4ad08c, 0x3f48f8cf, 0x3f45fac7, 0x3f404e07, 0x3f3b980f, 0x3f48dff3, 0x3f78b21b, 0x3fbb0704,
     0x40019c32, 0x3fe536d6, 0x3f81331e, 0x3e6c8684, 0x3c98f936, 0x00000000, 0x3f800000},
    {0xb62173f4, 0x3735e4cf, 0x37f2ff89, 0x388c23be, 0x3917535c, 0x39ab2ab0, 0x3a60fadb, 0x3af9b960, 0x3b6e5491,
     0x3c0a4ec5, 0x3ca5aa8c, 0x3d2138d9, 0x3d8737d4, 0x3ddfb660, 0x3e0f27ab, 0x3d94004b, 0xbe0efdeb, 0xbf1d96c3,
     0xbf89db58, 0xbf6d9897, 0xbef69fb8, 0xbdc4f8a8, 0xbbde6422, 0x00000000, 0x00000000},
    {0xbe081a19, 0xbe084570, 0xbe08639b, 0xbe089837, 0xbe08f409, 0xbe09ab95, 0xbe0b66d0, 0xbe0e400a, 0xbe124df8,
     0xbe1bde02, 0xbe2f19c9, 0xbe4931bf, 0xbe685fbc, 0xbe89c95f, 0xbe96cbca, 0xbe8044aa, 0xbe0550f2, 0x3dcfd6a1,
     0x3e94c826, 0x3e79345f, 0x3decec91, 0x3ca46568, 0x3aa1e00a, 0x00000000, 0x00000000},
    {0xba3d61db, 0x39f097a3, 0x3a5845dc, 0x3ab1fa35, 0x3b0cefb8, 0x3b653ab6, 0x3bcae527, 0x3c221712, 0x3c6c5840,
     0x3cc0a703, 0x3d1dcc19, 0x3d63656d, 0x3d955907, 0x3dbf9910, 0x3dd53f69, 0x3db7dcef, 0x3d639ebe, 0xba6ede48,
     0xbd22be69, 0xbd041cf1, 0xbc64f5ab, 0xbb097a32, 0xb8ebf380, 0x00000000, 0x00000000},
    {0x3cb7d80c, 0x3c9b6050, 0x3c978d11, 0x3c92e850, 0x3c8d058b, 0x3c848454, 0x3c6cd623, 0x3c4c824b, 0x3c2a7935,
     0x3be0b390, 0x3b0651ac, 0xbb232f53, 0xbbd42fa0, 0xbc2c5366, 0xbc492c9e, 0xbc2a7aa6, 0xbbd55d04, 0xba823a76,
     0x3b102aa8, 0x3ae25a7e, 0x3a31f792, 0x38b84375, 0x3689bb5a, 0x00000000, 0x00000000},
};

static inline float bits_float(uint32_t bits) {
    float f;
    memcpy(&f, &bits, 4);
    return f;
}

static void onednn_gelu(float* x, int64_t n) {
    const float right_bound = bits_float(0x40b15cee);
    for (int64_t i = 0; i < n; i++) {
        uint32_t bits;
        memcpy(&bits, &x[i], 4);
        const uint32_t magnitude_bits = bits & 0x7fffffffu;
        const float magnitude = bits_float(magnitude_bits);
        int32_t piece = (int32_t)(magnitude_bits + 0xc21fffffu) >> 21; /* the exponent and 2 mantissa bits */
        piece = piece < 1 ? 1 : piece > 24 ? 24 : piece;
        if (right_bound < magnitude) piece = 23;
        float erf = bits_float(GELU_POLYNOMIAL[5][piece]);
        for (int degree = 4; degree >= 0; degree--) erf = fmaf(erf, magnitude, bits_float(GELU_POLYNOMIAL[degree][piece]));
        uint32_t erf_bits;
        memcpy(&erf_bits, &erf, 4);
        erf = bits_float(erf_bits ^ (bits & 0x80000000u));
        x[i] = x[i] * (erf + 1.0f) * 0.5f;
    }
}

void duplex_gelu_reference_order(float* x, int64_t n) { onednn_gelu(x, n); }

/* ---- the step ------------------------------------------------------------------------------- */

/* torch's arithmetic on this machine: its BLAS and the vector widths of its kernels. */
typedef struct {
    sgemm_fn sgemm;
    int64_t norm_lanes;      /* LayerNorm's RowwiseMoments */
    int64_t attention_lanes; /* the flash-attention kernel's sums */
    int64_t complex_pairs;   /* complex numbers per vectorized step of the complex mul */
    int64_t onednn_gelu;     /* whether torch's GELU is oneDNN's AVX-512 minimax kernel (else: torch's) */
} torch_math;

/* x * rotation for `pairs` complex numbers, as torch's complex mul: whole chunks of
 * `vector_pairs` (its vectorized loop) take the two rounded products and their sum; the rest
 * takes its scalar loop, compiled with fused multiply-adds: fma(a, c, -(b d)), fma(a, d, b c).
 * Not vectorized here: GCC's vectorizer turns this pattern into fmaddsub, fp-contract or not. */
__attribute__((optimize("no-tree-vectorize", "no-tree-slp-vectorize"))) static void rotate_pairs(
    const float* in, float* out, int64_t pairs, const float* rotation, int64_t vector_pairs) {
    const int64_t whole = pairs / vector_pairs * vector_pairs;
    for (int64_t i = 0; i < pairs; i++) {
        const float a = in[2 * i], b = in[2 * i + 1], c = rotation[2 * i], d = rotation[2 * i + 1];
        if (i < whole) {
            out[2 * i] = a * c - b * d;
            out[2 * i + 1] = a * d + b * c;
        } else {
            out[2 * i] = fmaf(a, c, -(b * d));
            out[2 * i + 1] = fmaf(a, d, b * c);
        }
    }
}

void duplex_rotate_reference_order(const float* in, float* out, int64_t rows, int64_t heads, int64_t head_dim,
                                   const float* rotation, int64_t vector_pairs) {
    for (int64_t r = 0; r < rows; r++)
        for (int64_t h = 0; h < heads; h++)
            rotate_pairs(in + (r * heads + h) * head_dim, out + (r * heads + h) * head_dim, head_dim / 2,
                         rotation + r * head_dim, vector_pairs);
}

static void add_scaled(float* x, const float* update, const float* scale, int64_t rows, int64_t d) {
    for (int64_t r = 0; r < rows; r++)
        for (int64_t i = 0; i < d; i++) {
            const float step = scale ? scale[i] * update[r * d + i] : update[r * d + i];
            x[r * d + i] = x[r * d + i] + step;
        }
}

/* Scratch memory of a step, allocated once for all its layers: 64-byte aligned blocks (torch's
 * per-thread attention buffer is, and BLAS's small-matrix paths depend on the alignment). */
enum { NORMED, PROJECTED, QK, ATTENDED, ALLOWED, ATTENTION, UPDATE, BLOCKS };
typedef struct {
    float* block[BLOCKS];
} step_scratch;

static void scratch_free(step_scratch* scratch) {
    for (int i = 0; i < BLOCKS; i++) free(scratch->block[i]);
}

/* Blocks large enough for every layer of `layers`; returns 0, or -2 when out of memory. */
static int scratch_alloc(step_scratch* scratch, const duplex_layer* layers, int64_t count, int64_t batch,
                         int64_t length, int64_t used, int threads) {
    int64_t sizes[BLOCKS] = {0};
    const int64_t rows = batch * length;
    for (int64_t l = 0; l < count; l++) {
        const duplex_layer* layer = &layers[l];
        const int64_t attn = layer->heads * layer->head_dim;
        const int64_t wanted[BLOCKS] = {rows * layer->dim, rows * 3 * attn, rows * 2 * attn, rows * attn,
                                        rows * used, threads * attention_scratch(length, used, layer->head_dim),
                                        rows * layer->dim};
        for (int i = 0; i < BLOCKS; i++) sizes[i] = wanted[i] > sizes[i] ? wanted[i] : sizes[i];
    }
    int status = 0;
    for (int i = 0; i < BLOCKS; i++) {
        const size_t bytes = (sizeof(float) * (size_t)sizes[i] + 63) / 64 * 64;
        scratch->block[i] = aligned_alloc(64, bytes > 0 ? bytes : 64);
        if (!scratch->block[i]) status = -2;
    }
    if (status != 0) scratch_free(scratch);
    return status;
}

/* The attention half of `layer` over x [batch * length, dim] (in place), then norm2(x) @ ff_in^T
 * into hidden [batch * length, hidden]. */
static void attention_half(const duplex_layer* layer, float* x, int64_t batch, int64_t length,
                           const int64_t* positions, const float* rotation, int64_t used, float* hidden,
                           const step_scratch* buffers, const torch_math* math, int threads) {
    const int64_t rows = batch * length, d = layer->dim, dh = layer->head_dim, heads = layer->heads;
    const int64_t width = 3 * heads * dh, cap = layer->capacity;
    float *normed = buffers->block[NORMED], *projected = buffers->block[PROJECTED], *qk = buffers->block[QK];
    float *attended = buffers->block[ATTENDED], *scratch = buffers->block[ATTENTION];
    unsigned char* allowed = (unsigned char*)buffers->block[ALLOWED];
    layer_norm(x, rows, d, layer->norm1_weight, layer->norm1_bias, layer->norm_eps, normed,
               (int)math->norm_lanes);
    duplex_linear_blas_order_f32(normed, d, layer->in_proj, NULL, projected, width, rows, width, d, threads);
    for (int64_t r = 0; r < rows; r++) { /* rotated Q and K, as torch's fresh [B, T, 2H, Dh] */
        const float* row = projected + r * width;
        float* out = qk + r * 2 * heads * dh;
        if (rotation)
            for (int64_t h = 0; h < 2 * heads; h++)
                rotate_pairs(row + h * dh, out + h * dh, dh / 2, rotation + r * dh, math->complex_pairs);
        else
            memcpy(out, row, sizeof(float) * 2 * heads * dh);
    }
    for (int64_t b = 0; b < batch; b++) {
        for (int64_t t = 0; t < length; t++) { /* the cache write, before attending */
            const int64_t r = b * length + t, position = positions[r], slot = position % cap;
            for (int64_t h = 0; h < heads; h++) {
                const int64_t at = ((b * heads + h) * cap + slot) * dh;
                memcpy(layer->keys + at, qk + r * 2 * heads * dh + (heads + h) * dh, sizeof(float) * dh);
                memcpy(layer->values + at, projected + r * width + (2 * heads + h) * dh, sizeof(float) * dh);
            }
            layer->slot_positions[b * cap + slot] = position;
        }
        if (layer->offsets) layer->offsets[b] += length;
        for (int64_t t = 0; t < length; t++) { /* the module's mask: written, causal, in context */
            const int64_t position = positions[b * length + t];
            for (int64_t s = 0; s < used; s++) {
                const int64_t key = layer->slot_positions[b * cap + s], delta = position - key;
                int visible = key >= 0;
                if (length > 1) visible = visible && delta >= 0 && (layer->context <= 0 || delta < layer->context);
                allowed[(b * length + t) * used + s] = (unsigned char)visible;
            }
        }
        attention(qk + b * length * 2 * heads * dh, 2 * heads * dh, layer->keys + b * heads * cap * dh,
                  layer->values + b * heads * cap * dh, cap * dh, allowed + b * length * used, length, used,
                  heads, dh, attended + b * length * heads * dh, scratch, math->sgemm,
                  (int)math->attention_lanes, threads);
    }
    float* update = buffers->block[UPDATE];
    duplex_linear_blas_order_f32(attended, heads * dh, layer->out_proj, NULL, update, d, rows, d,
                                 heads * dh, threads);
    add_scaled(x, update, layer->scale1, rows, d);
    layer_norm(x, rows, d, layer->norm2_weight, layer->norm2_bias, layer->norm_eps, normed,
               (int)math->norm_lanes);
    duplex_linear_blas_order_f32(normed, d, layer->ff_in, NULL, hidden, layer->hidden, rows,
                                 layer->hidden, d, threads);
}

/* Part `part` (0..count) of a streaming step over x [batch, length, dim] (in place): unless part
 * is 0, the end of layer part - 1 (x += scale2 * activated @ ff_out^T, `activated` being torch's
 * GELU of the hidden rows); unless part is count, layer part's attention half and its norm2 @
 * ff_in^T into `hidden`. positions [batch, length]; rotation [batch, length, head_dim / 2, 2]
 * (cos, sin) or NULL; used: the cache slots written once this step is. Returns 0, or < 0 when
 * out of memory or `math` cannot be followed here. */
static void run_part(const duplex_layer* layers, int64_t count, int64_t part, float* x, int64_t batch,
                     int64_t length, const int64_t* positions, const float* rotation, int64_t used,
                     const float* activated, float* hidden, const step_scratch* buffers, const torch_math* math,
                     int threads) {
    const int64_t rows = batch * length;
    if (part > 0) {
        const duplex_layer* layer = &layers[part - 1];
        float* update = buffers->block[UPDATE];
        duplex_linear_blas_order_f32(activated, layer->hidden, layer->ff_out, NULL, update, layer->dim, rows,
                                     layer->dim, layer->hidden, threads);
        add_scaled(x, update, layer->scale2, rows, layer->dim);
    }
    if (part < count)
        attention_half(&layers[part], x, batch, length, positions, rotation, used, hidden, buffers, math, threads);
}

int duplex_transformer_reference_part(const duplex_layer* layers, int64_t count, int64_t part, float* x,
                                      int64_t batch, int64_t length, const int64_t* positions,
                                      const float* rotation, int64_t used, const float* activated,
                                      float* hidden, const torch_math* math, int threads) {
    if (math->attention_lanes > MAX_LANES || math->norm_lanes > MAX_LANES) return -1;
    step_scratch buffers;
    if (scratch_alloc(&buffers, layers, count, batch, length, used, threads) != 0) return -2;
    run_part(layers, count, part, x, batch, length, positions, rotation, used, activated, hidden, &buffers, math,
             threads);
    scratch_free(&buffers);
    return 0;
}

/* A whole streaming step (every part, oneDNN's GELU between them in place), for where
 * math->onednn_gelu holds; `hidden` is scratch [batch * length, hidden]. */
int duplex_transformer_reference_step(const duplex_layer* layers, int64_t count, float* x, int64_t batch,
                                      int64_t length, const int64_t* positions, const float* rotation,
                                      int64_t used, float* hidden, const torch_math* math, int threads) {
    if (!math->onednn_gelu || math->attention_lanes > MAX_LANES || math->norm_lanes > MAX_LANES) return -1;
    step_scratch buffers;
    if (scratch_alloc(&buffers, layers, count, batch, length, used, threads) != 0) return -2;
    for (int64_t part = 0; part <= count; part++) {
        run_part(layers, count, part, x, batch, length, positions, rotation, used, hidden, hidden, &buffers, math,
                 threads);
        if (part < count) onednn_gelu(hidden, batch * length * layers[part].hidden);
    }
    scratch_free(&buffers);
    return 0;
}
