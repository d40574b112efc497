"""Fit any classifier on a labelled subset and measure it on the test split: the shared training recipe."""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import lightning as L
import torch
from safetensors.torch import save_file
from torch import nn

from fewlabel.augment.supervised import AugmentationPolicy
from fewlabel.data.dataset import Dataset
from fewlabel.data.image_files import ImageFiles
from fewlabel.data.splits import LabelRequest, LabelSplit
from fewlabel.engine.classification import ClassificationModule, OptimConfig
from fewlabel.engine.data import IndexedSamples, auto_batch_size, default_workers, make_loader
from fewlabel.engine.run import LOGGER_NAME, RunFolder, atomic_path, atomic_write
from fewlabel.engine.trainer import EarlyStoppingAfterLearning, build_trainer
from fewlabel.modalities import modality_of

log = logging.getLogger(LOGGER_NAME)

CHANCE_MARGIN = 0.9  # early stopping is armed once the training loss falls below 0.9 ln(classes)


@dataclass(frozen=True)
class Budget:
    """How much training a run gets, and on what hardware. ``None`` means 'choose from the data size'."""

    epochs: int | None = None
    target_steps: int = 1500
    min_epochs: int = 15
    max_epochs: int = 300
    max_steps: int | None = None
    batch_size: int | None = None
    max_batch_size: int = 256
    patience: int | None = None
    max_minutes: float | None = None
    workers: int | None = None
    accelerator: str = "auto"
    devices: str | int = 1  # more than one (or "auto": every visible device) trains with DDP
    num_nodes: int = 1
    precision: str | None = None
    progress: bool | None = None

    def resolve_epochs(self, steps_per_epoch: int) -> int:
        """Explicit epochs, or enough epochs for ``target_steps`` optimiser steps within [min, max] epochs."""
        if self.epochs is not None:
            return self.epochs
        wanted = math.ceil(self.target_steps / max(1, steps_per_epoch))
        return int(min(self.max_epochs, max(self.min_epochs, wanted)))

    def batches_per_epoch(self, steps_per_epoch: int, epochs: int) -> int | None:
        """Cap each epoch so ``epochs`` epochs take about ``max_steps`` optimiser steps (``None``: no cap).

        A large labelled set then sees a fresh random subset each epoch, so every label fraction gets the same
        compute, and validation still runs ``epochs`` times to pick the best checkpoint.
        """
        if self.max_steps is None:
            return None
        cap = max(1, math.ceil(self.max_steps / epochs))
        return cap if cap < steps_per_epoch else None


def count_parameters(model: nn.Module) -> dict[str, int]:
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {"total": total, "trainable": trainable}


def fit_classifier(
    model: nn.Module,
    dataset: Dataset,
    split: LabelSplit,
    request: LabelRequest,
    policy: AugmentationPolicy,
    optim: OptimConfig,
    budget: Budget,
    run: RunFolder,
    seed: int,
    param_groups: list[dict[str, Any]] | None = None,
    frozen_eval_modules: list[nn.Module] | None = None,
    full_validation: bool = False,
    model_meta: dict[str, Any] | None = None,
    regularizer: nn.Module | None = None,
    extra_metrics: dict[str, Any] | None = None,
    train_collate: Callable | None = None,
    eval_collate: Callable | None = None,
) -> dict[str, Any]:
    """Train ``model`` on the labelled subset of ``split``, keep the best validation epoch, test it.

    Returns the metrics (also written to ``run/metrics.json``) and saves ``model.safetensors``.
    """
    L.seed_everything(seed, workers=True, verbose=False)
    labels = dataset.labels
    train_idx = split.labelled(request, labels)
    val_idx = split.validation(None if full_validation else request, labels)
    test_idx = split.test
    batch_size = budget.batch_size or auto_batch_size(len(train_idx), maximum=budget.max_batch_size)
    # Files decoded on access (image folders) need loader workers even without augmentation.
    decoded = not isinstance(dataset.samples, torch.Tensor | list)
    workers = budget.workers if budget.workers is not None else default_workers(
        policy.sample_transform is not None or decoded)
    eval_workers = workers if decoded else 0
    steps_per_epoch = max(1, len(train_idx) // batch_size)
    epochs = budget.resolve_epochs(steps_per_epoch)
    batches_per_epoch = budget.batches_per_epoch(steps_per_epoch, epochs)
    patience = budget.patience if budget.patience is not None else max(5, epochs // 4)
    # Tiny labelled sets need many short epochs; validating after every one would cost more than training.
    val_every = max(1, epochs // 25)

    train_samples = dataset.samples
    if policy.crops_to_size and isinstance(train_samples, ImageFiles):
        train_samples = train_samples.whole_images()  # crops from the whole photo, not its centre square
    train_loader = make_loader(IndexedSamples(train_samples, train_idx, labels, policy.sample_transform),
                               batch_size, shuffle=True, workers=workers, drop_last=True, collate_fn=train_collate)
    modality = modality_of(dataset)
    eval_batch = modality.eval_batch_size(dataset, batch_size)
    val_loader = make_loader(IndexedSamples(dataset.samples, val_idx, labels), eval_batch, False, eval_workers,
                             collate_fn=eval_collate)
    test_loader = make_loader(IndexedSamples(dataset.samples, test_idx, labels), eval_batch, False, eval_workers,
                              collate_fn=eval_collate)

    if modality.channels_last:  # convolutions: channels-last kernels are faster on CPUs and GPUs
        model = model.to(memory_format=torch.channels_last)
    model.train()  # Hugging Face's from_pretrained returns eval mode (dropout off); Lightning keeps modes as found
    module = ClassificationModule(model, dataset.num_classes, optim, policy.batch_transform, param_groups,
                                  frozen_eval_modules, regularizer)
    # Patience counts only once the training loss is clearly below chance, ln(classes): a network that has not
    # started learning yet (hard augmentation, few labels) is not stopped at chance.
    trainer = build_trainer(run, max_epochs=epochs, monitor="val_acc", patience=max(2, patience // val_every),
                            stop_armed_below=CHANCE_MARGIN * math.log(max(2, dataset.num_classes)),
                            check_val_every_n_epoch=val_every,
                            accelerator=budget.accelerator, devices=budget.devices, num_nodes=budget.num_nodes,
                            precision=budget.precision, max_minutes=budget.max_minutes, progress=budget.progress,
                            **({"limit_train_batches": batches_per_epoch} if batches_per_epoch else {}))
    sizes = {"labelled": len(train_idx), "unlabelled": len(split.unlabelled(request, labels)),
             "val": len(val_idx), "test": len(test_idx)}
    log.info("training on %d labelled examples (%s), batch %d, up to %d epochs%s, %d workers",
             len(train_idx), request, batch_size, epochs,
             f" of {batches_per_epoch} random batches" if batches_per_epoch else "", workers)
    started = time.perf_counter()
    trainer.fit(module, train_loader, val_loader)
    train_seconds = time.perf_counter() - started
    best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
    best_score = trainer.checkpoint_callback.best_model_score if trainer.checkpoint_callback else None
    trainer.test(module, test_loader, ckpt_path=best or None, verbose=False)
    results = module.test_results
    epochs_run = trainer.current_epoch
    stopper = next((c for c in trainer.callbacks if isinstance(c, EarlyStoppingAfterLearning)), None)

    metrics: dict[str, Any] = {
        "test_accuracy": results["test_accuracy"],
        "macro_f1": results["macro_f1"],
        "per_class_accuracy": dict(zip(dataset.classes, results["per_class_accuracy"], strict=True)),
        "best_val_accuracy": float(best_score) if best_score is not None else None,
        "train_seconds": round(train_seconds, 3),
        "samples_per_second": round(module.samples_seen / train_seconds, 1) if train_seconds > 0 else None,
        "epochs_run": epochs_run,
        "epochs_planned": epochs,
        "batches_per_epoch": batches_per_epoch or steps_per_epoch,
        "validate_every_epochs": val_every,
        "early_stopping_armed_at_epoch": stopper.armed_at_epoch if stopper else None,
        "batch_size": batch_size,
        "parameters": count_parameters(model),
        "split": {"seed": split.seed, "labels": str(request), **sizes},
        "optim": asdict(optim),
        "device": str(trainer.strategy.root_device),
        **(extra_metrics or {}),
    }
    if trainer.is_global_zero:
        save_classifier(run, module.model, dataset.classes, {"modality": dataset.modality, **(model_meta or {})})
        run.write_metrics(metrics)
    return metrics


def save_classifier(run: RunFolder, model: nn.Module, classes: list[str], meta: dict[str, Any] | None = None) -> None:
    """``model.safetensors`` (the whole classifier: backbone and head) and ``model.json`` (classes, provenance)."""
    with atomic_path(run.path / "model.safetensors", suffix=".safetensors") as tmp:
        save_file({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}, str(tmp))
    atomic_write(run.path / "model.json", json.dumps({"classes": list(classes), **(meta or {})}, indent=2) + "\n")
