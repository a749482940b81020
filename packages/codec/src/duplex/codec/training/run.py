"""``train_codec``: the whole codec training run (data, trainer, resume, export)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import lightning as L
from duplex.codec.training.config import CodecTrainingConfig
from duplex.codec.training.data import AudioSegments
from duplex.codec.training.module import CodecTrainingModule
from duplex.codec.training.trainer import (
    KEEP_CHECKPOINTS,
    StepBatchSampler,
    build_trainer,
    last_checkpoint,
)
from lightning.pytorch.callbacks import Callback
from torch.utils.data import DataLoader, Dataset


class StepDataModule(L.LightningDataModule):
    """Training batches from :class:`StepBatchSampler` (sharded by rank), a fixed validation set."""

    def __init__(
        self, train: Dataset, validation: Dataset, batch_size: int, steps_per_epoch: int, seed: int
    ) -> None:
        super().__init__()
        self.train = train
        self.validation = validation
        self.batch_size = batch_size
        self.steps_per_epoch = steps_per_epoch
        self.seed = seed

    def train_dataloader(self) -> DataLoader:
        sampler = StepBatchSampler(
            len(self.train),
            self.batch_size,
            self.steps_per_epoch,
            seed=self.seed,
            rank=self.trainer.global_rank,
            world_size=self.trainer.world_size,
        )
        return DataLoader(self.train, batch_sampler=sampler)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.validation, batch_size=self.batch_size)


def validation_subset(dataset: Dataset, count: int) -> list:
    """A fixed validation set: every ``len(dataset) // count``-th item of ``dataset``, at most ``count``
    of them (all items when it holds fewer). Used by the codec and LM training runs."""
    step = max(1, len(dataset) // count)
    return [dataset[i] for i in range(0, len(dataset), step)][:count]


def train_codec(
    data: str | Path,
    output: str | Path,
    config: CodecTrainingConfig,
    max_steps: int,
    checkpoint_every: int = 50,
    strategy: str = "auto",
    devices: int | str = 1,
    accelerator: str = "auto",
    precision: str | None = None,
    callbacks: Sequence[Callback] = (),
    progress_bar: bool = True,
    keep_checkpoints: int = KEEP_CHECKPOINTS,
    validation_data: str | Path | None = None,
    overfit_segments: int | None = None,
) -> CodecTrainingModule:
    """Train (or resume, when ``output`` holds a checkpoint) and export ``output/mimi.safetensors``.

    Validation uses ``config.validation_segments`` segments of ``validation_data`` (read like
    ``data``) when given, such as sentences and voices training never sees; else of ``data``.

    ``overfit_segments=N`` trains and validates on the same N segments of ``data``: whether the
    model and its losses can reach a quality at all, whatever the amount of speech they must
    cover (docs/architecture.md §8.4)."""
    if overfit_segments is not None and (overfit_segments < 1 or validation_data is not None):
        raise ValueError(
            f"overfit_segments={overfit_segments} needs to be at least 1 and without validation data: "
            "an overfit run validates on the segments it trains on"
        )
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    L.seed_everything(config.seed, workers=True, verbose=False)
    rate, samples = config.codec.sample_rate, config.segment_samples
    dataset = AudioSegments.from_folder(data, rate, samples)
    if overfit_segments is not None:
        dataset = validation_subset(dataset, overfit_segments)
        validation = dataset
    else:
        held_out = dataset
        if validation_data is not None:
            held_out = AudioSegments.from_folder(validation_data, rate, samples)
        validation = validation_subset(held_out, config.validation_segments)
    module = CodecTrainingModule(config)
    datamodule = StepDataModule(
        dataset,
        validation,
        config.batch_size,
        checkpoint_every,
        config.seed,
    )
    if strategy == "ddp" and module.discriminator is not None:
        # The discriminator step's backward reaches no codec parameter: DDP must expect that.
        strategy = "ddp_find_unused_parameters_true"
    trainer = build_trainer(
        output,
        max_steps=max_steps,
        checkpoint_every=checkpoint_every,
        optimizer_steps_per_batch=module.optimizer_steps_per_batch,
        strategy=strategy,
        devices=devices,
        accelerator=accelerator,
        precision=precision,
        callbacks=callbacks,
        progress_bar=progress_bar,
        keep_checkpoints=keep_checkpoints,
    )
    trainer.fit(module, datamodule=datamodule, ckpt_path=last_checkpoint(output))
    if trainer.is_global_zero:
        module.export(output / "mimi.safetensors")
    return module
