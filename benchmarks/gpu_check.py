"""GPU check: the steady-state steps eager and replayed from CUDA graphs, at the Moshi 7B structure.

    uv run python benchmarks/gpu_check.py                 # a CUDA GPU: N = 1, 8, 32, 64
    uv run python benchmarks/gpu_check.py --sizes 1 8     # fewer conversations
    uv run python benchmarks/gpu_check.py --dry-run       # anywhere: tiny models on the CPU
    uv run python benchmarks/gpu_check.py --weights bf16 int8 --sizes 1 32   # low-precision weights

For each number N of conversations (batch rows), with random weights (the LM in bfloat16, Mimi in
float32, ``numerics="fast"``):

* LMGen: the same model stepped eagerly and with ``cuda_graph=True`` from the same seeds
  (counter-based sampling): the share of equal tokens, and ms per step of each;
* Mimi: one frame encoded and decoded per step, eagerly and from its graphs: equal codes, the
  largest audio difference, ms per frame of each;
* the engine (``DuplexEngine`` over Mimi + LMGen, graphs on): ms per step of N conversations.

``--weights bf16 int8`` adds a table of the LM with its matmul weights stored in each format
(``LMModel.quantize``, docs/nn-api.md; activations bfloat16): the GPU memory the model and its
streaming state hold, the peak during the steps, and ms per eager LMGen step at each N.

``--dry-run`` runs tiny models on the CPU with a stand-in recorder that replays by running the
step again on the recorded buffers (a CPU has no CUDA graphs): it checks the script, not a GPU.
Out-of-memory at a size is reported in its row and the next size runs.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch
from duplex.codec import Mimi, MimiConfig, graphs
from duplex.codec.codecs import codec_class
from duplex.demo.checkpoints import tiny_lm_config
from duplex.lm.config import LMConfig
from duplex.lm.generate import LMGen
from duplex.lm.model import LMModel
from duplex.stream.engine import DuplexEngine
from duplex.stream.pipeline import MoshiPipeline
from duplex.stream.slots import SamplingParams


class _NoText:
    """The engine's tokenizer: the check times steps and needs no text."""

    def token_text(self, token: int) -> None:
        return None


def _clock(device: torch.device) -> float:
    """Milliseconds, after the device finished what it was given (a step's time, not its launch)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() * 1e3


def check_lm(model: LMModel, n: int, steps: int, device: torch.device) -> dict[str, float]:
    config = model.config
    generator = torch.Generator().manual_seed(n)
    frames = torch.randint(0, config.card, (config.max_delay + steps, n, config.num_user_codebooks, 1))
    frames = frames.to(device)
    seeds = torch.randint(1 << 30, (n,), generator=generator).tolist()
    tokens, times = {}, {}
    for graphed in (False, True):
        gen = LMGen(model, top_k=250, top_k_text=25, cuda_graph=graphed)
        out, ms = [], []
        with torch.no_grad(), gen.streaming(n):
            for row, seed in enumerate(seeds):
                gen.set_seed(row, seed)
            for t, frame in enumerate(frames):
                start = _clock(device)
                result = gen.step(frame)
                elapsed = _clock(device) - start
                if t >= config.max_delay + 3:  # past the delays and the graph's warm-up and recording
                    ms.append(elapsed)
                if result is not None:
                    out.append(result.cpu())
        tokens[graphed], times[graphed] = torch.cat(out, -1), statistics.median(ms)
    equal = float((tokens[True] == tokens[False]).float().mean())
    return {"lm equal": equal, "lm eager ms": times[False], "lm graph ms": times[True]}


def _gib(device: torch.device, measure) -> str:
    return f"{measure(device) / 2**30:.2f}" if device.type == "cuda" else "-"


def check_weights(
    config: LMConfig,
    dtype: torch.dtype,
    formats: list[str],
    sizes: list[int],
    steps: int,
    device: torch.device,
) -> None:
    """The LM with its matmul weights in each format: memory and ms per step at each size."""
    print("\n| weights | N | model GiB | peak GiB while stepping | lm equal | lm eager ms | lm graph ms |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for fmt in formats:
        torch.manual_seed(0)
        with torch.device(device):
            model = LMModel(config).to(dtype).eval()
        if not (fmt == "bf16" and dtype is torch.bfloat16):  # a bf16 model already is
            model.quantize(fmt)
        held = _gib(device, torch.cuda.memory_allocated)
        for n in sizes:
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            try:
                row = check_lm(model, n, steps, device)
            except torch.OutOfMemoryError:
                print(f"| {fmt} | {n} | {held} | out of memory | - | - | - |")
                torch.cuda.empty_cache()
                continue
            peak = _gib(device, torch.cuda.max_memory_allocated)
            print(
                f"| {fmt} | {n} | {held} | {peak} | {row['lm equal']:.4g} | {row['lm eager ms']:.4g} | "
                f"{row['lm graph ms']:.4g} |"
            )
        del model
        if device.type == "cuda":
            torch.cuda.empty_cache()


def check_mimi(mimi_eager: Mimi, mimi_graphed: Mimi, n: int, steps: int, device: torch.device) -> dict:
    frame = mimi_eager.frame_size
    wav = 0.1 * torch.randn(n, 1, frame * steps, generator=torch.Generator().manual_seed(n)).to(device)
    results, times = {}, {}
    for name, mimi in (("eager", mimi_eager), ("graph", mimi_graphed)):
        codes, audio, ms = [], [], []
        with torch.no_grad(), mimi.streaming(n):
            for i in range(steps):
                start = _clock(device)
                codes.append(mimi.encode(wav[..., i * frame : (i + 1) * frame]))
                audio.append(mimi.decode(codes[-1]))
                if i >= 3:  # past the graph's warm-up and recording
                    ms.append(_clock(device) - start)
        results[name], times[name] = (
            (torch.cat(codes, -1).cpu(), torch.cat(audio, -1).cpu()),
            statistics.median(ms),
        )
    (codes_e, audio_e), (codes_g, audio_g) = results["eager"], results["graph"]
    return {
        "mimi codes equal": float((codes_e == codes_g).float().mean()),
        "mimi max |d audio|": float((audio_e - audio_g).abs().max()),
        "mimi eager ms": times["eager"],
        "mimi graph ms": times["graph"],
    }


def check_engine(mimi: Mimi, model: LMModel, n: int, steps: int) -> dict[str, float]:
    pipeline = MoshiPipeline(mimi, LMGen(model, top_k=250, top_k_text=25), _NoText())
    engine = DuplexEngine(pipeline, max_conversations=n, max_backlog_frames=steps + 1)
    rng = np.random.default_rng(0)
    try:
        conversations = [engine.join(SamplingParams(seed=i)) for i in range(n)]
        for index in range(steps):
            for conversation in conversations:
                engine.push(conversation, 0.1 * rng.standard_normal(mimi.frame_size).astype(np.float32))
            engine.step()
            if index == model.config.max_delay + 3:
                engine.step_times.clear()
        return {"engine ms": 1e3 * statistics.median(engine.step_times)}
    finally:
        engine.close()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--sizes", type=int, nargs="+", default=None, help="conversations (default 1 8 32 64)"
    )
    parser.add_argument("--steps", type=int, default=30, help="timed steps per measurement")
    parser.add_argument("--dry-run", action="store_true", help="tiny models on the CPU: checks the script")
    parser.add_argument(
        "--weights", nargs="*", default=[], choices=["bf16", "int8"], help="also: the LM in these formats"
    )
    args = parser.parse_args()

    if args.dry_run:
        device, lm_dtype = torch.device("cpu"), torch.float32
        sizes, steps = args.sizes or [1, 2], min(args.steps, 6)
        lm_config = LMConfig.model_validate(tiny_lm_config())  # the LM matched to the tiny Mimi
        mimi_config = MimiConfig.from_preset("tiny")
        # no CUDA graphs on a CPU: "replaying" runs the step again on the recorded buffers
        graphs.record_cuda_graph = lambda step, inputs: lambda: step(*inputs)
    else:
        if not torch.cuda.is_available():
            raise SystemExit("gpu_check.py needs a CUDA GPU (or --dry-run to check the script on the CPU)")
        device, lm_dtype = torch.device("cuda"), torch.bfloat16
        sizes, steps = args.sizes or [1, 8, 32, 64], args.steps
        lm_config, mimi_config = LMConfig.from_preset("moshi-7b"), MimiConfig()
    torch.manual_seed(0)
    with torch.device(device):
        model = LMModel(lm_config).to(lm_dtype).eval()
        mimi_class = codec_class("mimi")
        mimi_eager = mimi_class(mimi_config, cuda_graph=False).eval()
        mimi_graphed = mimi_class(mimi_config, cuda_graph=True).eval()
    mimi_graphed.load_state_dict(mimi_eager.state_dict())
    params = sum(p.numel() for p in model.parameters())
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU (dry run: tiny models)"
    print(
        f"{name}, torch {torch.__version__}; LM {params / 1e9:.2f} B parameters in {lm_dtype}, Mimi float32"
    )
    columns = [
        "N", "lm equal", "lm eager ms", "lm graph ms", "mimi codes equal", "mimi max |d audio|",
        "mimi eager ms", "mimi graph ms", "engine ms",
    ]  # fmt: skip
    print("| " + " | ".join(columns) + " |")
    print("|" + "---:|" * len(columns))
    for n in sizes:
        row: dict[str, object] = {"N": n}
        try:
            row |= check_lm(model, n, steps, device)
            row |= check_mimi(mimi_eager, mimi_graphed, n, steps, device)
            row |= check_engine(mimi_graphed, model, n, lm_config.max_delay + steps)
        except torch.OutOfMemoryError:
            row["lm equal"] = "out of memory"
            torch.cuda.empty_cache()
        cells = [row.get(c, "-") for c in columns]
        print("| " + " | ".join(f"{c:.4g}" if isinstance(c, float) else str(c) for c in cells) + " |")
    if args.weights:
        del model, mimi_eager, mimi_graphed
        check_weights(lm_config, lm_dtype, args.weights, sizes, steps, device)


if __name__ == "__main__":
    main()
