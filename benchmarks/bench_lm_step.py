"""One LMGen step (one 80 ms frame), ms per step: duplex vs the reference package, same weights.

    uv run python benchmarks/bench_lm_step.py                      # 341M model, batch 1 and 4
    uv run python benchmarks/bench_lm_step.py --batch 1 --steps 50 --threads 2
    uv run python benchmarks/bench_lm_step.py --smoke               # tiny model: checks the script
    uv run python benchmarks/bench_lm_step.py --long 20000          # also: 20 000 steps of the tiny
                                                                    # model, memory at intervals
    uv run python benchmarks/bench_lm_step.py --weights float32 bf16 int8   # low-precision weights

The model is the official structure (17 streams, 32000 text tokens, 2048 audio tokens, RMSNorm,
RoPE, SiLU-GLU, per-step depformer) scaled to dim 1024 / 8 layers / 16 heads with a 512-wide,
4-layer depformer (341M parameters), float32, sampling on (temp 0.8 / 0.7, top-k 250 / 25).
``--weights`` also times duplex with its matmul weights stored in bf16 or int8 (``LMModel.quantize``,
docs/nn-api.md; activations stay float32), each against the same reference float32 step.
Both implementations run the same weights (the reference's tensors alias ours); timings
alternate between them in rounds so that a busy machine penalises both alike. Each row is the
median over the timed steps, after a warm-up. The reference runs eager (its lazy torch.compile
of norms and RoPE is off, as on CPU it only adds compile time); ``--reference-compile`` turns it on.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import time

import torch
from duplex.lm.config import LMConfig
from duplex.lm.generate import LMGen
from duplex.lm.model import LMModel


def build(config: LMConfig, with_reference: bool):
    torch.manual_seed(0)
    model = LMModel(config).eval()
    reference = None
    if with_reference:
        try:
            from moshi.models.lm import LMModel as ReferenceLM
        except ImportError:
            print("reference package (moshi) not installed: timing duplex only")
        else:
            reference = ReferenceLM(**config.lm_kwargs(), device="meta").eval()
            reference.load_state_dict(model.state_dict(), strict=True, assign=True)
    return model, reference


def make_gen(model, reference: bool):
    kwargs = dict(use_sampling=True, temp=0.8, temp_text=0.7, top_k=250, top_k_text=25)
    if reference:
        from moshi.models.lm import LMGen as ReferenceGen

        return ReferenceGen(model, **kwargs)
    return LMGen(model, **kwargs)


def time_steps(gen, batch: int, frames: torch.Tensor, warmup: int) -> list[float]:
    times = []
    with gen.streaming(batch):
        for t, frame in enumerate(frames):
            start = time.perf_counter()
            gen.step(frame)
            if t >= warmup:
                times.append((time.perf_counter() - start) * 1e3)
    return times


def low_precision_copy(model: LMModel, weights: str) -> LMModel:
    if weights == "float32":
        return model
    copy = LMModel(model.config).eval()
    copy.load_state_dict(model.state_dict())
    return copy.quantize(weights)


def bench(
    config: LMConfig,
    batches: list[int],
    steps: int,
    warmup: int,
    rounds: int,
    with_reference: bool,
    weights: list[str],
):
    model, reference = build(config, with_reference)
    params = sum(p.numel() for p in model.parameters())
    print(f"model: {params / 1e6:.0f}M parameters, float32, {torch.get_num_threads()} threads")
    models = {name: low_precision_copy(model, name) for name in weights}
    rows = []
    for batch in batches:
        frames = torch.randint(0, config.card, (warmup + steps, batch, config.num_user_codebooks, 1))
        ours: dict[str, list[float]] = {name: [] for name in weights}
        theirs: list[float] = []
        for _ in range(rounds):
            for name, ours_model in models.items():
                ours[name] += time_steps(make_gen(ours_model, False), batch, frames, warmup)
            if reference is not None:
                theirs += time_steps(make_gen(reference, True), batch, frames, warmup)
        ref_ms = statistics.median(theirs) if theirs else None
        rows += [(batch, name, statistics.median(times), ref_ms) for name, times in ours.items()]
    print()
    print("| batch | duplex weights | duplex ms/step | reference float32 ms/step | duplex / reference |")
    print("|---:|---|---:|---:|---:|")
    for batch, name, ours_ms, ref_ms in rows:
        ref_cell = f"{ref_ms:.1f}" if ref_ms is not None else "-"
        ratio = f"{ours_ms / ref_ms:.2f}x" if ref_ms is not None else "-"
        print(f"| {batch} | {name} | {ours_ms:.1f} | {ref_cell} | {ratio} |")


def long_run(steps: int) -> None:
    """The tiny model far past its context: the resident memory must stay flat."""
    config = LMConfig.from_preset("tiny")
    model = LMModel(config).eval()
    gen = LMGen(model, top_k=10, top_k_text=5)
    frame = torch.zeros(1, config.num_user_codebooks, 1, dtype=torch.long)
    print(f"\n{steps} steps of the tiny model (context {config.context}): max RSS (MiB)")
    start = time.perf_counter()
    with gen.streaming(1):
        for t in range(1, steps + 1):
            gen.step(frame)
            if t in (100, 1000) or t % 5000 == 0:
                rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
                print(f"  step {t:6d}: {rss:.1f}")
    print(f"  {(time.perf_counter() - start) / steps * 1e3:.2f} ms/step")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--no-reference", action="store_true")
    parser.add_argument("--reference-compile", action="store_true")
    parser.add_argument("--smoke", action="store_true", help="tiny model, few steps")
    parser.add_argument("--long", type=int, default=0, metavar="STEPS", help="also run the memory check")
    parser.add_argument(
        "--weights", nargs="+", default=["float32"], choices=["float32", "bf16", "int8"],
        help="how duplex stores its matmul weights (each timed against the reference's float32)",
    )  # fmt: skip
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    if not args.reference_compile:
        os.environ.setdefault("NO_TORCH_COMPILE", "1")
    config = LMConfig.from_preset("tiny" if args.smoke else "moshi-341m")
    steps, warmup, rounds = (5, 1, 1) if args.smoke else (args.steps, args.warmup, args.rounds)
    with torch.no_grad():
        bench(config, args.batch, steps, warmup, rounds, not args.no_reference, args.weights)
        if args.long:
            long_run(args.long)


if __name__ == "__main__":
    main()
