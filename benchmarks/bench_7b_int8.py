"""The Moshi 7B structure in int8 on a CPU machine: peak resident memory while loading and stepping,
and ms per step.

    uv run python benchmarks/bench_7b_int8.py                      # checkpoint in /tmp/duplex-moshi-7b
    uv run python benchmarks/bench_7b_int8.py --dir DIR --steps 5 --threads 2

The first run writes a random checkpoint of the official ``moshi-7b`` structure in bfloat16 (15 GB:
what the official file holds), one tensor at a time, so that writing it needs no more memory than
its largest tensor. A fresh process then loads it with ``quantize="int8"`` (matmul weights int8
with per-channel scales, narrowed as the file is read; embeddings, norms and activations stay
bfloat16, as stored; docs/nn-api.md) and runs LMGen steps at batch 1. It prints the peak
resident memory (``ru_maxrss``) after loading and after stepping, what the model keeps, and the
median ms per step.
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch
from duplex.lm.config import LMConfig
from duplex.lm.model import LMModel

CHUNK = 1 << 24  # elements generated at a time


def random_tensor_bytes(name: str, shape: tuple[int, ...], generator: torch.Generator):
    """The bf16 bytes of a random tensor, a block of rows at a time: norms 1, others N(0, 1/fan_in)."""
    if "norm" in name or len(shape) < 2:
        yield torch.ones(shape, dtype=torch.bfloat16).view(torch.int16).numpy().tobytes()
        return
    rows, columns = shape[0], math.prod(shape[1:])
    step = max(1, CHUNK // columns)
    for start in range(0, rows, step):
        block = torch.randn(min(step, rows - start), columns, generator=generator) / math.sqrt(columns)
        yield block.to(torch.bfloat16).view(torch.int16).numpy().tobytes()


def write_checkpoint(directory: Path, config: LMConfig) -> None:
    """``config.json`` and a bf16 ``model.safetensors`` written tensor by tensor."""
    with torch.device("meta"):
        shapes = {key: tuple(value.shape) for key, value in LMModel(config).state_dict().items()}
    header: dict = {"__metadata__": {"format": "pt"}}
    offset = 0
    for key, shape in shapes.items():
        size = math.prod(shape) * 2
        header[key] = {"dtype": "BF16", "shape": list(shape), "data_offsets": [offset, offset + size]}
        offset += size
    encoded = json.dumps(header).encode()
    encoded += b" " * (-len(encoded) % 8)
    directory.mkdir(parents=True, exist_ok=True)
    generator = torch.Generator().manual_seed(0)
    partial = directory / "model.safetensors.partial"
    with partial.open("wb") as handle:
        handle.write(len(encoded).to_bytes(8, "little"))
        handle.write(encoded)
        for key, shape in shapes.items():
            for chunk in random_tensor_bytes(key, shape, generator):
                handle.write(chunk)
    config.save_json(directory / "config.json")
    partial.replace(directory / "model.safetensors")


_MEASURE = """
import resource, statistics, sys, time, torch
from duplex.lm.checkpoint import load_checkpoint
from duplex.lm.generate import LMGen

torch.set_num_threads(int(sys.argv[2]))
peak = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # GiB
start = time.perf_counter()
model = load_checkpoint(sys.argv[1]).lm(quantize="int8")
load_s = time.perf_counter() - start
kept = sum(t.numel() * t.element_size() for t in model.state_dict().values()) / 2**30
after_load = peak()
gen = LMGen(model, use_sampling=True, temp=0.8, temp_text=0.7, top_k=250, top_k_text=25)
frame = torch.zeros(1, model.config.num_user_codebooks, 1, dtype=torch.long)
times = []
with torch.no_grad(), gen.streaming(1):
    for t in range(int(sys.argv[3]) + 2):
        begin = time.perf_counter()
        gen.step(frame)
        times.append(time.perf_counter() - begin)
print(f"load: {load_s:.0f} s; the model keeps {kept:.2f} GiB (activations {model.dtype})")
print(f"peak resident memory after loading: {after_load:.2f} GiB")
print(f"peak resident memory after {len(times)} steps: {peak():.2f} GiB")
print(f"ms per step (median after 2 warm-up steps): {statistics.median(times[2:]) * 1e3:.0f}")
"""


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--dir", type=Path, default=Path("/tmp/duplex-moshi-7b"))
    parser.add_argument("--preset", default="moshi-7b")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    if not (args.dir / "model.safetensors").exists():
        start = time.perf_counter()
        write_checkpoint(args.dir, LMConfig.from_preset(args.preset))
        print(f"wrote {args.dir / 'model.safetensors'} in {time.perf_counter() - start:.0f} s")
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
        print(f"(peak resident memory while writing: {peak:.2f} GiB)")
    size = (args.dir / "model.safetensors").stat().st_size / 2**30
    print(f"checkpoint: {args.preset}, bf16, {size:.2f} GiB")
    command = [sys.executable, "-c", _MEASURE, str(args.dir), str(args.threads), str(args.steps)]
    subprocess.run(command, check=True)


if __name__ == "__main__":
    main()
