"""Supervised training from scratch with an augmentation policy: the baseline every other approach must beat."""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field

import lightning as L

from fewlabel.augment.supervised import build_policy
from fewlabel.data.images import at_working_size
from fewlabel.data.registry import load_dataset
from fewlabel.data.splits import LabelRequest, LabelSplit
from fewlabel.engine.classification import OptimConfig
from fewlabel.engine.fit import Budget, fit_classifier
from fewlabel.engine.run import LOGGER_NAME, RunFolder, RunResult, prepare_split
from fewlabel.errors import FewlabelError
from fewlabel.models.backbones import BackboneSpec, Classifier, create_backbone

log = logging.getLogger(LOGGER_NAME)


@dataclass(frozen=True)
class SupervisedConfig:
    """Everything that defines a supervised run; saved verbatim to ``config.yaml``."""

    data: str = "digits"
    data_dir: str | None = None
    columns: dict[str, str] = field(default_factory=dict)  # text tables: {"text": ..., "label": ..., "group": ...}
    labels: str = "1.0"
    augment: str = "standard"
    backbone: str = "resnet_small"
    width: int | None = None
    seed: int = 0
    split: str | None = None
    full_validation: bool = False
    image_size: int | None = None  # image folders: working side (default: native, at most 96 px from scratch)
    cache_images: bool = False  # image folders: decode once into a uint8 cache, reused by later runs
    skip_bad: bool = False  # image folders: leave unreadable files out (counted) instead of stopping
    optim: OptimConfig = field(default_factory=OptimConfig)
    budget: Budget = field(default_factory=Budget)
    out: str | None = None
    runs_dir: str = "runs"


def train_supervised(config: SupervisedConfig) -> RunResult:
    """Train a backbone + linear head from scratch on the labelled subset; returns metrics and the run folder."""
    request = LabelRequest.parse(config.labels)
    dataset = load_dataset(config.data, config.data_dir, config.columns, skip_bad=config.skip_bad)
    split = prepare_split(dataset, config.seed, config.split)
    split.check_request(request, dataset.labels)
    if dataset.modality == "text":
        return _train_text(config, dataset, split, request)
    dataset = at_working_size(dataset, config.image_size, cache=config.cache_images)
    channels, height, width = dataset.image_shape
    policy = build_policy(config.augment, (height, width), dataset.num_classes, flip=dataset.flip_invariant)
    L.seed_everything(config.seed, workers=True, verbose=False)  # the initial weights depend on the seed only
    backbone = create_backbone(BackboneSpec(name=config.backbone, in_chans=channels, width=config.width))
    model = Classifier(backbone, dataset.num_classes, data_channels=channels)

    name = f"train-{dataset.name}-{request.slug}-{config.augment}-{config.backbone}-s{config.seed}"
    run = RunFolder.create(config.out, name, base=config.runs_dir)
    handler = run.attach_log()
    try:
        run.save_split(split)
        run.write_config({
            "command": "train",
            **asdict(config),
            "dataset": dataset.summary(),
            "augmentation": policy.describe(),
            "backbone_stages": backbone.stages,
            "input_spec": backbone.input_spec.to_dict(),
        })
        log.info("run folder %s; data %s (%s)", run.path, dataset.name, dataset.source)
        meta = {"backbone": config.backbone, "width": config.width, "in_chans": channels, "data_size": height,
                "input_spec": backbone.input_spec.to_dict(), "embed_dim": backbone.embed_dim}
        metrics = fit_classifier(model, dataset, split, request, policy, config.optim, config.budget, run,
                                 seed=config.seed, full_validation=config.full_validation, model_meta=meta)
        log.info("test accuracy %.4f (macro-F1 %.4f) in %.1f s", metrics["test_accuracy"], metrics["macro_f1"],
                 metrics["train_seconds"])
    finally:
        run.detach_log(handler)
    return RunResult(str(run.path), metrics)


TEXT_MODELS = {"bilstm": "lstm", "bigru": "gru"}


def _train_text(config: SupervisedConfig, dataset, split: LabelSplit, request: LabelRequest) -> RunResult:
    """Text from scratch: a WordPiece tokenizer trained on the training pool's text (labels unused) and a
    bidirectional LSTM/GRU classifier; augmentation is a text policy (deletion, swap, synonym, eda)."""
    from fewlabel.augment.supervised import AugmentationPolicy
    from fewlabel.augment.text import build_text_policy
    from fewlabel.engine.data import PairCollator
    from fewlabel.models.text import RNNTextClassifier, TextCollator, train_wordpiece_tokenizer

    backbone = "bilstm" if config.backbone == SupervisedConfig.backbone else config.backbone
    if backbone not in TEXT_MODELS:
        raise FewlabelError(f"--backbone {backbone!r} is not a text model; use one of {', '.join(TEXT_MODELS)}")
    augment = "none" if config.augment == SupervisedConfig.augment else config.augment
    policy_fn = build_text_policy(augment, rng=config.seed)
    policy = AugmentationPolicy(augment, None if augment == "none" else policy_fn, None)
    L.seed_everything(config.seed, workers=True, verbose=False)
    tokenizer = train_wordpiece_tokenizer([dataset.samples[i] for i in split.pool], vocab_size=8000)
    model = RNNTextClassifier(len(tokenizer), dataset.num_classes, cell=TEXT_MODELS[backbone])
    collate = PairCollator(TextCollator(tokenizer, max_length=128))
    name = f"train-{dataset.name}-{request.slug}-{augment}-{backbone}-s{config.seed}"
    run = RunFolder.create(config.out, name, base=config.runs_dir)
    handler = run.attach_log()
    try:
        run.save_split(split)
        if run.primary:
            tokenizer.save_pretrained(str(run.path / "tokenizer"))
        run.write_config({"command": "train", **asdict(config), "backbone": backbone, "augment": augment,
                          "dataset": dataset.summary(), "augmentation": policy_fn.describe(),
                          "tokenizer": {"type": "wordpiece", "vocab_size": len(tokenizer), "trained_on": "pool text"}})
        optim = config.optim
        if optim == OptimConfig():  # the image default (SGD 0.05) suits convnets, not RNNs
            optim = OptimConfig(optimizer="adamw", lr=2e-3, weight_decay=1e-4, warmup_fraction=0.05)
        metrics = fit_classifier(model, dataset, split, request, policy, optim, config.budget, run, seed=config.seed,
                                 full_validation=config.full_validation, train_collate=collate, eval_collate=collate,
                                 model_meta={"backbone": backbone, "tokenizer": "tokenizer/"})
        log.info("test accuracy %.4f (macro-F1 %.4f) in %.1f s", metrics["test_accuracy"], metrics["macro_f1"],
                 metrics["train_seconds"])
    finally:
        run.detach_log(handler)
    return RunResult(str(run.path), metrics)
