"""What codec and LM training share: the step-indexed batch sampler, strategies, the Trainer.

Resuming must not lose or repeat work. Lightning restores everything exactly at an epoch
boundary, so an "epoch" here is ``checkpoint_every`` steps and a checkpoint is written at the end
of each one; the batches of an epoch depend only on the seed and the epoch number, so a resumed
run sees the very batches the interrupted one would have.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint, TQDMProgressBar
from lightning.pytorch.loggers import CSVLogger
from torch.utils.data import Sampler

STRATEGIES = ("auto", "ddp", "ddp_spawn", "ddp_find_unused_parameters_true", "fsdp", "deepspeed")


class StepBatchSampler(Sampler[list[int]]):
    """``steps_per_epoch`` batches per epoch, drawn from a per-epoch permutation of the dataset.

    Under data parallelism each rank takes every ``world_size``-th batch of one shared stream, so
    the ranks see different data and the global batch is ``batch_size * world_size``.
    """

    def __init__(
        self,
        dataset_size: int,
        batch_size: int,
        steps_per_epoch: int,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        if dataset_size < 1:
            raise ValueError("the dataset is empty")
        if batch_size < 1 or steps_per_epoch < 1:
            raise ValueError(
                f"batch_size ({batch_size}) and steps_per_epoch ({steps_per_epoch}) must be >= 1"
            )
        self.dataset_size = dataset_size
        self.batch_size = batch_size
        self.steps_per_epoch = steps_per_epoch
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:  # called by Lightning before every epoch
        self.epoch = epoch

    def __len__(self) -> int:
        return self.steps_per_epoch

    def __iter__(self) -> Iterator[list[int]]:
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        needed = self.steps_per_epoch * self.batch_size * self.world_size
        order: list[int] = []
        while len(order) < needed:
            order += torch.randperm(self.dataset_size, generator=generator).tolist()
        for step in range(self.steps_per_epoch):
            start = (step * self.world_size + self.rank) * self.batch_size
            yield order[start : start + self.batch_size]


def distributed_rank() -> tuple[int, int]:
    """(rank, world size) from the launcher's environment, before any process group exists."""
    import os

    return int(os.environ.get("RANK", os.environ.get("LOCAL_RANK", 0))), int(os.environ.get("WORLD_SIZE", 1))


def checkpoint_dir(output: str | Path) -> Path:
    return Path(output) / "checkpoints"


def last_checkpoint(output: str | Path) -> Path | None:
    """The checkpoint a run in ``output`` resumes from, if one was written."""
    path = checkpoint_dir(output) / "last.ckpt"
    return path if path.is_file() else None


def read_metrics(output: str | Path) -> list[dict[str, float]]:
    """Every logged row of a run, across resumed sessions, in order (empty cells left out)."""
    import csv

    rows = []
    sessions = sorted((Path(output) / "logs").glob("version_*"), key=lambda p: int(p.name.split("_")[1]))
    for session in sessions:
        path = session / "metrics.csv"
        if path.is_file():
            with open(path) as handle:
                rows += [{k: float(v) for k, v in row.items() if v != ""} for row in csv.DictReader(handle)]
    return rows


def check_strategy(strategy: str) -> str:
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown strategy {strategy!r}; choose one of: {', '.join(STRATEGIES)}")
    return strategy


def build_trainer(
    output: str | Path,
    max_steps: int,
    checkpoint_every: int,
    optimizer_steps_per_batch: int = 1,
    strategy: str = "auto",
    devices: int | str = 1,
    accelerator: str = "auto",
    precision: str | None = None,
    log_every: int = 1,
    callbacks: Sequence[Callback] = (),
    progress_bar: bool = True,
) -> L.Trainer:
    """A Trainer writing checkpoints and CSV logs under ``output``.

    ``max_steps`` counts batches; adversarial training steps two optimizers per batch, which
    Lightning counts twice, hence ``optimizer_steps_per_batch``.
    """
    output = Path(output)
    checkpoints = ModelCheckpoint(
        dirpath=checkpoint_dir(output),
        filename="step-{step}",
        every_n_epochs=1,
        save_on_train_epoch_end=True,
        save_last=True,
        save_top_k=-1,
    )
    extra: list[Callback] = [checkpoints]
    if progress_bar:
        extra.append(TQDMProgressBar(refresh_rate=1))
    return L.Trainer(
        default_root_dir=output,
        max_steps=max_steps * optimizer_steps_per_batch,
        max_epochs=-1,
        strategy=check_strategy(strategy),
        devices=devices,
        accelerator=accelerator,
        precision=precision,
        # One version folder per (resumed) session, flushed often so that a crash loses little.
        logger=CSVLogger(output, name="logs", flush_logs_every_n_steps=10),
        log_every_n_steps=log_every,
        callbacks=[*extra, *callbacks],
        enable_progress_bar=progress_bar,
        enable_model_summary=False,
        use_distributed_sampler=False,
        num_sanity_val_steps=0,
        check_val_every_n_epoch=1,
        deterministic=False,
    )
