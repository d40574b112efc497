"""FixMatch (Sohn et al., 2020): the labelled batch and the unlabelled pool trained together.

Each step sees ``B`` labelled samples (weak augmentation) and ``ratio * B`` pool samples in two views: a weak one
(the modality's ``standard`` policy), whose confident predictions (max probability >= ``threshold``) become hard
pseudo-labels, and a strong one (``randaugment``), trained to predict them. The loss is
``CE(labelled) + weight * mean(mask * CE(strong, pseudo))``. An exponential moving average of the weights (torch's
``AveragedModel``) is the model validated, tested and saved. Defaults are the paper's and USB's: threshold 0.95,
ratio 7, weight 1, EMA 0.999.

The pool is the rest of the training pool of the same nested split (never validation or test). Its hidden labels
travel with it only to log, per epoch, how accurate the accepted pseudo-labels are (diagnosis; never in the loss),
with the mask rate and the pseudo-labels' class distribution; a collapsed mask or a dominant class is warned about.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.utilities import CombinedLoader
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from torchmetrics.classification import MulticlassAccuracy, MulticlassF1Score

from fewlabel.engine.classification import OptimConfig, optimizer_with_schedule
from fewlabel.engine.data import IndexedSamples, auto_batch_size, default_workers, make_loader
from fewlabel.engine.run import LOGGER_NAME
from fewlabel.errors import FewlabelError

log = logging.getLogger(LOGGER_NAME)


def masked_consistency_loss(weak_logits: torch.Tensor, strong_logits: torch.Tensor, threshold: float
                            ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(loss, mask, pseudo-labels): cross-entropy of the strong view against the weak view's hard label, counted
    only where the weak view's confidence reaches ``threshold``; averaged over **all** pool samples, as FixMatch
    does (so a low mask rate means a small loss, not a noisy one)."""
    probs = weak_logits.detach().softmax(dim=1)
    confidence, pseudo = probs.max(dim=1)
    mask = (confidence >= threshold).to(strong_logits.dtype)
    loss = (F.cross_entropy(strong_logits, pseudo, reduction="none") * mask).mean()
    return loss, mask, pseudo


class TwoViews:
    """A weak and a strong view of one sample (picklable, for loader workers)."""

    def __init__(self, weak: Callable | None, strong: Callable) -> None:
        self.weak, self.strong = weak, strong

    def __call__(self, sample: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return (self.weak(sample) if self.weak is not None else sample), self.strong(sample)


class FixMatchModule(L.LightningModule):
    def __init__(self, model: nn.Module, num_classes: int, optim: OptimConfig, threshold: float = 0.95,
                 unlabelled_weight: float = 1.0, ema_decay: float = 0.999) -> None:
        super().__init__()
        self.model = model
        self.ema = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(ema_decay), use_buffers=True)
        self.num_classes = num_classes
        self.optim = optim
        self.threshold = threshold
        self.unlabelled_weight = unlabelled_weight
        self.val_acc = MulticlassAccuracy(num_classes, average="micro")
        self.test_acc = MulticlassAccuracy(num_classes, average="micro")
        self.test_f1 = MulticlassF1Score(num_classes, average="macro")
        self.test_results: dict[str, Any] = {}
        self.history: list[dict[str, Any]] = []
        self._reset_epoch()

    def _reset_epoch(self) -> None:
        self.pool_seen = 0
        self.accepted = 0
        self.correct = 0
        self.classes = torch.zeros(self.num_classes, dtype=torch.long)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.ema(x)

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        x_l, y_l = batch["labelled"]
        (u_weak, u_strong), hidden = batch["unlabelled"]
        n, m = len(x_l), len(u_weak)
        logits = self.model(torch.cat([x_l, u_weak, u_strong]))  # one batch: BatchNorm sees all of it, as FixMatch
        supervised = F.cross_entropy(logits[:n], y_l)
        unlabelled, mask, pseudo = masked_consistency_loss(logits[n:n + m], logits[n + m:], self.threshold)
        loss = supervised + self.unlabelled_weight * unlabelled
        kept = mask.bool()
        self.pool_seen += m
        self.accepted += int(kept.sum())
        self.correct += int((pseudo[kept] == hidden[kept]).sum())  # diagnosis only: never in the loss
        self.classes += torch.bincount(pseudo[kept].cpu(), minlength=self.num_classes)
        self.log("train_loss_epoch", loss.detach(), on_step=False, on_epoch=True, batch_size=n + m)
        self.log("supervised_loss", supervised.detach(), on_step=False, on_epoch=True, batch_size=n)
        self.log("unlabelled_loss", unlabelled.detach(), on_step=False, on_epoch=True, batch_size=m)
        return loss

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        self.ema.update_parameters(self.model)

    def on_train_epoch_end(self) -> None:
        rate = self.accepted / max(1, self.pool_seen)
        record = {"epoch": self.current_epoch, "mask_rate": round(rate, 4),
                  "pseudo_label_accuracy": round(self.correct / self.accepted, 4) if self.accepted else None,
                  "pseudo_label_classes": self.classes.tolist()}
        self.log("mask_rate", rate)
        if self.accepted:
            self.log("pseudo_label_accuracy", self.correct / self.accepted)
        if self.accepted == 0 and any((h["mask_rate"] or 0) > 0.05 for h in self.history):
            log.warning("epoch %d: no pool sample reached the threshold %.2f any more (the mask collapsed to 0)",
                        self.current_epoch + 1, self.threshold)
        top = int(self.classes.max())
        if self.num_classes >= 3 and self.accepted >= 100 and top > 0.5 * self.accepted:
            log.warning("epoch %d: class %d takes %.0f%% of the pseudo-labels: they may be collapsing onto it",
                        self.current_epoch + 1, int(self.classes.argmax()), 100 * top / self.accepted)
        self.history.append(record)
        self._reset_epoch()

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        x, y = batch
        self.val_acc.update(self.ema(x), y)
        self.log("val_acc", self.val_acc, on_epoch=True, prog_bar=True, batch_size=len(y))

    def test_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        x, y = batch
        logits = self.ema(x)
        self.test_acc.update(logits, y)
        self.test_f1.update(logits, y)

    def on_test_epoch_end(self) -> None:
        self.test_results = {"test_accuracy": float(self.test_acc.compute()), "macro_f1": float(self.test_f1.compute())}
        self.test_acc.reset()
        self.test_f1.reset()

    def configure_optimizers(self) -> dict[str, Any]:
        return optimizer_with_schedule(self.model, self.optim, int(self.trainer.estimated_stepping_batches))

    def lr_scheduler_step(self, scheduler: Any, metric: Any) -> None:
        scheduler.step_update(num_updates=self.global_step)  # timm's per-step schedule


def fixmatch_loaders(dataset: Any, labelled: Any, pool: Any, weak: Callable | None, strong: Callable,
                     batch_size: int, ratio: int, workers: int | None = None) -> CombinedLoader:
    """The labelled loader (weak views) and the pool loader (weak + strong views, hidden labels for diagnosis),
    cycled together for as many steps as the pool loader has."""
    workers = default_workers(True) if workers is None else workers
    labelled_batch = min(batch_size, len(labelled))
    pool_batch = min(ratio * batch_size, len(pool))
    labelled_loader = make_loader(IndexedSamples(dataset.samples, labelled, dataset.labels, weak), labelled_batch,
                                  shuffle=True, workers=workers, drop_last=True)
    pool_loader = make_loader(IndexedSamples(dataset.samples, pool, dataset.labels, TwoViews(weak, strong)),
                              pool_batch, shuffle=True, workers=workers, drop_last=True)
    return CombinedLoader({"labelled": labelled_loader, "unlabelled": pool_loader}, mode="max_size_cycle")


def check_fixmatch(threshold: float, ratio: int, weight: float, ema: float) -> None:
    if not 0.0 < threshold <= 1.0:
        raise FewlabelError(f"--threshold {threshold} is impossible; give a confidence in (0, 1]")
    if ratio < 1:
        raise FewlabelError(f"--ratio {ratio} is impossible; give 1 or more unlabelled samples per labelled one")
    if weight < 0 or not 0.0 <= ema < 1.0:
        raise FewlabelError("--unlabelled-weight must be >= 0 and --ema in [0, 1)")


def fixmatch_budget(labelled: int, batch_size: int | None) -> int:
    return batch_size or min(64, auto_batch_size(labelled, maximum=64))


__all__ = ["FixMatchModule", "TwoViews", "check_fixmatch", "fixmatch_budget", "fixmatch_loaders",
           "masked_consistency_loss"]
