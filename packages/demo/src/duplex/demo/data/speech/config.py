"""What a speech clip may vary in, as ranges drawn from per clip (or per sentence).

The defaults aim at variety a codec has to generalise over, within what still sounds like a
person talking in a room: speaking rate 130 to 210 words per minute, the whole usable pitch scale,
flat to lively intonation, speech at -32 to -18 dBFS over a -70 to -45 dBFS noise floor (so at
least 13 dB of SNR), and short pauses around and between sentences.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator


def _ordered(bounds: tuple[float, float]) -> tuple[float, float]:
    if bounds[0] > bounds[1]:
        raise ValueError(f"a range is (low, high) with low <= high, got {bounds}")
    return bounds


Range = Annotated[tuple[float, float], AfterValidator(_ordered)]
IntRange = Annotated[tuple[int, int], AfterValidator(_ordered)]


class SpeechConfig(BaseModel):
    """Ranges of a speech clip's draws. A clip holds whole sentences in one voice, added until their
    speech lasts ``seconds``, between a lead-in and a tail of noise floor, padded to whole frames."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    sample_rate: int = Field(24000, gt=0)
    seconds: float = Field(3.0, gt=0, le=120)
    frame_samples: int = Field(1920, ge=1)  # clips are a whole number of codec frames (80 ms at 24 kHz)
    # Per clip: the speaker's base rate (espeak-ng words per minute), base pitch (0-99) and word gap
    # (10 ms units); per sentence: a relative rate change, a pitch change, an intonation width (%).
    rate_wpm: IntRange = (130, 210)
    rate_jitter: float = Field(0.08, ge=0, lt=1)
    pitch: IntRange = (15, 85)
    pitch_jitter: int = Field(6, ge=0, le=99)
    pitch_range: IntRange = (40, 180)
    word_gap: IntRange = (0, 4)
    sentence_gap_s: Range = (0.15, 0.7)
    # Levels: speech RMS over its active frames, and the noise floor under the whole clip (RMS).
    speech_dbfs: Range = (-32.0, -18.0)
    noise_dbfs: Range = (-70.0, -45.0)
    noise_colour: Range = (0.0, 1.0)  # 1/f**alpha: 0 white, 1 pink (see noise.py)
    lead_s: Range = (0.2, 0.6)
    tail_s: Range = (0.2, 0.6)

    @model_validator(mode="after")
    def _within_what_espeak_takes(self) -> SpeechConfig:
        checks = (
            ("rate_wpm", self.rate_wpm, 80, 450),
            ("pitch", self.pitch, 0, 99),
            ("pitch_range", self.pitch_range, 0, 400),
            ("word_gap", self.word_gap, 0, 100),
            ("speech_dbfs", self.speech_dbfs, -80, -1),
            ("noise_dbfs", self.noise_dbfs, -120, -10),
            ("noise_colour", self.noise_colour, 0, 2),
            ("sentence_gap_s", self.sentence_gap_s, 0, 10),
            ("lead_s", self.lead_s, 0, 10),
            ("tail_s", self.tail_s, 0, 10),
        )
        for name, (low, high), least, most in checks:
            if low < least or high > most:
                raise ValueError(f"{name} must lie within [{least}, {most}], got ({low}, {high})")
        return self
