"""Train a tiny Mimi codec and a tiny Moshi LM on synthetic espeak-ng dialogues, on a CPU.

    uv run python examples/train_tiny.py --output runs/tiny

1. ``duplex data synth``: two-voice dialogues in the moshi-finetune format, plus a held-out set
   and a small sentencepiece tokenizer;
2. ``duplex train codec``: the tiny Mimi (adversarial + reconstruction + distillation losses);
3. ``duplex train lm``: the tiny LM from random weights, on the tokens of the trained codec;
4. ``duplex train lm --lora``: LoRA adapters on top of that LM.

Each stage is measured on the held-out dialogues before and after training; the numbers are
printed as a table and written to ``OUTPUT/results.json``. Rerunning resumes finished stages.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch
from duplex.codec.codecs import DEFAULT_CODEC, codec_class, load_codec
from duplex.codec.interfaces import AudioCodec
from duplex.codec.training.config import CodecTrainingConfig
from duplex.codec.training.data import AudioSegments
from duplex.codec.training.evaluate import evaluate_codec
from duplex.codec.training.run import train_codec
from duplex.lm.data import MultistreamDataset, TokenCache
from duplex.lm.data.synth import synthesize_dataset
from duplex.lm.model import LMModel
from duplex.lm.tokenizer import TextTokenizer
from duplex.lm.training.config import LMTrainingConfig
from duplex.lm.training.evaluate import evaluate_lm
from duplex.lm.training.run import initialise, train_lm


def held_out_segments(
    codec: AudioCodec, output: Path, test_data: Path, tokenizer: Path, config: LMTrainingConfig
):
    codec.num_codebooks = 3  # the tiny LM's dep_q
    cache = TokenCache(output / "test_token_cache", codec)
    return MultistreamDataset.from_folder(
        test_data, cache, TextTokenizer.from_file(tokenizer).encode, 3, config.segment_frames
    ).segments


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--output", type=Path, default=Path("runs/tiny"))
    parser.add_argument("--dialogues", type=int, default=24)
    parser.add_argument("--codec-steps", type=int, default=200)
    parser.add_argument("--lm-steps", type=int, default=300)
    parser.add_argument("--lora-steps", type=int, default=100)
    parser.add_argument("--threads", type=int, default=min(4, os.cpu_count() or 1))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    out: Path = args.output
    results: dict[str, dict] = {}
    timings: dict[str, float] = {}

    start = time.time()
    data, test_data = out / "data", out / "test_data"
    if not (data / "data.jsonl").is_file():
        synthesize_dataset(data, args.dialogues, seed=0, tokenizer_vocab_size=128)
        synthesize_dataset(test_data, 4, seed=1, tokenizer_vocab_size=None)
    tokenizer = data / "tokenizer.model"
    timings["synth"] = time.time() - start

    # -- codec ---------------------------------------------------------------------------------
    codec_config = CodecTrainingConfig.from_preset("tiny")
    test_audio = AudioSegments.from_folder(test_data, 24000, codec_config.segment_samples).segments
    torch.manual_seed(codec_config.seed)
    results["codec_before"] = evaluate_codec(codec_class(DEFAULT_CODEC)(codec_config.codec), test_audio)
    start = time.time()
    train_codec(data, out / "codec", codec_config, max_steps=args.codec_steps, checkpoint_every=50)
    timings["codec"] = time.time() - start
    codec_path = out / "codec" / "mimi.safetensors"
    results["codec_after"] = evaluate_codec(load_codec(codec_path), test_audio)

    # -- LM from scratch -----------------------------------------------------------------------
    lm_config = LMTrainingConfig.from_preset("tiny")
    test_tokens = held_out_segments(load_codec(codec_path), out, test_data, tokenizer, lm_config)
    initial = initialise("preset:tiny", codec_path, tokenizer).model
    results["lm_before"] = evaluate_lm(initial, test_tokens, lm_config)
    start = time.time()
    train_lm(data, out / "lm", "preset:tiny", lm_config, args.lm_steps, codec=codec_path, tokenizer=tokenizer)
    timings["lm"] = time.time() - start
    results["lm_after"] = evaluate_lm(
        LMModel.from_pretrained(out / "lm" / "checkpoint"), test_tokens, lm_config
    )

    # -- LoRA on top -----------------------------------------------------------------------------
    if args.lora_steps:
        start = time.time()
        train_lm(data, out / "lora", str(out / "lm" / "checkpoint"), lm_config, args.lora_steps, lora=True)
        timings["lora"] = time.time() - start
        results["lora_after"] = evaluate_lm(
            LMModel.from_pretrained(out / "lora" / "checkpoint"), test_tokens, lm_config
        )

    results["seconds"] = timings
    (out / "results.json").write_text(json.dumps(results, indent=2))
    print("\nheld-out dialogues (4, never trained on):")
    print(f"{'stage':14s} " + " ".join(f"{k:>20s}" for k in results["codec_before"]))
    for stage in ("codec_before", "codec_after"):
        print(f"{stage:14s} " + " ".join(f"{v:20.3f}" for v in results[stage].values()))
    keys = list(results["lm_before"])
    print(f"{'stage':14s} " + " ".join(f"{k:>18s}" for k in keys))
    for stage in ("lm_before", "lm_after", "lora_after"):
        if stage in results:
            print(f"{stage:14s} " + " ".join(f"{results[stage][k]:18.3f}" for k in keys))
    print("seconds:", {k: round(v) for k, v in timings.items()})


if __name__ == "__main__":
    main()
