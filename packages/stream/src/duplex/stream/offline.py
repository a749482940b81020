"""`duplex run`: stream a wav file through the full pipeline, frame by frame, as a live call would.

The input is cut into 80 ms frames and fed to the engine one step at a time (exactly what the
server does with a live conversation), followed by one frame of silence so the reply covers the
whole input: the model answers frame ``n`` of the user while hearing frame ``n + 1``.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from duplex.codec.interfaces import Pipeline
from duplex.stream.engine import DuplexEngine
from duplex.stream.slots import SamplingParams


@dataclass
class TranscriptPiece:
    frame: int
    start: float  # seconds into the reply
    end: float
    text: str


@dataclass
class OfflineResult:
    reply: np.ndarray
    sample_rate: int
    pieces: list[TranscriptPiece] = field(default_factory=list)
    step_times: list[float] = field(default_factory=list)

    @property
    def text(self) -> str:
        return "".join(piece.text for piece in self.pieces)

    def transcript(self) -> dict:
        return {
            "sample_rate": self.sample_rate,
            "duration": len(self.reply) / self.sample_rate,
            "text": self.text,
            "pieces": [vars(piece) for piece in self.pieces],
        }


def run_conversation(
    pipeline: Pipeline,
    pcm: np.ndarray,
    params: SamplingParams | None = None,
    on_frame: Callable[[int, int], None] | None = None,
) -> OfflineResult:
    """The reply to ``pcm`` (mono float32 at the pipeline's rate), trimmed to the input's length."""
    pcm = np.asarray(pcm, dtype=np.float32).reshape(-1)
    if len(pcm) == 0:
        raise ValueError("the input audio is empty")
    frame_size = pipeline.frame_size
    frames = -(-len(pcm) // frame_size) + 1  # whole frames, plus one so the reply covers the input
    padded = np.zeros(frames * frame_size, dtype=np.float32)
    padded[: len(pcm)] = pcm
    engine = DuplexEngine(pipeline, max_conversations=1)
    try:
        conversation = engine.join(params)
        replies = []
        for index in range(frames):
            engine.push(conversation, padded[index * frame_size : (index + 1) * frame_size])
            replies.extend(engine.step())
            if on_frame is not None:
                on_frame(index + 1, frames)
    finally:
        engine.close()
    period = frame_size / pipeline.sample_rate
    pieces = [
        TranscriptPiece(frame, round(frame * period, 6), round((frame + 1) * period, 6), reply.text)
        for frame, reply in enumerate(replies)
        if reply.text
    ]
    reply = np.concatenate([r.pcm for r in replies]) if replies else np.zeros(0, np.float32)
    return OfflineResult(reply[: len(pcm)], pipeline.sample_rate, pieces, list(engine.step_times))


def write_outputs(result: OfflineResult, output_wav: str | Path) -> Path:
    """Write the reply wav and its transcript (same name, ``.json``); returns the JSON's path."""
    from duplex.stream.audio import save_wav

    output_wav = Path(output_wav)
    save_wav(output_wav, result.reply, result.sample_rate)
    transcript = output_wav.with_suffix(".json")
    transcript.write_text(json.dumps(result.transcript(), indent=2, ensure_ascii=False) + "\n")
    return transcript
