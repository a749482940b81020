"""What codec and LM training share: the step-indexed batch sampler, strategies, the Trainer.

Resuming must not lose or repeat work. Lightning restores everything exactly at an epoch
boundary, so an "epoch" here is ``checkpoint_every`` steps and a checkpoint is written at the end
of each one; the batches of an epoch depend only on the seed and the epoch number, so a resumed
run sees the very batches the interrupted one would have.
"""

from __future__ import annotations

import logging
import re
import warnings
import zipfile
from collections.abc import Iterator, Sequence
from pathlib import Path

import lightning as L
import torch
from duplex.codec.training.curves import LearningCurves
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


def _readable(path: Path) -> bool:
    """Whether ``path`` is a whole checkpoint (torch's zip format, every member's CRC checked): a
    crash or a full disk while Lightning writes one leaves it truncated."""
    try:
        with zipfile.ZipFile(path) as archive:
            return archive.testzip() is None
    except (OSError, zipfile.BadZipFile, EOFError):
        return False


def _checkpoint_step(path: Path) -> int:
    match = re.fullmatch(r"step-(?:step=)?(\d+)\.ckpt", path.name)
    return int(match[1]) if match else -1


def last_checkpoint(output: str | Path) -> Path | None:
    """The checkpoint a run in ``output`` resumes from, if one was written: ``last.ckpt``, or when
    that one is corrupt (a crash while writing it), the newest readable ``step-N.ckpt``, with a
    warning."""
    directory = checkpoint_dir(output)
    last = directory / "last.ckpt"
    if not last.is_file():
        return None
    if _readable(last):
        return last
    steps = sorted(directory.glob("step-*.ckpt"), key=_checkpoint_step, reverse=True)
    fallback = next((path for path in steps if _readable(path)), None)
    instead = f"resuming from {fallback.name}" if fallback else "no readable checkpoint: starting afresh"
    warnings.warn(f"{last} is corrupt (an interrupted write?); {instead}", stacklevel=2)
    return fallback


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


KEEP_CHECKPOINTS = 3
"""How many ``step-N.ckpt`` files a run keeps by default (the newest; ``last.ckpt`` besides)."""


class StepCheckpoint(ModelCheckpoint):
    """``step-N.ckpt`` every epoch, N counted in batches (generator steps for the codec, whose two
    optimizers Lightning counts twice), keeping the newest ``keep`` (0: all) and ``last.ckpt``."""

    def __init__(self, dirpath: Path, optimizer_steps_per_batch: int = 1, keep: int = KEEP_CHECKPOINTS):
        super().__init__(
            dirpath=dirpath,
            filename="step-{step}",
            auto_insert_metric_name=False,
            every_n_epochs=1,
            save_on_train_epoch_end=True,
            save_last=True,
            save_top_k=keep if keep > 0 else -1,
            monitor="step" if keep > 0 else None,  # the newest `keep` are the "best" by step
            mode="max",
        )
        self.optimizer_steps_per_batch = optimizer_steps_per_batch

    def _monitor_candidates(self, trainer: L.Trainer) -> dict[str, torch.Tensor]:
        candidates = super()._monitor_candidates(trainer)
        candidates["step"] = torch.tensor(trainer.global_step // self.optimizer_steps_per_batch)
        return candidates


class StepProgressBar(TQDMProgressBar):
    """One bar for the whole run, from the step it resumes at to ``max_steps``, in batches."""

    def __init__(self, max_steps: int, optimizer_steps_per_batch: int = 1) -> None:
        super().__init__(refresh_rate=1)
        self.max_steps = max_steps
        self.optimizer_steps_per_batch = optimizer_steps_per_batch

    def _steps(self, trainer: L.Trainer) -> int:
        return trainer.global_step // self.optimizer_steps_per_batch

    def on_train_epoch_start(self, trainer: L.Trainer, *_: object) -> None:
        bar = self.train_progress_bar
        if bar.total != self.max_steps:
            bar.reset(total=self.max_steps)
        bar.n = self._steps(trainer)
        bar.set_description("train step")
        bar.refresh()

    def on_train_batch_end(self, trainer: L.Trainer, module: L.LightningModule, *_: object) -> None:
        steps = self._steps(trainer)
        if self._should_update(steps, self.max_steps):
            self.train_progress_bar.n = steps
            self.train_progress_bar.set_postfix(self.get_metrics(trainer, module))
            self.train_progress_bar.refresh()


class _StepReport(logging.Filter):
    """Lightning reports ``max_steps`` in its own count (both optimizers); say it in batches."""

    optimizer_steps_per_batch = 1

    def filter(self, record: logging.LogRecord) -> bool:
        message = str(record.msg)
        if self.optimizer_steps_per_batch > 1 and message.startswith("`Trainer.fit` stopped: `max_steps="):
            steps = int(re.sub(r"\D", "", message.split("max_steps=")[1])) // self.optimizer_steps_per_batch
            record.msg, record.args = f"`Trainer.fit` stopped: `max_steps={steps}` reached.", ()
        return True


_STEP_REPORT = _StepReport()
logging.getLogger("lightning.pytorch.utilities.rank_zero").addFilter(_STEP_REPORT)


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
    keep_checkpoints: int = KEEP_CHECKPOINTS,
) -> L.Trainer:
    """A Trainer writing checkpoints, CSV logs and the learning curves under ``output``.

    ``max_steps`` counts batches, everywhere (checkpoint names, the progress bar, the final report);
    adversarial training steps two optimizers per batch, which Lightning counts twice, hence
    ``optimizer_steps_per_batch``. ``keep_checkpoints``: how many ``step-N.ckpt`` to keep (0: all).
    """
    output = Path(output)
    _STEP_REPORT.optimizer_steps_per_batch = optimizer_steps_per_batch
    extra: list[Callback] = [
        StepCheckpoint(checkpoint_dir(output), optimizer_steps_per_batch, keep_checkpoints),
        LearningCurves(output),  # metrics.csv and curves.png in the run folder, at each validation
    ]
    if progress_bar:
        extra.append(StepProgressBar(max_steps, optimizer_steps_per_batch))
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
