"""Two-process DDP on CPU (gloo): the ranks see different batches and end with identical weights."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import torch
from duplex.codec import Mimi, MimiConfig
from duplex.lm.data.synth import synthesize_dataset

SCRIPT = textwrap.dedent(
    """
    import sys
    from pathlib import Path

    import torch
    from lightning.pytorch.callbacks import Callback

    from duplex.lm.training.config import LMTrainingConfig
    from duplex.lm.training.run import train_lm

    torch.set_num_threads(1)
    root, output = Path(sys.argv[1]), Path(sys.argv[2])


    class DumpRank(Callback):
        def on_train_batch_start(self, trainer, module, batch, batch_index):
            if batch_index == 0 and trainer.current_epoch == 0:
                torch.save(batch, output / f"first_batch_rank{trainer.global_rank}.pt")

        def on_train_end(self, trainer, module):
            state = {k: v.detach().clone() for k, v in module.model.state_dict().items()}
            torch.save(state, output / f"weights_rank{trainer.global_rank}.pt")


    config = LMTrainingConfig.from_preset("tiny", segment_frames=16, batch_size=2, validation_segments=2)
    train_lm(
        root / "data", output, "preset:tiny", config, max_steps=3, checkpoint_every=3,
        codec=root / "mimi.safetensors", tokenizer=root / "data" / "tokenizer.model",
        strategy="ddp", devices=2, accelerator="cpu", progress_bar=False, callbacks=[DumpRank()],
    )
    """
)


def test_two_process_ddp_keeps_ranks_identical(tmp_path):
    synthesize_dataset(tmp_path / "data", 2, seed=4, tokenizer_vocab_size=64)
    torch.manual_seed(0)
    Mimi(MimiConfig.from_preset("tiny")).save_pretrained(tmp_path / "mimi.safetensors")
    output = tmp_path / "run"
    output.mkdir()
    script = tmp_path / "train_ddp.py"
    script.write_text(SCRIPT)
    result = subprocess.run(
        [sys.executable, str(script), str(tmp_path), str(output)], capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stderr[-4000:]
    batches = [torch.load(output / f"first_batch_rank{r}.pt") for r in (0, 1)]
    assert not torch.equal(batches[0], batches[1])  # real data parallelism: different shards
    ranks = [torch.load(output / f"weights_rank{r}.pt") for r in (0, 1)]
    assert ranks[0].keys() == ranks[1].keys()
    for key in ranks[0]:
        assert torch.equal(ranks[0][key], ranks[1][key]), key
    # The exported checkpoint holds those weights, and training moved them from the start.
    from duplex.lm.model import LMModel
    from duplex.lm.training.run import initialise

    exported = LMModel.from_pretrained(output / "checkpoint").state_dict()
    start = initialise("preset:tiny", tmp_path / "mimi.safetensors", tmp_path / "data" / "tokenizer.model")
    moved = 0
    for key, value in start.model.state_dict().items():
        torch.testing.assert_close(exported[key], ranks[0][key])
        moved += not torch.equal(value, ranks[0][key])
    assert moved > len(exported) // 2
