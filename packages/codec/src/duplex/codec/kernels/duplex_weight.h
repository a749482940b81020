/* A matmul weight [n, k] as the C kernels read it: float32, bfloat16, or int8 with float32 scales
 * (weight-only quantization: w[i, j] = values[i, j] * scales[i, j / group]). Mirrored by the
 * ctypes.Structure WeightSpec in linear_native.py. native_build.py hashes the headers with every
 * library. */
#ifndef DUPLEX_WEIGHT_H
#define DUPLEX_WEIGHT_H

#include <stdint.h>
#include <string.h>

#include "duplex_vec8.h"
#if defined(__AVX2__)
#include <immintrin.h>
#endif

enum { WEIGHT_F32 = 0, WEIGHT_BF16 = 1, WEIGHT_INT8 = 2 };

typedef struct {
    const void* data;    /* [n, k] rows of the kind's element type */
    const float* scales; /* int8: [n, k / group]; NULL otherwise */
    int64_t kind;        /* WEIGHT_* */
    int64_t group;       /* int8: columns sharing a scale, a multiple of 8 dividing k (k: one per row) */
} duplex_weight;

typedef uint16_t u16x8 __attribute__((vector_size(16)));
typedef uint32_t u32x8 __attribute__((vector_size(32)));
typedef int8_t i8x8 __attribute__((vector_size(8)));
typedef int32_t i32x8 __attribute__((vector_size(32)));

static inline int64_t weight_element_size(int kind) { return kind == WEIGHT_F32 ? 4 : kind == WEIGHT_BF16 ? 2 : 1; }

/* Eight consecutive elements of a weight row as float32 (bfloat16 is float32's upper half). */
static inline __attribute__((always_inline)) vec8 weight8(const char* row, int64_t k, int kind) {
    if (kind == WEIGHT_F32) return load8((const float*)row + k);
#if defined(__AVX2__) /* a widening load and one more op each (compilers split these loads in parts) */
    __m256 wide;
    if (kind == WEIGHT_BF16)
        wide = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i*)(row + 2 * k))), 16));
    else
        wide = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i*)(row + k))));
    vec8 v;
    memcpy(&v, &wide, sizeof v);
    return v;
#else
    if (kind == WEIGHT_BF16) {
        u16x8 half;
        memcpy(&half, row + 2 * k, sizeof half);
        u32x8 bits = __builtin_convertvector(half, u32x8) << 16;
        vec8 v;
        memcpy(&v, &bits, sizeof v);
        return v;
    }
    i8x8 q;
    memcpy(&q, row + k, sizeof q);
    return __builtin_convertvector(__builtin_convertvector(q, i32x8), vec8);
#endif
}

static inline __attribute__((always_inline)) float weight1(const char* row, int64_t k, int kind) {
    if (kind == WEIGHT_F32) return ((const float*)row)[k];
    if (kind == WEIGHT_BF16) {
        uint32_t bits = (uint32_t)((const uint16_t*)row)[k] << 16;
        float v;
        memcpy(&v, &bits, sizeof v);
        return v;
    }
    return (float)((const int8_t*)row)[k];
}

/* float32 -> bfloat16, rounding to nearest even (as torch does); NaN stays NaN. */
static inline uint16_t to_bf16(float v) {
    uint32_t bits;
    memcpy(&bits, &v, sizeof bits);
    if ((bits & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((bits >> 16) | 0x40);
    bits += 0x7fffu + ((bits >> 16) & 1u);
    return (uint16_t)(bits >> 16);
}

#endif
