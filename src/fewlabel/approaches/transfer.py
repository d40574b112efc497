"""Transfer learning from a pretrained backbone with one of three strategies, and ranking candidate backbones.

The dataset's modality loads the backbone for its data (images: timm / EfficientNet-Lite0 / fewlabel exports at
the backbone's input size; text: Hugging Face encoders) and builds the classifier; ``feature-extract`` goes
through the one frozen-feature path (:mod:`fewlabel.evaluate.frozen`), the other strategies through the shared
training recipe (:func:`fewlabel.engine.fit.fit_classifier`).
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import lightning as L
import torch

from fewlabel.data.registry import load_dataset
from fewlabel.data.splits import LabelRequest
from fewlabel.engine.classification import OptimConfig
from fewlabel.engine.data import auto_batch_size
from fewlabel.engine.fit import Budget, fit_classifier, save_classifier, sweep_rates
from fewlabel.engine.run import LOGGER_NAME, RunFolder, RunResult, prepare_split
from fewlabel.engine.trainer import run_device
from fewlabel.errors import FewlabelError
from fewlabel.evaluate.frozen import HEADS, fit_frozen_classifier, frozen_features, linear_probe_start
from fewlabel.evaluate.probes import accuracy, knn_predict
from fewlabel.modalities import modality_of
from fewlabel.transfer.logme import logme_score
from fewlabel.transfer.strategies import (
    BN_POLICIES,
    STRATEGIES,
    apply_bn_policy,
    apply_strategy,
    batchnorm_layers,
    describe_groups,
    resolve_bn_policy,
)

log = logging.getLogger(LOGGER_NAME)

STRATEGY_OPTIM = {
    "feature-extract": OptimConfig(optimizer="adamw", lr=1e-3, weight_decay=1e-4, warmup_fraction=0.0),
    "finetune": OptimConfig(optimizer="adamw", lr=3e-4, weight_decay=1e-4, warmup_fraction=0.1),
    "partial": OptimConfig(optimizer="adamw", lr=1e-3, weight_decay=1e-4, warmup_fraction=0.1),
}
# Pretrained networks converge in few epochs; the from-scratch default of 1,500 steps would waste hours on CPU.
# About 300 optimiser steps of at most 64 examples at every label fraction, so fine-tuning costs the same at
# 1% and 100% labels; with many labels each epoch is a fresh random subset of batches.
TRANSFER_BUDGET = Budget(target_steps=300, min_epochs=5, max_epochs=60, max_steps=300, max_batch_size=64)


@dataclass(frozen=True)
class TransferConfig:
    backbone: str | None = None  # None: the modality's default (images: efficientnet_lite0; text: minilm)
    strategy: str = "feature-extract"
    data: str = "digits"
    data_dir: str | None = None
    columns: dict[str, str] = field(default_factory=dict)  # text tables: {"text": ..., "label": ..., "group": ...}
    labels: str = "1.0"
    seed: int = 0
    split: str | None = None
    full_validation: bool = False
    image_size: int | None = None
    cache_images: bool = False  # image folders: decode once into a uint8 cache at the input size, reused later
    skip_bad: bool = False  # image folders: leave unreadable files out (counted) instead of stopping
    trainable: tuple[str, ...] = ()
    layer_decay: float = 0.75
    l2sp: float = 0.0
    # text backbones: auto (mean-last4 for feature-extract when the model has 4+ layers, else mean) | mean | cls |
    # pooler | mean-last4 (see TextEncoderBackbone)
    text_pooling: str = "auto"
    audio_layer: str = "last"  # audio encoders: last | a layer index | weighted (learned sum of all layers)
    head: str = "logreg"  # feature-extract only: logreg (C by cross-validation) | linear (AdamW, best val epoch)
    # finetune/partial: LP-FT (Kumar et al. 2022): fit the head as feature-extract does, then fine-tune from it;
    # the run never returns a model below that probe on validation.
    lp_ft: bool = True
    # LP-FT: fine-tune from the probe's head scaled by the temperature that minimises the loss of the first
    # training batches as fine-tuning sees them (fewlabel.engine.fit.scale_head_for_training); False: the raw probe.
    lp_head_scale: bool = True
    # LP-FT with a sweep: plain fine-tuning from the random head is one more trial (at the default rate), so the
    # start is chosen on validation too (from the probe wins on tiny data, from a random head can win with more).
    random_head_trial: bool = True
    # LP-FT on a backbone that pools more for frozen features than it was pretrained with (text mean-last4):
    # fine-tuning trains the head on its own pooling's features only (MiniLM: the last layer's mean); the fallback
    # stays the probe on all features. False: fine-tune on all of them.
    own_pooling: bool = True
    bn: str = "auto"  # auto | train | frozen | frozen-affine (BatchNorm layers of the backbone)
    lr_sweep: int = 3  # learning rates tried (lr/3, lr, 3 lr) on the first part of the run; 1 = no sweep
    sweep_fraction: float = 0.12
    augment: str | None = None  # finetune/partial; None: the modality's default (images: standard; text: none)
    optim: OptimConfig | None = None
    budget: Budget = field(default_factory=lambda: TRANSFER_BUDGET)
    out: str | None = None
    runs_dir: str = "runs"


def finetune(config: TransferConfig) -> RunResult:
    """Train a new head (and, by strategy, some or all backbone layers) on the labelled subset."""
    if config.strategy not in STRATEGIES:
        raise FewlabelError(f"unknown strategy '{config.strategy}'; choose one of {', '.join(STRATEGIES)}")
    if config.head not in HEADS:
        raise FewlabelError(f"--head {config.head!r}: choose logreg or linear")
    if config.bn not in BN_POLICIES:
        raise FewlabelError(f"--bn {config.bn!r}: choose one of {', '.join(BN_POLICIES)}")
    if config.lr_sweep < 1 or not 0.0 < config.sweep_fraction < 1.0:
        raise FewlabelError(f"--lr-sweep {config.lr_sweep} / sweep fraction {config.sweep_fraction} are impossible; "
                            "give --lr-sweep 1 (off) or more, and a fraction in (0, 1)")
    request = LabelRequest.parse(config.labels)
    dataset = load_dataset(config.data, config.data_dir, config.columns, skip_bad=config.skip_bad)
    split = prepare_split(dataset, config.seed, config.split)
    split.check_request(request, dataset.labels)
    modality = modality_of(dataset)
    options = {"image_size": config.image_size, "cache_images": config.cache_images,
               "text_pooling": config.text_pooling, "audio_layer": config.audio_layer,
               "frozen": config.strategy == "feature-extract",
               "probe_first": config.lp_ft and config.strategy != "feature-extract"}
    modality.check_transfer_options(options, dataset)
    L.seed_everything(config.seed, workers=True, verbose=False)
    loaded = modality.load_backbone(config.backbone, dataset, options)
    backbone, dataset = loaded.backbone, loaded.dataset
    model = modality.classifier(backbone, dataset)
    plan = apply_strategy(model, config.strategy, list(config.trainable), config.layer_decay, config.l2sp)
    optim = config.optim or STRATEGY_OPTIM[config.strategy]
    trains = config.strategy != "feature-extract"
    if trains:
        labelled = len(split.labelled(request, dataset.labels))
        batch = config.budget.batch_size or auto_batch_size(labelled, maximum=config.budget.max_batch_size)
        bn_policy, bn_reason = resolve_bn_policy(config.bn, batch, labelled)
        apply_bn_policy(model, plan, bn_policy)
        has_bn = bool(batchnorm_layers(model))
        plan.record["batchnorm"] = bn_policy if has_bn else "none in this backbone"
        plan.record["batchnorm_reason"] = bn_reason if has_bn else "the backbone has no BatchNorm layers"
    # Built before the run folder: a policy that does not fit the data is an error that leaves nothing behind.
    policy = modality.augmentation(config.augment, dataset, config.seed) if config.strategy != "feature-extract" \
        else None

    name = f"finetune-{dataset.name}-{request.slug}-{config.strategy}-{backbone.name.replace('/', '_')}-s{config.seed}"
    run = RunFolder.create(config.out, name[:120], base=config.runs_dir)
    handler = run.attach_log()
    try:
        run.save_split(split)
        groups = describe_groups(plan.param_groups, optim.lr)
        run.write_config({"command": "finetune", **asdict(config), "backbone": loaded.source, "optim": asdict(optim),
                          "dataset": dataset.summary(), "input_spec": backbone.input_spec.to_dict(),
                          "backbone_stages": backbone.stages, "transfer": plan.record, "param_groups": groups})
        log.info("%s of %s: %d trainable / %d frozen parameters", config.strategy, backbone.name,
                 plan.record["trainable_parameters"], plan.record["frozen_parameters"])
        if trains:
            log.info("BatchNorm: %s (%s)", plan.record["batchnorm"], plan.record["batchnorm_reason"])
        if "trainable_default" in plan.record:
            log.info("partial without --trainable: the default %s trains %s", plan.record["trainable_default"],
                     ", ".join(plan.record["trainable_stages"]))
        # Pooling and input size change the features without changing any tensor shape: model.json needs them.
        inputs = modality.transfer_inputs(loaded)
        # The source actually loaded (the modality's default when none was named), and where a folder source lies.
        meta = {"backbone": loaded.source, "strategy": config.strategy, **inputs, **modality.data_meta(dataset),
                **({"backbone_dir": str(Path(loaded.source).resolve())} if Path(loaded.source).is_dir() else {})}
        extra: dict[str, Any] = {"transfer": plan.record, "param_groups": groups, **inputs}
        if config.strategy == "feature-extract":
            metrics, _ = fit_frozen_classifier(model, loaded, split, request, head=config.head, seed=config.seed,
                                               optim=optim, full_validation=config.full_validation,
                                               device=run_device(config.budget.accelerator))
            metrics.update(extra)
            if run.primary:  # every rank of an external multi-process launch repeats this job: rank 0 writes it
                save_classifier(run, model, dataset.classes,
                                {"modality": dataset.modality, **meta, "head": config.head})
            run.write_metrics(metrics)
        else:
            assert policy is not None
            start = linear_probe_start(model, loaded, split, request, config.seed, config.full_validation,
                                       config.budget.accelerator, scale_head=config.lp_head_scale,
                                       random_head_trial=config.random_head_trial and config.lr_sweep > 1,
                                       own_pooling=config.own_pooling) if config.lp_ft else None
            if start is not None:
                extra["lp_seconds"] = start.metrics["train_seconds"]
            rates = sweep_rates(optim.lr, config.lr_sweep)
            metrics = fit_classifier(model, dataset, split, request, policy, optim, config.budget, run,
                                     seed=config.seed, param_groups=plan.param_groups,
                                     frozen_eval_modules=plan.frozen_eval_modules, regularizer=plan.regularizer,
                                     full_validation=config.full_validation, extra_metrics=extra,
                                     model_meta=meta, train_collate=loaded.collate, eval_collate=loaded.collate,
                                     lr_sweep=rates, sweep_fraction=config.sweep_fraction, starting_point=start)
        log.info("test accuracy %.4f (macro-F1 %.4f)", metrics["test_accuracy"], metrics["macro_f1"])
    finally:
        run.detach_log(handler)
    return RunResult(str(run.path), metrics)


def rank_backbones(sources: list[str], data: str, labels: str, data_dir: str | None = None, seed: int = 0,
                   image_size: int | None = None, k: int = 20, skip_bad: bool = False,
                   accelerator: str = "auto", columns: dict[str, str] | None = None) -> list[dict[str, Any]]:
    """Score candidate backbones on the labelled subset before any training: LogME and leave-one-out kNN on
    the frozen features (the same cached features ``feature-extract`` reuses)."""
    if not sources:
        raise FewlabelError("--backbones needs at least one backbone")
    request = LabelRequest.parse(labels)
    dataset = load_dataset(data, data_dir, columns, skip_bad=skip_bad)
    split = prepare_split(dataset, seed, None)
    split.check_request(request, dataset.labels)
    modality = modality_of(dataset)
    idx = split.labelled(request, dataset.labels)
    y = dataset.labels[idx]
    rows = []
    for source in sources:
        started = time.perf_counter()
        loaded = modality.load_backbone(source, dataset, {"image_size": image_size, "frozen": True})
        feats, _ = frozen_features(loaded, idx, run_device(accelerator))
        # Leave-one-out kNN: each labelled example is classified by the others (in chunks: never an N x N matrix).
        predictions = knn_predict(feats, torch.as_tensor(y), feats, dataset.num_classes, k=k, leave_one_out=True)
        rows.append({"backbone": source, "logme": logme_score(feats.numpy(), y),
                     "knn_accuracy": accuracy(predictions.numpy(), y), "embed_dim": loaded.backbone.embed_dim,
                     **modality.transfer_inputs(loaded), "labelled": len(idx),
                     "seconds": round(time.perf_counter() - started, 2)})
    rows.sort(key=lambda r: r["logme"], reverse=True)
    return rows


__all__ = ["TRANSFER_BUDGET", "TransferConfig", "finetune", "rank_backbones"]
