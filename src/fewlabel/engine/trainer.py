"""One place that builds the Lightning ``Trainer``: devices, precision, logging, checkpoints, progress."""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import time
import warnings
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import lightning as L
import torch
import yaml
from lightning.pytorch.callbacks import Callback, EarlyStopping, ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger

from fewlabel.engine.run import LOGGER_NAME, RunFolder, atomic_write

log = logging.getLogger(LOGGER_NAME)
epoch_log = logging.getLogger(f"{LOGGER_NAME}.epochs")  # its own name, so a console can hide epoch lines


def quiet_lightning() -> None:
    """Lightning's start-up chatter (accelerator banners, tips, a pytree deprecation) off the console; its
    warnings still show. Lightning configures its loggers when imported, so this runs after the import."""
    for noisy in ("lightning", "lightning.pytorch", "lightning.fabric", "pytorch_lightning"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=".*LeafSpec.*")


def device_type(accelerator: str = "auto") -> str:
    """The kind of device Lightning trains on for ``--accelerator`` (``cuda``, ``mps``, ``cpu``, ...), resolved
    the way Lightning resolves ``auto`` and ``gpu``."""
    name = str(accelerator).lower()
    if name in ("auto", "gpu"):
        if torch.cuda.is_available():
            return "cuda"
        mps = getattr(torch.backends, "mps", None)
        if mps is not None and mps.is_available():
            return "mps"
        return "cpu" if name == "auto" else "cuda"
    return name


def run_device(accelerator: str = "auto") -> torch.device:
    """The device a run's work outside the Lightning loop (feature extraction, probes) should use: the one its
    training would use, so ``--accelerator cpu`` keeps everything on the CPU."""
    kind = device_type(accelerator)
    if kind == "cuda" and "LOCAL_RANK" in os.environ:  # each rank of a launch on its own GPU, as Lightning does
        return torch.device("cuda", int(os.environ["LOCAL_RANK"]))
    return torch.device(kind if kind in ("cuda", "mps", "cpu") else "cpu")


def auto_precision(accelerator: str = "auto") -> str:
    """bf16 autocast on GPUs that support it, 16-bit mixed on older GPUs, full precision elsewhere (the CPU,
    also on a GPU host when ``--accelerator cpu`` is chosen)."""
    if device_type(accelerator) == "cuda" and torch.cuda.is_available():
        return "bf16-mixed" if torch.cuda.is_bf16_supported() else "16-mixed"
    return "32-true"


class EarlyStoppingAfterLearning(EarlyStopping):
    """Early stopping whose patience starts only once the training loss has left chance level.

    A from-scratch network on hard inputs (masked spectrograms, tiny labelled sets) can sit at ``ln(classes)`` for
    a few hundred steps before it learns anything; plain early stopping ends such a run at chance. Until the
    epoch's training loss falls below ``armed_below`` the wait counter stays at zero (the best checkpoint is still
    tracked by the checkpoint callback); from then on it is Lightning's ``EarlyStopping``.
    """

    def __init__(self, monitor: str, patience: int, armed_below: float, loss_key: str = "train_loss_epoch") -> None:
        super().__init__(monitor=monitor, mode="max", patience=patience)
        self.armed_below = armed_below
        self.loss_key = loss_key
        self.armed_at_epoch: int | None = None

    def _run_early_stopping_check(self, trainer: L.Trainer) -> None:
        if self.armed_at_epoch is None:
            loss = trainer.callback_metrics.get(self.loss_key)
            if loss is None or not float(loss) < self.armed_below:
                return  # still at chance: patience has not started
            self.armed_at_epoch = trainer.current_epoch
            log.info("training loss %.3f left chance (< %.3f) at epoch %d: early stopping armed",
                     float(loss), self.armed_below, trainer.current_epoch)
        super()._run_early_stopping_check(trainer)

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "armed_at_epoch": self.armed_at_epoch}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        state = dict(state_dict)
        self.armed_at_epoch = state.pop("armed_at_epoch", None)
        super().load_state_dict(state)


class StopAfterEpochs(Callback):
    """Ends a fit after ``epochs`` epochs while its schedule (and ``max_epochs``) stay those of the full run: a
    learning-rate trial is the first part of the run it may become, continued from its last checkpoint."""

    def __init__(self, epochs: int) -> None:
        self.epochs = epochs

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.current_epoch + 1 >= self.epochs:
            trainer.should_stop = True


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


INTERRUPTED = "INTERRUPTED"


class InterruptMarker(Callback):
    """On Ctrl-C, leave ``<run>/INTERRUPTED``: when and where training stopped, the last checkpoint, and the
    command that resumes it (pretraining runs: ``fewlabel pretrain --resume``). A later fit of the same folder
    that finishes removes the note."""

    def __init__(self, run: RunFolder):
        self.run = run
        self.interrupted = False
        self.message = ""
        self.checkpoint_epoch: int | None = None

    def on_save_checkpoint(self, trainer: L.Trainer, module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        self.checkpoint_epoch = checkpoint.get("epoch")

    def on_exception(self, trainer: L.Trainer, module: L.LightningModule, exception: BaseException) -> None:
        if not isinstance(exception, KeyboardInterrupt):
            return
        self.interrupted = True
        last = self.run.checkpoints / "last.ckpt"
        command = self._command()
        resume = f"fewlabel pretrain --resume {self.run.path}" if command == "pretrain" and last.is_file() else None
        self.message = f"run {self.run.path} marked {INTERRUPTED}" + (f"; continue it with `{resume}`" if resume
                                                                      else "; rerun the command with another --out "
                                                                      "(or after deleting that folder) to start "
                                                                      "it again")
        if not trainer.is_global_zero:
            return
        note = {
            "status": "interrupted",
            "time": datetime.now(UTC).isoformat(timespec="seconds"),
            "command": command,
            "stage": str(trainer.state.stage.value) if trainer.state.stage else None,
            "epoch": trainer.current_epoch + 1,
            "max_epochs": trainer.max_epochs,
            "global_step": trainer.global_step,
            "checkpoint": str(last.relative_to(self.run.path)) if last.is_file() else None,
            "checkpoint_epochs_done": (self.checkpoint_epoch + 1 if self.checkpoint_epoch is not None and
                                       last.is_file() else None),
            "resumable": resume is not None,
            "resume": resume,
        }
        try:
            atomic_write(self.run.path / INTERRUPTED, yaml.safe_dump(note, sort_keys=False))
        except OSError as exc:  # the run folder may be what failed; the message still reaches the console
            log.warning("could not write %s: %s", self.run.path / INTERRUPTED, exc)

    def on_fit_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        if trainer.is_global_zero and not self.interrupted:
            (self.run.path / INTERRUPTED).unlink(missing_ok=True)

    def _command(self) -> str | None:
        try:
            return yaml.safe_load((self.run.path / "config.yaml").read_text(encoding="utf-8")).get("command")
        except (OSError, AttributeError, yaml.YAMLError):
            return None


class Trainer(L.Trainer):
    """Lightning's ``Trainer``, except that Ctrl-C ends in ``KeyboardInterrupt`` again.

    Lightning 2.x catches the interrupt, shuts down gracefully (the ``on_exception`` hooks run: the run folder is
    marked), then calls ``sys.exit(1)`` with SIGINT left ignored; the ``fewlabel`` command would exit 1 without
    its own message. Here the exit becomes ``KeyboardInterrupt`` (its text says what was kept) and the previous
    SIGINT handler comes back.
    """

    interrupt_marker: InterruptMarker | None = None

    def fit(self, *args: Any, **kwargs: Any) -> Any:
        return self._interruptible(super().fit, *args, **kwargs)

    def validate(self, *args: Any, **kwargs: Any) -> Any:
        return self._interruptible(super().validate, *args, **kwargs)

    def test(self, *args: Any, **kwargs: Any) -> Any:
        return self._interruptible(super().test, *args, **kwargs)

    def predict(self, *args: Any, **kwargs: Any) -> Any:
        return self._interruptible(super().predict, *args, **kwargs)

    def _interruptible(self, call: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        main_thread = threading.current_thread() is threading.main_thread()
        previous = signal.getsignal(signal.SIGINT) if main_thread else None
        marker = self.interrupt_marker
        if marker is not None:
            marker.interrupted = False
        try:
            return call(*args, **kwargs)
        except SystemExit:
            if marker is None or not marker.interrupted:
                raise
            raise KeyboardInterrupt(marker.message) from None
        finally:
            if main_thread and previous is not None and signal.getsignal(signal.SIGINT) != previous:
                signal.signal(signal.SIGINT, previous)


def _keep_earlier_csv_log(run: RunFolder) -> None:
    """A resumed run (``pretrain --resume``) logs to the same CSV folder, where Lightning would delete the earlier
    epochs' ``metrics.csv``: keep it as ``metrics-1.csv`` (``-2`` ... after later resumes)."""
    earlier = run.logs / "csv" / "metrics.csv"
    if not earlier.is_file() or not run.primary:
        return
    number = 1
    while (kept := earlier.with_name(f"metrics-{number}.csv")).exists():
        number += 1
    earlier.rename(kept)
    warnings.filterwarnings("ignore", ".*Previous log files in this directory will be deleted.*")


def build_trainer(
    run: RunFolder,
    max_epochs: int,
    monitor: str | None = "val_acc",
    patience: int | None = None,
    accelerator: str = "auto",
    devices: str | int = 1,
    num_nodes: int = 1,
    precision: str | None = None,
    max_minutes: float | None = None,
    progress: bool | None = None,
    extra_callbacks: list[Callback] | None = None,
    stop_armed_below: float | None = None,
    checkpoint_dir: Path | None = None,
    **kwargs: Any,
) -> Trainer:
    """``stop_armed_below``: a training loss (e.g. 0.9 ln(classes)) above which early stopping does not count
    patience yet (:class:`EarlyStoppingAfterLearning`); ``None`` counts from the first validation."""
    marker = InterruptMarker(run)
    callbacks: list[Callback] = [EpochLog(), marker]
    if monitor is not None:
        callbacks.append(ModelCheckpoint(dirpath=checkpoint_dir or run.checkpoints, filename="best-{epoch}",
                                         monitor=monitor,
                                         mode="max", save_top_k=1, save_last=True))
        if patience is not None and stop_armed_below is not None:
            callbacks.append(EarlyStoppingAfterLearning(monitor, patience, stop_armed_below))
        elif patience is not None:
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
    # Frozen BatchNorm layers stay in eval mode on purpose; a learning-rate trial's winner continues in its folder.
    warnings.filterwarnings("ignore", ".*module\\(s\\) in eval mode at the start of training.*")
    warnings.filterwarnings("ignore", ".*Checkpoint directory .*sweep-lr.* exists and is not empty.*")
    _keep_earlier_csv_log(run)
    if kwargs.get("sync_batchnorm") and device_type(accelerator) != "cuda":
        kwargs["sync_batchnorm"] = False  # torch's SyncBatchNorm runs on CUDA only (multi-process CPU runs: gloo)
    trainer = Trainer(
        default_root_dir=run.path,
        max_epochs=max_epochs,
        max_time=max_time,
        accelerator=accelerator,
        devices=devices,
        num_nodes=num_nodes,
        precision=precision or auto_precision(accelerator),
        logger=CSVLogger(save_dir=run.logs, name="", version="csv"),
        callbacks=callbacks,
        enable_progress_bar=progress,
        enable_model_summary=False,
        deterministic="warn",
        log_every_n_steps=10,
        **kwargs,
    )
    trainer.interrupt_marker = marker
    return trainer
