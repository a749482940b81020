/* 16-lane float vectors (GCC/Clang vector extensions): the 16 output channels of a convolution's
 * weight panel, one AVX-512 register or two AVX2 ones. native_build.py hashes the headers with
 * every library. */
#ifndef DUPLEX_VEC16_H
#define DUPLEX_VEC16_H

#include <string.h>

typedef float vec16 __attribute__((vector_size(64)));

static inline vec16 load16(const float* p) {
    vec16 v;
    memcpy(&v, p, sizeof v);
    return v;
}

static inline vec16 splat16(float a) { return (vec16){a, a, a, a, a, a, a, a, a, a, a, a, a, a, a, a}; }

#endif
