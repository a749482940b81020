/* Direct 1-D convolution in float32 that sums in the order of the backend torch runs it on.
 *
 * Where the reference-exact encode needs torch's very bits, this kernel gives them from a weight
 * packed once, for the streaming shapes of SEANet. The orders, found by trial and checked against
 * torch per shape before use (Python):
 *   - ORDER_ONEDNN_TAPS, oneDNN's JIT convolution with taps (jit:avx512_core): for each block of 16
 *     input channels a chain of fused multiply-adds from zero over (tap, channel of the block), taps
 *     outer; the output is the first block's chain plus the bias, then plus each later one in turn;
 *   - ORDER_ONEDNN_1X1, oneDNN's 1x1 kernel: one chain over the input channels from the bias;
 *   - ORDER_BLAS_BLOCKS, torch's im2col + MKL sgemm (its "slow" convolution, which torch takes for
 *     short inputs): over the unfolded index p = channel * K + tap, chains of fused multiply-adds
 *     from zero over blocks of `block` indices; then the first block's sum plus the bias, plus
 *     each later block's in turn.
 * Each output tile of TIMES frames x 16 output channels lives in vector registers. The weight
 * comes packed as panels of 16 output channels: [C_out / 16][ceil(C_in / 16)][K][16 in][16 out]
 * for the oneDNN orders (input channels zero-padded), [C_out / 16][C_in * K][16 out] for the
 * BLAS order. The pragma makes `acc + a * w` one fused multiply-add (the host must have FMA:
 * Python checks the bits before use).
 */
#pragma GCC optimize("fp-contract=fast")
#include <stdint.h>
#include <string.h>

#include "duplex_vec16.h"

#ifdef __AVX512F__
#define TIMES 8 /* frames per tile: 2 x 8 accumulators in the 32 vector registers */
#else
#define TIMES 4
#endif
#define CHANNELS 16
#define BLOCK 16 /* input channels per oneDNN block */

enum { ORDER_ONEDNN_TAPS = 0, ORDER_ONEDNN_1X1 = 1, ORDER_BLAS_BLOCKS = 2 };

typedef struct {
    const float* x; /* [in_channels, t_in] of one batch item */
    int64_t t_in, in_channels, taps, stride, dilation, t_out;
    const float* bias; /* [out_channels] or NULL */
    int64_t block;     /* ORDER_BLAS_BLOCKS: unfolded indices per chain */
} conv_shape;

static inline vec16 bias_of(const conv_shape* s, int64_t c) {
    return s->bias ? load16(s->bias + c) : splat16(0.0f);
}

static void store_tile(vec16 out[TIMES], float* y, int64_t t_out, int64_t c0, int64_t t0, int times) {
    for (int lane = 0; lane < 16; lane++) {
        float* o = y + (c0 + lane) * t_out + t0;
        for (int i = 0; i < times; i++) o[i] = out[i][lane];
    }
}

/* The oneDNN orders: outputs [c0, c0 + 16) x [t0, t0 + times). */
static void tile_onednn(const conv_shape* s, const float* panel, float* y, int64_t c0, int64_t t0, int times,
                        int one_by_one) {
    vec16 out[TIMES], acc[TIMES];
    int64_t base[TIMES];
    for (int i = 0; i < TIMES; i++) base[i] = (t0 + (i < times ? i : 0)) * s->stride;
    const int64_t blocks = (s->in_channels + BLOCK - 1) / BLOCK;
    for (int64_t block = 0; block < blocks; block++) {
        const int64_t first = block * BLOCK;
        const int64_t count = s->in_channels - first < BLOCK ? s->in_channels - first : BLOCK;
        const vec16 start = one_by_one ? bias_of(s, c0) : splat16(0.0f); /* 1x1: on from the bias */
        for (int i = 0; i < TIMES; i++) acc[i] = one_by_one && block > 0 ? out[i] : start;
        const float* block_panel = panel + block * s->taps * BLOCK * CHANNELS;
        for (int64_t k = 0; k < s->taps; k++) {
            const int64_t offset = k * s->dilation;
            for (int64_t c = 0; c < count; c++) {
                const float* row = s->x + (first + c) * s->t_in + offset;
                const vec16 w0 = load16(block_panel + (k * BLOCK + c) * CHANNELS);
                for (int i = 0; i < TIMES; i++) acc[i] = acc[i] + splat16(row[base[i]]) * w0;
            }
        }
        const vec16 b = bias_of(s, c0);
        for (int i = 0; i < TIMES; i++) {
            if (one_by_one)
                out[i] = acc[i];
            else if (block == 0)
                out[i] = s->bias ? acc[i] + b : acc[i];
            else
                out[i] = out[i] + acc[i];
        }
    }
    store_tile(out, y, s->t_out, c0, t0, times);
}

/* The BLAS order: blocks of `block` unfolded indices p = channel * taps + tap. */
static void tile_blas(const conv_shape* s, const float* panel, float* y, int64_t c0, int64_t t0, int times) {
    vec16 out[TIMES], acc[TIMES];
    int64_t base[TIMES];
    for (int i = 0; i < TIMES; i++) base[i] = (t0 + (i < times ? i : 0)) * s->stride;
    const int64_t length = s->in_channels * s->taps;
    for (int64_t begin = 0; begin < length; begin += s->block) {
        const int64_t end = begin + s->block < length ? begin + s->block : length;
        for (int i = 0; i < TIMES; i++) acc[i] = splat16(0.0f);
        for (int64_t p = begin; p < end; p++) {
            const float* row = s->x + (p / s->taps) * s->t_in + (p % s->taps) * s->dilation;
            const vec16 w0 = load16(panel + p * CHANNELS);
            for (int i = 0; i < TIMES; i++) acc[i] = acc[i] + splat16(row[base[i]]) * w0;
        }
        const vec16 b = bias_of(s, c0);
        for (int i = 0; i < TIMES; i++)
            out[i] = begin == 0 ? (s->bias ? acc[i] + b : acc[i]) : out[i] + acc[i];
    }
    store_tile(out, y, s->t_out, c0, t0, times);
}

/* y [batch, out_channels, t_out] = conv(x [batch, in_channels, t_in]) in `order`;
 * out_channels % 16 == 0; block: the BLAS order's chain length. */
void duplex_conv1d_reference_order_f32(const float* x, int64_t batch, int64_t in_channels, int64_t t_in,
                                       const float* panels, const float* bias, float* y, int64_t out_channels,
                                       int64_t taps, int64_t stride, int64_t dilation, int64_t t_out, int order,
                                       int64_t block, int threads) {
    const int64_t channel_tiles = out_channels / CHANNELS, time_tiles = (t_out + TIMES - 1) / TIMES;
    const int64_t tiles = batch * channel_tiles * time_tiles;
    const int64_t panel_size = order == ORDER_BLAS_BLOCKS
                                   ? in_channels * taps * CHANNELS
                                   : (in_channels + BLOCK - 1) / BLOCK * taps * BLOCK * CHANNELS;
    (void)threads;
#ifdef _OPENMP
#pragma omp parallel for schedule(static) num_threads(threads)
#endif
    for (int64_t index = 0; index < tiles; index++) {
        const int64_t tt = index % time_tiles, rest = index / time_tiles;
        const int64_t ct = rest % channel_tiles, b = rest / channel_tiles, t0 = tt * TIMES;
        const int times = t_out - t0 < TIMES ? (int)(t_out - t0) : TIMES;
        const conv_shape s = {x + b * in_channels * t_in, t_in, in_channels, taps, stride, dilation, t_out, bias,
                              block};
        const float* panel = panels + ct * panel_size;
        float* out = y + b * out_channels * t_out;
        if (order == ORDER_BLAS_BLOCKS)
            tile_blas(&s, panel, out, ct * CHANNELS, t0, times);
        else
            tile_onednn(&s, panel, out, ct * CHANNELS, t0, times, order == ORDER_ONEDNN_1X1);
    }
}
