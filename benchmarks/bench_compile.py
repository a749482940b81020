"""A compiled fast LMGen step against the eager fast step and the reference, ms per step, one run.

    uv run python benchmarks/bench_compile.py                 # 341M structure, batch 1 and 4, Inductor
    uv run python benchmarks/bench_compile.py --smoke         # tiny model: checks the script
    uv run python benchmarks/bench_compile.py --backend aot_eager

The fast kernels are torch ops, so ``torch.compile(gen.step, fullgraph=True)`` captures the whole
step with them inside (on a CPU the native whole-step kernel gives way to the layers run op by op
while compiling: it reads the layers through pointers). Same weights, sampling on, float32; each
row is the median over the timed steps after a warm-up (compile time is reported apart). The
compiled step's tokens are checked equal to the eager step's on the same seeds.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch
from bench_lm_step import build, make_gen
from duplex.lm.config import LMConfig


def timed(step, frames: torch.Tensor) -> tuple[list[float], list]:  # noqa: ANN001
    times, outputs = [], []
    for frame in frames:
        start = time.perf_counter()
        outputs.append(step(frame))
        times.append((time.perf_counter() - start) * 1e3)
    return times, outputs


def run(model, reference, batch: int, steps: int, warmup: int, backend: str) -> dict[str, float]:  # noqa: ANN001
    frames = torch.randint(0, model.config.card, (warmup + steps, batch, model.config.num_user_codebooks, 1))
    result = {}
    outputs = {}
    for name in ("eager", "compiled"):
        gen = make_gen(model, False)
        with gen.streaming(batch):
            for row in range(batch):
                gen.set_seed(row, row + 1)
            step = gen.step
            if name == "compiled":
                torch._dynamo.reset()
                step = torch.compile(gen.step, fullgraph=True, backend=backend)
            times, outputs[name] = timed(step, frames)
        if name == "compiled":  # the warm-up steps hold the compilations
            result["compile_s"] = sum(times[:warmup]) / 1e3
        result[name] = statistics.median(times[warmup:])
    same = all(
        (a is None and b is None) or torch.equal(a, b)
        for a, b in zip(outputs["eager"], outputs["compiled"], strict=True)
    )
    result["same_tokens"] = same
    if reference is not None:
        gen = make_gen(reference, True)
        with gen.streaming(batch):
            result["reference"] = statistics.median(timed(gen.step, frames)[0][warmup:])
    return result


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--backend", default="inductor")
    parser.add_argument("--no-reference", action="store_true")
    parser.add_argument("--smoke", action="store_true", help="tiny model, few steps")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    os.environ.setdefault("NO_TORCH_COMPILE", "1")
    config = LMConfig.from_preset("tiny" if args.smoke else "moshi-341m")
    steps, warmup = (5, 2) if args.smoke else (args.steps, args.warmup)
    with torch.no_grad():
        model, reference = build(config, not args.no_reference)
        print(f"backend {args.backend}, {torch.get_num_threads()} threads, numerics fast, float32")
        print()
        print(
            "| batch | reference ms | eager fast ms | compiled fast ms | compiled / ref | compile s | same |"
        )
        print("|---:|---:|---:|---:|---:|---:|---|")
        for batch in args.batch:
            r = run(model, reference, batch, steps, warmup, args.backend)
            ref = r.get("reference")
            ratio = f"{r['compiled'] / ref:.2f}x" if ref else "-"
            ref_cell = f"{ref:.1f}" if ref else "-"
            print(
                f"| {batch} | {ref_cell} | {r['eager']:.1f} | {r['compiled']:.1f} | {ratio} | "
                f"{r['compile_s']:.0f} | {'yes' if r['same_tokens'] else 'no'} |"
            )


if __name__ == "__main__":
    main()
