"""The Lightning module for text pretraining: any Hugging Face LM head model, batches carry their labels."""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
from timm.scheduler import CosineLRScheduler
from torch import nn

from fewlabel.engine.classification import OptimConfig, optimizer_with_schedule


class LanguageModelingModule(L.LightningModule):
    """Masked-LM or next-token pretraining: the collator builds ``labels``; the model returns the loss."""

    def __init__(self, model: nn.Module, optim: OptimConfig):
        super().__init__()
        self.model = model
        self.optim = optim
        self.samples_seen = 0

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        loss = self.model(**batch).loss
        size = batch["input_ids"].shape[0]
        self.samples_seen += size
        self.log("lm_loss", loss, on_step=True, on_epoch=True, prog_bar=True, batch_size=size)
        return loss

    def configure_optimizers(self) -> dict[str, Any]:
        decay = [p for p in self.model.parameters() if p.requires_grad and p.ndim > 1]
        no_decay = [p for p in self.model.parameters() if p.requires_grad and p.ndim <= 1]
        groups = [{"params": decay}, {"params": no_decay, "weight_decay": 0.0}]
        return optimizer_with_schedule(groups, self.optim, int(self.trainer.estimated_stepping_batches))

    def lr_scheduler_step(self, scheduler: CosineLRScheduler, metric: Any) -> None:
        scheduler.step_update(num_updates=self.global_step)
