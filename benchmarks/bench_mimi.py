"""Streaming Mimi speed, ms per 80 ms frame: duplex vs the reference package vs rustymimi.

    uv run python benchmarks/bench_mimi.py                 # official size, 2 threads, float32
    uv run python benchmarks/bench_mimi.py --frames 100 --threads 1
    uv run python benchmarks/bench_mimi.py --smoke         # tiny, a few frames: checks the script

All three run the same random weights (written by duplex's save_pretrained, read by the other
two), batch size 1, one frame per call, as a live conversation does: encode 1920 samples -> 8
codes, decode 8 codes -> 1920 samples. They step frame by frame in lockstep, so that a busy
machine slows them alike, in an order that changes every frame. Each row reports the median and
the mean over the timed frames, after a warm-up. "duplex" is ``numerics="fast"`` (the default:
the C kernels of this CPU, codes equal to the reference's up to near-tie flips); "duplex,
reference numerics" runs torch's own ops in the reference's order (the reference's codes, bit for
bit), one frame per call as the reference streams.
The reference and rustymimi are test-only dependencies (uv group ``oracle``); a missing one is
reported and skipped. Also checks that the three agree on codes.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import itertools
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--frames", type=int, default=60, help="timed frames per run")
    parser.add_argument("--warmup", type=int, default=10, help="untimed frames first")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads (torch and rayon)")
    parser.add_argument("--smoke", action="store_true", help="tiny model, few frames")
    args = parser.parse_args()
    if args.smoke:
        args.frames, args.warmup = 3, 1
    os.environ["RAYON_NUM_THREADS"] = str(args.threads)  # rustymimi's thread pool, read at first use

    import numpy as np
    import torch
    from duplex.codec import MimiConfig
    from duplex.codec.codecs import codec_class

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    config = MimiConfig.from_preset("tiny" if args.smoke else "mimi")
    ours = codec_class("mimi")(config, numerics="fast").eval()
    g = torch.Generator().manual_seed(0)
    state = ours.state_dict()
    for key, value in state.items():
        if key.endswith("embedding_sum"):
            state[key] = torch.randn(value.shape, generator=g) * 0.5
        elif key.endswith("cluster_usage"):
            state[key] = torch.rand(value.shape, generator=g) + 0.5
    ours.load_state_dict(state)
    ours.num_codebooks = 8
    total = args.warmup + args.frames
    t = torch.arange(total * 1920) / 24000
    wav = (0.3 * torch.sin(2 * torch.pi * 200 * t) + 0.05 * torch.randn(total * 1920, generator=g))[
        None, None
    ]
    frames = [wav[..., i * 1920 : (i + 1) * 1920].contiguous() for i in range(total)]

    # name -> (encode one frame, decode its codes); all run frame by frame in lockstep, so that
    # a busy machine slows them alike
    steppers: dict[str, tuple[Callable, Callable]] = {}
    with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as stack:
        stack.enter_context(torch.no_grad())
        path = ours.save_pretrained(Path(tmp) / "mimi.safetensors")
        exact = copy.deepcopy(ours)
        exact.numerics = "reference"
        stack.enter_context(ours.streaming(1))
        steppers["duplex"] = (ours.encode, ours.decode)
        stack.enter_context(exact.streaming(1))
        steppers["duplex, reference numerics"] = (exact.encode, exact.decode)
        try:
            from moshi.models.loaders import get_mimi
        except ImportError:
            print("reference package (moshi) not installed: skipped", file=sys.stderr)
        else:
            reference = get_mimi(str(path), config.to_dict(), device="cpu", num_codebooks=8)
            stack.enter_context(reference.streaming(1))
            steppers["reference (moshi 0.2.13)"] = (reference.encode, reference.decode)
        try:
            import rustymimi
        except ImportError:
            print("rustymimi not installed: skipped", file=sys.stderr)
        else:
            if args.smoke:
                print("rustymimi only builds the official Mimi: skipped with --smoke", file=sys.stderr)
            else:
                rusty = rustymimi.Tokenizer(str(path), num_codebooks=8)
                steppers["rustymimi"] = (
                    lambda f: torch.from_numpy(rusty.encode_step(f.numpy()).astype(np.int64)),
                    lambda c: rusty.decode_step(c.numpy().astype(np.uint32)),
                )

        times = {name: ([], []) for name in steppers}
        codes = {name: [] for name in steppers}
        # the order changes every frame, through all permutations: each one runs after each other
        # one as often (whoever runs right after another pays for its threads winding down)
        orders = list(itertools.permutations(steppers))
        for i, frame in enumerate(frames):
            for name in orders[i % len(orders)]:
                encode_step, decode_step = steppers[name]
                start = time.perf_counter()
                c = encode_step(frame)
                middle = time.perf_counter()
                decode_step(c)
                end = time.perf_counter()
                codes[name].append(c)
                if i >= args.warmup:
                    times[name][0].append((middle - start) * 1e3)
                    times[name][1].append((end - middle) * 1e3)

    size = "tiny (smoke)" if args.smoke else "official"
    print(f"\nMimi streaming, {size} size, batch 1, float32, {args.threads} threads, {args.frames} frames")
    print(f"torch {torch.__version__}, CPU: {_cpu_name()}")
    print(
        f"{'implementation':28s} | {'encode ms/frame (median / mean)':32s} | decode ms/frame (median / mean)"
    )
    print(f"{'-' * 28}-+-{'-' * 32}-+-{'-' * 32}")
    for name, (enc, dec) in times.items():
        print(f"{name:28s} | {_cell(enc):32s} | {_cell(dec)}")
    base = torch.cat(codes["duplex"], -1)
    for name, theirs in codes.items():
        if name != "duplex":
            agreement = (torch.cat(theirs, -1) == base).float().mean().item()
            print(f"codes equal to duplex's: {name}: {agreement:.4f}")


def _cell(ms: list[float]) -> str:
    return f"{statistics.median(ms):6.2f} / {statistics.mean(ms):6.2f}"


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"


if __name__ == "__main__":
    main()
