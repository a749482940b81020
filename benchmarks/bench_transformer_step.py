"""Streaming transformer step time: duplex.codec.nn vs the reference (moshi) in one run.

Two hot paths, float32 on CPU:
  * lm:   one position per call, d 1024, 8 layers, 16 heads, SiLU-GLU, RMSNorm f32, RoPE,
          context 3000; measured with an empty cache and with a full ring (3000 positions)
  * mimi: two positions per call, d 512, 8 layers, 8 heads, GELU MLP, LayerNorm, RoPE,
          layer scale, context 250, after 250 positions (full ring)
  * lm-tiny / mimi-tiny: the same with d 64 (4 heads), where the weights cost nothing: the
          per-call overhead of the framework (op count, masks, cache bookkeeping)

Each model is timed twice, alternating, and the better median is kept (shared machines drift).

    uv run python benchmarks/bench_transformer_step.py [--threads 2] [--calls 30] [--batch 1 2 4]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from duplex.codec.kernels import select_kernels, use_kernels
from duplex.codec.nn import StreamingTransformer, TransformerConfig
from moshi.modules.transformer import StreamingTransformer as RefTransformer

SHAPES = {
    "lm": dict(
        d_model=1024, num_heads=16, num_layers=8, dim_feedforward=4224, context=3000, gating="silu",
        norm="rms_norm_f32", positional_embedding="rope",
    ),
    "mimi": dict(
        d_model=512, num_heads=8, num_layers=8, dim_feedforward=2048, context=250, gating="none",
        norm="layer_norm", positional_embedding="rope", layer_scale=0.01,
    ),
}  # fmt: skip
SHAPES["lm-tiny"] = dict(SHAPES["lm"], d_model=64, num_heads=4, dim_feedforward=264)
SHAPES["mimi-tiny"] = dict(SHAPES["mimi"], d_model=64, num_heads=4, dim_feedforward=256)
STEPS_PER_CALL = {"lm": 1, "mimi": 2, "lm-tiny": 1, "mimi-tiny": 2}


def time_calls(
    model: torch.nn.Module, batch: int, dim: int, per_call: int, prefill: int, calls: int
) -> float:
    """Median ms per streaming call after ``prefill`` positions (fed in large chunks)."""
    chunk = 500
    with torch.no_grad(), model.streaming(batch):
        for start in range(0, prefill, chunk):
            model(torch.randn(batch, min(chunk, prefill - start), dim))
        for _ in range(3):
            model(torch.randn(batch, per_call, dim))
        times = []
        for _ in range(calls):
            x = torch.randn(batch, per_call, dim)
            start = time.perf_counter()
            model(x)
            times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--calls", type=int, default=30)
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--shapes", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    print(f"torch {torch.__version__}, {args.threads} threads, float32, median ms per call")
    header = ("shape", "batch", "steps/call", "cache", "reference", "duplex", "speedup")
    print("{:<9} {:>5} {:>10} {:>6} {:>10} {:>8} {:>8}".format(*header))
    for name in args.shapes:
        kwargs = SHAPES[name]
        torch.manual_seed(0)
        ref = RefTransformer(causal=True, **kwargs).eval()
        ours = StreamingTransformer(TransformerConfig(**kwargs)).eval()
        ours.load_state_dict(ref.state_dict(), strict=True)
        use_kernels(ours, select_kernels("fast", "cpu"))  # what a model with numerics="fast" selects
        prefills = [0, kwargs["context"]] if name.startswith("lm") else [kwargs["context"]]
        for batch in args.batch:
            for prefill in prefills:
                per_call = STEPS_PER_CALL[name]
                ref_ms, our_ms = float("inf"), float("inf")
                for _ in range(2):
                    ref_ms = min(
                        ref_ms, time_calls(ref, batch, kwargs["d_model"], per_call, prefill, args.calls)
                    )
                    our_ms = min(
                        our_ms, time_calls(ours, batch, kwargs["d_model"], per_call, prefill, args.calls)
                    )
                print(
                    f"{name:<9} {batch:>5} {per_call:>10} {prefill:>6} {ref_ms:>10.2f} {our_ms:>8.2f} "
                    f"{ref_ms / our_ms:>7.2f}x"
                )


if __name__ == "__main__":
    main()
