"""The one Lightning module that pretrains with any self-supervised method, and its monitor callback."""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback
from timm.scheduler import CosineLRScheduler
from torch import nn

from fewlabel.engine.classification import OptimConfig, optimizer_with_schedule, world_size
from fewlabel.engine.run import LOGGER_NAME
from fewlabel.evaluate.features import extract_features
from fewlabel.evaluate.probes import accuracy, collapse_warning, knn_predict, representation_health
from fewlabel.methods.base import SSLMethod
from fewlabel.models.backbones import channels_last_safe

if TYPE_CHECKING:
    from fewlabel.data.dataset import Dataset
    from fewlabel.data.splits import LabelSplit

log = logging.getLogger(LOGGER_NAME)


class PretrainModule(L.LightningModule):
    """Turns batches into views, asks the method for a loss, and calls its per-step hook (EMA updates).

    Batches are either lists of views (per-sample view generators in the data loader) or raw uint8 image
    batches that ``batched_views`` augments on the device after transfer (fast on GPU and CPU alike).
    """

    def __init__(self, method: SSLMethod, optim: OptimConfig, batched_views: nn.Module | None = None):
        super().__init__()
        self.method = method
        self.optim = optim
        self.batched_views = batched_views
        self.samples_seen = 0
        self.channels_last = channels_last_safe(method)  # views follow the weights' memory format

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        if self.batched_views is not None and isinstance(batch, torch.Tensor):
            return self.batched_views(batch)
        return batch

    def training_step(self, views: list[Any] | torch.Tensor, batch_idx: int) -> torch.Tensor:
        if isinstance(views, torch.Tensor):  # one batch of samples, no views (wav2vec 2.0 masks inside the model)
            views = [views]
        # Entries that are not image tensors (an image-text batch's token dict and caption ids) pass as they are.
        if self.channels_last:
            views = [v.contiguous(memory_format=torch.channels_last) if isinstance(v, torch.Tensor) and v.ndim == 4
                     else v for v in views]
        loss, scalars = self.method.training_loss(views)
        batch = views[0].shape[0]
        self.samples_seen += batch * world_size(self)  # every rank trains on its own batch of this size
        # Step values stay per device (no collective per step); epoch means are reduced across devices once.
        self.log("ssl_loss_step", loss.detach(), on_step=True, on_epoch=False, prog_bar=True, batch_size=batch)
        self.log("ssl_loss_epoch", loss.detach(), on_step=False, on_epoch=True, batch_size=batch, sync_dist=True)
        for name, value in scalars.items():
            if name != "loss":
                # Tensors stay on the device: Lightning averages them over the epoch without a per-step sync.
                value = value.detach() if isinstance(value, torch.Tensor) else value
                self.log(name, value, on_step=False, on_epoch=True, batch_size=batch, sync_dist=True)
        return loss

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        max_steps = max(1, int(self.trainer.estimated_stepping_batches))
        self.method.on_train_step_end(self.global_step - 1, max_steps)

    def configure_optimizers(self) -> dict[str, Any]:
        return optimizer_with_schedule(self.method.optimizer_groups(), self.optim,
                                       int(self.trainer.estimated_stepping_batches))

    def lr_scheduler_step(self, scheduler: CosineLRScheduler, metric: Any) -> None:
        scheduler.step_update(num_updates=self.global_step)


class RepresentationMonitor(Callback):
    """Each epoch: online kNN accuracy on a small labelled validation slice, embedding std and effective rank.

    The slice comes from the validation split, never from the pretraining pool, so pretraining itself
    stays label-free. Warns (log + ``warnings`` list) when the embedding looks collapsed.
    """

    def __init__(self, samples: torch.Tensor, memory: np.ndarray, memory_labels: np.ndarray,
                 queries: np.ndarray, query_labels: np.ndarray, num_classes: int, k: int = 20,
                 features: Callable[[nn.Module, Any, np.ndarray, torch.device], torch.Tensor] | None = None):
        """``features(backbone, samples, indices, device)`` embeds samples with the method's backbone (default:
        image batches through :func:`extract_features`)."""
        self.samples = samples
        self.features = features or (lambda backbone, samples, indices, device:
                                     extract_features(backbone, samples, indices, device=device))
        self.memory, self.memory_labels = memory, torch.as_tensor(memory_labels)
        self.queries, self.query_labels = queries, np.asarray(query_labels)
        self.num_classes = num_classes
        self.k = k
        self.history: list[dict[str, float]] = []
        self.warnings: list[str] = []
        # Its values come from rank 0 alone (logged with rank_zero_only): nothing to reduce across devices.
        warnings.filterwarnings("ignore", r".*self\.log\('monitor_.*sync_dist=True.*")

    def on_train_epoch_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        if not trainer.is_global_zero or len(self.queries) == 0:
            return
        backbone = module.method.pretrained_backbone()
        device = module.device
        memory = self.features(backbone, self.samples, self.memory, device)
        queries = self.features(backbone, self.samples, self.queries, device)
        predictions = knn_predict(memory, self.memory_labels, queries, self.num_classes, k=self.k)
        health = representation_health(queries)
        record = {"epoch": trainer.current_epoch + 1, "knn_accuracy": accuracy(predictions, self.query_labels),
                  **health}
        self.history.append(record)
        module.log_dict({f"monitor_{k}": float(v) for k, v in record.items() if k != "epoch"}, rank_zero_only=True)
        log.info("epoch %d monitor: kNN accuracy %.4f, embedding std %.3f, effective rank %.1f", record["epoch"],
                 record["knn_accuracy"], health["embedding_std"], health["effective_rank"])
        warning = collapse_warning(health, queries.shape[1])
        if warning:
            self.warnings.append(f"epoch {record['epoch']}: {warning}")
            log.warning("epoch %d: %s", record["epoch"], warning)


def validation_monitor(dataset: Dataset, split: LabelSplit, per_class: int,
                       features: Callable[[nn.Module, Any, np.ndarray, torch.device], torch.Tensor] | None = None
                       ) -> RepresentationMonitor:
    """kNN monitor on the validation split only: half of each class as memory, the other half as queries."""
    from fewlabel.data.splits import LabelRequest

    request = LabelRequest(per_class=2 * per_class)
    chosen = split.validation(request, dataset.labels, min_per_class=2)
    labels = dataset.labels[chosen]
    memory_mask = np.zeros(len(chosen), dtype=bool)
    for cls in np.unique(labels):
        members = np.flatnonzero(labels == cls)
        memory_mask[members[: (len(members) + 1) // 2]] = True
    return RepresentationMonitor(dataset.samples, chosen[memory_mask], labels[memory_mask], chosen[~memory_mask],
                                 labels[~memory_mask], dataset.num_classes, features=features)
