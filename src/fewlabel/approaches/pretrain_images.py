"""Self-supervised pretraining of an image backbone (SimCLR, MoCo, BYOL, DINO) on the unlabelled pool.

It never reads the labels of the pool: the trainer gets the pool's image indices only. A small labelled slice
of the *validation* split feeds the online kNN monitor. The exported backbone (``<run>/export``) is what
``fewlabel evaluate`` and ``fewlabel finetune --backbone <run>`` load.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import lightning as L
import numpy as np

from fewlabel.augment.views import (
    BatchedMultiCropAugment,
    BatchedTwoViewAugment,
    MultiCropTransform,
    TwoViewTransform,
)
from fewlabel.data.dataset import Dataset
from fewlabel.data.images import at_working_size
from fewlabel.data.splits import LabelSplit
from fewlabel.engine.classification import OptimConfig
from fewlabel.engine.data import IndexedSamples, default_workers, make_loader
from fewlabel.engine.pretraining import PretrainModule, validation_monitor
from fewlabel.engine.run import LOGGER_NAME, RunFolder, RunResult
from fewlabel.engine.trainer import build_trainer
from fewlabel.errors import FewlabelError
from fewlabel.methods.registry import create_method
from fewlabel.models.backbones import BackboneSpec, create_backbone, to_channels_last
from fewlabel.models.export import save_backbone

if TYPE_CHECKING:
    from fewlabel.approaches.selfsupervised import PretrainConfig, ResumePoint

log = logging.getLogger(LOGGER_NAME)

VIEW_MODES = ("auto", "batched", "per-sample")
# Per-method optimiser defaults that train stably at small batch sizes on small images.
METHOD_OPTIM = {
    "simclr": OptimConfig(optimizer="adamw", lr=2e-3, weight_decay=1e-4, warmup_fraction=0.05),
    "moco": OptimConfig(optimizer="adamw", lr=2e-3, weight_decay=1e-4, warmup_fraction=0.05),
    "byol": OptimConfig(optimizer="adamw", lr=2e-3, weight_decay=1e-4, warmup_fraction=0.05),
    "dino": OptimConfig(optimizer="adamw", lr=1e-3, weight_decay=0.04, warmup_fraction=0.1),
}



def _view_generator(method_views: str, mode: str, channels: int, size: int, mean, std, flip: bool,
                    local_crops: int = 6):
    """(per-sample transform for the loader, batched module for the device); exactly one is not None."""
    if method_views == "multi_crop":
        if mode == "batched":
            return None, BatchedMultiCropAugment(channels, size, mean, std, flip=flip, num_local_crops=local_crops)
        return MultiCropTransform(channels, size, mean, std, flip=flip, num_local_crops=local_crops), None
    if mode == "per-sample":
        return TwoViewTransform(channels, size, mean, std, flip=flip), None
    return None, BatchedTwoViewAugment(channels, size, mean, std, flip=flip)




def pretrain_images(dataset: Dataset, split: LabelSplit, config: PretrainConfig,
                    resume: str | Path | ResumePoint | None = None) -> RunResult:
    """``pretrain`` of an image method on an already loaded dataset and split (also the Python entry point for
    custom data, as ``fewlabel.approaches.selfsupervised.pretrain_on``); ``resume``: a run folder to continue."""
    from fewlabel.modalities import get_modality

    get_modality("image").check(dataset, f"--method {config.method}")
    if config.views not in VIEW_MODES:
        raise FewlabelError(f"--views {config.views!r}: choose auto, batched or per-sample")
    backbone_name = get_modality("image").default_backbone("pretrain", config.backbone)
    dataset = at_working_size(dataset, config.image_size, cache=config.cache_images)
    channels, height, _ = dataset.image_shape  # views are square crops of the image height
    L.seed_everything(config.seed, workers=True, verbose=False)
    spec = BackboneSpec(name=backbone_name, in_chans=channels, width=config.width)
    backbone = create_backbone(spec)
    # channels-last weights as well as inputs: with only the inputs converted, every convolution reorders
    # its weights and pretraining runs ~1.4x slower on CPU (benchmarks/ssl_fmnist.py measures the overhead).
    method = to_channels_last(create_method(config.method, backbone, **config.method_options))
    input_spec = backbone.input_spec
    mode = "batched" if config.views == "auto" else config.views
    sample_views, batched_views = _view_generator(method.views, mode, channels, height, input_spec.mean,
                                                  input_spec.std, dataset.flip_invariant, config.local_crops)
    optim = config.optim or METHOD_OPTIM[config.method]

    if resume:
        run = RunFolder(Path(getattr(getattr(resume, "run", None), "path", resume)))  # a folder or a ResumePoint
        checkpoint = run.checkpoints / "last.ckpt"
        if not checkpoint.is_file():
            raise FewlabelError(f"nothing to resume in {resume}: {checkpoint} is missing")
    else:
        name = f"pretrain-{config.method}-{dataset.name}-{backbone_name}-s{config.seed}"
        run = RunFolder.create(config.out, name, base=config.runs_dir)
        checkpoint = None
    handler = run.attach_log()
    try:
        run.save_split(split)
        run.write_config({"command": "pretrain", **asdict(config), "backbone": backbone_name,
                          "optim": asdict(optim), "views_mode": mode,
                          "dataset": dataset.summary(), "method_hparams": method.hparams,
                          "input_spec": input_spec.to_dict()})
        pool = split.pool  # every training image; the labels of these are never passed on
        batch_size = config.batch_size or min(256, max(16, 2 ** int(np.log2(max(2, len(pool) // 8)))))
        if len(pool) < 2 * batch_size:
            batch_size = max(2, len(pool) // 2)
        workers = config.budget.workers
        if workers is None:
            workers = default_workers(sample_views is not None)
        loader = make_loader(IndexedSamples(dataset.samples, pool, labels=None, transform=sample_views),
                             batch_size, shuffle=True, workers=workers, drop_last=True)
        monitor = validation_monitor(dataset, split, config.monitor_per_class)
        module = PretrainModule(method, optim, batched_views)
        trainer = build_trainer(run, max_epochs=config.epochs, monitor=None, accelerator=config.budget.accelerator,
                                devices=config.budget.devices, num_nodes=config.budget.num_nodes,
                                precision=config.budget.precision, max_minutes=config.budget.max_minutes,
                                progress=config.budget.progress, extra_callbacks=[monitor],
                                use_distributed_sampler=True, sync_batchnorm=True)
        log.info("pretraining %s on %d unlabelled images (%s views), batch %d, %d epochs", config.method,
                 len(pool), mode, batch_size, config.epochs)
        started = time.perf_counter()
        trainer.fit(module, loader, ckpt_path=str(checkpoint) if checkpoint else None)
        seconds = time.perf_counter() - started
        metrics: dict[str, Any] = {
            "method": config.method,
            "pretrain_seconds": round(seconds, 3),
            "samples_per_second": round(module.samples_seen / seconds, 1) if seconds > 0 else None,
            "epochs": trainer.current_epoch,
            "batch_size": batch_size,
            "pool_size": len(pool),
            "final_loss": float(trainer.callback_metrics.get("ssl_loss_epoch", float("nan"))),
            "monitor": monitor.history,
            "warnings": monitor.warnings,
            "split": {"seed": split.seed, "pool": len(pool), "val": len(split.val), "test": len(split.test)},
        }
        if trainer.is_global_zero:
            save_backbone(method.pretrained_backbone(), spec, run.path / "export", method=config.method,
                          dataset=dataset.name, dataset_fingerprint=dataset.fingerprint(), seed=config.seed,
                          image_shape=list(dataset.image_shape))
            run.write_metrics(metrics)
        log.info("pretraining done in %.1f s; backbone exported to %s", seconds, run.path / "export")
    finally:
        run.detach_log(handler)
    return RunResult(str(run.path), metrics)
