"""Streaming Mimi speed, ms per 80 ms frame: duplex vs the reference package vs rustymimi.

    uv run python benchmarks/bench_mimi.py                 # official size, 2 threads, float32
    uv run python benchmarks/bench_mimi.py --frames 100 --threads 1
    uv run python benchmarks/bench_mimi.py --smoke         # tiny, a few frames: checks the script

All three run the same random weights (written by duplex's save_pretrained, read by the other
two), batch size 1, one frame per call, as a live conversation does: encode 1920 samples -> 8
codes, decode 8 codes -> 1920 samples. Each row reports the median and the mean over the timed
frames, after a warm-up. The reference and rustymimi are test-only dependencies (uv group
``oracle``); a missing one is reported and skipped. Also checks that the three agree on codes.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
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
    from duplex.codec import Mimi, MimiConfig

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    config = MimiConfig.from_preset("tiny" if args.smoke else "mimi")
    ours = Mimi(config).eval()
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
    wav = (0.3 * torch.sin(2 * torch.pi * 200 * t) + 0.05 * torch.randn(total * 1920, generator=g))[None, None]
    frames = [wav[..., i * 1920 : (i + 1) * 1920].contiguous() for i in range(total)]

    def timed(encode_step, decode_step) -> tuple[list[float], list[float], torch.Tensor]:  # noqa: ANN001
        enc, dec, codes = [], [], []
        for i, frame in enumerate(frames):
            start = time.perf_counter()
            c = encode_step(frame)
            middle = time.perf_counter()
            decode_step(c)
            end = time.perf_counter()
            codes.append(torch.as_tensor(np.asarray(c)).long().reshape(1, -1, 1))
            if i >= args.warmup:
                enc.append((middle - start) * 1e3)
                dec.append((end - middle) * 1e3)
        return enc, dec, torch.cat(codes, -1)

    rows: list[tuple[str, str, str]] = []
    all_codes: dict[str, torch.Tensor] = {}

    def record(name: str, enc: list[float], dec: list[float], codes: torch.Tensor) -> None:
        cell = lambda xs: f"{statistics.median(xs):6.2f} / {statistics.mean(xs):6.2f}"  # noqa: E731
        rows.append((name, cell(enc), cell(dec)))
        all_codes[name] = codes

    with tempfile.TemporaryDirectory() as tmp:
        path = ours.save_pretrained(Path(tmp) / "mimi.safetensors")
        with torch.no_grad(), ours.streaming(1):
            record("duplex", *timed(ours.encode, ours.decode))

        try:
            from moshi.models.loaders import get_mimi
        except ImportError:
            print("reference package (moshi) not installed: skipped", file=sys.stderr)
        else:
            reference = get_mimi(str(path), config.to_dict(), device="cpu", num_codebooks=8)
            with torch.no_grad(), reference.streaming(1):
                record("reference (moshi 0.2.13)", *timed(reference.encode, reference.decode))

        try:
            import rustymimi
        except ImportError:
            print("rustymimi not installed: skipped", file=sys.stderr)
        else:
            if args.smoke:
                print("rustymimi only builds the official Mimi: skipped with --smoke", file=sys.stderr)
            else:
                rusty = rustymimi.Tokenizer(str(path), num_codebooks=8)
                record(
                    "rustymimi",
                    *timed(
                        lambda f: rusty.encode_step(f.numpy()),
                        lambda c: rusty.decode_step(np.asarray(c).astype(np.uint32)),
                    ),
                )

    size = "tiny (smoke)" if args.smoke else "official"
    print(f"\nMimi streaming, {size} size, batch 1, float32, {args.threads} threads, {args.frames} frames")
    print(f"torch {torch.__version__}, CPU: {_cpu_name()}")
    print(f"{'implementation':26s} | {'encode ms/frame (median / mean)':32s} | decode ms/frame (median / mean)")
    print(f"{'-' * 26}-+-{'-' * 32}-+-{'-' * 32}")
    for name, enc, dec in rows:
        print(f"{name:26s} | {enc:32s} | {dec}")
    base = all_codes["duplex"]
    for name, codes in all_codes.items():
        if name != "duplex":
            print(f"codes equal to duplex: {name}: {(codes == base).float().mean().item():.4f}")


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
