"""Scoring a checkpoint's answers to the scripted questions: the words it says, and how close its
spoken reply is to the codec's rendering of the recorded answer."""

from __future__ import annotations

import json

import numpy as np
import pytest
import soundfile
from duplex.demo.answers import active_part, closest_answer, edit_distance, evaluate_answers, says
from duplex.demo.data.conversations import SCRIPT, words, write_conversations
from duplex.stream.offline import run_conversation
from duplex.stream.pipeline import MoshiPipeline
from duplex.stream.slots import SamplingParams


def test_word_matching():
    assert edit_distance("a b c".split(), "a x c d".split()) == 2
    assert edit_distance([], ["a"]) == 1 and edit_distance(["a"], ["a"]) == 0
    assert says("well i am doing well thank you".split(), "doing well thank you".split())
    assert not says("doing well you thank".split(), "doing well thank you".split())


def test_the_closest_answer_is_the_reply_the_model_chose():
    for index in (0, 9, len(SCRIPT) - 1):
        answer = words(SCRIPT[index].answer)
        assert closest_answer(["um", *answer, "uh"]) == index
        garbled = answer[:1] + ["mumble"] + answer[2:]  # one word wrong: still that reply
        assert closest_answer(garbled) == index


def test_active_part_trims_the_quiet_edges():
    rate = 24000
    pcm = np.full(rate, 1e-4, dtype=np.float32)
    pcm[6000:12000] = 0.1
    trimmed = active_part(pcm, rate)
    assert len(trimmed) == 6000 and np.all(trimmed == 0.1)


@pytest.fixture(scope="module")
def heldout(tmp_path_factory):
    folder = tmp_path_factory.mktemp("conversations-heldout")
    write_conversations(folder, 2, "heldout", seed=0)
    return folder


def test_answers_are_scored_from_a_live_call_per_question(demo_checkpoint, heldout):
    pipeline = MoshiPipeline.from_checkpoint(demo_checkpoint, use_sampling=False)
    scores = evaluate_answers(pipeline, heldout)
    assert scores["questions"] == 2
    per_question = scores["per_question"]
    assert [s["question"] for s in per_question] == [0, 1]
    record = json.loads((heldout / "data.jsonl").read_text().splitlines()[1])
    user = soundfile.read(str(heldout / record["path"]), dtype="float32")[0][:, 1]
    alone = run_conversation(pipeline, user, SamplingParams(seed=0))  # question 1 as its own call
    assert per_question[1]["heard"] == " ".join(words(alone.text))
    for score in per_question:
        expected = words(SCRIPT[score["question"]].answer)
        assert score["expected"] == " ".join(expected)
        assert score["correct"] == says(score["heard"].split(), expected)
        assert score["closest_answer"] == closest_answer(score["heard"].split())
        assert 0 <= score["word_accuracy"] <= 1
        assert 0 < score["mcd_db"] < 100 and 0 < score["mcd_other_answer_db"] < 100
    assert scores["answer_accuracy"] == np.mean([s["correct"] for s in per_question])
    chose = [s["closest_answer"] == s["question"] for s in per_question]
    assert scores["choice_accuracy"] == np.mean(chose)
    assert scores["mcd_db"] == pytest.approx(np.mean([s["mcd_db"] for s in per_question]))
