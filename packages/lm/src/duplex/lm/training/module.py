"""The LM LightningModule: multistream loss, metrics, full or LoRA fine-tuning."""

from __future__ import annotations

import lightning as L
import torch
from duplex.codec.training.schedule import warmup_cosine
from duplex.lm.model import LMModel
from duplex.lm.training.augment import corrupt_user_audio
from duplex.lm.training.config import LMTrainingConfig
from duplex.lm.training.loss import model_loss
from duplex.lm.training.metrics import LMMetrics
from duplex.lm.training.user_text import UserTextHead


class LMTrainingModule(L.LightningModule):
    def __init__(self, model: LMModel, config: LMTrainingConfig, lora: bool = False) -> None:
        super().__init__()
        self.model = model
        self.config = config
        self.lora = lora
        self.save_hyperparameters({"config": config.model_dump(mode="json"), "lora": lora})
        self.train_metrics = LMMetrics()
        self.val_metrics = LMMetrics()
        self.user_text_head = (
            UserTextHead(model.config.dim, model.config.text_card, config.user_text_delay_frames)
            if config.user_text_weight > 0
            else None
        )

    def _loss(self, batch: torch.Tensor, corrupt: bool = False):  # noqa: ANN202
        """The model's outputs on ``batch`` (its codes, then with a user text head the user's text
        stream as a last row), their loss and the user text loss (None without the head)."""
        c, model = self.config, self.model.config
        codes = batch[:, : 1 + model.n_q]
        if corrupt:
            codes = corrupt_user_audio(
                codes, model.dep_q, model.card, c.user_codebook_dropout, c.user_code_noise
            )
        output, loss = model_loss(self.model, codes, c)
        if self.user_text_head is None:
            return output, loss, None
        user_text = batch[:, 1 + model.n_q]
        heard = self.user_text_head.loss(
            output.hidden, user_text, model.existing_text_padding_id, c.text_padding_weight
        )
        loss.total = loss.total + c.user_text_weight * heard
        return output, loss, heard

    def training_step(self, batch: torch.Tensor, batch_index: int) -> torch.Tensor:
        codes = batch[:, : 1 + self.model.config.n_q]
        output, loss, heard = self._loss(batch, corrupt=True)
        with torch.no_grad():
            self.train_metrics.update(output, codes)
            metrics = self.train_metrics.compute()
            self.train_metrics.reset()
        logs = {
            "train/step": float(self.global_step),  # Lightning's own step column shifts on resume
            "train/loss": loss.total.detach(),
            "train/text_loss": loss.text.detach(),
            "train/audio_loss": loss.audio.detach(),
            **{f"train/{name}": value for name, value in metrics.items()},
        }
        if heard is not None:
            logs["train/user_text_loss"] = heard.detach()
        size = codes.shape[0]
        self.log_dict(logs, on_step=True, on_epoch=False, batch_size=size)
        self.log("loss", loss.total.detach(), prog_bar=True, on_step=True, on_epoch=False, batch_size=size)
        return loss.total

    @torch.no_grad()
    def validation_step(self, batch: torch.Tensor, batch_index: int) -> None:
        output, loss, heard = self._loss(batch)
        self.val_metrics.update(output, batch[:, : 1 + self.model.config.n_q])
        self.log("val/loss", loss.total, on_epoch=True, batch_size=batch.shape[0], sync_dist=True)
        if heard is not None:
            self.log("val/user_text_loss", heard, on_epoch=True, batch_size=batch.shape[0], sync_dist=True)

    def on_validation_epoch_end(self) -> None:
        metrics = self.val_metrics.compute()
        # Already reduced over ranks by torchmetrics; sync_dist only averages equal values.
        self.log_dict({f"val/{name}": value for name, value in metrics.items()}, sync_dist=True)
        self.val_metrics.reset()

    def configure_optimizers(self):  # noqa: ANN201
        c = self.config
        parameters = [p for p in self.parameters() if p.requires_grad]
        if not parameters:
            raise ValueError("the model has no trainable parameters")
        learning_rate = c.lora_learning_rate if self.lora else c.learning_rate
        optimizer = torch.optim.AdamW(
            parameters, lr=learning_rate, betas=c.betas, weight_decay=c.weight_decay
        )
        total = max(self.trainer.max_steps, 1) if self.trainer is not None else 1

        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: warmup_cosine(step, total, c.warmup_steps, final_ratio=0.1)
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None):  # noqa: ANN001, ANN201
        if self.config.gradient_clip:
            self.clip_gradients(
                optimizer, gradient_clip_val=self.config.gradient_clip, gradient_clip_algorithm="norm"
            )
