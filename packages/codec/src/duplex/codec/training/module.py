"""The codec LightningModule: Mimi with weight norm, EMA codebooks, GAN losses and distillation."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import torch
import torch.nn.functional as F
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
from duplex.codec.training.metrics import SISDR, CodebookUsage, MelDistance, code_perplexity, si_sdr
from duplex.codec.training.quantizer import CodebookTrainingConfig, QuantizerStepResult, SplitQuantizerTrainer
from duplex.codec.training.teachers import build_teacher
from duplex.codec.training.weight_norm import add_weight_norm, fold_weight_norm, has_weight_norm
from torch import nn


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
        add_weight_norm(self.codec)
        q = self.codec.quantizer.config
        codebook_config = CodebookTrainingConfig(
            decay=config.codebook_decay if config.codebook_decay is not None else q.decay,
            threshold_usage_ratio=q.threshold_usage_ratio,
            replaced_usage_ratio=q.replaced_usage_ratio,
            check_unused_every=config.check_unused_every,
        )
        self.quantizer_trainer = SplitQuantizerTrainer(
            self.codec.quantizer, codebook_config, quantizer_dropout=config.quantizer_dropout
        )
        codec_config = self.codec.config
        self.teacher = build_teacher(
            config.teacher, codec_config.sample_rate, codec_config.frame_rate, dim=config.teacher_dim
        )
        self.semantic_projection = nn.Conv1d(codec_config.seanet.dimension, config.teacher_dim, 1)
        self.mel_loss = MultiScaleMelLoss(codec_config.sample_rate)
        self.discriminator = (
            MultiScaleSTFTDiscriminator(config.discriminator_n_ffts, config.discriminator_channels)
            if config.adversarial
            else None
        )
        q = codec_config.quantizer
        self.val_si_sdr = SISDR()
        self.val_mel = MelDistance(codec_config.sample_rate)
        self.val_usage = CodebookUsage(self.codec.num_codebooks, q.bins)

    @property
    def optimizer_steps_per_batch(self) -> int:
        return 2 if self.discriminator is not None else 1

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
        if self.discriminator is not None:
            d_optimizer = optimizers[1]
            real_logits, _ = self.discriminator(wav)
            fake_logits, _ = self.discriminator(estimate.detach())
            d_loss = discriminator_hinge_loss(real_logits, fake_logits)
            d_optimizer.zero_grad()
            self.manual_backward(d_loss)
            self._clip(d_optimizer)
            d_optimizer.step()
            logs["train/discriminator"] = d_loss.detach()

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
        if self.discriminator is not None:
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

    # -- validation ------------------------------------------------------------------------------
    @torch.no_grad()
    def validation_step(self, batch: torch.Tensor, batch_index: int) -> None:
        codes = self.codec.encode(batch)
        estimate = self.codec.decode(codes)[..., : batch.shape[-1]]
        self.val_si_sdr.update(estimate, batch)
        self.val_mel.update(estimate, batch)
        self.val_usage.update(codes)

    def on_validation_epoch_end(self) -> None:
        usage = self.val_usage.compute()
        # Perplexity of the codes used over the validation set, per codebook and averaged.
        pairs = zip(usage["codebook"].tolist(), usage["perplexity"], strict=True)
        per_codebook = {f"val/code_perplexity/{k}": value for k, value in pairs}
        self.log_dict(
            {
                "val/si_sdr": self.val_si_sdr.compute(),
                "val/mel_distance": self.val_mel.compute(),
                "val/codebook_usage": usage["usage"].mean(),
                "val/code_perplexity": usage["perplexity"].mean(),
            },
            prog_bar=True,
            sync_dist=True,  # already reduced by torchmetrics: averaging equal values changes nothing
        )
        self.log_dict(per_codebook, sync_dist=True)  # in the logs, not the progress bar
        for metric in (self.val_si_sdr, self.val_mel, self.val_usage):
            metric.reset()

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
