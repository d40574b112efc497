"""Self-supervised pretraining on the unlabelled pool, then evaluation of the exported backbone.

``pretrain`` asks the method's modality to pretrain (images: :mod:`fewlabel.approaches.pretrain_images`; text:
:mod:`fewlabel.approaches.pretrain_text`); ``evaluate_backbone`` (:mod:`fewlabel.approaches.evaluate`) probes
what any of them exported. Resuming and reading a run's config are shared here.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from fewlabel.approaches.evaluate import EvaluateConfig, evaluate_backbone
from fewlabel.approaches.pretrain_images import pretrain_images as pretrain_on
from fewlabel.approaches.pretrain_text import pretrain_text
from fewlabel.data.registry import load_dataset
from fewlabel.engine.classification import OptimConfig
from fewlabel.engine.fit import Budget
from fewlabel.engine.run import RunFolder, RunResult
from fewlabel.errors import FewlabelError
from fewlabel.methods.registry import method_hparams
from fewlabel.modalities import modality_for_method


@dataclass(frozen=True)
class PretrainConfig:
    method: str = "simclr"
    data: str = "digits"
    data_dir: str | None = None
    columns: dict[str, str] = field(default_factory=dict)  # text tables: {"text": ..., "label": ..., "group": ...}
    backbone: str | None = None  # None: the modality's default (images: resnet_small; text: small)
    width: int | None = None
    seed: int = 0
    split: str | None = None
    epochs: int = 10
    batch_size: int | None = None
    views: str = "auto"  # auto | batched | per-sample
    local_crops: int = 6  # multi-crop (DINO): small crops per image besides the two global ones
    method_options: dict[str, Any] = field(default_factory=dict)
    optim: OptimConfig | None = None
    budget: Budget = field(default_factory=Budget)
    monitor_per_class: int = 20
    image_size: int | None = None  # image folders: working side (default: native, at most 96 px)
    cache_images: bool = False  # image folders: decode once into a uint8 cache, reused by later runs
    skip_bad: bool = False  # image folders: leave unreadable files out (counted) instead of stopping
    out: str | None = None
    runs_dir: str = "runs"



@dataclass(frozen=True)
class ResumePoint:
    """Where an interrupted or finished pretraining run stands: its folder, last checkpoint and finished epochs."""

    run: RunFolder
    checkpoint: Path
    epochs_done: int

    def seed(self, base: int) -> int:
        """The seed the resumed part of a run draws from, derived from the run's seed and its finished epochs:
        a resumed run does not replay the shuffles and masks of its first epochs, and resuming is reproducible
        (not bit-identical to an uninterrupted run, whose random state after those epochs is not stored)."""
        return int(np.random.SeedSequence([base % 2**32, self.epochs_done]).generate_state(1)[0])


def resume_point(resume: str | Path, config: PretrainConfig) -> ResumePoint:
    """Check that ``resume`` is a pretraining run of ``config.method`` with a checkpoint and epochs left to train.

    Every failure is one :class:`FewlabelError` line; nothing in the folder is touched.
    """
    folder = Path(resume)
    if not (folder / "config.yaml").is_file():
        raise FewlabelError(f"{resume} is not a pretraining run folder (no config.yaml)")
    recorded = (yaml.safe_load((folder / "config.yaml").read_text(encoding="utf-8")) or {}).get("method")
    if recorded != config.method:
        raise FewlabelError(f"cannot resume {resume} with --method {config.method}: it is a {recorded} run")
    run = RunFolder(folder)
    checkpoint = run.checkpoints / "last.ckpt"
    if not checkpoint.is_file():
        raise FewlabelError(f"nothing to resume in {resume}: {checkpoint} is missing (no epoch finished); "
                            "start the run again")
    try:
        state = torch.load(checkpoint, map_location="cpu", weights_only=True, mmap=True)
        # "processed": epochs whose training steps all ran (the epoch-end checkpoint is saved before "completed")
        epochs_done = int(state["loops"]["fit_loop"]["epoch_progress"]["current"]["processed"])
    except Exception as exc:  # torch raises RuntimeError, pickle errors, KeyError on a damaged file
        message = " ".join(str(exc).split())[:200]
        raise FewlabelError(f"cannot read the checkpoint {checkpoint} ({type(exc).__name__}: {message}); "
                            "start the run again") from None
    if config.epochs <= epochs_done:
        raise FewlabelError(f"{resume} has already trained {epochs_done} epoch(s); pass --epochs with more than "
                            f"{epochs_done} to continue it")
    return ResumePoint(run, checkpoint, epochs_done)


def pretrain(config: PretrainConfig, resume: str | None = None) -> RunResult:
    """Pretrain with ``config.method`` on the unlabelled pool of ``config.data`` and export the backbone.

    The method names its modality (``simclr``: images, ``mlm``: text); that modality's pretraining runs. A
    resumed run (``resume``: its folder) continues in its own folder, on its own split.
    """
    modality = modality_for_method(config.method)
    if config.epochs < 1:
        raise FewlabelError(f"--epochs {config.epochs} is impossible; give a positive number")
    point = resume_point(resume, config) if resume else None  # a clear error before any data is loaded
    dataset = load_dataset(config.data, config.data_dir, config.columns, skip_bad=config.skip_bad)
    modality.check(dataset, f"--method {config.method}")
    # A resumed run keeps its own split (checked against the data: changed data is an error, not a new split).
    split = modality.split(dataset, config.seed, str(point.run.path) if point else config.split)
    return modality.pretrain(dataset, split, config, point)


def load_pretrain_config(run_dir: str | Path) -> PretrainConfig:
    """The config a pretraining run was started with (to resume it)."""
    path = Path(run_dir) / "config.yaml"
    if not path.is_file():
        raise FewlabelError(f"{run_dir} is not a pretraining run folder (no config.yaml)")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise FewlabelError(f"cannot read {path}: {' '.join(str(exc).split())[:200]}") from None
    if not isinstance(raw, dict) or raw.get("command") != "pretrain":
        what = f"a `fewlabel {raw['command']}` run" if isinstance(raw, dict) and raw.get("command") else "no run"
        raise FewlabelError(f"{run_dir} is not a pretraining run folder (its config.yaml is from {what})")
    names = {f.name for f in dataclasses.fields(PretrainConfig)}
    values = {k: v for k, v in raw.items() if k in names}
    values["optim"] = OptimConfig(**raw["optim"]) if raw.get("optim") else None
    budget_fields = {f.name for f in dataclasses.fields(Budget)}
    values["budget"] = Budget(**{k: v for k, v in (raw.get("budget") or {}).items() if k in budget_fields})
    # The hyper-parameters the run was built with, not today's defaults: a default changed since (DINO's
    # prototypes, 4,096 -> 1,024) would otherwise rebuild a network its checkpoint does not fit.
    try:
        valid = set(method_hparams(raw.get("method", "")))
    except FewlabelError:  # text pretraining records no image-method hyper-parameters
        valid = set()
    recorded = {k: v for k, v in (raw.get("method_hparams") or {}).items() if k in valid}
    values["method_options"] = {**recorded, **(raw.get("method_options") or {})}
    return PretrainConfig(**values)


__all__ = ["EvaluateConfig", "PretrainConfig", "ResumePoint", "evaluate_backbone", "load_pretrain_config", "pretrain",
           "pretrain_on", "pretrain_text", "resume_point"]
