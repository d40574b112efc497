"""Supervised training from scratch with an augmentation policy: the baseline every other approach must beat."""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field

from fewlabel.data.registry import load_dataset
from fewlabel.data.splits import LabelRequest
from fewlabel.engine.classification import OptimConfig
from fewlabel.engine.fit import Budget, fit_classifier
from fewlabel.engine.run import LOGGER_NAME, RunFolder, RunResult, prepare_split
from fewlabel.modalities import modality_of

log = logging.getLogger(LOGGER_NAME)


@dataclass(frozen=True)
class SupervisedConfig:
    """Everything that defines a supervised run; saved verbatim to ``config.yaml``."""

    data: str = "digits"
    data_dir: str | None = None
    columns: dict[str, str] = field(default_factory=dict)  # text tables: {"text": ..., "label": ..., "group": ...}
    labels: str = "1.0"
    augment: str | None = None  # None: the modality's default (images: standard; text: none)
    backbone: str | None = None  # None: the modality's default (images: resnet_small; text: bilstm)
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
    """Train a model from scratch on the labelled subset; returns metrics and the run folder.

    The dataset's modality builds the model (images: a backbone + linear head; text: a tokenizer trained on the
    pool's text and a BiLSTM), its augmentation policy and collate function; the recipe is the same for all.
    """
    request = LabelRequest.parse(config.labels)
    dataset = load_dataset(config.data, config.data_dir, config.columns, skip_bad=config.skip_bad)
    split = prepare_split(dataset, config.seed, config.split)
    split.check_request(request, dataset.labels)
    modality = modality_of(dataset)
    dataset = modality.working_data(dataset, config.image_size, cache=config.cache_images)
    setup = modality.supervised_setup(config.backbone, config.augment, config.width, dataset, split, config.seed)
    optim = setup.optim if setup.optim is not None and config.optim == OptimConfig() else config.optim

    name = f"train-{dataset.name}-{request.slug}-{setup.augment}-{setup.backbone}-s{config.seed}"
    run = RunFolder.create(config.out, name, base=config.runs_dir)
    handler = run.attach_log()
    try:
        run.save_split(split)
        if setup.save_files is not None:
            setup.save_files(run)
        run.write_config({
            "command": "train",
            **asdict(config),
            "backbone": setup.backbone,
            "augment": setup.augment,
            "dataset": dataset.summary(),
            "augmentation": setup.policy.describe(),
            **setup.record,
        })
        log.info("run folder %s; data %s (%s)", run.path, dataset.name, dataset.source)
        metrics = fit_classifier(setup.model, dataset, split, request, setup.policy, optim, config.budget, run,
                                 seed=config.seed, full_validation=config.full_validation, model_meta=setup.meta,
                                 train_collate=setup.collate, eval_collate=setup.collate)
        log.info("test accuracy %.4f (macro-F1 %.4f) in %.1f s", metrics["test_accuracy"], metrics["macro_f1"],
                 metrics["train_seconds"])
    finally:
        run.detach_log(handler)
    return RunResult(str(run.path), metrics)
