"""How well a checkpoint answers scripted questions: the held-out split of ``duplex data
conversations`` (each question of the script, in a voice training never used) played to the
full pipeline as a live call, one question per call.

For each question: the words of the model's text stream against the script's answer (correct
when the answer's words come out in order, and the word accuracy, 1 - word error rate), which
script answer they are closest to (the reply the model chose: ``choice_accuracy``), and the
mel-cepstral distance (DTW-aligned) between the model's spoken reply and the codec's own
rendering of the recorded answer. ``mcd_other_answer_db`` is the same distance to the rendering of
another answer: the level a reply that says the wrong thing sits at.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import soundfile
import torch
from duplex.codec.training.cepstral import mel_cepstral_distance
from duplex.demo.data.conversations import SCRIPT, words
from duplex.stream.offline import run_conversation
from duplex.stream.pipeline import MoshiPipeline
from duplex.stream.slots import SamplingParams


@dataclass
class AnswerScore:
    question: int
    expected: str
    heard: str
    correct: bool
    closest_answer: int  # the script answer nearest to what was heard (the model's choice)
    word_accuracy: float
    mcd_db: float
    mcd_other_answer_db: float


def edit_distance(a: list[str], b: list[str]) -> int:
    row = list(range(len(b) + 1))
    for i, x in enumerate(a, start=1):
        diagonal, row[0] = row[0], i
        for j, y in enumerate(b, start=1):
            diagonal, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, diagonal + (x != y))
    return row[-1]


def says(heard: list[str], expected: list[str]) -> bool:
    """Whether ``expected`` occurs in ``heard`` as consecutive words."""
    n = len(expected)
    return any(heard[i : i + n] == expected for i in range(len(heard) - n + 1))


def closest_answer(heard: list[str]) -> int:
    """The script answer whose words are fewest edits from ``heard``'s best-matching stretch of
    the same length: the reply the model chose, even when it garbles a word of it."""

    def distance(expected: list[str]) -> int:
        n = len(expected)
        stretches = [heard[i : i + n] for i in range(max(len(heard) - n, 0) + 1)]
        return min(edit_distance(expected, stretch) for stretch in stretches)

    return min(range(len(SCRIPT)), key=lambda i: distance(words(SCRIPT[i].answer)))


def active_part(pcm: np.ndarray, sample_rate: int, below_peak_db: float = 35.0) -> np.ndarray:
    """``pcm`` from its first to its last 10 ms frame within ``below_peak_db`` of the loudest."""
    hop = sample_rate // 100
    frames = len(pcm) // hop
    if frames == 0:
        return pcm
    power = np.square(pcm[: frames * hop].reshape(frames, hop).astype(np.float64)).mean(axis=1)
    loud = np.flatnonzero(power >= power.max() * 10 ** (-below_peak_db / 10))
    return pcm[loud[0] * hop : (loud[-1] + 1) * hop]


def codec_rendering(pipeline: MoshiPipeline, pcm: np.ndarray) -> np.ndarray:
    """``pcm`` through the pipeline's codec at the codebooks the LM speaks with."""
    mimi = pipeline.mimi
    frame = pipeline.frame_size
    padded = np.zeros(-(-len(pcm) // frame) * frame, dtype=np.float32)
    padded[: len(pcm)] = pcm
    with torch.no_grad():
        x = torch.from_numpy(padded)[None, None].to(pipeline.device)
        return mimi.decode(mimi.encode(x))[0, 0, : len(pcm)].float().cpu().numpy()


def evaluate_answers(
    pipeline: MoshiPipeline, data: str | Path, limit: int | None = None, seed: int = 0
) -> dict:
    """Scores over the conversations of ``data`` (a held-out conversations folder)."""
    data = Path(data)
    records = [json.loads(line) for line in (data / "data.jsonl").read_text().splitlines() if line]
    records = records[:limit] if limit else records
    if not records:
        raise ValueError(f"{data / 'data.jsonl'} lists no conversations")
    rate = pipeline.sample_rate
    renderings: dict[int, np.ndarray] = {}
    calls = []
    for record in records:
        audio, file_rate = soundfile.read(str(data / record["path"]), dtype="float32")
        if file_rate != rate or audio.ndim != 2:
            raise ValueError(f"{record['path']}: expected stereo audio at {rate} Hz")
        exchange = record["exchanges"][0]
        start, end = (round(t * rate) for t in exchange["answer_s"])
        renderings.setdefault(
            exchange["question"], active_part(codec_rendering(pipeline, audio[start:end, 0]), rate)
        )
        calls.append((exchange, audio[:, 1]))
    scores = []
    for number, (exchange, user) in enumerate(calls):
        question = exchange["question"]
        result = run_conversation(pipeline, user, SamplingParams(seed=seed))
        expected, heard = words(SCRIPT[question].answer), words(result.text)
        after_question = round(exchange["question_s"][1] * rate)
        reply = torch.from_numpy(active_part(result.reply[after_question:], rate))
        others = [q for q in renderings if q != question]
        other = others[number % len(others)] if others else question
        scores.append(
            AnswerScore(
                question=question,
                expected=" ".join(expected),
                heard=" ".join(heard),
                correct=says(heard, expected),
                closest_answer=closest_answer(heard),
                word_accuracy=max(0.0, 1 - edit_distance(expected, heard) / len(expected)),
                mcd_db=mel_cepstral_distance(reply, torch.from_numpy(renderings[question]), rate),
                mcd_other_answer_db=mel_cepstral_distance(reply, torch.from_numpy(renderings[other]), rate),
            )
        )
    count = len(scores)
    return {
        "questions": count,
        "answer_accuracy": sum(s.correct for s in scores) / count,
        "choice_accuracy": sum(s.closest_answer == s.question for s in scores) / count,
        "word_accuracy": sum(s.word_accuracy for s in scores) / count,
        "mcd_db": sum(s.mcd_db for s in scores) / count,
        "mcd_other_answer_db": sum(s.mcd_other_answer_db for s in scores) / count,
        "per_question": [asdict(s) for s in scores],
    }
