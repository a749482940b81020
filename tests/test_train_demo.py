"""examples/train_demo.py, the recipe of the bundled demo, in its quick mode: every stage runs, the
results and the checkpoint it would ship are complete, and a rerun resumes instead of retraining."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch
from duplex.stream.pipeline import MoshiPipeline
from safetensors.torch import load_file

SCRIPT = Path(__file__).resolve().parents[1] / "examples" / "train_demo.py"


@pytest.fixture(scope="module")
def recipe():
    spec = importlib.util.spec_from_file_location("train_demo", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_quick_recipe_trains_scores_and_exports_the_demo(recipe, tmp_path, monkeypatch):
    threads = torch.get_num_threads()
    shipped = tmp_path / "bundled"
    monkeypatch.setattr(recipe, "BUNDLED_DEMO", shipped)
    try:
        results = recipe.main(["--quick", "--output", str(tmp_path / "run"), "--threads", "2", "--ship"])
    finally:
        torch.set_num_threads(threads)
    assert set(results["seconds"]) == {"speech", "codec", "conversations", "lm"}
    # the LM trained on both shards of conversations (seeds 0 and 1), each conversation once
    run = tmp_path / "run"
    trained = [json.loads(line)["path"] for line in (run / "conversations-all" / "data.jsonl").open()]
    assert len(trained) == len(set(trained)) == 16
    assert {(run / "conversations-all" / p).resolve().parent.parent.name for p in trained} == {
        "conversations",
        "conversations-s1",
    }
    for scores in results["codec"].values():
        assert {"stoi", "pesq", "si_sdr", "mel_distance", "code_perplexity"} <= set(scores)
    answers = results["answers"]
    assert answers["questions"] == 2 and 0 <= answers["answer_accuracy"] <= 1 and answers["mcd_db"] > 0
    choice = results["choice"]
    assert choice["held-out voices"]["exchanges"] == 2 and choice["training conversations"]["exchanges"] >= 2
    assert all(0 <= c["accuracy"] <= 1 and 0 <= c["accuracy_user_silenced"] <= 1 for c in choice.values())
    # the checkpoint in the official layout, float16 on disk, shipped with its results
    files = {p.name for p in shipped.iterdir()}
    assert files == {"config.json", "model.safetensors", "mimi.safetensors", "mimi_config.json",
                     "tokenizer.model", "results.json"}  # fmt: skip
    for name in ("model.safetensors", "mimi.safetensors"):
        assert {t.dtype for t in load_file(shipped / name).values() if t.is_floating_point()} == {
            torch.float16
        }
    pipeline = MoshiPipeline.from_checkpoint(shipped)
    assert pipeline.lm_gen.model.dtype == torch.float32  # float16 files run widened on a CPU
    assert json.loads((shipped / "results.json").read_text())["answers"] == answers
    # a second run finds every stage done: nothing retrains, the numbers stay
    again = recipe.main(["--quick", "--output", str(tmp_path / "run"), "--threads", "2"])
    assert again["seconds"] == results["seconds"] and again["answers"] == answers
    assert again["choice"] == choice
