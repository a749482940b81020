/* 8-lane float vectors (GCC/Clang vector extensions; the compiler maps them to the host's SIMD
 * unit), shared by the C kernels. native_build.py hashes the headers with every library. */
#ifndef DUPLEX_VEC8_H
#define DUPLEX_VEC8_H

#include <string.h>

typedef float vec8 __attribute__((vector_size(32)));

static inline vec8 load8(const float* p) {
    vec8 v;
    memcpy(&v, p, sizeof v);
    return v;
}

static inline vec8 splat(float a) { return (vec8){a, a, a, a, a, a, a, a}; }

/* The lanes' sum in a fixed order, so that a result never depends on the caller. */
static inline float lanes_sum(vec8 v) {
    return ((v[0] + v[4]) + (v[2] + v[6])) + ((v[1] + v[5]) + (v[3] + v[7]));
}

#endif
