"""Train the bundled demo from nothing: a small Mimi on varied espeak-ng speech, then a small Moshi
LM on scripted spoken conversations with that codec, and score both on voices they never heard.

    uv run python examples/train_demo.py --output runs/demo            # the recipe (about 2.5 h on 2 cores)
    uv run python examples/train_demo.py --output runs/demo --quick    # a few steps of each stage

Stages (a finished stage is skipped when the command is run again; an interrupted training
resumes from its last checkpoint):

1. ``speech``, ``speech-heldout``: ``duplex data speech`` clips (training voices and sentences;
   held-out voices and sentences);
2. ``codec``: the ``small`` codec preset, then STOI, PESQ, SI-SDR, mel distance and used-code
   perplexity on the held-out clips, at all 16 codebooks and at the 8 the LM uses;
3. ``conversations``, ``conversations-heldout``: ``duplex data conversations``, the training ones
   in shards drawn from consecutive seeds (``conversations``, ``conversations-s1``, ...) that one
   index, ``conversations-all``, lists together;
4. ``lm``: the ``demo`` LM preset from random weights, on the codec's tokens;
5. ``demo``: the checkpoint in the official layout with float16 weights, and its answers to every
   scripted question asked in held-out voices (``duplex.demo.answers``);
6. ``choice``: teacher-forced, how often the LM opens the right answer
   (``duplex.lm.training.choice``) in its training conversations, in ``conversations-new`` (new
   conversations in the training voices) and in the held-out ones: memorising versus learning.

Everything is drawn from ``--seed``. The numbers go to ``OUTPUT/results.json`` and are printed;
``--ship`` copies ``OUTPUT/demo`` over the bundled demo (``duplex.demo.checkpoints``).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import time
from pathlib import Path

import torch
from duplex.codec.checkpoint import read_safetensors, write_safetensors
from duplex.codec.codecs import load_codec
from duplex.codec.training.config import CodecTrainingConfig
from duplex.codec.training.data import AudioSegments
from duplex.codec.training.evaluate import evaluate_codec
from duplex.codec.training.run import train_codec, validation_subset
from duplex.demo.answers import evaluate_answers
from duplex.demo.checkpoints import BUNDLED_DEMO
from duplex.demo.data.conversations import SCRIPT, script_digest, write_conversations
from duplex.demo.data.conversations.dataset import INDEX_NAME, TOKENIZER_NAME
from duplex.demo.data.speech import SentenceSource, SpeechConfig, write_speech_dataset
from duplex.lm.checkpoint import load_checkpoint
from duplex.lm.data import TokenCache
from duplex.lm.training.choice import answer_choice_accuracy
from duplex.lm.training.config import LMTrainingConfig
from duplex.lm.training.run import train_lm
from duplex.stream.pipeline import MoshiPipeline

FULL = {
    "speech_clips": 3000,
    "heldout_clips": 100,
    "codec_steps": 12000,
    "conversations": 2400,
    "conversation_shards": 3,
    "lm_steps": 2500,
    "codec_segments": 64,
    "new_conversations": 64,
}
QUICK = {
    "speech_clips": 16,
    "heldout_clips": 4,
    "codec_steps": 2,
    "conversations": 8,
    "conversation_shards": 2,
    "lm_steps": 2,
    "codec_segments": 4,
    "new_conversations": 2,
}
HELDOUT_QUESTIONS_QUICK = 2


def written(folder: Path, manifest: str, **expected) -> bool:
    """Whether ``folder`` already holds the dataset ``expected`` describes (its manifest says so)."""
    path = folder / manifest
    if not path.is_file():
        return False
    made = json.loads(path.read_text())
    return all(made.get(key) == value for key, value in expected.items())


def combined_index(shards: list[Path], target: Path) -> Path:
    """A dataset folder whose index lists the conversations of every shard (the audio stays where
    it is), with the first shard's tokenizer."""
    target.mkdir(parents=True, exist_ok=True)
    lines = []
    for shard in shards:
        for line in (shard / INDEX_NAME).read_text().splitlines():
            record = json.loads(line)
            record["path"] = os.path.relpath(shard / record["path"], target)
            lines.append(json.dumps(record))
    (target / INDEX_NAME).write_text("\n".join(lines) + "\n")
    shutil.copyfile(shards[0] / TOKENIZER_NAME, target / TOKENIZER_NAME)
    return target


def save(results: dict, out: Path) -> None:
    path = out / "results.json"
    path.write_text(json.dumps(results, indent=2) + "\n")


def float16_copy(source: Path, target: Path) -> None:
    """``source`` (safetensors) with its floating tensors in float16, metadata kept."""
    tensors, metadata = read_safetensors(source)
    halved = {k: v.half() if v.is_floating_point() else v for k, v in tensors.items()}
    write_safetensors(target, halved, metadata)


def export_demo(lm_checkpoint: Path, target: Path) -> Path:
    """The LM run's checkpoint in the official layout, weights in float16."""
    if target.exists():
        shutil.rmtree(target)
    target.mkdir(parents=True)
    for name in ("config.json", "mimi_config.json", "tokenizer.model"):
        shutil.copyfile(lm_checkpoint / name, target / name)
    for name in ("model.safetensors", "mimi.safetensors"):
        float16_copy(lm_checkpoint / name, target / name)
    return target


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--output", type=Path, default=Path("runs/demo"))
    parser.add_argument("--quick", action="store_true", help="A few steps of every stage (what CI runs).")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=min(4, os.cpu_count() or 1))
    parser.add_argument("--ship", action="store_true", help=f"Copy the result over {BUNDLED_DEMO}.")
    parser.add_argument(
        "--codec-steps", type=int, help="Train the codec this many steps (default: the recipe's)."
    )
    parser.add_argument("--lm-steps", type=int, help="Train the LM this many steps (default: the recipe's).")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    sizes = dict(QUICK if args.quick else FULL)
    for stage in ("codec", "lm"):
        steps = getattr(args, f"{stage}_steps")
        if steps is not None:
            if steps < 1:
                parser.error(f"--{stage}-steps must be at least 1, got {steps}")
            sizes[f"{stage}_steps"] = steps
    out: Path = args.output
    out.mkdir(parents=True, exist_ok=True)
    results_path = out / "results.json"
    results: dict = json.loads(results_path.read_text()) if results_path.is_file() else {}
    results["recipe"] = {"seed": args.seed, "quick": args.quick, **sizes}
    seconds = results.setdefault("seconds", {})
    sources = SentenceSource.stdlib()

    # 1. speech ------------------------------------------------------------------------------------
    speech, heldout_speech = out / "speech", out / "speech-heldout"
    if "speech" not in seconds:
        start = time.time()
        for folder, clips, split in (
            (speech, sizes["speech_clips"], "train"),
            (heldout_speech, sizes["heldout_clips"], "heldout"),
        ):
            if not written(folder, "speech.json", clips=clips, seed=args.seed, split=split):
                workers = 1 if args.quick else args.threads
                write_speech_dataset(
                    folder,
                    clips,
                    seed=args.seed,
                    split=split,
                    config=SpeechConfig(),
                    source=sources,
                    workers=workers,
                )
        seconds["speech"] = time.time() - start
        save(results, out)

    # 2. codec -------------------------------------------------------------------------------------
    codec_config = CodecTrainingConfig.from_preset("small").model_copy(update={"seed": args.seed})
    codec_path = out / "codec" / "mimi.safetensors"
    if "codec" not in seconds:
        start = time.time()
        train_codec(
            speech,
            out / "codec",
            codec_config,
            max_steps=sizes["codec_steps"],
            checkpoint_every=min(500, sizes["codec_steps"]),
            validation_data=heldout_speech,
            progress_bar=not args.quick,
        )
        seconds["codec"] = time.time() - start
        save(results, out)
    if "codec" not in results:
        held_out = AudioSegments.from_folder(heldout_speech, 24000, codec_config.segment_samples)
        segments = validation_subset(held_out, sizes["codec_segments"])
        results["codec"] = {}
        for codebooks in (16, 8):
            codec = load_codec(codec_path, num_codebooks=codebooks)
            with torch.no_grad():
                results["codec"][f"{codebooks} codebooks"] = evaluate_codec(codec, segments)
        save(results, out)

    # 3. conversations -----------------------------------------------------------------------------
    shards = [out / "conversations"]
    shards += [out / f"conversations-s{k}" for k in range(1, sizes["conversation_shards"])]
    conversations, heldout_conversations = shards[0], out / "conversations-heldout"
    all_conversations = out / "conversations-all"
    if "conversations" not in seconds:
        start = time.time()
        questions = HELDOUT_QUESTIONS_QUICK if args.quick else len(SCRIPT)
        planned = [(f, sizes["conversations"], "train", args.seed + k) for k, f in enumerate(shards)]
        planned.append((heldout_conversations, questions, "heldout", args.seed))
        for folder, count, split, seed in planned:
            made = {"conversations": count, "seed": seed, "split": split, "script": script_digest()}
            if not written(folder, "conversations.json", **made):
                write_conversations(folder, count, split, seed=seed)
        combined_index(shards, all_conversations)
        seconds["conversations"] = time.time() - start
        save(results, out)

    # 4. LM ----------------------------------------------------------------------------------------
    lm_config = LMTrainingConfig.from_preset("demo").model_copy(update={"seed": args.seed})
    if "lm" not in seconds:
        start = time.time()
        train_lm(
            all_conversations,
            out / "lm",
            "preset:demo",
            lm_config,
            sizes["lm_steps"],
            codec=codec_path,
            tokenizer=all_conversations / TOKENIZER_NAME,
            checkpoint_every=min(250, sizes["lm_steps"]),
            progress_bar=not args.quick,
        )
        seconds["lm"] = time.time() - start
        save(results, out)

    # 5. the demo checkpoint and its answers -------------------------------------------------------
    demo = out / "demo"
    if "answers" not in results:
        export_demo(out / "lm" / "checkpoint", demo)
        pipeline = MoshiPipeline.from_checkpoint(demo, use_sampling=False)
        answers = evaluate_answers(pipeline, heldout_conversations, seed=args.seed)
        results["answers"] = {k: v for k, v in answers.items() if k != "per_question"}
        (out / "answers.json").write_text(json.dumps(answers, indent=2) + "\n")
        results["demo_megabytes"] = round(sum(f.stat().st_size for f in demo.iterdir()) / 1e6, 1)
        save(results, out)
    # 6. teacher-forced answer choice ---------------------------------------------------------------
    if "choice" not in results:
        new_conversations = out / "conversations-new"
        count, seed = sizes["new_conversations"], args.seed + len(shards)  # a seed training never drew
        made = {"conversations": count, "seed": seed, "split": "train", "script": script_digest()}
        if not written(new_conversations, "conversations.json", **made):
            write_conversations(new_conversations, count, "train", seed=seed)
        bundle = load_checkpoint(out / "lm" / "checkpoint")
        lm = bundle.lm(dtype=torch.float32)
        codec = bundle.mimi()
        codec.num_codebooks = lm.config.dep_q
        cache = TokenCache(out / "lm" / "token_cache", codec)
        encode = bundle.text_tokenizer().encode
        results["choice"] = {
            name: answer_choice_accuracy(lm, folder, cache, encode, limit=count)
            for name, folder in (
                ("training conversations", conversations),
                ("new conversations, training voices", new_conversations),
                ("held-out voices", heldout_conversations),
            )
        }
        save(results, out)
    if args.ship:
        if BUNDLED_DEMO.exists():
            shutil.rmtree(BUNDLED_DEMO)
        shutil.copytree(demo, BUNDLED_DEMO)
        shutil.copyfile(out / "results.json", BUNDLED_DEMO / "results.json")
    report(results)
    return results


def report(results: dict) -> None:
    print("\ncodec on held-out voices and sentences:")
    for books, scores in results["codec"].items():
        shown = ", ".join(
            f"{k} {scores[k]:.3f}" for k in ("stoi", "pesq", "si_sdr", "mel_distance", "code_perplexity")
        )
        print(f"  {books}: {shown}")
    a = results["answers"]
    print(
        f"answers to {a['questions']} questions in held-out voices: {a['answer_accuracy']:.0%} correct, "
        f"{a['choice_accuracy']:.0%} the right reply chosen, word accuracy {a['word_accuracy']:.0%}, "
        f"MCD {a['mcd_db']:.2f} dB "
        f"(to another answer: {a['mcd_other_answer_db']:.2f} dB)"
    )
    print("teacher-forced, the right answer opened (with the user silenced):")
    for name, scores in results["choice"].items():
        shown = f"{scores['accuracy']:.0%} ({scores['accuracy_user_silenced']:.0%})"
        print(f"  {name}: {shown} of {scores['exchanges']} exchanges")
    took = {stage: round(seconds) for stage, seconds in results["seconds"].items()}
    print(f"demo checkpoint: {results['demo_megabytes']} MB; seconds per stage: {took}")


if __name__ == "__main__":
    main()
