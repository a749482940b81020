"""The codec LightningModule: Mimi with weight norm, EMA codebooks, GAN losses and distillation."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from duplex.codec.calibration import calibration_audio, unit_variance
from duplex.codec.mimi import Mimi
from duplex.codec.training.config import CodecTrainingConfig
from duplex.codec.training.discriminator import MultiScaleSTFTDiscriminator
from duplex.codec.training.losses import (
    MultiScaleMelLoss,
    discriminator_hinge_loss,
    distillation_loss,
    feature_matching_loss,
    generator_hinge_loss,
)
from duplex.codec.training.metrics import (
    PESQ,
    SISDR,
    STOI,
    CodebookUsage,
    MelDistance,
    code_perplexity,
    si_sdr,
)
from duplex.codec.training.quantizer import CodebookTrainingConfig, QuantizerStepResult, SplitQuantizerTrainer
from duplex.codec.training.schedule import warmup_cosine
from duplex.codec.training.teachers import build_teacher
from duplex.codec.training.weight_norm import add_weight_norm, fold_weight_norm, has_weight_norm
from lightning.pytorch.core.optimizer import LightningOptimizer
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from torch import nn
from torchmetrics import Metric

# Where Lightning keeps the count of optimizer steps (its ``global_step``) in a checkpoint.
_STEP_PROGRESS = "epoch_loop.manual_optimization.optim_step_progress"
# Config fields that size the module's weights.
_WEIGHT_FIELDS = ("codec.", "init:", "discriminator_", "teacher")


class CodecTrainingModule(L.LightningModule):
    def __init__(self, config: CodecTrainingConfig) -> None:
        super().__init__()
        self.config = config
        self.save_hyperparameters({"config": config.model_dump(mode="json")})
        self.automatic_optimization = False
        if config.init:
            self.codec = Mimi.from_pretrained(config.init, num_codebooks=config.codec.quantizer.n_q).train()
        else:
            self.codec = Mimi(config.codec)
            if config.unit_variance_init:
                scale_encoder_to_unit_variance(self.codec)
        add_weight_norm(self.codec)
        q = self.codec.quantizer.config
        codebook_config = CodebookTrainingConfig(
            decay=config.codebook_decay if config.codebook_decay is not None else q.decay,
            threshold_usage_ratio=q.threshold_usage_ratio,
            replaced_usage_ratio=q.replaced_usage_ratio,
            check_unused_every=config.check_unused_every,
        )
        self.quantizer_trainer = SplitQuantizerTrainer(
            self.codec.quantizer,
            codebook_config,
            quantizer_dropout=config.quantizer_dropout,
            quantization_rate=config.quantization_rate,
        )
        codec_config = self.codec.config
        self.teacher = build_teacher(
            config.teacher, codec_config.sample_rate, codec_config.frame_rate, dim=config.teacher_dim
        )
        self.semantic_projection = nn.Conv1d(codec_config.seanet.dimension, config.teacher_dim, 1)
        self.mel_loss = MultiScaleMelLoss(codec_config.sample_rate, linear_weight=config.mel_linear_weight)
        self.discriminator = (
            MultiScaleSTFTDiscriminator(config.discriminator_n_ffts, config.discriminator_channels)
            if config.adversarial
            else None
        )
        q = codec_config.quantizer
        self.val_si_sdr = SISDR()
        self.val_mel = MelDistance(codec_config.sample_rate)
        self.val_usage = CodebookUsage(self.codec.num_codebooks, q.bins)
        self.val_stoi = STOI(codec_config.sample_rate)
        self.val_pesq = PESQ(codec_config.sample_rate)

    @property
    def optimizer_steps_per_batch(self) -> int:
        """2 whenever the run has a discriminator, before ``adversarial_start_step`` too (its step is
        counted but not taken then): Lightning's step count, and so resuming, does not depend on
        when the discriminator switched on."""
        return 2 if self.discriminator is not None else 1

    def adversarial_at(self, step: int) -> bool:
        """Whether the discriminator trains, and the adversarial and feature losses count, at ``step``."""
        return self.discriminator is not None and step >= self.config.adversarial_start_step

    # -- forward ---------------------------------------------------------------------------------
    def reconstruct(
        self, wav: torch.Tensor, generator: torch.Generator | None = None, step: int | None = None
    ) -> tuple[torch.Tensor, QuantizerStepResult]:
        """Training forward: audio ``[B, 1, T]`` -> reconstruction ``[B, 1, T]`` and quantizer results."""
        codec = self.codec
        latent = codec.encode_latent(wav)
        quantized = self.quantizer_trainer(latent, training=self.training, generator=generator, step=step)
        x = quantized.quantized
        if codec.upsample is not None:
            x = codec.upsample(x)
        audio = codec.decoder(codec.decoder_transformer(x))
        return audio[..., : wav.shape[-1]], quantized

    def _generator(self, step: int) -> torch.Generator:
        return torch.Generator().manual_seed(self.config.seed * 1_000_003 + step)

    # -- training --------------------------------------------------------------------------------
    def training_step(self, batch: torch.Tensor, batch_index: int) -> torch.Tensor:
        c = self.config
        step = self.global_step // self.optimizer_steps_per_batch
        wav = batch
        estimate, quantized = self.reconstruct(wav, self._generator(step), step)
        logs: dict[str, torch.Tensor] = {}
        optimizers = self.optimizers()
        if not isinstance(optimizers, list):
            optimizers = [optimizers]
        logs["train/lr"] = torch.tensor(self._set_learning_rates(optimizers, step))
        adversarial_on = self.adversarial_at(step)
        if adversarial_on and step == c.adversarial_start_step > 0:
            rank_zero_info(f"step {step}: the discriminator switches on (adversarial_start_step)")
        if adversarial_on:
            d_optimizer = optimizers[1]
            real_logits, _ = self.discriminator(wav)
            fake_logits, _ = self.discriminator(estimate.detach())
            d_loss = discriminator_hinge_loss(real_logits, fake_logits)
            d_optimizer.zero_grad()
            self.manual_backward(d_loss)
            self._clip(d_optimizer)
            d_optimizer.step()
            logs["train/discriminator"] = d_loss.detach()
        elif self.discriminator is not None:  # reconstruction phase: the discriminator idles
            _count_without_stepping(optimizers[1])

        mel = self.mel_loss(estimate, wav)
        loss = c.mel_weight * mel + c.commitment_weight * quantized.commitment
        logs["train/mel"] = mel.detach()
        logs["train/commitment"] = quantized.commitment.detach()
        if c.waveform_weight:
            waveform = F.l1_loss(estimate, wav)
            loss = loss + c.waveform_weight * waveform
            logs["train/waveform_l1"] = waveform.detach()
        if c.distillation_weight:
            distill = distillation_loss(self.semantic_projection(quantized.semantic), self.teacher(wav))
            loss = loss + c.distillation_weight * distill
            logs["train/distillation"] = distill.detach()
        if adversarial_on:
            fake_logits, fake_features = self.discriminator(estimate)
            with torch.no_grad():
                _, real_features = self.discriminator(wav)
            adversarial = generator_hinge_loss(fake_logits)
            features = feature_matching_loss(real_features, fake_features)
            loss = loss + c.adversarial_weight * adversarial + c.feature_weight * features
            logs["train/adversarial"] = adversarial.detach()
            logs["train/feature_matching"] = features.detach()
        g_optimizer = optimizers[0]
        g_optimizer.zero_grad()
        self.manual_backward(loss)
        self._clip(g_optimizer)
        g_optimizer.step()
        logs["train/step"] = torch.tensor(float(step))  # Lightning's own step column shifts on resume
        logs["train/loss"] = loss.detach()
        logs["train/si_sdr"] = si_sdr(estimate.detach(), wav).mean()
        logs["train/codebooks"] = torch.tensor(float(quantized.codes.shape[1]))
        # What the codebooks did emit: perplexity of this batch's codes, averaged over codebooks (1 when
        # each codebook emits one code). ``codebook_entropy`` is of the EMA usage statistics instead,
        # which dead-code replacement keeps looking healthy even while the codes used collapse.
        logs["train/code_perplexity"] = code_perplexity(quantized.codes, self.codec.cardinality).mean()
        entropies = [v for k, v in quantized.metrics.items() if k.startswith("entropy_")]
        if entropies:
            logs["train/codebook_entropy"] = torch.stack(entropies).mean()
        self.log_dict(logs, prog_bar=False, on_step=True, on_epoch=False, batch_size=wav.shape[0])
        self.log("loss", loss.detach(), prog_bar=True, on_step=True, on_epoch=False, batch_size=wav.shape[0])
        return loss

    def _set_learning_rates(self, optimizers: list[LightningOptimizer], step: int) -> float:
        """Sets the rates of ``step`` and returns the codec's. The schedule is a function of the step
        alone, so resuming needs no scheduler state."""
        c = self.config
        max_steps = self._trainer.max_steps if self._trainer is not None else -1  # -1: no known end
        total = max_steps // self.optimizer_steps_per_batch if max_steps > 0 else None
        factor = warmup_cosine(step, total, c.warmup_steps, c.final_learning_rate_ratio)
        for optimizer, base in zip(
            optimizers, (c.learning_rate, c.discriminator_learning_rate), strict=False
        ):
            for group in optimizer.param_groups:
                group["lr"] = base * factor
        return c.learning_rate * factor

    def _clip(self, optimizer: torch.optim.Optimizer) -> None:
        if self.config.gradient_clip:
            self.clip_gradients(
                optimizer, gradient_clip_val=self.config.gradient_clip, gradient_clip_algorithm="norm"
            )

    def configure_optimizers(self):  # noqa: ANN201
        c = self.config
        generator_params = list(self.codec.parameters()) + list(self.semantic_projection.parameters())
        optimizers = [torch.optim.Adam(generator_params, lr=c.learning_rate, betas=c.betas)]
        if self.discriminator is not None:
            optimizers.append(
                torch.optim.Adam(
                    self.discriminator.parameters(), lr=c.discriminator_learning_rate, betas=c.betas
                )
            )
        return optimizers

    # -- resuming --------------------------------------------------------------------------------
    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Resume across a change of ``adversarial``: a checkpoint written without a discriminator
        gets a fresh one (the codec, its optimizer state and the distillation head as saved); one
        written with a discriminator loses it when the config turns it off. A checkpoint of another
        model fails here, in one line, rather than in ``load_state_dict``."""
        trainer = self._trainer
        if trainer is not None and trainer.strategy.restore_checkpoint_after_setup:
            return  # FSDP, DeepSpeed: the strategy loads the weights itself, from its own format
        state = checkpoint["state_dict"]
        saved = [k for k in state if k.startswith("discriminator.")]
        saved_per_batch = 2 if saved else 1
        step = checkpoint.get("global_step", 0) // saved_per_batch
        if self.discriminator is not None and not saved:
            start = self.config.adversarial_start_step
            when = f"; it switches on at step {start}" if start > step else ""
            rank_zero_info(
                f"resuming at step {step} from a checkpoint without a discriminator (adversarial was "
                f"off): the discriminator starts fresh{when}"
            )
            state.update({f"discriminator.{k}": v for k, v in self.discriminator.state_dict().items()})
            # Its optimizer state is not in the checkpoint either: that optimizer starts fresh too.
        elif self.discriminator is None and saved:
            rank_zero_info(
                f"resuming at step {step} with adversarial off: the checkpoint's discriminator is dropped"
            )
            for key in saved:
                del state[key]
            checkpoint["optimizer_states"] = checkpoint.get("optimizer_states", [])[:1]
        _rescale_step_count(checkpoint, self.optimizer_steps_per_batch, saved_per_batch)
        self._check_resumable(checkpoint)

    def _check_resumable(self, checkpoint: dict[str, Any]) -> None:
        state, own = checkpoint["state_dict"], self.state_dict()
        differ = sorted(own.keys() ^ state.keys()) + sorted(
            k
            for k in own.keys() & state.keys()
            if getattr(own[k], "shape", None) != getattr(state[k], "shape", None)
        )
        if not differ:
            return
        saved_config = checkpoint.get("hyper_parameters", {}).get("config")
        changed = _changed_fields(saved_config, self.config.model_dump(mode="json")) if saved_config else []
        # The fields that size weights first (a changed learning rate is no reason).
        changed = [f for f in changed if f.startswith(_WEIGHT_FIELDS)] or changed
        because = (
            f"the config changed: {', '.join(changed[:4])}" if changed else f"{len(differ)} weights differ"
        )
        raise ValueError(
            f"cannot resume from a checkpoint of another model ({because}; first weight at odds: "
            f"{differ[0]}): resume with the config it was trained with, or train into a new output folder"
        )

    # -- validation ------------------------------------------------------------------------------
    @torch.no_grad()
    def validation_step(self, batch: torch.Tensor, batch_index: int) -> None:
        codes = self.codec.encode(batch)
        estimate = self.codec.decode(codes)[..., : batch.shape[-1]]
        self.val_si_sdr.update(estimate, batch)
        self.val_mel.update(estimate, batch)
        self.val_usage.update(codes)
        self.val_stoi.update(estimate, batch)
        self.val_pesq.update(estimate, batch)

    def on_validation_epoch_end(self) -> None:
        usage = self.val_usage.compute()
        # Perplexity of the codes used over the validation set, per codebook and averaged.
        pairs = zip(usage["codebook"].tolist(), usage["perplexity"], strict=True)
        per_codebook = {f"val/code_perplexity/{k}": value for k, value in pairs}
        logs = {
            "val/si_sdr": self.val_si_sdr.compute(),
            "val/mel_distance": self.val_mel.compute(),
            "val/codebook_usage": usage["usage"].mean(),
            "val/code_perplexity": usage["perplexity"].mean(),
        }
        for key, metric in (("stoi", self.val_stoi), ("pesq", self.val_pesq)):
            result = metric.compute()
            scored, skipped = int(result["scored"]), int(result["skipped"])
            if scored:  # else not logged: no segment it could score
                logs[f"val/{key}"] = result["mean"]
            if skipped:
                rank_zero_warn(
                    f"validation: {metric.name} skipped {skipped} of {scored + skipped} segments "
                    f"({metric.skips})"
                )
        self.log_dict(
            logs,
            prog_bar=True,
            sync_dist=True,  # already reduced by torchmetrics: averaging equal values changes nothing
        )
        self.log_dict(per_codebook, sync_dist=True)  # in the logs, not the progress bar
        for metric in self.validation_metrics():
            metric.reset()

    def validation_metrics(self) -> tuple[Metric, ...]:
        """What validation accumulates over its batches (reset once logged)."""
        return (self.val_si_sdr, self.val_mel, self.val_usage, self.val_stoi, self.val_pesq)

    # -- export ----------------------------------------------------------------------------------
    def export(self, path: str | Path) -> Path:
        """Write the codec in the official format (weight norm folded), for ``Mimi.from_pretrained``."""
        # A fresh Mimi rather than a deep copy: parametrized classes are shared between copies, so
        # folding a copy would strip the live model's weight norm too.
        codec = Mimi(self.codec.config)
        state = {k: v.detach().cpu() for k, v in self.codec.state_dict().items()}
        codec.load_state_dict(state)  # folds the weight-norm pairs into plain weights
        if has_weight_norm(codec):
            fold_weight_norm(codec)
        return codec.save_pretrained(path)


@torch.no_grad()
def scale_encoder_to_unit_variance(codec: Mimi) -> None:
    """Scale a random encoder's convolutions to unit output variance on a calibration signal (as
    LSUV does). Freshly initialised, the encoder's latent barely varies over time, and training
    first spends hundreds of steps with every frame on one code while the decoder learns the
    average sound; scaled, it tells frames apart from the first step."""
    audio = calibration_audio(codec.sample_rate)
    unit_variance(codec.encoder, lambda: codec.encode_latent(audio))


def _count_without_stepping(optimizer: LightningOptimizer) -> None:
    """Count an optimizer step in Lightning's ``global_step`` without taking it: what
    ``LightningOptimizer.step`` does around the step itself. The idle discriminator's optimizer
    keeps no state and its weights do not change (under every precision plugin, which a step
    without gradients would not do: a gradient scaler refuses it)."""
    optimizer._on_before_step()
    optimizer._on_after_step()


def _rescale_step_count(checkpoint: dict[str, Any], per_batch: int, saved_per_batch: int) -> None:
    """Lightning's step count (both optimizers') in ``checkpoint``, from ``saved_per_batch`` optimizer
    steps per batch to ``per_batch``: the batches done stay the same."""
    if per_batch == saved_per_batch:
        return
    progress = checkpoint.get("loops", {}).get("fit_loop", {}).get(_STEP_PROGRESS, {})
    for counts in progress.values():
        for key, value in counts.items():
            counts[key] = value // saved_per_batch * per_batch
    if "global_step" in checkpoint:
        checkpoint["global_step"] = checkpoint["global_step"] // saved_per_batch * per_batch


def _changed_fields(saved: dict[str, Any], current: dict[str, Any], prefix: str = "") -> list[str]:
    """``name: old -> new`` for each (nested) config field that differs."""
    changed = []
    for key in sorted(saved.keys() | current.keys()):
        old, new = saved.get(key), current.get(key)
        if isinstance(old, dict) and isinstance(new, dict):
            changed += _changed_fields(old, new, f"{prefix}{key}.")
        elif old != new:
            changed.append(f"{prefix}{key}: {old} -> {new}")
    return changed
