/* One transformer layer as the C steps see it (transformer_native.c):
 * shapes, weights and the KV ring cache, as raw pointers into tensors the caller keeps alive.
 * Mirrored field for field by the ctypes.Structure LayerSpec in transformer_native.py. */
#ifndef DUPLEX_LAYER_H
#define DUPLEX_LAYER_H

#include <stdint.h>

#include "duplex_weight.h"

enum { NORM_LAYER = 0, NORM_RMS = 1 };
enum { FF_GELU = 0, FF_SILU_GATED = 1 };

typedef struct {
    int64_t dim, heads, kv_heads, head_dim, hidden, context; /* context <= 0: unlimited */
    int64_t norm, feedforward;
    float norm_eps, _pad;
    const float *norm1_weight, *norm1_bias, *norm2_weight, *norm2_bias; /* biases NULL for RMS */
    duplex_weight in_proj;  /* [(heads + 2 kv_heads) head_dim, dim]: rows Q, K, V */
    duplex_weight out_proj; /* [dim, heads head_dim] */
    duplex_weight ff_in;    /* [hidden, dim] (gelu) or [2 hidden, dim] (gated) */
    duplex_weight ff_out;   /* [dim, hidden] */
    const float *scale1, *scale2; /* layer scales [dim] or NULL */
    void *keys, *values;          /* ring cache [batch, kv_heads, capacity, head_dim], cache_kind */
    int64_t *slot_positions;      /* [batch, capacity]: position held by each slot, -1 if none */
    int64_t *offsets;             /* [batch]: steps seen by each item, advanced by length; or NULL */
    int64_t capacity;
    int64_t cache_kind; /* WEIGHT_F32 or WEIGHT_BF16: how keys and values are stored */
} duplex_layer;

#endif
