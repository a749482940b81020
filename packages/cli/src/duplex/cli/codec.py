"""`duplex codec encode | decode | roundtrip | evaluate`: Mimi on files.

Files are run through Mimi in streaming mode, a few seconds per call, so memory stays flat and a
progress bar can follow long files. Mimi's streaming output does not depend on that chunk size.
A codes file is safetensors with one int64 tensor ``codes`` ``[1, K, F]`` and the metadata
``sample_rate``, ``frame_rate``, ``num_samples`` (the input length, used to trim on decode).
"""

from __future__ import annotations

from pathlib import Path

import typer
from duplex.cli.options import NUMERICS_HELP, numerics_option

app = typer.Typer(no_args_is_help=True)

DEFAULT_CHECKPOINT = None  # the bundled tiny demo, as for `duplex run` and `duplex serve`
CHUNK_FRAMES = 25  # 2 s of audio per streaming call
PROGRESS_MIN_SECONDS = 10.0

CheckpointOption = typer.Option(
    DEFAULT_CHECKPOINT,
    "--checkpoint",
    "-c",
    help="Mimi weights: a .safetensors file, a checkpoint directory, a Hugging Face repo id or "
    "hf://owner/repo/file (default: the bundled tiny demo, random weights; "
    "kyutai/moshiko-pytorch-bf16 for the official Mimi).",
)
DeviceOption = typer.Option("cpu", "--device", help="torch device.")
CodecOption = typer.Option(
    None,
    "--codec",
    help="The registered codec (duplex.codecs entry points) the weights are for (default: the one the "
    "checkpoint's config.json names, else mimi).",
)
NumericsOption = typer.Option("fast", "--numerics", help=NUMERICS_HELP)
ProgressOption = typer.Option(True, "--progress/--no-progress", help="Progress bar on long files.")


@app.callback()
def _group() -> None:
    """Encode and decode audio with a registered codec (Mimi by default); score its round trip."""


def _fail(message: str, cause: BaseException | None = None) -> None:
    from duplex.cli.errors import RuntimeProblem

    raise RuntimeProblem(message) from cause  # one `error:` line (duplex --debug: the traceback)


def _load_codec(checkpoint: str | None, codec: str | None, num_codebooks: int, device: str, numerics: str):  # noqa: ANN202
    from duplex.codec import CheckpointError, UnknownComponentError
    from duplex.codec.codecs import load_codec

    numerics = numerics_option(numerics)
    if checkpoint is None:
        from duplex.stream.defaults import default_checkpoint

        checkpoint = str(default_checkpoint())
    try:
        return load_codec(checkpoint, codec, num_codebooks=num_codebooks, device=device, numerics=numerics)
    except UnknownComponentError as e:
        from duplex.cli.errors import usage_error

        raise usage_error(str(e), "--codec") from e
    except (CheckpointError, ValueError) as e:
        _fail(str(e), e)


def _bar(total: int, unit: str, show: bool):  # noqa: ANN202
    from tqdm import tqdm

    return tqdm(total=total, unit=unit, disable=not show, leave=False)


def _encode(mimi, wav, progress: bool):  # noqa: ANN001, ANN202
    import torch

    frame = mimi.frame_size
    chunk = CHUNK_FRAMES * frame
    padded = torch.nn.functional.pad(wav, (0, -wav.shape[-1] % frame))[None]  # [1, 1, T]
    show = progress and wav.shape[-1] / mimi.sample_rate >= PROGRESS_MIN_SECONDS
    mimi.check_audio(padded)  # a file's samples, read once before streaming them
    pieces = []
    with torch.no_grad(), mimi.streaming(1), _bar(padded.shape[-1] // frame, "frame", show) as bar:
        for start in range(0, padded.shape[-1], chunk):
            codes = mimi.encode(padded[..., start : start + chunk])
            pieces.append(codes)
            bar.update(codes.shape[-1])
    return torch.cat(pieces, dim=-1)


def _decode(mimi, codes, progress: bool):  # noqa: ANN001, ANN202
    import torch

    show = progress and codes.shape[-1] / mimi.frame_rate >= PROGRESS_MIN_SECONDS
    mimi.check_codes(codes)  # a file's codes, read once before streaming them
    pieces = []
    with torch.no_grad(), mimi.streaming(codes.shape[0]), _bar(codes.shape[-1], "frame", show) as bar:
        for start in range(0, codes.shape[-1], CHUNK_FRAMES):
            part = codes[..., start : start + CHUNK_FRAMES]
            pieces.append(mimi.decode(part))
            bar.update(part.shape[-1])
    return torch.cat(pieces, dim=-1)


def _read_wav(path: Path):  # noqa: ANN202
    from duplex.codec import load_audio

    try:
        return load_audio(path)
    except (FileNotFoundError, ValueError) as e:
        _fail(str(e), e)


@app.command()
def encode(
    input_audio: Path = typer.Argument(
        ..., help="Audio file (any format soundfile reads; resampled to 24 kHz mono)."
    ),
    output_codes: Path = typer.Argument(..., help="Where to write the codes (.safetensors)."),
    checkpoint: str | None = CheckpointOption,
    codec: str | None = CodecOption,
    num_codebooks: int = typer.Option(8, "--num-codebooks", "-k", help="Codebooks to keep (1..32)."),
    device: str = DeviceOption,
    numerics: str = NumericsOption,
    progress: bool = ProgressOption,
) -> None:
    """Encode an audio file to Mimi codes."""
    from safetensors.torch import save_file

    wav = _read_wav(input_audio)
    mimi = _load_codec(checkpoint, codec, num_codebooks, device, numerics)
    codes = _encode(mimi, wav.to(device), progress)
    metadata = {
        "sample_rate": str(mimi.sample_rate),
        "frame_rate": str(mimi.frame_rate),
        "num_samples": str(wav.shape[-1]),
    }
    output_codes.parent.mkdir(parents=True, exist_ok=True)
    save_file({"codes": codes.cpu().contiguous()}, str(output_codes), metadata=metadata)
    typer.echo(f"{input_audio} -> {output_codes}: {codes.shape[1]} codebooks x {codes.shape[2]} frames")


@app.command()
def decode(
    input_codes: Path = typer.Argument(..., help="Codes written by `duplex codec encode` (.safetensors)."),
    output_audio: Path = typer.Argument(..., help="Where to write the 24 kHz wav."),
    checkpoint: str | None = CheckpointOption,
    codec: str | None = CodecOption,
    device: str = DeviceOption,
    numerics: str = NumericsOption,
    progress: bool = ProgressOption,
) -> None:
    """Decode Mimi codes to a wav file."""
    from duplex.codec import CheckpointError, save_audio
    from duplex.codec.checkpoint import read_safetensors

    try:
        tensors, metadata = read_safetensors(input_codes)
    except CheckpointError as e:
        _fail(str(e), e)
    if set(tensors) != {"codes"}:
        _fail(f"{input_codes} should hold one tensor named 'codes', found {sorted(tensors)}")
    codes = tensors["codes"]
    if codes.dim() == 2:
        codes = codes[None]
    if codes.dim() != 3 or codes.shape[0] != 1:
        _fail(f"codes must have shape [1, K, F] or [K, F], got {list(tensors['codes'].shape)}")
    mimi = _load_codec(checkpoint, codec, 1, device, numerics)  # decode uses every codebook it is given
    try:
        audio = _decode(mimi, codes.to(device), progress)
    except (TypeError, ValueError) as e:
        _fail(str(e), e)
    if "num_samples" in metadata:
        audio = audio[..., : int(metadata["num_samples"])]
    save_audio(output_audio, audio.cpu(), mimi.sample_rate)
    typer.echo(f"{input_codes} -> {output_audio}: {audio.shape[-1] / mimi.sample_rate:.2f} s")


@app.command()
def roundtrip(
    input_audio: Path = typer.Argument(..., help="Audio file (any format soundfile reads)."),
    output_audio: Path = typer.Argument(..., help="Where to write the reconstructed 24 kHz wav."),
    checkpoint: str | None = CheckpointOption,
    codec: str | None = CodecOption,
    num_codebooks: int = typer.Option(8, "--num-codebooks", "-k", help="Codebooks to use (1..32)."),
    device: str = DeviceOption,
    numerics: str = NumericsOption,
    progress: bool = ProgressOption,
) -> None:
    """Encode then decode an audio file (hear what Mimi keeps)."""
    from duplex.codec import save_audio

    wav = _read_wav(input_audio)
    mimi = _load_codec(checkpoint, codec, num_codebooks, device, numerics)
    codes = _encode(mimi, wav.to(device), progress)
    audio = _decode(mimi, codes, progress)[..., : wav.shape[-1]]
    save_audio(output_audio, audio.cpu(), mimi.sample_rate)
    typer.echo(f"{input_audio} -> {output_audio}: {codes.shape[1]} codebooks, {codes.shape[2]} frames")


@app.command()
def evaluate(
    data: Path = typer.Argument(
        ...,
        help="Speech to score: a folder of audio files or a moshi-finetune dataset, read as "
        "`duplex train codec --data` reads it.",
    ),
    checkpoint: str | None = CheckpointOption,
    codec: str | None = CodecOption,
    num_codebooks: int = typer.Option(8, "--num-codebooks", "-k", help="Codebooks to use (1..32)."),
    segment_seconds: float = typer.Option(
        0.96, "--segment-seconds", help="Segment length (rounded to whole frames); training's default."
    ),
    segments: int = typer.Option(
        16,
        "--segments",
        min=1,
        help="Segments to score, picked across the data as training's validation picks them.",
    ),
    device: str = DeviceOption,
    numerics: str = NumericsOption,
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object instead of a table."),
) -> None:
    """Score Mimi's round trip on speech segments: SI-SDR, mel distance, STOI, wideband PESQ and
    code use, the metrics a training run's validation logs."""
    import json

    try:
        from duplex.codec.training.data import AudioSegments
        from duplex.codec.training.evaluate import evaluate_codec
        from duplex.codec.training.run import validation_subset
    except ImportError as e:
        _fail(f"duplex codec evaluate needs the codec's training extra (duplex-codec[train]): {e}", e)
    if not data.exists():
        _fail(f"{data} does not exist: pass a folder of audio files or a moshi-finetune dataset")
    mimi = _load_codec(checkpoint, codec, num_codebooks, device, numerics)
    frame = mimi.frame_size
    samples = max(1, round(segment_seconds * mimi.sample_rate / frame)) * frame
    try:
        dataset = AudioSegments.from_folder(data, mimi.sample_rate, samples)
    except (FileNotFoundError, ValueError) as e:
        _fail(str(e), e)
    chosen = [segment.to(device) for segment in validation_subset(dataset, segments)]
    results = evaluate_codec(mimi, chosen)
    if as_json:
        typer.echo(json.dumps(results))
        return
    seconds = samples / mimi.sample_rate
    typer.echo(f"{data}: {len(chosen)} segments of {seconds:.2f} s, {mimi.num_codebooks} codebooks")
    for key, value in results.items():
        if not key.endswith("_skipped"):
            skipped = results.get(f"{key}_skipped")
            note = f"  ({skipped} of {len(chosen)} segments too short or silent to score)" if skipped else ""
            typer.echo(f"  {key:16s} {value:9.3f}{note}")
