"""Few-row float32 matmuls, the products of streaming: duplex's native CPU kernel vs torch (BLAS).

    uv run python benchmarks/bench_linear.py                  # rows 1 to 64, 2 threads
    uv run python benchmarks/bench_linear.py --rows 1 4 --threads 1

For each set of weight shapes (the LM's temporal and depth transformers, Mimi's transformer)
it cycles through enough matrices (~200 MB or more) that every call reads its weight from memory,
as a streaming step does, and prints ms per pass and the weight-read rate in GB/s. Each cell is
the median of several passes; the two implementations alternate, so a busy machine slows both.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F
from duplex.codec.kernels import linear_native, select_kernels

SHAPES = {  # (out_features, in_features) of one layer, repeated
    "lm temporal (d 1024)": [(3072, 1024), (1024, 1024), (5632, 1024), (1024, 2816)],
    "lm depformer (d 512)": [(1536, 512), (512, 512), (2816, 512), (512, 1408)],
    "mimi transformer (d 512)": [(1536, 512), (512, 512), (2048, 512), (512, 2048)],
}


def weights_for(shapes: list[tuple[int, int]], megabytes: float) -> list[torch.Tensor]:
    per_layer = sum(n * k for n, k in shapes) * 4 / 1e6
    layers = max(1, round(megabytes / per_layer))
    generator = torch.Generator().manual_seed(0)
    return [torch.randn(n, k, generator=generator) for _ in range(layers) for n, k in shapes]


def timed_pass(weights: list[torch.Tensor], inputs: dict[int, torch.Tensor], backend: str) -> float:
    linear = select_kernels("fast", "cpu", backend=backend).linear
    start = time.perf_counter()
    for weight in weights:
        linear(inputs[weight.shape[1]], weight)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, nargs="+", default=[1, 2, 4, 8, 16, 32, 64])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--megabytes", type=float, default=200.0, help="weights cycled per pass")
    parser.add_argument("--passes", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    print(f"float32, {args.threads} threads, torch {torch.__version__}")
    print(f"{'shapes':26s} | {'rows':>4s} | {'native ms (GB/s)':>17s} | {'torch ms (GB/s)':>17s} | speed-up")
    print(f"{'-' * 26}-+------+-------------------+-------------------+---------")
    with torch.no_grad():
        for name, shapes in SHAPES.items():
            weights = weights_for(shapes, args.megabytes)
            gigabytes = sum(w.numel() for w in weights) * 4 / 1e9
            for rows in args.rows:
                inputs = {k: torch.randn(rows, k) for k in {k for _, k in shapes}}
                for weight in weights[: len(shapes)]:  # the two agree before they are timed
                    x = inputs[weight.shape[1]]
                    expected = F.linear(x.double(), weight.double()).float()
                    fast = select_kernels("fast", "cpu").linear
                    torch.testing.assert_close(fast(x, weight), expected, rtol=1e-4, atol=1e-3)
                times: dict[str, list[float]] = {"native": [], "torch": []}
                backends = ("native", "torch") if rows <= linear_native.MAX_ROWS else ("torch",)
                for backend in backends:
                    timed_pass(weights, inputs, backend)  # warm-up
                for _ in range(args.passes):
                    for backend in backends:
                        times[backend].append(timed_pass(weights, inputs, backend))
                cells = {}
                for backend in ("native", "torch"):
                    if times[backend]:
                        seconds = statistics.median(times[backend])
                        cells[backend] = (seconds, f"{seconds * 1e3:7.1f} ({gigabytes / seconds:4.1f})")
                    else:
                        cells[backend] = (None, "declined (BLAS)")
                native, ours = cells["native"]
                torch_seconds, theirs = cells["torch"]
                speedup = f"{torch_seconds / native:.2f}x" if native else "-"
                print(f"{name:26s} | {rows:4d} | {ours:>17s} | {theirs:>17s} | {speedup:>7s}")


if __name__ == "__main__":
    main()
