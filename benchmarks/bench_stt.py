"""Streaming speech recognition: one STT LMGen step (one 80 ms frame), duplex vs the reference package,
and how many real-time streams this CPU sustains.

    uv run python benchmarks/bench_stt.py                          # stt-1b structure, batch 1 4 8, float32
    uv run python benchmarks/bench_stt.py --dtype bfloat16 --steps 5 --warmup 2
    uv run python benchmarks/bench_stt.py --batch 1 --no-streams   # the comparison only
    uv run python benchmarks/bench_stt.py --smoke                  # tiny-stt: checks the script
    uv run python benchmarks/bench_stt.py --quantize int8 --streams-dim 2048 --streams-layers 16 \
        --streams-heads 16                                         # int8 weights, the full stt-1b

Part 1, "LM step": the ``stt-1b`` preset (Kyutai's stt-1b-en_fr structure: dim 2048, 16 layers,
16 heads, 32 audio codebooks read, no depformer, 4 extra semantic-VAD heads, 8000 text tokens)
with random weights, greedy. Both implementations run the same weights (the reference's tensors
alias ours: it is built on the meta device and loaded with ``assign=True``, so 1B parameters are
held once), call ``step_with_extra_heads`` on random codes ``[B, 32, 1]``, and alternate in rounds so
that a busy machine penalises both alike. Mimi is excluded: this is the LM step only. Each row is
the median over the timed steps, after a warm-up; the ratio is duplex / reference (target <= 0.5x).
The reference runs eager (its lazy torch.compile is off, as on CPU it only adds compile time);
``--reference-compile`` turns it on.

Part 2, "real-time streams": the stt-1b structure scaled to what runs here (``--streams-dim`` 512,
``--streams-layers`` 8, ``--streams-heads`` 8 by default; still 32 codebooks x 2048 bins, 8000 text
tokens, extra heads), duplex only, float32, with the official-size Mimi (random, uncalibrated
weights, 32 codebooks: its codes are all 0, which costs the same) streaming-encoding one 1920-sample
frame per row before each step, as ``duplex.lm.transcriber.Transcriber`` does. Batch sizes grow
until a step takes longer than ``--budget-ms`` (80 ms: one frame of audio); the largest batch under
it is the number of streams this CPU transcribes in real time.

``--quantize bf16|int8`` stores duplex's matmul weights in low precision (``LMModel.quantize``,
docs/nn-api.md) in both parts; the reference keeps the float weights.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch
from duplex.lm.config import LMConfig
from duplex.lm.generate import LMGen
from duplex.lm.model import LMModel

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def count(parameters) -> str:
    n = sum(p.numel() for p in parameters)
    return f"{n / 1e6:.1f}M" if n >= 100_000 else f"{n / 1e3:.1f}k"


def build(config: LMConfig, dtype: torch.dtype, with_reference: bool, quantize: str | None = None):
    torch.manual_seed(0)
    model = LMModel(config).eval().to(dtype)
    reference = None
    if with_reference:
        try:
            from moshi.models.loaders import get_moshi_lm
        except ImportError:
            print("reference package (moshi) not installed: timing duplex only")
        else:
            reference = get_moshi_lm(None, lm_kwargs=config.lm_kwargs(), device="meta", dtype=dtype)
            reference.load_state_dict(model.state_dict(), strict=True, assign=True)
            reference.eval()
    if quantize is not None:
        model.quantize(quantize)
    return model, reference


def make_gen(model, reference: bool):
    if reference:
        from moshi.models.lm import LMGen as ReferenceGen

        return ReferenceGen(model, use_sampling=False, temp=0, temp_text=0)
    return LMGen(model, use_sampling=False)


def time_steps(gen, batch: int, frames: torch.Tensor, warmup: int) -> list[float]:
    times = []
    with gen.streaming(batch):
        for t, frame in enumerate(frames):
            start = time.perf_counter()
            gen.step_with_extra_heads(frame)
            if t >= warmup:
                times.append((time.perf_counter() - start) * 1e3)
    return times


def bench_lm(
    config: LMConfig,
    dtype: torch.dtype,
    batches: list[int],
    steps: int,
    warmup: int,
    rounds: int,
    with_reference: bool,
    quantize: str | None = None,
) -> None:
    start = time.perf_counter()
    model, reference = build(config, dtype, with_reference, quantize)
    print(
        f"LM step: {count(model.parameters())} parameters (dim {config.dim}, {config.num_layers} layers, "
        f"{config.n_q} codebooks in), {str(dtype).removeprefix('torch.')}, "
        f"{torch.get_num_threads()} threads, {warmup} warm-up + {steps} timed steps x {rounds} rounds "
        f"(built in {time.perf_counter() - start:.0f} s); Mimi not included"
    )
    rows = []
    for batch in batches:
        torch.manual_seed(batch)
        frames = torch.randint(0, config.card, (warmup + steps, batch, config.num_user_codebooks, 1))
        ours, theirs = [], []
        for _ in range(rounds):
            ours += time_steps(make_gen(model, False), batch, frames, warmup)
            if reference is not None:
                theirs += time_steps(make_gen(reference, True), batch, frames, warmup)
        rows.append((batch, statistics.median(ours), statistics.median(theirs) if theirs else None))
        print(f"  batch {batch}: done", flush=True)
    print()
    print("| batch | duplex ms/step | reference ms/step | duplex / reference |")
    print("|---:|---:|---:|---:|")
    for batch, ours_ms, ref_ms in rows:
        ref_cell = f"{ref_ms:.1f}" if ref_ms is not None else "-"
        ratio = f"{ours_ms / ref_ms:.2f}x" if ref_ms is not None else "-"
        print(f"| {batch} | {ours_ms:.1f} | {ref_cell} | {ratio} |")
    del model, reference


def bench_streams(
    config: LMConfig,
    mimi_preset: str,
    batches: list[int],
    steps: int,
    warmup: int,
    budget_ms: float,
    quantize: str | None = None,
) -> None:
    from duplex.codec import MimiConfig
    from duplex.codec.codecs import codec_class

    torch.manual_seed(0)
    mimi = codec_class("mimi")(MimiConfig.from_preset(mimi_preset)).eval()
    mimi.set_num_codebooks(config.num_user_codebooks)
    model = LMModel(config).eval()
    parameters = count(model.parameters())
    if quantize is not None:
        model.quantize(quantize)
    print(
        f"\nReal-time streams: STT LM dim {config.dim}, {config.num_layers} layers, {config.num_heads} "
        f"heads ({parameters} parameters, {config.n_q} codebooks x {config.card} bins) + Mimi "
        f"{mimi_preset!r} ({count(mimi.parameters())} parameters, {mimi.num_codebooks} codebooks), "
        f"float32, weights {quantize or 'float32'}, {torch.get_num_threads()} threads, "
        f"{warmup} warm-up + {steps} timed steps; "
        f"budget {budget_ms:.0f} ms per step"
    )
    rows = []
    for batch in batches:
        audio = torch.randn(
            batch, 1, (warmup + steps) * mimi.frame_size, generator=torch.Generator().manual_seed(batch)
        )
        audio = 0.1 * audio
        gen = LMGen(model, use_sampling=False)
        encode_ms, total_ms = [], []
        with torch.no_grad(), mimi.streaming(batch), gen.streaming(batch):
            for t in range(warmup + steps):
                frame = audio[..., t * mimi.frame_size : (t + 1) * mimi.frame_size]
                start = time.perf_counter()
                codes = mimi.encode(frame)[:, : config.num_user_codebooks]
                encoded = time.perf_counter()
                gen.step_with_extra_heads(codes)
                end = time.perf_counter()
                if t >= warmup:
                    encode_ms.append((encoded - start) * 1e3)
                    total_ms.append((end - start) * 1e3)
        total = statistics.median(total_ms)
        rows.append((batch, statistics.median(encode_ms), total))
        print(f"  batch {batch}: {total:.1f} ms/step", flush=True)
        if total > budget_ms:
            break
    print()
    print("| streams (batch) | Mimi encode ms | Mimi + LM ms/step | real time |")
    print("|---:|---:|---:|:---:|")
    for batch, enc, total in rows:
        print(f"| {batch} | {enc:.1f} | {total:.1f} | {'yes' if total <= budget_ms else 'no'} |")
    fitting = [batch for batch, _, total in rows if total <= budget_ms]
    best = max(fitting, default=0)
    note = " (the largest batch tried: more may fit)" if fitting and rows[-1][2] <= budget_ms else ""
    print(f"\nreal-time streams on this CPU: {best}{note}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--preset", default="stt-1b", help="LMConfig preset of the LM-step comparison")
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 4, 8])
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="float32")
    parser.add_argument("--steps", type=int, default=10, help="timed steps per round")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--no-reference", action="store_true")
    parser.add_argument("--reference-compile", action="store_true")
    parser.add_argument("--no-lm", action="store_true", help="skip part 1 (the LM-step comparison)")
    parser.add_argument("--no-streams", action="store_true", help="skip part 2 (real-time streams)")
    parser.add_argument("--streams-dim", type=int, default=512)
    parser.add_argument("--streams-layers", type=int, default=8)
    parser.add_argument("--streams-heads", type=int, default=8)
    parser.add_argument("--streams-batch", type=int, nargs="+", default=[1, 2, 4, 6, 8, 10, 12, 16])
    parser.add_argument("--streams-steps", type=int, default=20)
    parser.add_argument("--budget-ms", type=float, default=80.0)
    parser.add_argument("--smoke", action="store_true", help="tiny-stt and the tiny Mimi, few steps")
    parser.add_argument(
        "--quantize", choices=["bf16", "int8"], help="duplex's matmul weights in low precision"
    )
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    if not args.reference_compile:
        os.environ.setdefault("NO_TORCH_COMPILE", "1")
    dtype = DTYPES[args.dtype]
    if args.smoke:
        config = LMConfig.from_preset("tiny-stt")
        steps, warmup, rounds, batches = 5, 1, 1, [1, 2]
        streams_config, mimi_preset, streams_batches, streams_steps = config, "tiny", [1, 2], 5
    else:
        config = LMConfig.from_preset(args.preset)
        steps, warmup, rounds, batches = args.steps, args.warmup, args.rounds, args.batch
        streams_config = LMConfig.from_preset(
            "stt-1b", dim=args.streams_dim, num_layers=args.streams_layers, num_heads=args.streams_heads
        )
        mimi_preset, streams_batches, streams_steps = "mimi", args.streams_batch, args.streams_steps
    print(f"load average before: {os.getloadavg()[0]:.2f} (a busy machine slows both implementations)")
    with torch.no_grad():
        if not args.no_lm:
            bench_lm(config, dtype, batches, steps, warmup, rounds, not args.no_reference, args.quantize)
        if not args.no_streams:
            bench_streams(
                streams_config,
                mimi_preset,
                streams_batches,
                streams_steps,
                warmup,
                args.budget_ms,
                args.quantize,
            )
    print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
