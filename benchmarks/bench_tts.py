"""Text-to-speech speed at batch 1: real-time factor, first word to first audio, steps per second;
duplex's Synthesizer vs the reference package's TTSModel on the same checkpoint.

    uv run python benchmarks/bench_tts.py                         # tts-1.6b scaled down, 32 codebooks
    uv run python benchmarks/bench_tts.py --n-q 16 --repeats 5
    uv run python benchmarks/bench_tts.py --no-reference
    uv run python benchmarks/bench_tts.py --smoke                 # tiny-tts: checks the script

The model is the ``tts-1.6b`` preset (Kyutai's tts-1.6b-en_fr structure: cross-attention to a
voice, the demuxed lookahead text stream, per-step depformer weights with its schedule, low-rank
depformer embeddings, the distilled ``cfg`` table, 1.28 s audio delay) scaled to what runs here:
dim 512 / 6 layers / 8 heads, depformer 256 wide / 2 layers / 4 heads / feed-forward 768, and
``--n-q`` audio codebooks (32 as the official model, 2048 bins; the weight schedule is the
official one's first ``n_q`` entries). The codec is the official-size Mimi (random weights,
calibrated as ``write_random_checkpoint`` does). Weights are random, float32, sampling at temperature 0.6,
distilled guidance 2.0; both implementations load the same checkpoint files.

* RTF: wall time of ``Synthesizer.generate([text], [[voice]], temperature=0.6, seed=1)`` (the whole
  text at once, Mimi decode included) / duration of the audio it returns. Below 1 is faster than
  real time.
* ms/step: the LM generation loop alone (``Synthesizer.run``; the reference's ``TTSModel.generate``),
  wall time / steps; steps/s is its inverse (12.5 steps/s is real time).
* first audio: ``with synth.stream([voice]) as s`` open (its set-up, reported apart, is not counted),
  the clock starts, ``s.add_text(first_word)``, ``s.step()`` until it returns audio: the clock stops
  (target <= 0.5 s). The first session then gets the rest of the text and runs to its end; the
  median over ``--repeats`` sessions is reported.
* The reference's RTF: its ``generate`` plus decoding the frames with its Mimi in streaming, as its
  own scripts do, over the same audio duration (its end step).

The reference runs eager (``NO_TORCH_COMPILE=1`` is set unless ``--reference-compile``).
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch
from duplex.demo.random_checkpoint import write_random_checkpoint
from duplex.lm.config import LMConfig
from duplex.lm.synthesizer import Synthesizer
from reference import reference_checkpoint_info

TEXT = "Hello there, how are you doing today? I would like to talk about the weather."
SMOKE_TEXT = "Hello there, how are you?"
VOICE = "alice"


def scaled_config(n_q: int) -> LMConfig:
    """tts-1.6b scaled: dim 512 / 6 layers, depformer 256 / 2 layers, ``n_q`` codebooks."""
    base = LMConfig.from_preset("tts-1.6b")
    return LMConfig.from_preset(
        "tts-1.6b",
        dim=512,
        num_layers=6,
        num_heads=8,
        n_q=n_q,
        dep_q=n_q,
        delays=[0, 0] + [2] * (n_q - 1),
        depformer_dim=256,
        depformer_num_layers=2,
        depformer_num_heads=4,
        depformer_dim_feedforward=768,
        depformer_weights_per_step_schedule=base.depformer_weights_per_step_schedule[:n_q],
    )


def describe(config: LMConfig) -> str:
    return (
        f"dim {config.dim} / {config.num_layers} layers / {config.num_heads} heads, depformer "
        f"{config.depformer_dim} / {config.depformer_num_layers} layers, {config.n_q} codebooks x "
        f"{config.card} bins"
    )


def bench_ours(synth: Synthesizer, text: str, repeats: int) -> dict:
    frame_rate = synth.frame_rate
    synth.generate(["Hello."], [[VOICE]], temperature=0.6, seed=0)  # warm-up
    start = time.perf_counter()
    speech = synth.generate([text], [[VOICE]], temperature=0.6, seed=1)[0]
    wall = time.perf_counter() - start
    duration = len(speech.audio) / speech.sample_rate
    print(f"  duplex generate: {wall:.2f} s for {duration:.2f} s of audio", flush=True)

    entries = [synth.entries(text)]
    conditions = [synth.conditions([VOICE], 2.0)]
    start = time.perf_counter()
    result = synth.run(entries, conditions, temperature=0.6, seed=1)
    run_wall = time.perf_counter() - start
    steps = len(result.frames) + synth.lm.config.max_delay
    print(f"  duplex run: {steps} steps in {run_wall:.2f} s", flush=True)

    words = text.split()
    first_audio, setup, first_steps, stream_rtf = [], [], [], None
    for repeat in range(repeats):
        start = time.perf_counter()
        with synth.stream([VOICE], temperature=0.6, seed=1 + repeat) as stream:
            opened = time.perf_counter()
            stream.add_text(words[0])
            pcm, count = None, 0
            while pcm is None:
                pcm = stream.step()
                count += 1
            first_audio.append(time.perf_counter() - opened)
            setup.append(opened - start)
            first_steps.append(count)
            if repeat == 0:  # the rest of the text, to the end
                pieces = [pcm]
                for word in words[1:]:
                    stream.add_text(word)
                stream.close()
                while not stream.finished:
                    pcm = stream.step()
                    if pcm is not None:
                        pieces.append(pcm)
                audio_s = sum(len(p) for p in pieces) / synth.sample_rate
                stream_rtf = (time.perf_counter() - opened) / audio_s
            else:
                stream.close()
        print(f"  duplex stream {repeat}: first audio after {first_audio[-1]:.3f} s", flush=True)
    return {
        "rtf": wall / duration,
        "audio_s": duration,
        "ms_step": run_wall / steps * 1e3,
        "steps": steps,
        "first_audio": statistics.median(first_audio),
        "first_steps": statistics.median(first_steps),
        "setup": statistics.median(setup),
        "stream_rtf": stream_rtf,
        "frame_rate": frame_rate,
    }


def bench_reference(checkpoint: Path, n_q: int, text: str) -> dict | None:
    try:
        from moshi.models.tts import TTSModel
    except ImportError:
        print("reference package (moshi) not installed: timing duplex only")
        return None
    info = reference_checkpoint_info(checkpoint)
    tts = TTSModel.from_checkpoint_info(info, device="cpu", dtype=torch.float32, n_q=n_q, temp=0.6)
    voice = next((checkpoint / "voices").glob(f"{VOICE}.*.safetensors"))
    attributes = [tts.make_condition_attributes([voice], cfg_coef=2.0)]
    max_delay = max(tts.lm.delays)

    torch.manual_seed(0)
    tts.generate([tts.prepare_script(["Hello."], padding_between=1)], attributes)  # warm-up
    torch.manual_seed(1)
    start = time.perf_counter()
    result = tts.generate([tts.prepare_script([text], padding_between=1)], attributes)
    run_wall = time.perf_counter() - start
    steps = len(result.frames) + max_delay
    print(f"  reference generate: {steps} steps in {run_wall:.2f} s", flush=True)
    start = time.perf_counter()
    with tts.mimi.streaming(1):
        for frame in result.frames[tts.delay_steps :]:
            tts.mimi.decode(frame[:, 1:])
    decode_wall = time.perf_counter() - start
    print(
        f"  reference Mimi decode: {len(result.frames) - tts.delay_steps} frames in {decode_wall:.2f} s",
        flush=True,
    )
    end = result.end_steps[0]
    duration = (end if end is not None else len(result.frames) - tts.delay_steps) / tts.mimi.frame_rate
    return {
        "rtf": (run_wall + decode_wall) / duration,
        "audio_s": duration,
        "ms_step": run_wall / steps * 1e3,
        "steps": steps,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--n-q", type=int, default=32, help="audio codebooks of the scaled model")
    parser.add_argument("--text", default=None, help="default: a 15-word sentence (smoke: 5 words)")
    parser.add_argument("--repeats", type=int, default=3, help="streaming sessions (first-audio median)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--no-reference", action="store_true")
    parser.add_argument("--reference-compile", action="store_true")
    parser.add_argument("--smoke", action="store_true", help="tiny-tts with the tiny Mimi")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    if not args.reference_compile:
        os.environ.setdefault("NO_TORCH_COMPILE", "1")
    print(f"load average before: {os.getloadavg()[0]:.2f} (a busy machine slows both implementations)")
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        text = args.text or (SMOKE_TEXT if args.smoke else TEXT)
        if args.smoke:
            config, mimi_name, repeats = LMConfig.from_preset("tiny-tts"), "tiny", 2
            checkpoint = write_random_checkpoint(Path(tmp) / "tiny", config)
        else:
            config = scaled_config(args.n_q)
            checkpoint = write_random_checkpoint(Path(tmp) / "scaled", config, mimi_preset="mimi")
            mimi_name, repeats = "official size", args.repeats
        synth = Synthesizer.from_checkpoint(checkpoint)
        params = sum(p.numel() for p in synth.lm.parameters())
        structure = f"{describe(config)} ({params / 1e6:.1f}M parameters), Mimi {mimi_name}"
        print(
            f"TTS: {structure}, float32, {torch.get_num_threads()} threads, batch 1 "
            f"(checkpoint written and loaded in {time.perf_counter() - start:.0f} s)"
        )
        print(f"text ({len(text.split())} words): {text!r}")
        ours = bench_ours(synth, text, repeats)
        del synth
        theirs = None if args.no_reference else bench_reference(checkpoint, config.n_q, text)

    print()
    print(f"structure: {structure}")
    print()
    print("| implementation | RTF | audio s | LM steps | ms/step | steps/s | first word -> first audio s |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    print(
        f"| duplex | {ours['rtf']:.2f} | {ours['audio_s']:.2f} | {ours['steps']} | {ours['ms_step']:.1f} | "
        f"{1e3 / ours['ms_step']:.1f} | {ours['first_audio']:.3f} ({ours['first_steps']:.0f} steps) |"
    )
    if theirs is not None:
        print(
            f"| reference | {theirs['rtf']:.2f} | {theirs['audio_s']:.2f} | {theirs['steps']} | "
            f"{theirs['ms_step']:.1f} | {1e3 / theirs['ms_step']:.1f} | - |"
        )
        print(f"\nduplex / reference ms per LM step: {ours['ms_step'] / theirs['ms_step']:.2f}x")
    print(
        f"duplex streaming: session set-up {ours['setup']:.3f} s (not counted), whole streamed text "
        f"RTF {ours['stream_rtf']:.2f}; first audio target <= 0.5 s"
    )
    print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
