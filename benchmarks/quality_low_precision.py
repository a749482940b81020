"""How far low-precision weights move the LM from float32 (docs/nn-api.md).

    uv run python benchmarks/quality_low_precision.py            # moshi-341m structure, 100 steps
    uv run python benchmarks/quality_low_precision.py --smoke    # tiny: checks the script

Part 1: the ``moshi-341m`` structure with random weights (seed 0), float32, against copies whose
matmul weights are stored in bf16, in int8 per output channel, in int8 per group of 64 columns,
and in int8 with the output heads (``text_linear``, ``linears``) kept in float32. For each: the
relative error (Frobenius norm) of the text and audio logits of a forward pass over random codes,
how often their top-1 token equals float32's there (same inputs), and, over ``--steps`` greedy
LMGen steps on the same random user codes, how many text tokens equal float32's (free running: a
token that differs changes what follows; with random weights the logits are nearly flat, so this
is the strictest of the three) and the first step that differs.

Part 2: a random ``tiny-stt`` checkpoint made to mark words (``write_random_checkpoint``)
transcribes espeak-ng recordings with float32 and with int8 weights; the share of text tokens
that agree.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch
from duplex.lm.config import LMConfig
from duplex.lm.generate import LMGen
from duplex.lm.model import LMModel

VARIANTS = {  # name -> LMModel.quantize arguments
    "bf16": dict(format="bf16"),
    "int8": dict(format="int8"),
    "int8, groups of 64": dict(format="int8", group_size=64),
    "int8, heads float32": dict(format="int8", keep=["text_linear", "linears"]),
}


def relative_error(got: torch.Tensor, expected: torch.Tensor) -> float:
    valid = expected.isfinite()
    return float((got - expected)[valid].norm() / expected[valid].norm())


def greedy_text(model: LMModel, frames: torch.Tensor) -> torch.Tensor:
    gen = LMGen(model, use_sampling=False)
    text = []
    with gen.streaming(1):
        for frame in frames:
            tokens = gen.step(frame)
            if tokens is not None:
                text.append(tokens[0, 0, 0])
    return torch.stack(text)


def lm_quality(config: LMConfig, steps: int) -> None:
    torch.manual_seed(0)
    model = LMModel(config).eval()
    generator = torch.Generator().manual_seed(1)
    codes = torch.randint(0, config.card, (2, config.num_codebooks, 24), generator=generator)
    frames = torch.randint(0, config.card, (steps, 1, config.num_user_codebooks, 1), generator=generator)
    expected = model(codes)
    expected_text = greedy_text(model, frames)
    parameters = sum(p.numel() for p in model.parameters()) / 1e6
    print(f"\n{parameters:.0f}M parameters, {len(expected_text)} greedy text tokens")
    print(
        "| weights | text logits rel. err. | audio logits rel. err. | top-1 text / audio equal | "
        "greedy text equal | first difference |"
    )
    print("|---|---:|---:|---:|---:|---:|")
    for name, arguments in VARIANTS.items():
        copy = LMModel(config).eval()
        copy.load_state_dict(model.state_dict())
        copy.quantize(**arguments)
        out = copy(codes)
        text = greedy_text(copy, frames)
        differ = (text != expected_text).nonzero()
        first = str(int(differ[0])) if len(differ) else "none"
        same = int((text == expected_text).sum())
        top1 = [
            float((ours.argmax(-1) == theirs.argmax(-1))[theirs.isfinite().all(-1)].float().mean())
            for ours, theirs in ((out.text_logits, expected.text_logits), (out.logits, expected.logits))
        ]
        print(
            f"| {name} | {relative_error(out.text_logits, expected.text_logits):.2e} | "
            f"{relative_error(out.logits, expected.logits):.2e} | {top1[0]:.1%} / {top1[1]:.1%} | "
            f"{same}/{len(text)} | {first} |"
        )


def espeak(text: str, path: Path) -> torch.Tensor:
    import subprocess

    from duplex.codec.audio import load_audio

    subprocess.run(["espeak-ng", "-w", str(path), text], check=True)
    return load_audio(path, 24_000)[0]


def stt_agreement() -> None:
    from duplex.demo.random_checkpoint import write_random_checkpoint
    from duplex.lm.transcriber import Transcriber

    sentences = ["turn the lights off in the kitchen", "what time is it in tokyo", "call me back tomorrow"]
    with tempfile.TemporaryDirectory() as scratch:
        directory = write_random_checkpoint(Path(scratch) / "stt", "tiny-stt", seed=0)
        audios = [espeak(sentence, Path(scratch) / f"{i}.wav") for i, sentence in enumerate(sentences)]
        words = {
            weights: Transcriber.from_checkpoint(directory, quantize=weights).transcribe(audios)
            for weights in (None, "int8")
        }
    print(f"\ntiny-stt made to mark words, {len(sentences)} espeak-ng recordings, float32 vs int8 words:")
    for ours, theirs in zip(words["int8"], words[None], strict=True):
        same = [(a.text, a.start, a.end) for a in ours] == [(b.text, b.start, b.end) for b in theirs]
        print(f"  {len(theirs)} words (float32), {len(ours)} (int8): {'identical' if same else 'different'}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--smoke", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.smoke:  # tiny, with widths that groups of 64 divide
        config = LMConfig.from_preset(
            "tiny", dim=64, num_heads=4, hidden_scale=6, depformer_dim=64, depformer_dim_feedforward=192
        )
    else:
        config = LMConfig.from_preset("moshi-341m")
    with torch.no_grad():
        lm_quality(config, 10 if args.smoke else args.steps)
        stt_agreement()


if __name__ == "__main__":
    main()
