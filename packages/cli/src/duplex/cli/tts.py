"""`duplex tts`: speak a text with a Kyutai TTS model (docs/architecture.md §5.3).

TEXT is the text itself, a text file, or ``-`` for stdin. ``[S1]`` / ``[S2]`` tags make a dialogue
(the first ``--voice`` speaks S1, the second S2) and ``<break time="1s"/>`` a pause. The audio is
written at 24 kHz with the words and their times next to it (OUT.json); neither file is written
unless the whole synthesis succeeded.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import typer
from duplex.cli.errors import RuntimeProblem, usage_error
from duplex.cli.options import NUMERICS_HELP, QUANTIZE_HELP, numerics_option, quantize_option

DEFAULT_CHECKPOINT = "kyutai/tts-1.6b-en_fr"


def read_text(text: str) -> str:
    """TEXT as given: ``-`` is stdin, an existing file is read, anything else is the text itself."""
    if text == "-":
        return sys.stdin.read()
    path = Path(text)
    if len(text) < 4096 and path.suffix in (".txt", ".md", ".ssml") and path.is_file():
        return path.read_text()
    if len(text) < 4096 and path.suffix in (".txt", ".md", ".ssml"):
        raise RuntimeProblem(f"text file {path} does not exist")
    return text


def tts(
    text: str = typer.Argument(
        ..., help='The text, a .txt file, or - for stdin. [S1]/[S2] tags, <break time="1s"/>.'
    ),
    output_wav: Path = typer.Argument(Path("speech.wav"), help="Where to write the audio (and OUT.json)."),
    voice: list[str] = typer.Option(
        [],
        "--voice",
        "-v",
        help="A voice file (.safetensors) or name; twice for a dialogue. Default: the first known.",
    ),
    voice_dir: list[Path] = typer.Option([], "--voice-dir", help="Folders to find voices by name in."),
    checkpoint: str = typer.Option(
        DEFAULT_CHECKPOINT, "--checkpoint", "-c", help="A TTS checkpoint directory or Hugging Face repo id."
    ),
    cfg: float = typer.Option(2.0, "--cfg", help="Guidance strength (1.0 to 4.0 for distilled models)."),
    temperature: float = typer.Option(0.6, "--temperature", "-t", help="Sampling temperature (0: greedy)."),
    seed: int = typer.Option(42, "--seed", help="Sampling seed."),
    device: str = typer.Option("cpu", help="torch device."),
    quantize: str = typer.Option("none", help=QUANTIZE_HELP),
    numerics: str = typer.Option("fast", "--numerics", help=NUMERICS_HELP),
) -> None:
    from duplex.lm.synthesizer import Synthesizer
    from duplex.stream.audio import save_wav

    if not 0.0 <= temperature <= 5.0:
        raise usage_error(f"must be in [0, 5], got {temperature}", "--temperature")
    if not 0.0 < cfg <= 10.0:
        raise usage_error(f"must be in (0, 10], got {cfg}", "--cfg")
    weights = quantize_option(quantize)
    numerics = numerics_option(numerics)
    try:
        script = read_text(text)
        synth = Synthesizer.from_checkpoint(
            checkpoint, device=device, voice_dirs=voice_dir, quantize=weights, numerics=numerics
        )
        voices = voice or _default_voice(synth)
        entries = synth.entries(script)
        conditions = synth.conditions(voices, cfg)
    except (FileNotFoundError, ValueError, RuntimeError) as error:
        raise RuntimeProblem(str(error)) from error
    result = synth.run([entries], [conditions], cfg=cfg, temperature=temperature, seed=seed)
    speech = synth.render(result)[0]
    if result.end_steps[0] is None:
        typer.echo("warning: the text did not fit in the maximum length; the audio stops early", err=True)
    words_path = output_wav.with_suffix(".json")
    document = {"text": " ".join(w.text for w in speech.words), "words": [w.to_dict() for w in speech.words]}
    partial_wav = output_wav.with_name(output_wav.name + ".partial.wav")
    save_wav(partial_wav, speech.audio, speech.sample_rate)
    words_path.write_text(json.dumps(document, indent=2, ensure_ascii=False) + "\n")
    partial_wav.replace(output_wav)
    typer.echo(f"speech: {output_wav} ({len(speech.audio) / speech.sample_rate:.2f} s), words: {words_path}")


def _default_voice(synth) -> list[str]:  # noqa: ANN001
    if not synth.multi_speaker:
        return []
    for directory in synth.voice_dirs:
        names = sorted(p.name.split(".")[0] for p in directory.glob("*.safetensors"))
        if names:
            typer.echo(f"voice: {names[0]} (choose with --voice)", err=True)
            return [names[0]]
    raise ValueError(
        "this model speaks in a given voice: pass --voice FILE.safetensors (or a name with --voice-dir)"
    )
