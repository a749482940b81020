"""Step time of the batched duplex engine against the 80 ms frame budget, beside the reference.

For each N, N conversations talk at once (random speech-level noise); every engine step advances
all of them together. The reference (moshi 0.2.13) serves one conversation per process with
batch 1, so N conversations cost it N sequential batch-1 steps per frame (shown as N x its p50).
"Real time" means the p99 step fits the budget. On a shared machine the wall clock includes
waiting for the CPU, so the CPU time of each step (what an idle core would need) is shown too.

    uv run python benchmarks/bench_engine.py                  # tiny demo model, N = 1, 4, 16
    uv run python benchmarks/bench_engine.py --sizes 1 2 4 8 16 32 64 --checkpoint DIR
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from duplex.demo.checkpoints import build_tiny_checkpoint
from duplex.stream.engine import DuplexEngine
from duplex.stream.pipeline import MoshiPipeline
from duplex.stream.slots import SamplingParams
from reference import reference_checkpoint_info

FRAME = 1920
BUDGET_MS = 80.0


def engine_step_times(
    pipeline: MoshiPipeline, n: int, steps: int, warmup: int
) -> tuple[np.ndarray, np.ndarray]:
    """Wall-clock step times (as the engine records them) and the CPU time of the same steps."""
    engine = DuplexEngine(pipeline, max_conversations=n, max_backlog_frames=steps + warmup + 1)
    rng = np.random.default_rng(0)
    conversations = [engine.join(SamplingParams(seed=i)) for i in range(n)]
    cpu = []
    try:
        for index in range(warmup + steps):
            for conversation in conversations:
                engine.push(conversation, 0.1 * rng.standard_normal(FRAME).astype(np.float32))
            start = time.process_time()
            engine.step()
            cpu.append(1000.0 * (time.process_time() - start))
            if index == warmup - 1:
                engine.step_times.clear()
        return 1000.0 * np.array(engine.step_times), np.array(cpu[warmup:])
    finally:
        engine.close()


def reference_step_times(checkpoint: Path, steps: int, warmup: int) -> tuple[np.ndarray, np.ndarray]:
    """The reference server's per-frame work (encode, LM step, decode) at batch 1."""
    from moshi.models import LMGen
    from moshi.utils.compile import no_compile

    info = reference_checkpoint_info(checkpoint)
    mimi = info.get_mimi(device="cpu")
    lm_gen = LMGen(info.get_moshi(device="cpu", dtype=torch.float32))
    rng = np.random.default_rng(0)
    times, cpu = [], []
    with no_compile(), torch.no_grad(), mimi.streaming(1), lm_gen.streaming(1):
        for index in range(warmup + steps):
            frame = torch.from_numpy(0.1 * rng.standard_normal(FRAME).astype(np.float32))[None, None]
            start, start_cpu = time.perf_counter(), time.process_time()
            tokens = lm_gen.step(mimi.encode(frame))
            if tokens is not None:
                mimi.decode(tokens[:, 1:])
            if index >= warmup:
                times.append(1000.0 * (time.perf_counter() - start))
                cpu.append(1000.0 * (time.process_time() - start_cpu))
    return np.array(times), np.array(cpu)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--checkpoint", type=Path, default=None, help="default: the tiny demo checkpoint")
    parser.add_argument("--sizes", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (tiny models: 1 is fastest)")
    parser.add_argument("--no-reference", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    checkpoint = args.checkpoint or build_tiny_checkpoint(Path(tempfile.mkdtemp()) / "tiny")
    pipeline = MoshiPipeline.from_checkpoint(checkpoint)
    reference = None if args.no_reference else reference_step_times(checkpoint, args.steps, args.warmup)

    print(f"checkpoint: {checkpoint}")
    print(
        f"torch {torch.__version__}, {args.threads} threads, {os.cpu_count()} cpus, budget {BUDGET_MS:.0f} ms"
    )
    header = (
        f"{'N':>4} {'p50 ms':>8} {'p99 ms':>8} {'cpu p50':>8} {'cpu p99':>8} {'ms/conv':>8} {'real time':>9}"
    )
    if reference is not None:
        header += f" {'reference N x p50':>18}"
    print(header)
    largest, largest_cpu = 0, 0
    for n in sorted(args.sizes):
        wall, cpu = engine_step_times(pipeline, n, args.steps, args.warmup)
        p50, p99 = np.percentile(wall, 50), np.percentile(wall, 99)
        cpu50, cpu99 = np.percentile(cpu, 50), np.percentile(cpu, 99)
        fits = p99 <= BUDGET_MS
        largest = n if fits else largest
        largest_cpu = n if cpu99 <= BUDGET_MS else largest_cpu
        line = f"{n:>4} {p50:>8.1f} {p99:>8.1f} {cpu50:>8.1f} {cpu99:>8.1f} {p50 / n:>8.2f}"
        line += f" {'yes' if fits else 'no':>9}"
        if reference is not None:
            line += f" {n * np.percentile(reference[0], 50):>18.1f}"
        print(line)
    if reference is not None:
        wall, cpu = reference
        print(
            f"reference, batch 1: p50 {np.percentile(wall, 50):.1f} ms, p99 {np.percentile(wall, 99):.1f} ms "
            f"(cpu p50 {np.percentile(cpu, 50):.1f} ms); it serves one conversation per process"
        )
    print(f"largest N measured that stays real time (p99 <= {BUDGET_MS:.0f} ms): {largest or 'none'}")
    print(f"largest N whose p99 CPU time per step fits the budget (an idle core): {largest_cpu or 'none'}")


if __name__ == "__main__":
    main()
