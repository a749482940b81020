/* One streaming step of a pre-norm transformer, all layers in one call, float32 activations on the
 * CPU (weights float32, bfloat16 or int8: duplex_weight.h).
 *
 * A streaming step of Mimi's or the LM's transformers works on a few rows (batch x new steps):
 * its matmuls read each weight once (duplex_linear, linear_native.c) and everything between
 * them (norms, rotary embedding, attention over the KV cache, activations, residuals) is small.
 * Done with torch ops, that small work costs tens of microseconds per op in dispatch alone, more
 * than the arithmetic; here it is plain loops over the rows.
 *
 * Per layer: x += scale1 * out_proj(attention(norm1(x)))  then  x += scale2 * ff(norm2(x)),
 * where ff is linear2(gelu(linear1(h))) or linear_out(silu(gate) * value) with
 * [gate | value] = linear_in(h). The new keys and values are written into the layer's ring cache
 * (slot = position % capacity) before attending, as the torch path does; a query attends to the
 * written slots at or before its position and within the context.
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include "duplex_team.h"

#include "duplex_vec8.h"

#include "duplex_layer.h"

void duplex_linear(const float* x, int64_t ldx, const duplex_weight* w, const float* bias, float* y, int64_t ldy,
                   int64_t m_count, int64_t n_count, int64_t k_count, int threads);

/* a . b, with b a cached key stored as `kind` (float32 or bfloat16) */
static float dot(const float* a, const void* b, int64_t n, int kind) {
    vec8 acc = {0};
    int64_t i = 0;
    if (kind == WEIGHT_F32)
        for (; i + 8 <= n; i += 8) acc += load8(a + i) * load8((const float*)b + i);
    else
        for (; i + 8 <= n; i += 8) acc += load8(a + i) * weight8((const char*)b, i, WEIGHT_BF16);
    float s = lanes_sum(acc);
    for (; i < n; i++) s += a[i] * weight1((const char*)b, i, kind);
    return s;
}

/* n cache values from float32 `from` into the cache's storage at element `at` */
static void store(void* cache, int64_t at, const float* from, int64_t n, int kind) {
    if (kind == WEIGHT_F32) {
        memcpy((float*)cache + at, from, n * sizeof(float));
        return;
    }
    uint16_t* to = (uint16_t*)cache + at;
    for (int64_t i = 0; i < n; i++) to[i] = to_bf16(from[i]);
}

static void normalize(const duplex_layer* layer, const float* weight, const float* bias, const float* x,
                      float* y, int64_t rows) {
    const int64_t d = layer->dim;
    for (int64_t r = 0; r < rows; r++) {
        const float* xr = x + r * d;
        float* yr = y + r * d;
        if (layer->norm == NORM_LAYER) {
            double sum = 0, squares = 0;
            for (int64_t i = 0; i < d; i++) sum += xr[i];
            const float mean = (float)(sum / d);
            for (int64_t i = 0; i < d; i++) squares += (double)(xr[i] - mean) * (xr[i] - mean);
            const float inv = 1.0f / sqrtf((float)(squares / d) + layer->norm_eps);
            for (int64_t i = 0; i < d; i++) yr[i] = (xr[i] - mean) * inv * weight[i] + bias[i];
        } else {
            double squares = 0;
            for (int64_t i = 0; i < d; i++) squares += (double)xr[i] * xr[i];
            const float inv = 1.0f / sqrtf((float)(squares / d) + layer->norm_eps);
            for (int64_t i = 0; i < d; i++) yr[i] = xr[i] * inv * weight[i];
        }
    }
}

/* Interleaved pairs (x[2i], x[2i+1]) of each Q and K head, as complex numbers times exp(i angle). */
static void rotate(float* qkv, int64_t width, int64_t rows, int64_t rotated_heads, int64_t head_dim,
                   const float* cos_table, const float* sin_table) {
    const int64_t half = head_dim / 2;
    for (int64_t r = 0; r < rows; r++) {
        const float* c = cos_table + r * half;
        const float* s = sin_table + r * half;
        for (int64_t h = 0; h < rotated_heads; h++) {
            float* v = qkv + r * width + h * head_dim;
            for (int64_t i = 0; i < half; i++) {
                const float a = v[2 * i], b = v[2 * i + 1];
                v[2 * i] = a * c[i] - b * s[i];
                v[2 * i + 1] = a * s[i] + b * c[i];
            }
        }
    }
}

static void write_cache(const duplex_layer* layer, const float* qkv, int64_t width, int64_t batch,
                        int64_t length, const int64_t* positions) {
    const int64_t dh = layer->head_dim, kvh = layer->kv_heads, cap = layer->capacity;
    const int64_t k_offset = layer->heads * dh, v_offset = k_offset + kvh * dh;
    for (int64_t b = 0; b < batch; b++) {
        for (int64_t t = 0; t < length; t++) {
            const int64_t position = positions[b * length + t];
            const int64_t slot = position % cap;
            const float* row = qkv + (b * length + t) * width;
            for (int64_t h = 0; h < kvh; h++) {
                int64_t at = ((b * kvh + h) * cap + slot) * dh;
                store(layer->keys, at, row + k_offset + h * dh, dh, layer->cache_kind);
                store(layer->values, at, row + v_offset + h * dh, dh, layer->cache_kind);
            }
            layer->slot_positions[b * cap + slot] = position;
        }
        if (layer->offsets) layer->offsets[b] += length;
    }
}

static void attend(const duplex_layer* layer, const float* qkv, int64_t width, float* out, int64_t batch,
                   int64_t length, const int64_t* positions, int64_t used, int threads) {
    const int64_t dh = layer->head_dim, heads = layer->heads, kvh = layer->kv_heads;
    const int64_t cap = layer->capacity, group = heads / kvh, context = layer->context;
    const float scale = 1.0f / sqrtf((float)dh);
    const int64_t tasks = batch * heads;
    /* one thread is faster when there is little to do (short caches) */
    const int team = used * dh * length * tasks >= (1 << 16) ? threads : 1;
#ifdef _OPENMP
#pragma omp parallel num_threads(team)
#endif
    {
        float scores[used > 0 ? used : 1]; /* at most the cache capacity: a few KiB */
#ifdef _OPENMP
#pragma omp for schedule(static)
#endif
        for (int64_t task = 0; task < tasks; task++) {
            const int64_t b = task / heads, h = task % heads, kv = h / group;
            const int kind = (int)layer->cache_kind;
            const int64_t size = weight_element_size(kind), head = (b * kvh + kv) * cap * dh;
            const char* keys = (const char*)layer->keys + head * size;
            const char* values = (const char*)layer->values + head * size;
            const int64_t* slots = layer->slot_positions + b * cap;
            for (int64_t t = 0; t < length; t++) {
                const int64_t row = b * length + t, position = positions[row];
                const float* q = qkv + row * width + h * dh;
                float best = -INFINITY;
                for (int64_t s = 0; s < used; s++) {
                    const int64_t key = slots[s];
                    const int visible =
                        key >= 0 && key <= position && (context <= 0 || position - key < context);
                    scores[s] = visible ? dot(q, keys + s * dh * size, dh, kind) * scale : -INFINITY;
                    if (scores[s] > best) best = scores[s];
                }
                float* o = out + row * heads * dh + h * dh;
                memset(o, 0, dh * sizeof(float));
                if (best == -INFINITY) continue; /* nothing visible: zeros (cannot happen when causal) */
                float total = 0;
                for (int64_t s = 0; s < used; s++) {
                    scores[s] = scores[s] == -INFINITY ? 0.0f : expf(scores[s] - best);
                    total += scores[s];
                }
                const float inv = 1.0f / total;
                for (int64_t s = 0; s < used; s++) {
                    if (scores[s] == 0.0f) continue;
                    const float p = scores[s] * inv;
                    const char* v = values + s * dh * size;
                    if (kind == WEIGHT_F32)
                        for (int64_t i = 0; i < dh; i++) o[i] += p * ((const float*)v)[i];
                    else
                        for (int64_t i = 0; i < dh; i++) o[i] += p * weight1(v, i, WEIGHT_BF16);
                }
            }
        }
    }
}

static void add_scaled(float* x, const float* update, const float* scale, int64_t rows, int64_t d) {
    for (int64_t r = 0; r < rows; r++)
        for (int64_t i = 0; i < d; i++) x[r * d + i] += scale ? scale[i] * update[r * d + i] : update[r * d + i];
}

static void feedforward_activation(const duplex_layer* layer, float* hidden, float* activated, int64_t rows) {
    const int64_t n = layer->hidden;
    for (int64_t r = 0; r < rows; r++) {
        if (layer->feedforward == FF_GELU) {
            float* u = hidden + r * n;
            for (int64_t i = 0; i < n; i++) activated[r * n + i] = 0.5f * u[i] * (1.0f + erff(u[i] * (float)M_SQRT1_2));
        } else {
            const float* gate = hidden + r * 2 * n;
            const float* value = gate + n;
            for (int64_t i = 0; i < n; i++) activated[r * n + i] = gate[i] / (1.0f + expf(-gate[i])) * value[i];
        }
    }
}

/* x [batch, length, dim] is updated in place. positions [batch, length]: absolute positions of
 * the new steps; rope_cos / rope_sin [batch, length, head_dim / 2] or NULL (no rotary embedding);
 * used: cache slots to scan after this step's write (slots at or beyond it were never written).
 * Returns 0, or -1 when scratch memory cannot be allocated (x is then unchanged). */
int duplex_transformer_step(const duplex_layer* layers, int64_t layer_count, float* x, int64_t batch,
                            int64_t length, const int64_t* positions, const float* rope_cos,
                            const float* rope_sin, int64_t used, int threads) {
    const int64_t rows = batch * length;
    int64_t widest = 0;
    for (int64_t l = 0; l < layer_count; l++) {
        const duplex_layer* layer = &layers[l];
        int64_t qkv = (layer->heads + 2 * layer->kv_heads) * layer->head_dim;
        int64_t ff = (layer->feedforward == FF_GELU ? 1 : 2) * layer->hidden;
        int64_t w = qkv > ff ? qkv : ff;
        if (layer->dim > w) w = layer->dim;
        if (w > widest) widest = w;
    }
    const int64_t dim = layers[0].dim;
    float* normed = malloc((size_t)(rows * dim) * sizeof(float));
    float* wide = malloc((size_t)(rows * widest) * sizeof(float));
    float* narrow = malloc((size_t)(rows * widest) * sizeof(float));
    float* update = malloc((size_t)(rows * dim) * sizeof(float));
    int status = normed && wide && narrow && update ? 0 : -1;
    for (int64_t l = 0; l < layer_count && status == 0; l++) {
        const duplex_layer* layer = &layers[l];
        const int64_t d = layer->dim, dh = layer->head_dim;
        const int64_t qkv_width = (layer->heads + 2 * layer->kv_heads) * dh;
        const int64_t attn_width = layer->heads * dh;

        normalize(layer, layer->norm1_weight, layer->norm1_bias, x, normed, rows);
        duplex_linear(normed, d, &layer->in_proj, NULL, wide, qkv_width, rows, qkv_width, d, threads);
        if (rope_cos)
            rotate(wide, qkv_width, rows, layer->heads + layer->kv_heads, dh, rope_cos, rope_sin);
        write_cache(layer, wide, qkv_width, batch, length, positions);
        attend(layer, wide, qkv_width, narrow, batch, length, positions, used, threads);
        duplex_linear(narrow, attn_width, &layer->out_proj, NULL, update, d, rows, d, attn_width, threads);
        add_scaled(x, update, layer->scale1, rows, d);

        normalize(layer, layer->norm2_weight, layer->norm2_bias, x, normed, rows);
        const int64_t ff_width = (layer->feedforward == FF_GELU ? 1 : 2) * layer->hidden;
        duplex_linear(normed, d, &layer->ff_in, NULL, wide, ff_width, rows, ff_width, d, threads);
        feedforward_activation(layer, wide, narrow, rows);
        duplex_linear(narrow, layer->hidden, &layer->ff_out, NULL, update, d, rows, d, layer->hidden, threads);
        add_scaled(x, update, layer->scale2, rows, d);
    }
    free(normed);
    free(wide);
    free(narrow);
    free(update);
    return status;
}
