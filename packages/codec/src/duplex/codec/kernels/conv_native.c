/* Direct 1-D convolution in float32 for the long, narrow inputs of SEANet's first layers.
 *
 * torch's CPU convolution runs these shapes (64-256 channels, hundreds to thousands of frames per
 * streaming chunk) at a third of the matmul rate. Here each output tile of TIMES frames x CHANNELS
 * channels lives in vector registers while the loop runs over (input channel, tap): every step
 * broadcasts TIMES input samples and loads CHANNELS packed weights, for TIMES fused multiply-adds
 * of 16 lanes. Weights are packed once as [C_out / CHANNELS][C_in * K][CHANNELS].
 *
 * Each output is summed over (input channel, tap) in ascending order from its bias, whatever the
 * tiling or thread count.
 */
#include <stdint.h>
#include <string.h>

#include "duplex_vec16.h"

#ifdef __AVX512F__
#define TIMES 8 /* frames per tile */
#else
#define TIMES 6
#endif
#define CHANNELS 16

/* One tile: outputs [c0, c0 + CHANNELS) x [t0, t0 + times) of one batch item. */
static void tile(const float* x, int64_t t_in, int64_t in_channels, int64_t taps, int64_t stride,
                 int64_t dilation, const float* panel, const float* bias, float* y, int64_t t_out, int64_t c0,
                 int64_t t0, int times) {
    vec16 acc[TIMES];
    const vec16 b = bias ? load16(bias + c0) : splat16(0.0f);
    for (int i = 0; i < TIMES; i++) acc[i] = b;
    int64_t base[TIMES];
    for (int i = 0; i < TIMES; i++) base[i] = (t0 + (i < times ? i : 0)) * stride;
    for (int64_t ci = 0; ci < in_channels; ci++) {
        const float* row = x + ci * t_in;
        for (int64_t k = 0; k < taps; k++) {
            const vec16 w = load16(panel + (ci * taps + k) * CHANNELS);
            const int64_t offset = k * dilation;
            for (int i = 0; i < TIMES; i++) acc[i] += splat16(row[base[i] + offset]) * w;
        }
    }
    for (int lane = 0; lane < CHANNELS; lane++) {
        float* out = y + (c0 + lane) * t_out + t0;
        for (int i = 0; i < times; i++) out[i] = acc[i][lane];
    }
}

/* y [batch, out_channels, t_out] = conv(x [batch, in_channels, t_in]); out_channels % CHANNELS == 0. */
void duplex_conv1d_f32(const float* x, int64_t batch, int64_t in_channels, int64_t t_in, const float* panels,
                       const float* bias, float* y, int64_t out_channels, int64_t taps, int64_t stride,
                       int64_t dilation, int64_t t_out, int threads) {
    int64_t channel_tiles = out_channels / CHANNELS;
    int64_t time_tiles = (t_out + TIMES - 1) / TIMES;
    int64_t tiles = batch * channel_tiles * time_tiles;
    (void)threads;
#ifdef _OPENMP
#pragma omp parallel for schedule(static) num_threads(threads)
#endif
    for (int64_t index = 0; index < tiles; index++) {
        /* time varies fastest: a thread sweeps the frames with one weight panel in cache */
        int64_t tt = index % time_tiles, rest = index / time_tiles;
        int64_t ct = rest % channel_tiles, b = rest / channel_tiles;
        int64_t t0 = tt * TIMES;
        int times = t_out - t0 < TIMES ? (int)(t_out - t0) : TIMES;
        tile(x + b * in_channels * t_in, t_in, in_channels, taps, stride, dilation,
             panels + ct * in_channels * taps * CHANNELS, bias, y + b * out_channels * t_out, t_out, ct * CHANNELS,
             t0, times);
    }
}
