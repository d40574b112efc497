"""Transfer learning from a pretrained backbone with one of three strategies, and ranking candidate backbones."""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from sklearn.metrics import f1_score

from fewlabel.augment.supervised import build_policy
from fewlabel.data.dataset import Dataset
from fewlabel.data.images import at_working_size
from fewlabel.data.registry import load_dataset
from fewlabel.data.splits import LabelRequest, LabelSplit
from fewlabel.engine.classification import OptimConfig
from fewlabel.engine.fit import Budget, count_parameters, fit_classifier, save_classifier
from fewlabel.engine.run import LOGGER_NAME, RunFolder, RunResult, prepare_split
from fewlabel.engine.trainer import run_device
from fewlabel.errors import FewlabelError
from fewlabel.evaluate.probes import accuracy, fit_linear_probe, knn_predict, probe_as_linear
from fewlabel.models.backbones import Backbone, Classifier, InputSpec
from fewlabel.models.pretrained import load_pretrained
from fewlabel.transfer.features import cached_features
from fewlabel.transfer.logme import logme_score
from fewlabel.transfer.strategies import STRATEGIES, apply_strategy, describe_groups

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
    backbone: str = "efficientnet_lite0"
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
    head: str = "logreg"  # feature-extract only: logreg (C by cross-validation) | linear (AdamW, best val epoch)
    augment: str = "standard"
    optim: OptimConfig | None = None
    budget: Budget = field(default_factory=lambda: TRANSFER_BUDGET)
    out: str | None = None
    runs_dir: str = "runs"


def default_image_size(spec: InputSpec, data_size: int) -> int:
    """The pretrained resolution, but no more than 4x the data's own: upsampling a 28 px image to 224 px adds
    compute, not information. At least 64 px, where ImageNet features still hold up."""
    pretrained = spec.size[0] if spec.size else 224
    return int(min(pretrained, max(64, 4 * data_size)))


def prepare_backbone(source: str, dataset: Dataset, image_size: int | None) -> Backbone:
    probe = load_pretrained(source)
    size = image_size or default_image_size(probe.input_spec, max(dataset.image_shape[1:]))
    spec = probe.input_spec
    probe.input_spec = InputSpec(spec.channels, (size, size), spec.mean, spec.std)
    return probe


def finetune(config: TransferConfig) -> RunResult:
    """Train a new head (and, by strategy, some or all backbone layers) on the labelled subset."""
    if config.strategy not in STRATEGIES:
        raise FewlabelError(f"unknown strategy '{config.strategy}'; choose one of {', '.join(STRATEGIES)}")
    if config.head not in ("linear", "logreg"):
        raise FewlabelError(f"--head {config.head!r}: choose logreg or linear")
    request = LabelRequest.parse(config.labels)
    dataset = load_dataset(config.data, config.data_dir, config.columns, skip_bad=config.skip_bad)
    split = prepare_split(dataset, config.seed, config.split)
    split.check_request(request, dataset.labels)
    L.seed_everything(config.seed, workers=True, verbose=False)
    collate = extractor = None
    if dataset.modality == "text":
        from fewlabel.engine.data import PairCollator
        from fewlabel.models.text import TextClassifier, TextCollator, frozen_feature_pooling, load_text_backbone

        source = "minilm" if config.backbone == TransferConfig.backbone else config.backbone
        backbone, tokenizer = load_text_backbone(source, pooling="mean" if config.text_pooling == "auto"
                                                 else config.text_pooling)
        if config.text_pooling == "auto" and config.strategy == "feature-extract":
            backbone = backbone.with_pooling(frozen_feature_pooling(backbone.body))
        model = TextClassifier(backbone, dataset.num_classes)
        collate = PairCollator(TextCollator(tokenizer, max_length=backbone.input_spec.max_length))
        extractor = _text_extractor(backbone, TextCollator(tokenizer, backbone.input_spec.max_length), dataset,
                                    run_device(config.budget.accelerator))
    else:
        if config.text_pooling != TransferConfig.text_pooling:
            raise FewlabelError(f"--text-pooling {config.text_pooling} applies to text data; {dataset.name} has images")
        backbone = prepare_backbone(config.backbone, dataset, config.image_size)
        # Image folders decode straight to the backbone's input size (in-memory arrays are resized by the model).
        dataset = at_working_size(dataset, backbone.input_spec.size[0], cache=config.cache_images,
                                  resize_arrays=False)
        model = Classifier(backbone, dataset.num_classes, data_channels=dataset.image_shape[0])
    plan = apply_strategy(model, config.strategy, list(config.trainable), config.layer_decay, config.l2sp)
    optim = config.optim or STRATEGY_OPTIM[config.strategy]

    name = f"finetune-{dataset.name}-{request.slug}-{config.strategy}-{backbone.name.replace('/', '_')}-s{config.seed}"
    run = RunFolder.create(config.out, name[:120], base=config.runs_dir)
    handler = run.attach_log()
    try:
        run.save_split(split)
        groups = describe_groups(plan.param_groups, optim.lr)
        run.write_config({"command": "finetune", **asdict(config), "optim": asdict(optim),
                          "dataset": dataset.summary(), "input_spec": backbone.input_spec.to_dict(),
                          "backbone_stages": backbone.stages, "transfer": plan.record, "param_groups": groups})
        log.info("%s of %s: %d trainable / %d frozen parameters", config.strategy, backbone.name,
                 plan.record["trainable_parameters"], plan.record["frozen_parameters"])
        if "trainable_default" in plan.record:
            log.info("partial without --trainable: the default %s trains %s", plan.record["trainable_default"],
                     ", ".join(plan.record["trainable_stages"]))
        # Pooling and input size change the features without changing any tensor shape: model.json needs them.
        inputs = ({"image_size": backbone.input_spec.size[0]} if dataset.modality == "image"
                  else {"text_pooling": backbone.pooling})
        # The source actually loaded (text: minilm when the image default was left), and where a folder source lies.
        loaded = source if dataset.modality == "text" else config.backbone
        meta = {"backbone": loaded, "strategy": config.strategy, **inputs, **_data_meta(dataset),
                **({"backbone_dir": str(Path(loaded).resolve())} if Path(loaded).is_dir() else {})}
        extra: dict[str, Any] = {"transfer": plan.record, "param_groups": groups, **inputs}
        if config.strategy == "feature-extract":
            metrics = _fit_on_cached_features(model, dataset, split, request, config, optim, extra, extractor)
            if run.primary:  # every rank of an external multi-process launch repeats this job: rank 0 writes it
                save_classifier(run, model, dataset.classes, {**meta, "head": config.head})
            run.write_metrics(metrics)
        else:
            policy = _policy(config, dataset)
            metrics = fit_classifier(model, dataset, split, request, policy, optim, config.budget, run,
                                     seed=config.seed, param_groups=plan.param_groups,
                                     frozen_eval_modules=plan.frozen_eval_modules, regularizer=plan.regularizer,
                                     full_validation=config.full_validation, extra_metrics=extra,
                                     model_meta=meta,
                                     train_collate=collate, eval_collate=collate)
        log.info("test accuracy %.4f (macro-F1 %.4f)", metrics["test_accuracy"], metrics["macro_f1"])
    finally:
        run.detach_log(handler)
    return RunResult(str(run.path), metrics)


def _data_meta(dataset: Dataset) -> dict[str, Any]:
    """How samples reached the model (``fewlabel predict`` decodes new images the same way): image channels and
    the side they were decoded at, before the model's own input adapter."""
    if dataset.modality != "image":
        return {}
    channels, side, _ = dataset.image_shape
    return {"in_chans": channels, "data_size": side}


def _policy(config: TransferConfig, dataset: Dataset):
    if dataset.modality == "text":
        from fewlabel.augment.supervised import AugmentationPolicy
        from fewlabel.augment.text import build_text_policy

        name = "none" if config.augment == TransferConfig.augment else config.augment
        return AugmentationPolicy(name, None if name == "none" else build_text_policy(name, rng=config.seed), None)
    return build_policy(config.augment, dataset.image_shape[1:], dataset.num_classes, flip=dataset.flip_invariant)


def _text_extractor(backbone, collate, dataset: Dataset, device: torch.device | None = None):
    """Features of text samples: tokenise in batches, run the frozen encoder on the run's device, pool."""
    device = device or torch.device("cpu")

    @torch.no_grad()
    def extract(indices: np.ndarray) -> torch.Tensor:
        was_training = backbone.training
        backbone.eval().to(device)
        chunks = []
        for start in range(0, len(indices), 128):
            batch = collate([dataset.samples[i] for i in indices[start : start + 128]])
            batch = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
            chunks.append(backbone(batch).float().cpu())
        backbone.train(was_training).to("cpu")  # the Lightning loop (or the saved model) takes it from the CPU
        return torch.cat(chunks) if chunks else torch.zeros(0, backbone.embed_dim)

    return extract


def _fit_on_cached_features(model: Classifier, dataset: Dataset, split: LabelSplit, request: LabelRequest,
                            config: TransferConfig, optim: OptimConfig, extra: dict[str, Any],
                            extractor=None) -> dict[str, Any]:
    """Feature extraction: features computed once (cached), then ``model.head`` is fitted on them.

    ``logreg``: logistic regression with C chosen by cross-validation on the labelled set, copied into the
    head; ``linear``: AdamW on the head, keeping the best validation epoch. Either way the head ends up
    acting on raw backbone features, so the saved classifier works as is.
    """
    labels = dataset.labels
    train_idx = split.labelled(request, labels)
    val_idx = split.validation(None if config.full_validation else request, labels)
    started = time.perf_counter()
    cache_hits = 0
    feats = {}
    for part, idx in (("train", train_idx), ("val", val_idx), ("test", split.test)):
        feats[part], hit = cached_features(model.backbone, dataset, idx, extractor=extractor,
                                           device=run_device(config.budget.accelerator))
        cache_hits += int(hit)
    feature_seconds = time.perf_counter() - started
    fit_started = time.perf_counter()
    y_train, y_val, y_test = labels[train_idx], labels[val_idx], labels[split.test]
    head_record: dict[str, Any] = {"head": config.head}
    if config.head == "logreg":
        probe = fit_linear_probe(feats["train"].numpy(), y_train, seed=config.seed)
        weight, bias = probe_as_linear(probe, dataset.num_classes)
        with torch.no_grad():
            model.head.weight.copy_(weight)
            model.head.bias.copy_(bias)
        head_record["probe_c"] = float(probe[-1].C)
    else:
        _train_linear_head(model.head, feats["train"], y_train, feats["val"], y_val, optim, config.seed)
    with torch.no_grad():
        predictions = model.head(feats["test"]).argmax(dim=1).numpy()
        val_accuracy = accuracy(model.head(feats["val"]).argmax(dim=1).numpy(), y_val)
    fit_seconds = time.perf_counter() - fit_started
    per_class = [accuracy(predictions[y_test == c], y_test[y_test == c]) for c in range(dataset.num_classes)]
    return {
        "test_accuracy": accuracy(predictions, y_test),
        "macro_f1": float(f1_score(y_test, predictions, average="macro")),
        "per_class_accuracy": dict(zip(dataset.classes, per_class, strict=True)),
        "best_val_accuracy": val_accuracy,
        "train_seconds": round(feature_seconds + fit_seconds, 3),
        "feature_seconds": round(feature_seconds, 3),
        "head_seconds": round(fit_seconds, 3),
        "feature_cache_hits": cache_hits,
        "samples_per_second": round((len(train_idx) + len(val_idx) + len(split.test)) / max(feature_seconds, 1e-9), 1),
        **head_record,
        "parameters": count_parameters(model),
        "split": {"seed": split.seed, "labels": str(request), "labelled": len(train_idx),
                  "unlabelled": len(split.unlabelled(request, labels)), "val": len(val_idx), "test": len(split.test)},
        "optim": asdict(optim),
        **extra,
    }


def _train_linear_head(head: torch.nn.Linear, x_train: torch.Tensor, y_train: np.ndarray, x_val: torch.Tensor,
                       y_val: np.ndarray, optim: OptimConfig, seed: int, epochs: int = 200) -> None:
    """Full-batch AdamW on standardised cached features; keeps the epoch with the best validation accuracy,
    then folds the standardisation into the head so that it takes raw features."""
    torch.manual_seed(seed)
    mean, std = x_train.mean(dim=0), x_train.std(dim=0)
    # As StandardScaler: a feature constant in training keeps scale 1, so folding 1/std into the head cannot blow
    # its weight up to ~1e6 and leave float32 cancellation noise in the logits.
    std = torch.where(std < 1e-6, torch.ones_like(std), std)
    xt, xv = (x_train - mean) / std, (x_val - mean) / std
    yt = torch.as_tensor(y_train)
    opt = torch.optim.AdamW(head.parameters(), lr=optim.lr * 10, weight_decay=optim.weight_decay)
    best_val, best_state = -1.0, None
    for _ in range(epochs):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(head(xt), yt).backward()
        opt.step()
        with torch.no_grad():
            val_acc = accuracy(head(xv).argmax(dim=1).numpy(), y_val)
        if val_acc > best_val:
            best_val, best_state = val_acc, {k: v.clone() for k, v in head.state_dict().items()}
    head.load_state_dict(best_state)
    with torch.no_grad():
        head.weight.div_(std)
        head.bias.sub_(head.weight @ mean)


def rank_backbones(sources: list[str], data: str, labels: str, data_dir: str | None = None, seed: int = 0,
                   image_size: int | None = None, k: int = 20, skip_bad: bool = False,
                   accelerator: str = "auto") -> list[dict[str, Any]]:
    """Score candidate backbones on the labelled subset before any training: LogME and leave-one-out kNN."""
    if not sources:
        raise FewlabelError("--backbones needs at least one backbone")
    request = LabelRequest.parse(labels)
    dataset = load_dataset(data, data_dir, skip_bad=skip_bad)
    split = prepare_split(dataset, seed, None)
    split.check_request(request, dataset.labels)
    idx = split.labelled(request, dataset.labels)
    y = dataset.labels[idx]
    rows = []
    for source in sources:
        started = time.perf_counter()
        backbone = prepare_backbone(source, dataset, image_size)
        working = at_working_size(dataset, backbone.input_spec.size[0], resize_arrays=False)
        feats, _ = cached_features(backbone, working, idx, device=run_device(accelerator))
        # Leave-one-out kNN: each labelled example is classified by the others (in chunks: never an N x N matrix).
        predictions = knn_predict(feats, torch.as_tensor(y), feats, dataset.num_classes, k=k, leave_one_out=True)
        knn = accuracy(predictions.numpy(), y)
        rows.append({"backbone": source, "logme": logme_score(feats.numpy(), y), "knn_accuracy": knn,
                     "embed_dim": backbone.embed_dim, "image_size": backbone.input_spec.size[0],
                     "labelled": len(idx), "seconds": round(time.perf_counter() - started, 2)})
    rows.sort(key=lambda r: r["logme"], reverse=True)
    return rows


__all__ = ["TransferConfig", "finetune", "rank_backbones"]
