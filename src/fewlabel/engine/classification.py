"""The one Lightning module for supervised and downstream training of any ``Classifier``.

It knows nothing of where the model came from (scratch, pretrained, self-supervised export) or which layers
train: callers pass parameter groups (see ``fewlabel.transfer``) and an optional batch transform (MixUp).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from timm.optim import create_optimizer_v2
from timm.scheduler import CosineLRScheduler
from torch import nn
from torchmetrics.classification import MulticlassAccuracy, MulticlassF1Score

from fewlabel.augment.supervised import BatchTransform


@dataclass(frozen=True)
class OptimConfig:
    """Optimiser and schedule: timm optimiser name, peak learning rate, warm-up share, cosine decay."""

    optimizer: str = "sgd"
    lr: float = 0.05
    weight_decay: float = 5e-4
    momentum: float = 0.9
    warmup_fraction: float = 0.05
    min_lr_ratio: float = 0.01
    label_smoothing: float = 0.0


# timm optimiser names that build torch's Adam/AdamW/SGD, which have fused (one-kernel) implementations.
FUSED_OPTIMIZERS = ("adam", "adamw", "sgd", "nesterov", "momentum")


def _fused_capable(params: nn.Module | list[Any]) -> bool:
    """True when every parameter is a floating-point tensor on the CPU or a CUDA device.

    Why fused: the default per-tensor loop of Adam/AdamW costs milliseconds per step on the CPU for the
    small networks of self-supervised pretraining (MoCo's 176k parameters: 3.9 ms, fused 0.8 ms), which
    is overhead on top of the backbone's own compute.
    """
    if isinstance(params, nn.Module):
        params = list(params.parameters())
    tensors = [p for group in params for p in (group["params"] if isinstance(group, dict) else [group])]
    return bool(tensors) and all(isinstance(p, torch.Tensor) and p.is_floating_point()
                                 and p.device.type in ("cpu", "cuda") for p in tensors)


def _keep_fused(optimizer: torch.optim.Optimizer) -> None:
    """After loading a state saved by a non-fused optimiser (a checkpoint from before fused kernels), whose
    groups say ``fused: None``: switch back to the fused kernel this optimiser was built for (it also expects
    AMP's grad scale under 16-bit mixed precision), with float32 step counts on the parameters' device."""
    for group in optimizer.param_groups:
        group["fused"] = True
        for param in group["params"]:
            step = optimizer.state.get(param, {}).get("step")
            if isinstance(step, torch.Tensor):
                optimizer.state[param]["step"] = step.to(device=param.device, dtype=torch.float32)


def optimizer_with_schedule(params: Any, optim: OptimConfig, total_steps: int) -> dict[str, Any]:
    """A timm optimiser plus per-step linear warm-up and cosine decay, in Lightning's return format.

    Parameter groups may carry timm's ``lr_scale`` (layer-wise decay); the scheduler honours it.
    """
    extra: dict[str, Any] = {"momentum": optim.momentum} if optim.optimizer in ("sgd", "nesterov", "lars") else {}
    if not isinstance(params, nn.Module):  # timm takes a model (and sets its weight-decay groups) or params
        params = [{**group, "params": list(group["params"])} if isinstance(group, dict) else group
                  for group in params]  # a group's params may be a generator: read it once, here
    if optim.optimizer in FUSED_OPTIMIZERS and _fused_capable(params):
        extra["fused"] = True
    optimizer = create_optimizer_v2(params, opt=optim.optimizer, lr=optim.lr, weight_decay=optim.weight_decay,
                                    **extra)
    if extra.get("fused"):
        optimizer.register_load_state_dict_post_hook(_keep_fused)
    total = max(1, total_steps)
    scheduler = CosineLRScheduler(optimizer, t_initial=total, lr_min=optim.lr * optim.min_lr_ratio,
                                  warmup_t=int(total * optim.warmup_fraction), warmup_lr_init=optim.lr * 0.01,
                                  t_in_epochs=False)
    return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


def world_size(module: L.LightningModule) -> int:
    """Processes training together (DDP ranks); 1 outside a trainer."""
    trainer = module._trainer
    return trainer.world_size if trainer is not None else 1


class ClassificationModule(L.LightningModule):
    def __init__(
        self,
        model: nn.Module,
        num_classes: int,
        optim: OptimConfig,
        batch_transform: BatchTransform | None = None,
        param_groups: list[dict[str, Any]] | None = None,
        frozen_eval_modules: list[nn.Module] | None = None,
        regularizer: nn.Module | None = None,
    ):
        super().__init__()
        self.regularizer = regularizer
        self.model = model
        self.num_classes = num_classes
        self.optim = optim
        self.batch_transform = batch_transform
        self.param_groups = param_groups
        self.frozen_eval_modules = frozen_eval_modules or []
        self.val_acc = MulticlassAccuracy(num_classes, average="micro")
        self.test_acc = MulticlassAccuracy(num_classes, average="micro")
        self.test_f1 = MulticlassF1Score(num_classes, average="macro")
        self.test_per_class = MulticlassAccuracy(num_classes, average=None)
        self.samples_seen = 0
        self.test_results: dict[str, Any] = {}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    def on_train_epoch_start(self) -> None:
        # Frozen BatchNorm layers (partial freezing, feature extraction) keep their pretrained statistics.
        for module in self.frozen_eval_modules:
            module.eval()

    def training_step(self, batch: tuple[Any, torch.Tensor], batch_idx: int) -> torch.Tensor:
        x, y = batch
        size = len(y)
        if self.batch_transform is not None:
            x = x.float().div_(255.0) if x.dtype == torch.uint8 else x
            x, y = self.batch_transform(x, y)
        logits = self.model(x)
        loss = F.cross_entropy(logits, y, label_smoothing=self.optim.label_smoothing)
        if self.regularizer is not None:
            penalty = self.regularizer()
            self.log("regularizer", penalty, on_step=False, on_epoch=True, batch_size=size, sync_dist=True)
            loss = loss + penalty
        self.samples_seen += size * world_size(self)  # every rank trains on its own batch of this size
        # Logged as tensors: no GPU-to-CPU sync per step. The step value stays per device (syncing it would cost
        # a collective per step under DDP); the epoch mean is reduced across devices once, at the epoch's end.
        self.log("train_loss_step", loss.detach(), on_step=True, on_epoch=False, prog_bar=True, batch_size=size)
        self.log("train_loss_epoch", loss.detach(), on_step=False, on_epoch=True, batch_size=size, sync_dist=True)
        return loss

    def validation_step(self, batch: tuple[Any, torch.Tensor], batch_idx: int) -> None:
        x, y = batch
        logits = self.model(x)
        self.val_acc.update(logits, y)
        self.log("val_loss", F.cross_entropy(logits, y), on_epoch=True, batch_size=len(y), sync_dist=True)
        self.log("val_acc", self.val_acc, on_epoch=True, prog_bar=True, batch_size=len(y))

    def test_step(self, batch: tuple[Any, torch.Tensor], batch_idx: int) -> None:
        x, y = batch
        logits = self.model(x)
        self.test_acc.update(logits, y)
        self.test_f1.update(logits, y)
        self.test_per_class.update(logits, y)

    def on_test_epoch_end(self) -> None:
        self.test_results = {
            "test_accuracy": float(self.test_acc.compute()),
            "macro_f1": float(self.test_f1.compute()),
            "per_class_accuracy": [float(v) for v in self.test_per_class.compute()],
        }
        self.log("test_acc", self.test_results["test_accuracy"], sync_dist=True)  # the same on every device
        for metric in (self.test_acc, self.test_f1, self.test_per_class):
            metric.reset()

    def configure_optimizers(self) -> dict[str, Any]:
        params = self.param_groups if self.param_groups is not None else self.model
        return optimizer_with_schedule(params, self.optim, int(self.trainer.estimated_stepping_batches))

    def lr_scheduler_step(self, scheduler: CosineLRScheduler, metric: Any) -> None:
        scheduler.step_update(num_updates=self.global_step)
