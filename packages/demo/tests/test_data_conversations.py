"""Scripted conversations for the demo LM: one fixed recording per answer, varied users, word times
where the words are, held-out voices, overlaps, and a dataset the LM trains on."""

from __future__ import annotations

import json

import numpy as np
import pytest
import soundfile
import torch
from duplex.demo.data.conversations import (
    SCRIPT,
    ConversationConfig,
    ConversationGenerator,
    words,
    write_conversations,
)
from duplex.demo.data.speech import HELDOUT_VOICES, TRAIN_VOICES
from duplex.lm.data import load_dataset
from duplex.lm.data.format import MAIN_SPEAKER, USER_SPEAKER
from duplex.lm.data.interleave import TEXT_PAD, text_stream
from duplex.lm.tokenizer import TextTokenizer

RATE = 24000


@pytest.fixture(scope="module")
def generator() -> ConversationGenerator:
    return ConversationGenerator(TRAIN_VOICES[:6])


@pytest.fixture(scope="module")
def datasets(tmp_path_factory) -> dict:
    train = tmp_path_factory.mktemp("conversations")
    heldout = tmp_path_factory.mktemp("conversations-heldout")
    write_conversations(train, 6, "train", seed=3)
    write_conversations(heldout, 3, "heldout", seed=3)
    return {"train": train, "heldout": heldout}


def _records(folder) -> list[dict]:
    return [json.loads(line) for line in (folder / "data.jsonl").read_text().splitlines()]


def _span(audio: np.ndarray, seconds: list[float], channel: int) -> np.ndarray:
    start, end = (round(t * RATE) for t in seconds)
    return audio[start:end, channel]


def test_a_conversation_depends_only_on_its_seed_and_number(generator):
    a = generator.conversation(seed=1, index=5)
    b = ConversationGenerator(TRAIN_VOICES[:6]).conversation(seed=1, index=5)
    other = generator.conversation(seed=1, index=6)
    assert np.array_equal(a.audio, b.audio) and a.alignments == b.alignments
    assert not np.array_equal(a.audio[: len(other.audio)], other.audio[: len(a.audio)])


def test_words_and_times_follow_the_script(generator):
    conversation = generator.conversation(seed=0, index=2, questions=[4, 9])
    audio, duration = conversation.audio, len(conversation.audio) / RATE
    assert audio.shape[1] == 2 and len(audio) % 1920 == 0
    main = [w for w in conversation.alignments if w[2] == MAIN_SPEAKER]
    assert [w[0] for w in main] == words(SCRIPT[4].answer) + words(SCRIPT[9].answer)
    for exchange, question in zip(conversation.exchanges, (4, 9), strict=True):
        assert exchange["question"] == question
        q_start, q_end = exchange["question_s"]
        a_start, a_end = exchange["answer_s"]
        assert 0 < q_start < q_end <= duration and 0 < a_start < a_end <= duration
        spoken = [w for w in conversation.alignments if q_start <= w[1][0] < q_end and w[2] == USER_SPEAKER]
        assert [w[0] for w in spoken] == words(SCRIPT[question].question)
        # the answer is on the model's channel, loud, and silent (noise floor only) on the user's before it
        assert np.sqrt(np.mean(_span(audio, exchange["answer_s"], 0) ** 2)) > 0.01
    for word, (start, end), _ in conversation.alignments:
        assert 0 <= start < end <= duration, word


def test_each_answer_is_one_recording_whoever_asks(generator):
    """The model has one reply to learn per question: the same samples under a different noise floor."""
    one = generator.conversation(seed=0, index=0, questions=[7])
    two = generator.conversation(seed=0, index=1, questions=[7])
    assert one.voice != two.voice or one.exchanges[0]["question_s"] != two.exchanges[0]["question_s"]
    a = _span(one.audio, one.exchanges[0]["answer_s"], 0)
    b = _span(two.audio, two.exchanges[0]["answer_s"], 0)
    n = min(len(a), len(b))
    assert abs(len(a) - len(b)) <= 1
    assert np.corrcoef(a[:n], b[:n])[0, 1] > 0.99


def test_the_model_may_start_before_the_user_has_finished():
    overlapping = ConversationGenerator(TRAIN_VOICES[:2], ConversationConfig(answer_gap_s=(-0.2, -0.2)))
    exchange = overlapping.conversation(seed=0, index=0, questions=[0]).exchanges[0]
    assert exchange["answer_s"][0] == pytest.approx(exchange["question_s"][1] - 0.2, abs=1e-5)


def test_heldout_asks_every_question_in_voices_training_never_uses(datasets):
    records = _records(datasets["heldout"])
    assert [r["exchanges"][0]["question"] for r in records] == [0, 1, 2]
    heldout_names = {v.name for v in HELDOUT_VOICES}
    assert all(r["voice"] in heldout_names for r in records)
    assert not heldout_names & {v.name for v in TRAIN_VOICES}
    assert not (datasets["heldout"] / "tokenizer.model").exists()


def test_the_dataset_is_one_the_lm_trains_on(datasets):
    folder = datasets["train"]
    dialogues = load_dataset(folder)  # the moshi-finetune reader's checks
    assert len(dialogues) == 6
    audio, rate = soundfile.read(str(folder / _records(folder)[0]["path"]), dtype="int16")
    assert rate == RATE and audio.shape[1] == 2
    assert np.mean(audio == 0) < 0.01  # a noise floor on both channels, no digital silence
    tokenizer = TextTokenizer.from_file(folder / "tokenizer.model")
    stream = text_stream(dialogues[0].words, tokenizer.encode, round(dialogues[0].audio.duration * 12.5))
    text = tokenizer.decode([t for t in stream.tolist() if t not in (TEXT_PAD, 0)])
    expected = " ".join(
        " ".join(words(SCRIPT[e["question"]].answer)) for e in _records(folder)[0]["exchanges"]
    )
    assert text.split() == expected.split()
    first_word = int(_records(folder)[0]["exchanges"][0]["answer_s"][0] * 12.5)
    assert torch.all(stream[: first_word - 1] == TEXT_PAD)  # silent until the answer (then EPAD, its words)


def test_no_two_answers_open_with_the_same_word():
    openings = [words(exchange.answer)[0] for exchange in SCRIPT]
    assert len(set(openings)) == len(SCRIPT)


def test_the_manifest_names_the_script(datasets, monkeypatch):
    from duplex.demo.data.conversations import dataset as module

    manifest = json.loads((datasets["train"] / "conversations.json").read_text())
    assert manifest["script"] == module.script_digest()
    edited = (SCRIPT[0].__class__(SCRIPT[0].question, "Fine."), *SCRIPT[1:])
    monkeypatch.setattr(module, "SCRIPT", edited)
    assert module.script_digest() != manifest["script"]  # a dataset of the old script reads as stale


def test_answer_choice_is_scored_at_each_answers_first_token_with_and_without_the_user(datasets, tmp_path):
    """An LM that knows the answer only while it hears the user scores 1, and 0 silenced; the
    tokens it is scored on are the first tokens of the answers asked, in order."""
    from types import SimpleNamespace

    from duplex.lm.data import TokenCache
    from duplex.lm.training.choice import answer_choice_accuracy

    class FrameCodec(torch.nn.Module):
        sample_rate, cardinality = RATE, 16

        def encode(self, wav: torch.Tensor) -> torch.Tensor:  # 2 codebooks, one code per 80 ms
            frames = torch.nn.functional.pad(wav, (0, -wav.shape[-1] % 1920)).unflatten(-1, (-1, 1920))
            return (frames.abs().mean(-1) * 1e4).long().expand(-1, 2, -1) % 16

    scored: list[int] = []

    class Oracle(torch.nn.Module):
        config = SimpleNamespace(dep_q=2)

        def forward(self, codes: torch.Tensor) -> SimpleNamespace:
            logits = torch.zeros(codes.shape[0], 1, codes.shape[-1], 200)
            for b, window in enumerate(codes):
                target = int(window[0, -1])
                hears_the_user = bool((window[3:] >= 0).any())
                logits[b, 0, -1, target if hears_the_user else (target + 1) % 200] = 1.0
                scored.append(target) if b == 0 else None
            return SimpleNamespace(text_logits=logits)

    folder = datasets["train"]
    tokenizer = TextTokenizer.from_file(folder / "tokenizer.model")
    cache = TokenCache(tmp_path / "cache", FrameCodec())
    result = answer_choice_accuracy(Oracle(), folder, cache, tokenizer.encode)
    asked = [e["question"] for r in _records(folder) for e in r["exchanges"]]
    assert result == {"exchanges": len(asked), "accuracy": 1.0, "accuracy_user_silenced": 0.0}
    assert scored == [tokenizer.encode(words(SCRIPT[q].answer)[0])[0] for q in asked]
