"""wav2vec 2.0 pretraining on the pool's audio (no labels): mask spans of the latent frames and tell each masked
frame's true quantised content from distractors of the same clip (:mod:`fewlabel.methods.wav2vec2`).

The export (``<run>/export``) is a Hugging Face folder with its feature-extractor config:
``Wav2Vec2Model.from_pretrained(export)`` works outside fewlabel, and ``fewlabel finetune / evaluate --backbone
<run>`` take the run folder.
"""

from __future__ import annotations

import inspect
import logging
import time
import warnings
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback
from torch import nn

from fewlabel.data.dataset import Dataset
from fewlabel.data.splits import LabelSplit
from fewlabel.engine.classification import OptimConfig
from fewlabel.engine.data import IndexedSamples, make_loader
from fewlabel.engine.pretraining import PretrainModule, validation_monitor
from fewlabel.engine.run import LOGGER_NAME, RunResult, start_or_resume
from fewlabel.engine.trainer import build_trainer
from fewlabel.errors import FewlabelError

if TYPE_CHECKING:
    from fewlabel.approaches.selfsupervised import PretrainConfig, ResumePoint

log = logging.getLogger(LOGGER_NAME)

EPOCH_KEYS = ("loss", "contrastive_loss", "diversity_loss", "codevector_perplexity", "gumbel_temperature", "mask_share")


class CodebookMonitor(Callback):
    """Per epoch: the method's losses, codebook perplexity and Gumbel temperature, and its collapse warnings
    (a codebook that uses one entry per group, a contrastive loss that stopped falling or is not finite)."""

    def __init__(self, method: nn.Module):
        self.method = method
        self.history: list[dict[str, float]] = []
        self.warnings: list[str] = []

    def on_train_epoch_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        metrics = trainer.callback_metrics
        record = {"epoch": trainer.current_epoch + 1}
        for key in EPOCH_KEYS:
            value = metrics.get("ssl_loss_epoch" if key == "loss" else key)
            if value is not None:
                record[key] = float(value)
        self.history.append(record)
        log.info("epoch %d: loss %.4f (contrastive %.4f), codebook perplexity %.1f, Gumbel temperature %.3f",
                 record["epoch"], record.get("loss", float("nan")), record.get("contrastive_loss", float("nan")),
                 record.get("codevector_perplexity", float("nan")), record.get("gumbel_temperature", float("nan")))
        for warning in self.method.collapse_warnings(self.history):
            if warning not in self.warnings:
                self.warnings.append(warning)
                log.warning("epoch %d: %s", record["epoch"], warning)


def audio_features(backbone: nn.Module, samples: torch.Tensor, indices: np.ndarray, device: torch.device,
                   batch_size: int = 128) -> torch.Tensor:
    """Mean-pooled last hidden states of a wav2vec 2.0 body for ``samples[indices]`` (the kNN monitor)."""
    from fewlabel.models.audio_encoder import AudioEncoderBackbone

    encoder = AudioEncoderBackbone(backbone)
    was_training = backbone.training
    encoder.eval()
    chunks = []
    with torch.no_grad():
        for start in range(0, len(indices), batch_size):
            batch = samples[torch.as_tensor(indices[start : start + batch_size])].to(device)
            chunks.append(encoder(batch).float().cpu())
    backbone.train(was_training)
    return torch.cat(chunks) if chunks else torch.zeros(0, encoder.embed_dim)


def _split_options(options: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(method options: masking and Gumbel schedule, model overrides: the config keys of the presets)."""
    from fewlabel.methods.wav2vec2 import OVERRIDE_KEYS, Wav2Vec2Pretraining

    method_keys = set(inspect.signature(Wav2Vec2Pretraining.__init__).parameters) - {"self", "model", "seed"}
    method = {k: v for k, v in options.items() if k in method_keys}
    model = {k: v for k, v in options.items() if k not in method_keys}
    unknown = sorted(set(model) - set(OVERRIDE_KEYS))
    if unknown:
        raise FewlabelError(f"unknown option(s) {', '.join(unknown)} for wav2vec2; valid: "
                            f"{', '.join(sorted(method_keys | set(OVERRIDE_KEYS)))}")
    return method, model


def pretrain_audio(dataset: Dataset, split: LabelSplit, config: PretrainConfig,
                   resume: ResumePoint | str | Path | None = None) -> RunResult:
    """wav2vec 2.0 on the pool's clips; ``config.backbone`` is the preset (``tiny``: CPU-sized, ``base``: the
    paper's BASE); ``config.method_options`` set masking, the Gumbel schedule or any preset config key."""
    from fewlabel.approaches.selfsupervised import resume_point
    from fewlabel.methods.wav2vec2 import PRESETS, Wav2Vec2Pretraining, build_wav2vec2
    from fewlabel.modalities import get_modality

    modality = get_modality("audio")
    modality.check(dataset, f"--method {config.method}")
    point = resume_point(resume, config) if isinstance(resume, str | Path) else resume
    preset = modality.default_backbone("pretrain", config.backbone)
    if preset not in PRESETS:
        raise FewlabelError(f"--backbone {preset!r} for wav2vec2: choose a preset ({', '.join(PRESETS)})")
    method_options, overrides = _split_options(dict(config.method_options))
    seed = point.seed(config.seed) if point else config.seed
    L.seed_everything(config.seed, workers=True, verbose=False)  # the initial weights depend on the seed only
    method = Wav2Vec2Pretraining(build_wav2vec2(preset, **overrides), seed=seed, **method_options)
    method.hparams["preset"] = preset
    if point:
        L.seed_everything(seed, workers=True, verbose=False)
    optim = config.optim or OptimConfig(optimizer="adamw", lr=5e-4, weight_decay=0.01, warmup_fraction=0.08)
    name = f"pretrain-{config.method}-{dataset.name}-{preset}-s{config.seed}"
    run, handler = start_or_resume(point, config.out, name, config.runs_dir, split)
    try:
        run.write_config({"command": "pretrain", **asdict(config), "backbone": preset, "optim": asdict(optim),
                          "dataset": dataset.summary(), "method_hparams": method.hparams,
                          "model_config": {k: getattr(method.config, k) for k in PRESETS[preset]}})
        pool = split.pool  # every training clip; their labels are never passed on
        batch_size = config.batch_size or min(32, max(2, len(pool) // 2))
        loader = make_loader(IndexedSamples(dataset.samples, pool, labels=None), batch_size, shuffle=True,
                             workers=config.budget.workers or 0, drop_last=True)
        codebook = CodebookMonitor(method)
        knn = validation_monitor(dataset, split, config.monitor_per_class, features=audio_features)
        module = PretrainModule(method, optim)
        trainer = build_trainer(run, max_epochs=config.epochs, monitor=None, accelerator=config.budget.accelerator,
                                devices=config.budget.devices, num_nodes=config.budget.num_nodes,
                                precision=config.budget.precision, max_minutes=config.budget.max_minutes,
                                progress=config.budget.progress, extra_callbacks=[codebook, knn],
                                use_distributed_sampler=True)
        log.info("pretraining wav2vec2 (%s, %.2f M parameters) on %d unlabelled clips, batch %d, %d epochs", preset,
                 sum(p.numel() for p in method.parameters()) / 1e6, len(pool), batch_size, config.epochs)
        started = time.perf_counter()
        with warnings.catch_warnings():
            if point:  # the run's own folders hold files
                warnings.filterwarnings("ignore", ".*(Experiment logs|Checkpoint) directory .* exists and is not empty")
            trainer.fit(module, loader, ckpt_path=str(point.checkpoint) if point else None)
        seconds = time.perf_counter() - started
        metrics: dict[str, Any] = {
            "method": config.method, "preset": preset,
            "pretrain_seconds": round(seconds, 3),
            "samples_per_second": round(module.samples_seen / seconds, 1) if seconds > 0 else None,
            "epochs": trainer.current_epoch, "batch_size": batch_size, "pool_size": len(pool),
            "final_loss": float(trainer.callback_metrics.get("ssl_loss_epoch", float("nan"))),
            "codebook": codebook.history,
            "monitor": knn.history,
            "warnings": codebook.warnings + knn.warnings,
            "split": {"seed": split.seed, "pool": len(pool), "val": len(split.val), "test": len(split.test)},
            **({"resumed_after_epochs": point.epochs_done} if point else {}),
        }
        if trainer.is_global_zero:
            method.export(run.path / "export")
            run.write_metrics(metrics)
        log.info("wav2vec2 pretraining done in %.1f s; model exported to %s", seconds, run.path / "export")
    finally:
        run.detach_log(handler)
    return RunResult(str(run.path), metrics)
