"""One place that builds the Lightning ``Trainer``: devices, precision, logging, checkpoints, progress."""

from __future__ import annotations

import logging
import sys
import time
import warnings
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback, EarlyStopping, ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger

from fewlabel.engine.run import LOGGER_NAME, RunFolder

log = logging.getLogger(LOGGER_NAME)
epoch_log = logging.getLogger(f"{LOGGER_NAME}.epochs")  # its own name, so a console can hide epoch lines


def auto_precision() -> str:
    """bf16 autocast on GPUs that support it, 16-bit mixed on older GPUs, full precision on CPU."""
    if torch.cuda.is_available():
        return "bf16-mixed" if torch.cuda.is_bf16_supported() else "16-mixed"
    return "32-true"


class EpochLog(Callback):
    """One log line per epoch, so progress is visible in logs and on non-interactive terminals."""

    def __init__(self) -> None:
        self.started = time.perf_counter()

    def on_train_epoch_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if v.numel() == 1}
        shown = " ".join(f"{k} {v:.4f}" for k, v in sorted(metrics.items()) if not k.endswith("_step"))
        epoch_log.info("epoch %d/%d %s (%.1f s)", trainer.current_epoch + 1, trainer.max_epochs, shown,
                 time.perf_counter() - self.started)


def build_trainer(
    run: RunFolder,
    max_epochs: int,
    monitor: str | None = "val_acc",
    patience: int | None = None,
    accelerator: str = "auto",
    devices: str | int = "auto",
    num_nodes: int = 1,
    precision: str | None = None,
    max_minutes: float | None = None,
    progress: bool | None = None,
    extra_callbacks: list[Callback] | None = None,
    **kwargs: Any,
) -> L.Trainer:
    callbacks: list[Callback] = [EpochLog()]
    if monitor is not None:
        callbacks.append(ModelCheckpoint(dirpath=run.checkpoints, filename="best-{epoch}", monitor=monitor,
                                         mode="max", save_top_k=1, save_last=True))
        if patience is not None:
            callbacks.append(EarlyStopping(monitor=monitor, mode="max", patience=patience))
    else:
        callbacks.append(ModelCheckpoint(dirpath=run.checkpoints, filename="epoch-{epoch}", save_last=True))
    callbacks.extend(extra_callbacks or [])
    if progress is None:
        progress = sys.stderr.isatty()
    max_time = {"minutes": max_minutes} if max_minutes else None
    warnings.filterwarnings("ignore", ".*does not have many workers.*")
    warnings.filterwarnings("ignore", ".*too few batches in the training set.*")
    warnings.filterwarnings("ignore", ".*smaller than the logging interval.*")
    return L.Trainer(
        default_root_dir=run.path,
        max_epochs=max_epochs,
        max_time=max_time,
        accelerator=accelerator,
        devices=devices,
        num_nodes=num_nodes,
        precision=precision or auto_precision(),
        logger=CSVLogger(save_dir=run.logs, name="", version="csv"),
        callbacks=callbacks,
        enable_progress_bar=progress,
        enable_model_summary=False,
        deterministic="warn",
        log_every_n_steps=10,
        **kwargs,
    )
