/* Direct 1-D convolution in float32 that sums in the order of oneDNN's x86 JIT kernels.
 *
 * torch runs SEANet's long streaming convolutions through oneDNN, reordering the weight into
 * oneDNN's blocked layout on every call (for Mimi's 6 MB conv that takes longer than the conv).
 * Where the reference-exact encode needs torch's very bits, this kernel gives them from a weight
 * packed once. oneDNN's orders, found by trial and checked against torch per shape before use:
 *   - a convolution with taps (jit:avx512_core): for each block of 16 input channels, a chain of
 *     fused multiply-adds from zero over (tap, channel of the block), taps outer; the output is
 *     the first block's chain plus the bias, then plus each later block's chain in turn;
 *   - a 1x1 convolution (jit_1x1): one chain of fused multiply-adds over the input channels,
 *     starting from the bias.
 * Each output tile of TIMES frames x 16 output channels lives in vector registers; weights are
 * packed as [C_out / 16][C_in / 16][K][16 input][16 output] (input channels zero-padded to 16).
 * The pragma makes `acc + a * w` one fused multiply-add (the host must have FMA: Python checks
 * the bits before use).
 */
#pragma GCC optimize("fp-contract=fast")
#include <stdint.h>
#include <string.h>

#include "duplex_vec8.h"

#define TIMES 6
#define VECS 2
#define CHANNELS (VECS * 8)
#define BLOCK 16 /* input channels per oneDNN block */

static void tile(const float* x, int64_t t_in, int64_t in_channels, int64_t taps, int64_t stride,
                 int64_t dilation, const float* panel, const float* bias, float* y, int64_t t_out, int64_t c0,
                 int64_t t0, int times, int one_by_one) {
    vec8 out[TIMES][VECS], acc[TIMES][VECS];
    int64_t base[TIMES];
    for (int i = 0; i < TIMES; i++) base[i] = (t0 + (i < times ? i : 0)) * stride;
    const int64_t blocks = (in_channels + BLOCK - 1) / BLOCK;
    for (int64_t block = 0; block < blocks; block++) {
        const int64_t first = block * BLOCK;
        const int64_t count = in_channels - first < BLOCK ? in_channels - first : BLOCK;
        for (int v = 0; v < VECS; v++) { /* 1x1: the chain goes on from the bias; else from zero */
            const vec8 start = one_by_one && bias ? load8(bias + c0 + 8 * v) : splat(0.0f);
            for (int i = 0; i < TIMES; i++) acc[i][v] = one_by_one && block > 0 ? out[i][v] : start;
        }
        const float* block_panel = panel + block * taps * BLOCK * CHANNELS;
        for (int64_t k = 0; k < taps; k++) {
            const int64_t offset = k * dilation;
            for (int64_t c = 0; c < count; c++) {
                const float* row = x + (first + c) * t_in + offset;
                const float* w = block_panel + (k * BLOCK + c) * CHANNELS;
                vec8 w0 = load8(w), w1 = load8(w + 8);
                for (int i = 0; i < TIMES; i++) {
                    vec8 a = splat(row[base[i]]);
                    acc[i][0] = acc[i][0] + a * w0;
                    acc[i][1] = acc[i][1] + a * w1;
                }
            }
        }
        for (int v = 0; v < VECS; v++) {
            vec8 b = bias ? load8(bias + c0 + 8 * v) : splat(0.0f);
            for (int i = 0; i < TIMES; i++) {
                if (one_by_one)
                    out[i][v] = acc[i][v];
                else if (block == 0)
                    out[i][v] = bias ? acc[i][v] + b : acc[i][v];
                else
                    out[i][v] = out[i][v] + acc[i][v];
            }
        }
    }
    for (int v = 0; v < VECS; v++)
        for (int lane = 0; lane < 8; lane++) {
            float* o = y + (c0 + 8 * v + lane) * t_out + t0;
            for (int i = 0; i < times; i++) o[i] = out[i][v][lane];
        }
}

/* y [batch, out_channels, t_out] = conv(x [batch, in_channels, t_in]); out_channels % 16 == 0;
 * one_by_one: the 1x1 order (taps 1), else the order with taps. */
void duplex_conv1d_onednn_order_f32(const float* x, int64_t batch, int64_t in_channels, int64_t t_in,
                                    const float* panels, const float* bias, float* y, int64_t out_channels,
                                    int64_t taps, int64_t stride, int64_t dilation, int64_t t_out, int one_by_one,
                                    int threads) {
    const int64_t channel_tiles = out_channels / CHANNELS, time_tiles = (t_out + TIMES - 1) / TIMES;
    const int64_t tiles = batch * channel_tiles * time_tiles;
    const int64_t panel_size = (in_channels + BLOCK - 1) / BLOCK * taps * BLOCK * CHANNELS;
    (void)threads;
#ifdef _OPENMP
#pragma omp parallel for schedule(static) num_threads(threads)
#endif
    for (int64_t index = 0; index < tiles; index++) {
        const int64_t tt = index % time_tiles, rest = index / time_tiles;
        const int64_t ct = rest % channel_tiles, b = rest / channel_tiles, t0 = tt * TIMES;
        const int times = t_out - t0 < TIMES ? (int)(t_out - t0) : TIMES;
        tile(x + b * in_channels * t_in, t_in, in_channels, taps, stride, dilation, panels + ct * panel_size, bias,
             y + b * out_channels * t_out, t_out, ct * CHANNELS, t0, times, one_by_one);
    }
}
