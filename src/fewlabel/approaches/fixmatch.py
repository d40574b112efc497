"""Semi-supervised training of the network itself: FixMatch, FlexMatch and Pseudo-Label in one module.

Each step sees ``B`` labelled samples (the modality's weak view) and ``ratio * B`` pool samples, in one or two
views (the modality's :meth:`~fewlabel.modalities.base.Modality.semisup_views`). The weak view's confident
predictions become hard pseudo-labels; the *target* view (the strong one when there is one, else the weak view
itself) is trained to predict them. The loss is ``CE(labelled) + w(t) * mean(mask * CE(target, pseudo))``,
averaged over **all** pool samples (a low mask rate means a small loss, not a noisy one). The methods differ only
in their parts:

* **FixMatch** (Sohn et al., 2020): weak and strong views, one fixed threshold ``tau`` (:class:`FixedThreshold`),
  constant weight.
* **FlexMatch** (Zhang et al., 2021): FixMatch with class-wise thresholds from each class's learning status
  (:class:`FlexMatchThresholds`), which lets hard (or rare) classes in earlier.
* **Pseudo-Label** (Lee, 2013): one view (the weak one trains on its own confident predictions), a fixed
  threshold, and a weight ramped linearly from 0 to ``unlabelled_weight`` over the first ``ramp`` share of the
  steps (40% by default, as USB's implementation), so early wrong pseudo-labels weigh little.

A threshold policy is a small object with ``update(positions, probs)`` (what it learns from a step's weak-view
probabilities of the pool samples at ``positions``), ``mask(probs)`` (which samples count, and their
pseudo-labels), ``thresholds()`` (per class) and ``record()`` (extra per-epoch numbers); it needs no Lightning.

An exponential moving average of the weights (torch's ``AveragedModel``) is the model validated, tested and saved;
its decay warms up as ``min(decay, (1 + n) / (10 + n))`` after ``n`` updates (TensorFlow's ``num_updates`` rule),
so a short run is not evaluated on weights that are mostly its random initialisation. Defaults are the papers' and
USB's: threshold 0.95, ratio 7, weight 1, EMA 0.999.

The pool is the rest of the training pool of the same nested split (never validation or test). Its hidden labels
travel with it only to log, per epoch, how accurate the accepted pseudo-labels are (diagnosis; never in the loss),
with the mask rate, the pseudo-labels' class distribution and the class thresholds' range; a collapsed mask or a
dominant class is warned about.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from lightning.pytorch.utilities import CombinedLoader
from torch import nn
from torch.optim.swa_utils import AveragedModel
from torch.utils.data import Dataset, default_collate
from torchmetrics.classification import MulticlassAccuracy, MulticlassF1Score

from fewlabel.engine.classification import OptimConfig, optimizer_with_schedule
from fewlabel.engine.data import IndexedSamples, auto_batch_size, default_workers, make_loader
from fewlabel.engine.run import LOGGER_NAME
from fewlabel.errors import FewlabelError

log = logging.getLogger(LOGGER_NAME)

PSEUDOLABEL_RAMP = 0.4  # Pseudo-Label: share of the steps over which the unlabelled weight rises from 0 (USB's)


# --- threshold policies ---------------------------------------------------------------------------------------

class ThresholdPolicy(Protocol):
    def update(self, positions: torch.Tensor, probs: torch.Tensor) -> None: ...

    def thresholds(self) -> torch.Tensor: ...

    def mask(self, probs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]: ...

    def record(self) -> dict[str, Any]: ...


class FixedThreshold:
    """FixMatch's and Pseudo-Label's rule: a sample counts where its top probability reaches ``threshold``."""

    def __init__(self, threshold: float, num_classes: int) -> None:
        self.threshold = threshold
        self.num_classes = num_classes

    def update(self, positions: torch.Tensor, probs: torch.Tensor) -> None:
        """Nothing to learn."""

    def thresholds(self) -> torch.Tensor:
        return torch.full((self.num_classes,), float(self.threshold))

    def mask(self, probs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(mask (bool), pseudo-labels) of the probabilities ``(B, classes)``."""
        confidence, pseudo = probs.max(dim=1)
        return confidence >= self.threshold, pseudo

    def record(self) -> dict[str, Any]:
        return {}


class FlexMatchThresholds:
    """FlexMatch's curriculum pseudo-labelling: class-wise thresholds from each class's learning status.

    Every pool sample (by its position in the pool, ``0..pool_size-1``) keeps its *latest confident prediction*:
    the class whose weak-view probability reached ``threshold`` (tau) the last time the sample was seen with one,
    or -1 ("unused") until then. The learning status of class c is ``sigma_c`` = the number of samples whose
    latest confident prediction is c; normalised, ``beta_c = sigma_c / max(max_c sigma_c, unused)`` (``warmup``,
    the paper's threshold warm-up: while most samples are unused, every beta stays small) or
    ``sigma_c / max_c sigma_c`` (without warm-up; all thresholds are 0 while nothing is confident yet). Class c's
    threshold is ``T_c = M(beta_c) * tau`` with the non-linear mapping ``M(x) = x / (2 - x)`` (convex: thresholds
    stay low until a class is well learnt, and reach tau for the best-learnt class). A sample counts where its top
    probability reaches ``T`` of its pseudo-class.

    ``update`` comes before ``mask`` in each step (as in USB's implementation): the step's own confident
    predictions already count. Confidence is ``>= tau``, the same comparison as the mask, so tau = 1 works.
    """

    def __init__(self, pool_size: int, num_classes: int, threshold: float, warmup: bool = True) -> None:
        self.num_classes = num_classes
        self.threshold = threshold
        self.warmup = warmup
        self.latest = torch.full((pool_size,), -1, dtype=torch.long)

    def update(self, positions: torch.Tensor, probs: torch.Tensor) -> None:
        confidence, predicted = probs.max(dim=1)
        confident = confidence >= self.threshold
        if self.latest.device != probs.device:
            self.latest = self.latest.to(probs.device)
        self.latest[positions[confident].to(probs.device)] = predicted[confident]

    def learning_status(self) -> torch.Tensor:
        """sigma: samples per class whose latest confident prediction is that class (long, ``(classes,)``)."""
        used = self.latest[self.latest >= 0]
        return torch.bincount(used, minlength=self.num_classes)

    def unused(self) -> int:
        return int((self.latest < 0).sum())

    def normalised_status(self) -> torch.Tensor:
        """beta, float ``(classes,)`` in [0, 1]."""
        sigma = self.learning_status().double()
        top = float(sigma.max())
        denominator = max(top, float(self.unused())) if self.warmup else top
        return (sigma / denominator if denominator > 0 else torch.zeros_like(sigma)).float()

    def thresholds(self) -> torch.Tensor:
        beta = self.normalised_status()
        return self.threshold * beta / (2.0 - beta)

    def mask(self, probs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        confidence, pseudo = probs.max(dim=1)
        return confidence >= self.thresholds().to(probs.device)[pseudo], pseudo

    def record(self) -> dict[str, Any]:
        return {"unused_share": round(self.unused() / max(1, len(self.latest)), 4)}


def masked_consistency_loss(weak_logits: torch.Tensor, strong_logits: torch.Tensor, threshold: float
                            ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(loss, mask, pseudo-labels): cross-entropy of the strong view against the weak view's hard label, counted
    only where the weak view's confidence reaches ``threshold``; averaged over **all** pool samples, as FixMatch
    does (so a low mask rate means a small loss, not a noisy one)."""
    probs = weak_logits.detach().softmax(dim=1)
    keep, pseudo = FixedThreshold(threshold, probs.shape[1]).mask(probs)
    mask = keep.to(strong_logits.dtype)
    return pseudo_label_loss(strong_logits, pseudo, mask), mask, pseudo


def pseudo_label_loss(logits: torch.Tensor, pseudo: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``mean(mask * CE(logits, pseudo))`` over all samples."""
    return (F.cross_entropy(logits, pseudo, reduction="none") * mask.to(logits.dtype)).mean()


def linear_ramp(step: int, total_steps: int, fraction: float) -> float:
    """0 at step 0, rising linearly to 1 at ``fraction * total_steps`` and 1 after (``fraction`` 0: always 1)."""
    length = fraction * total_steps
    return 1.0 if length <= 0 else float(np.clip(step / length, 0.0, 1.0))


class WarmupEMA:
    """``multi_avg_fn`` for ``AveragedModel``: an EMA whose decay after ``n`` updates is
    ``min(decay, (1 + n) / (10 + n))``. Integer buffers (BatchNorm's batch counter) copy the model's."""

    def __init__(self, decay: float) -> None:
        self.decay = decay

    def decay_at(self, updates: int) -> float:
        return min(self.decay, (1.0 + updates) / (10.0 + updates))

    @torch.no_grad()
    def __call__(self, ema_params: list[torch.Tensor], params: list[torch.Tensor], num_averaged: torch.Tensor
                 ) -> None:
        decay = self.decay_at(int(num_averaged))
        if torch.is_floating_point(ema_params[0]) or torch.is_complex(ema_params[0]):
            torch._foreach_lerp_(ema_params, params, 1.0 - decay)
        else:
            for ema, current in zip(ema_params, params, strict=True):
                ema.copy_(current)


# --- data -----------------------------------------------------------------------------------------------------

class Views:
    """The views of one pool sample, as a tuple (picklable, for loader workers); a None transform keeps the
    sample as it is."""

    def __init__(self, *transforms: Callable | None) -> None:
        self.transforms = transforms

    def __call__(self, sample: Any) -> tuple[Any, ...]:
        return tuple(sample if t is None else t(sample) for t in self.transforms)


class PoolSamples(Dataset):
    """The unlabelled pool: item ``i`` is ``(views, hidden label, i)``; ``i`` (the position in the pool) lets a
    threshold policy follow each sample across epochs; the hidden label is for diagnosis only."""

    def __init__(self, samples: Any, indices: np.ndarray, labels: np.ndarray, views: Views) -> None:
        self.inner = IndexedSamples(samples, indices, labels, views)

    def __len__(self) -> int:
        return len(self.inner)

    def __getitem__(self, item: int) -> tuple[tuple[Any, ...], torch.Tensor, int]:
        views, hidden = self.inner[item]
        return views, hidden, item


class PoolCollator:
    """Batches pool items ``(views, hidden, position)``: each view through the modality's ``collate`` (which takes
    ``(sample, label)`` pairs and returns ``(inputs, labels)``, e.g. text tokenisation), or stacked when None."""

    def __init__(self, collate: Callable | None = None) -> None:
        self.collate = collate

    def __call__(self, items: Sequence[tuple[tuple[Any, ...], Any, int]]) -> tuple[tuple[Any, ...], torch.Tensor,
                                                                                    torch.Tensor]:
        if self.collate is None:
            return default_collate(list(items))
        hidden = torch.as_tensor([int(h) for _, h, _ in items], dtype=torch.long)
        positions = torch.as_tensor([p for _, _, p in items], dtype=torch.long)
        views = tuple(self.collate([(v[k], h) for v, h, _ in items])[0] for k in range(len(items[0][0])))
        return views, hidden, positions


def forward_parts(model: nn.Module, parts: Sequence[Any]) -> list[torch.Tensor]:
    """Logits of each part. Tensors of one shape go through the network as **one** batch (BatchNorm sees all of it,
    as FixMatch does); anything else (text batches padded to different lengths) part by part."""
    if all(isinstance(p, torch.Tensor) for p in parts) and len({(p.shape[1:], p.dtype) for p in parts}) == 1:
        return list(model(torch.cat(list(parts))).split([len(p) for p in parts]))
    return [model(p) for p in parts]


def semisup_loaders(dataset: Any, labelled: np.ndarray, pool: np.ndarray, weak: Callable | None,
                    strong: Callable | None, batch_size: int, ratio: int, workers: int | None = None,
                    collate: Callable | None = None, train_samples: Any = None) -> CombinedLoader:
    """The labelled loader (weak views) and the pool loader (the weak view, and the strong one when given; hidden
    labels for diagnosis; pool positions), cycled together for as many steps as the pool loader has.
    ``train_samples``: what the training loaders read (default ``dataset.samples``; image folders: whole photos
    for views that crop)."""
    workers = default_workers(True) if workers is None else workers
    samples = dataset.samples if train_samples is None else train_samples
    labelled_batch = min(batch_size, len(labelled))
    pool_batch = min(ratio * batch_size, len(pool))
    views = Views(weak) if strong is None else Views(weak, strong)
    labelled_loader = make_loader(IndexedSamples(samples, labelled, dataset.labels, weak), labelled_batch,
                                  shuffle=True, workers=workers, drop_last=True, collate_fn=collate)
    pool_loader = make_loader(PoolSamples(samples, pool, dataset.labels, views), pool_batch, shuffle=True,
                              workers=workers, drop_last=True, collate_fn=PoolCollator(collate))
    return CombinedLoader({"labelled": labelled_loader, "unlabelled": pool_loader}, mode="max_size_cycle")


# --- the module -----------------------------------------------------------------------------------------------

class FixMatchModule(L.LightningModule):
    """The shared training module of FixMatch, FlexMatch and Pseudo-Label (see the module docstring).

    ``threshold``: a number (a :class:`FixedThreshold`) or a threshold policy. ``ramp``: share of the steps over
    which the unlabelled weight rises linearly from 0 (0: constant weight). The pool batch holds one view (the
    target is the weak view itself) or two (weak, strong: the target is the strong one).
    """

    def __init__(self, model: nn.Module, num_classes: int, optim: OptimConfig,
                 threshold: float | ThresholdPolicy = 0.95, unlabelled_weight: float = 1.0,
                 ema_decay: float = 0.999, ramp: float = 0.0) -> None:
        super().__init__()
        self.model = model
        self.ema = AveragedModel(model, multi_avg_fn=WarmupEMA(ema_decay), use_buffers=True)
        self.num_classes = num_classes
        self.optim = optim
        self.policy: ThresholdPolicy = (FixedThreshold(threshold, num_classes)
                                        if isinstance(threshold, int | float) else threshold)
        self.unlabelled_weight = unlabelled_weight
        self.ramp = ramp
        self.total_steps = 1
        self.weight_now = unlabelled_weight if ramp <= 0 else 0.0
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

    def on_fit_start(self) -> None:
        self.total_steps = max(1, int(self.trainer.estimated_stepping_batches))

    def unlabelled_weight_at(self, step: int) -> float:
        return self.unlabelled_weight * linear_ramp(step, self.total_steps, self.ramp)

    def _gathered(self, positions: torch.Tensor, probs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Every process's positions and probabilities (DDP): a learning status must see the whole pool."""
        if self._trainer is None or self.trainer.world_size == 1 or isinstance(self.policy, FixedThreshold):
            return positions, probs
        return self.all_gather(positions).reshape(-1), self.all_gather(probs).reshape(-1, probs.shape[1])

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        x_l, y_l = batch["labelled"]
        views, hidden, positions = batch["unlabelled"]
        logits = forward_parts(self.model, [x_l, *views])
        supervised = F.cross_entropy(logits[0], y_l)
        probs = logits[1].detach().float().softmax(dim=1)  # the weak view
        self.policy.update(*self._gathered(positions, probs))
        keep, pseudo = self.policy.mask(probs)
        unlabelled = pseudo_label_loss(logits[-1], pseudo, keep)  # the strong view, or the weak one itself
        self.weight_now = self.unlabelled_weight_at(self.global_step)
        loss = supervised + self.weight_now * unlabelled
        n, m = len(y_l), len(hidden)
        self.pool_seen += m
        self.accepted += int(keep.sum())
        self.correct += int((pseudo[keep] == hidden[keep]).sum())  # diagnosis only: never in the loss
        self.classes += torch.bincount(pseudo[keep].cpu(), minlength=self.num_classes)
        self.log("train_loss_epoch", loss.detach(), on_step=False, on_epoch=True, batch_size=n + m)
        self.log("supervised_loss", supervised.detach(), on_step=False, on_epoch=True, batch_size=n)
        self.log("unlabelled_loss", unlabelled.detach(), on_step=False, on_epoch=True, batch_size=m)
        # Logged here, averaged over the epoch, so that the epoch's console line shows this epoch's values.
        self.log("mask_rate", keep.float().mean(), on_step=False, on_epoch=True, batch_size=m)
        if keep.any():
            self.log("pseudo_label_accuracy", (pseudo[keep] == hidden[keep]).float().mean(), on_step=False,
                     on_epoch=True, batch_size=int(keep.sum()))
        return loss

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        self.ema.update_parameters(self.model)

    def on_train_epoch_end(self) -> None:
        rate = self.accepted / max(1, self.pool_seen)
        thresholds = self.policy.thresholds().float()
        record = {"epoch": self.current_epoch, "mask_rate": round(rate, 4),
                  "pseudo_label_accuracy": round(self.correct / self.accepted, 4) if self.accepted else None,
                  "pseudo_label_classes": self.classes.tolist(),
                  "threshold_min": round(float(thresholds.min()), 4),
                  "threshold_mean": round(float(thresholds.mean()), 4),
                  "threshold_max": round(float(thresholds.max()), 4),
                  "unlabelled_weight": round(self.weight_now, 4), **self.policy.record()}
        if self.accepted == 0 and any((h["mask_rate"] or 0) > 0.05 for h in self.history):
            log.warning("epoch %d: no pool sample reached its threshold (%.2f-%.2f) any more (the mask collapsed "
                        "to 0)", self.current_epoch + 1, record["threshold_min"], record["threshold_max"])
        top = int(self.classes.max())
        if self.num_classes >= 3 and self.accepted >= 100 and top > 0.5 * self.accepted:
            log.warning("epoch %d: class %d takes %.0f%% of the pseudo-labels: they may be collapsing onto it",
                        self.current_epoch + 1, int(self.classes.argmax()), 100 * top / self.accepted)
        self.history.append(record)
        self._reset_epoch()

    def validation_step(self, batch: tuple[Any, torch.Tensor], batch_idx: int) -> None:
        x, y = batch
        self.val_acc.update(self.ema(x), y)
        self.log("val_acc", self.val_acc, on_epoch=True, prog_bar=True, batch_size=len(y))

    def test_step(self, batch: tuple[Any, torch.Tensor], batch_idx: int) -> None:
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


def check_fixmatch(threshold: float, ratio: int, weight: float, ema: float, ramp: float = 0.0) -> None:
    if not 0.0 < threshold <= 1.0:
        raise FewlabelError(f"--threshold {threshold} is impossible; give a confidence in (0, 1]")
    if ratio < 1:
        raise FewlabelError(f"--ratio {ratio} is impossible; give 1 or more unlabelled samples per labelled one")
    if weight < 0 or not 0.0 <= ema < 1.0:
        raise FewlabelError("--unlabelled-weight must be >= 0 and --ema in [0, 1)")
    if not 0.0 <= ramp <= 1.0:
        raise FewlabelError(f"--ramp {ramp} is impossible; give the share of the steps the weight ramps over, in "
                            "[0, 1]")


def fixmatch_budget(labelled: int, batch_size: int | None) -> int:
    return batch_size or min(64, auto_batch_size(labelled, maximum=64))


__all__ = ["PSEUDOLABEL_RAMP", "FixMatchModule", "FixedThreshold", "FlexMatchThresholds", "PoolCollator",
           "PoolSamples", "ThresholdPolicy", "Views", "WarmupEMA", "check_fixmatch", "fixmatch_budget",
           "forward_parts", "linear_ramp", "masked_consistency_loss", "pseudo_label_loss",
           "semisup_loaders"]
