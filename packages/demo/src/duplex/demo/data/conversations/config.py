"""What a scripted conversation may vary in: the user's voice and delivery, pauses, overlaps, levels."""

from __future__ import annotations

from duplex.demo.data.speech.config import IntRange, Range
from pydantic import BaseModel, ConfigDict, Field


class ConversationConfig(BaseModel):
    """Ranges drawn per conversation. The model always answers in one voice and delivery, so each
    answer sounds the same in every conversation: the model has one fixed reply to learn per
    question, while the user's side varies."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    sample_rate: int = Field(24000, gt=0)
    frame_samples: int = Field(1920, ge=1)
    # The model's side: one espeak-ng voice, rate (words per minute), pitch (0-99) and level.
    model_voice: str = "en-us+f3"
    model_rate_wpm: int = Field(170, ge=80, le=450)
    model_pitch: int = Field(50, ge=0, le=99)
    model_dbfs: float = Field(-24.0, ge=-60, le=-1)
    # The user's side, drawn per conversation.
    user_rate_wpm: IntRange = (130, 200)
    user_pitch: IntRange = (20, 80)
    user_pitch_range: IntRange = (50, 160)
    user_dbfs: Range = (-32.0, -18.0)
    # Questions per conversation, and the pauses: before the first question, between a question's
    # end and its answer (negative: the model starts before the user has finished), between an
    # answer and the next question, and after the last answer.
    exchanges: IntRange = (1, 2)
    lead_s: Range = (0.3, 1.2)
    answer_gap_s: Range = (-0.25, 0.8)
    next_question_gap_s: Range = (0.4, 1.2)
    tail_s: Range = (0.6, 1.4)
    # Chance that the user says a short "okay" or "I see" while the model answers.
    backchannel_probability: float = Field(0.2, ge=0, le=1)
    # Both channels carry a noise floor (see duplex.demo.data.speech.noise).
    noise_dbfs: Range = (-70.0, -50.0)
    noise_colour: Range = (0.0, 1.0)
