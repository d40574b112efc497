"""Semi-supervised learning: the labelled subset and the unlabelled pool used together.

``fixmatch`` trains the network itself (:mod:`fewlabel.approaches.fixmatch`; modalities with a strong
augmentation policy: images). Two cheap methods work for every modality, because they only need the cached
frozen features of a backbone (images: EfficientNet-Lite0 or a fewlabel export; text: MiniLM; audio: a speech
encoder):

* ``self-training``: scikit-learn's ``SelfTrainingClassifier`` around the logistic-regression probe (standardised
  features, C chosen by cross-validation on the labelled set): pool samples predicted above ``threshold`` join the
  labelled set, round after round.
* ``label-spreading``: scikit-learn's ``LabelSpreading`` on a kNN graph of the L2-normalised features of the
  labelled set and the pool; pool samples whose spread label is at least ``threshold`` confident become
  pseudo-labels.

Either way the final classifier is a logistic regression on the labelled set plus the accepted pseudo-labels,
copied into the model's linear head like the ``feature-extract`` probe, so the run folder holds an ordinary
classifier that ``predict`` takes. The unlabelled pool is the rest of the training pool of the same nested split;
validation and test samples are never used unlabelled. The pool's hidden labels are read only to report how
accurate the pseudo-labels are (diagnosis; never used in training).
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sklearn.metrics import f1_score
from sklearn.preprocessing import normalize
from sklearn.semi_supervised import LabelSpreading, SelfTrainingClassifier
from threadpoolctl import threadpool_limits

from fewlabel.data.registry import load_dataset
from fewlabel.data.splits import LabelRequest
from fewlabel.engine.fit import Budget, save_classifier
from fewlabel.engine.run import LOGGER_NAME, RunFolder, RunResult, prepare_split
from fewlabel.engine.trainer import run_device
from fewlabel.errors import FewlabelError
from fewlabel.evaluate.frozen import frozen_features
from fewlabel.evaluate.probes import _probe_model, accuracy, choose_probe_c, probe_as_linear
from fewlabel.modalities import modality_of

log = logging.getLogger(LOGGER_NAME)

SEMISUP_METHODS = ("self-training", "label-spreading", "fixmatch")
TRAINED_METHODS = ("fixmatch",)  # train the network itself (the others fit a head on frozen features)
DOMINANT_SHARE = 0.5  # warn when one class takes more than half of the pseudo-labels (with 3+ classes)


@dataclass(frozen=True)
class SemiSupervisedConfig:
    method: str = "self-training"
    backbone: str | None = None  # None: the modality's default (images: efficientnet_lite0; text: minilm)
    data: str = "digits"
    data_dir: str | None = None
    columns: dict[str, str] = field(default_factory=dict)
    labels: str = "0.1"
    seed: int = 0
    split: str | None = None
    image_size: int | None = None
    skip_bad: bool = False
    threshold: float = 0.95  # self-training: predicted probability; label spreading: spread label's weight
    neighbours: int = 10  # label spreading: kNN graph
    alpha: float = 0.2  # label spreading: how much a node takes from its neighbours (1 - clamping of the labels)
    max_rounds: int = 10  # self-training rounds
    ratio: int = 7  # fixmatch: unlabelled samples per labelled one in a step
    unlabelled_weight: float = 1.0  # fixmatch: weight of the unlabelled loss
    ema: float = 0.999  # fixmatch: decay of the weights' moving average (the model validated, tested, saved)
    width: int | None = None  # fixmatch from scratch (no --backbone): the network's width
    lr: float = 0.03  # fixmatch: SGD with Nesterov momentum, cosine decay (the paper's)
    budget: Budget = field(default_factory=Budget)
    out: str | None = None
    runs_dir: str = "runs"


def check_semisup_config(config: SemiSupervisedConfig) -> None:
    if config.method not in SEMISUP_METHODS:
        raise FewlabelError(f"unknown semi-supervised method '{config.method}'; choose one of "
                            f"{', '.join(SEMISUP_METHODS)}")
    if not 0.0 < config.threshold <= 1.0:
        raise FewlabelError(f"--threshold {config.threshold} is impossible; give a confidence in (0, 1]")
    if config.neighbours < 1 or config.max_rounds < 1 or not 0.0 < config.alpha < 1.0:
        raise FewlabelError("--neighbours and --rounds must be >= 1 and --alpha in (0, 1)")


@threadpool_limits.wrap(limits=1)
def self_train(x_lab: np.ndarray, y_lab: np.ndarray, x_pool: np.ndarray, c: float, threshold: float,
               max_rounds: int, seed: int) -> tuple[np.ndarray, np.ndarray, Any]:
    """(pseudo-labels of the pool, -1 where none was accepted; the round each was accepted; the final fitted
    probe pipeline)."""
    x = np.concatenate([x_lab, x_pool])
    y = np.concatenate([y_lab, np.full(len(x_pool), -1, dtype=np.int64)])
    model = SelfTrainingClassifier(_probe_model(c, seed), threshold=threshold, max_iter=max_rounds)
    model.fit(x, y)
    pseudo = model.transduction_[len(x_lab):].astype(np.int64)
    rounds = model.labeled_iter_[len(x_lab):]
    return pseudo, rounds, model.estimator_


def spread_labels(x_lab: np.ndarray, y_lab: np.ndarray, x_pool: np.ndarray, neighbours: int, alpha: float,
                  threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """(pseudo-labels of the pool, -1 below ``threshold``; their confidence) from label spreading on a kNN graph
    of the L2-normalised features (cosine neighbours, as the kNN probe uses)."""
    x = normalize(np.concatenate([x_lab, x_pool]))
    y = np.concatenate([y_lab, np.full(len(x_pool), -1, dtype=np.int64)])
    spreading = LabelSpreading(kernel="knn", n_neighbors=min(neighbours, len(x) - 1), alpha=alpha, max_iter=100)
    with threadpool_limits(limits=1):
        spreading.fit(x, y)
    distributions = spreading.label_distributions_[len(x_lab):]
    confidence = distributions.max(axis=1)
    classes = spreading.classes_[distributions.argmax(axis=1)]
    pseudo = np.where(confidence >= threshold, classes, -1).astype(np.int64)
    return pseudo, confidence


def pseudo_label_report(pseudo: np.ndarray, hidden: np.ndarray, classes: list[str]) -> dict[str, Any]:
    """Share of the pool pseudo-labelled, their accuracy against the hidden labels (diagnosis only) and their
    class distribution; warns on a collapsed mask or a dominant class."""
    accepted = pseudo >= 0
    share = float(accepted.mean()) if len(pseudo) else 0.0
    counts = Counter(int(p) for p in pseudo[accepted])
    report = {"pool": len(pseudo), "pseudo_labelled": int(accepted.sum()), "mask_rate": round(share, 4),
              "pseudo_label_accuracy": accuracy(pseudo[accepted], hidden[accepted]) if accepted.any() else None,
              "pseudo_label_classes": {classes[c]: counts.get(c, 0) for c in range(len(classes))}}
    if not accepted.any():
        log.warning("no pool sample reached the confidence threshold: nothing was pseudo-labelled; lower "
                    "--threshold")
    elif len(classes) >= 3 and max(counts.values()) > DOMINANT_SHARE * accepted.sum():
        top = classes[max(counts, key=counts.get)]
        log.warning("one class ('%s') takes %.0f%% of the pseudo-labels: the pool's labels may be collapsing onto "
                    "it; raise --threshold or check the labelled set's balance", top,
                    100 * max(counts.values()) / accepted.sum())
    return report


def labels_and_pool(config: SemiSupervisedConfig) -> tuple[LabelRequest, Any, Any, np.ndarray]:
    """(request, dataset, split, pool indices): the nested split's labelled subset and the rest of its training
    pool; one clear error when no unlabelled sample is left."""
    request = LabelRequest.parse(config.labels)
    dataset = load_dataset(config.data, config.data_dir, config.columns, skip_bad=config.skip_bad)
    split = prepare_split(dataset, config.seed, config.split)
    split.check_request(request, dataset.labels)
    pool_idx = split.unlabelled(request, dataset.labels)
    if len(pool_idx) == 0:
        raise FewlabelError(f"no unlabelled data is left at --labels {config.labels}: semi-supervised learning needs "
                            "an unlabelled pool; use fewer labels (e.g. --labels 0.1)")
    return request, dataset, split, pool_idx


def semisupervised(config: SemiSupervisedConfig) -> RunResult:
    """Pseudo-label the unlabelled pool on frozen features, then fit the final linear head on labels + pseudo."""
    check_semisup_config(config)
    if config.method in TRAINED_METHODS:
        return train_fixmatch(config)
    request, dataset, split, pool_idx = labels_and_pool(config)
    modality = modality_of(dataset)
    loaded = modality.load_backbone(config.backbone, dataset, {"image_size": config.image_size, "frozen": True})
    dataset = loaded.dataset
    model = modality.classifier(loaded.backbone, dataset)
    device = run_device(config.budget.accelerator)
    source = loaded.backbone.name.replace("/", "_")
    name = f"semisup-{dataset.name}-{request.slug}-{config.method}-{source}-s{config.seed}"
    run = RunFolder.create(config.out, name[:120], base=config.runs_dir)
    handler = run.attach_log()
    try:
        run.save_split(split)
        run.write_config({"command": "semisup", **asdict(config), "backbone": loaded.source,
                          "dataset": dataset.summary()})
        started = time.perf_counter()
        lab_idx = split.labelled(request, dataset.labels)
        val_idx = split.validation(None, dataset.labels)
        parts = (("labelled", lab_idx), ("pool", pool_idx), ("val", val_idx), ("test", split.test))
        feats = {part: frozen_features(loaded, idx, device)[0].numpy() for part, idx in parts}
        feature_seconds = time.perf_counter() - started
        y_lab = dataset.labels[lab_idx]
        c = choose_probe_c(feats["labelled"], y_lab, config.seed)
        log.info("%s on %d labelled + %d unlabelled examples (%s features, C = %g)", config.method, len(lab_idx),
                 len(pool_idx), loaded.backbone.name, c)
        fit_started = time.perf_counter()
        if config.method == "self-training":
            pseudo, _, _ = self_train(feats["labelled"], y_lab, feats["pool"], c, config.threshold,
                                      config.max_rounds, config.seed)
        else:
            pseudo, _ = spread_labels(feats["labelled"], y_lab, feats["pool"], config.neighbours, config.alpha,
                                      config.threshold)
        report = pseudo_label_report(pseudo, dataset.labels[pool_idx], dataset.classes)
        accepted = pseudo >= 0
        x_final = np.concatenate([feats["labelled"], feats["pool"][accepted]])
        y_final = np.concatenate([y_lab, pseudo[accepted]])
        with threadpool_limits(limits=1):
            final = _probe_model(c, config.seed).fit(x_final, y_final)
            baseline = _probe_model(c, config.seed).fit(feats["labelled"], y_lab)
        weight, bias = probe_as_linear(final, dataset.num_classes)
        with torch.no_grad():
            model.head.weight.copy_(weight)
            model.head.bias.copy_(bias)
        fit_seconds = time.perf_counter() - fit_started
        y_test, y_val = dataset.labels[split.test], dataset.labels[val_idx]
        predictions = final.predict(feats["test"])
        metrics = {
            "method": config.method,
            "test_accuracy": accuracy(predictions, y_test),
            "macro_f1": float(f1_score(y_test, predictions, average="macro")),
            "val_accuracy": accuracy(final.predict(feats["val"]), y_val),
            "labelled_only_test_accuracy": accuracy(baseline.predict(feats["test"]), y_test),
            "probe_c": c,
            "threshold": config.threshold,
            **report,
            "train_seconds": round(feature_seconds + fit_seconds, 3),
            "feature_seconds": round(feature_seconds, 3),
            "fit_seconds": round(fit_seconds, 3),
            "split": {"seed": split.seed, "labels": str(request), **split.sizes(request, dataset.labels)},
        }
        log.info("%s: %d of %d pool samples pseudo-labelled (accuracy %s, hidden labels), test accuracy %.4f "
                 "(labelled only: %.4f)", config.method, report["pseudo_labelled"], report["pool"],
                 "n/a" if report["pseudo_label_accuracy"] is None else f"{report['pseudo_label_accuracy']:.4f}",
                 metrics["test_accuracy"], metrics["labelled_only_test_accuracy"])
        if run.primary:
            meta = {"backbone": loaded.source, "strategy": "feature-extract", "head": "logreg",
                    "semisupervised": config.method, **modality.transfer_inputs(loaded), **modality.data_meta(dataset),
                    **({"backbone_dir": str(Path(loaded.source).resolve())} if Path(loaded.source).is_dir() else {})}
            save_classifier(run, model, dataset.classes, {"modality": dataset.modality, **meta})
        run.write_metrics(metrics)
    finally:
        run.detach_log(handler)
    return RunResult(str(run.path), metrics)


def train_fixmatch(config: SemiSupervisedConfig) -> RunResult:
    """FixMatch from scratch (the modality's supervised network) or from ``config.backbone`` (fine-tuned)."""
    import lightning as L

    from fewlabel.approaches.fixmatch import FixMatchModule, check_fixmatch, fixmatch_budget, fixmatch_loaders
    from fewlabel.engine.classification import OptimConfig
    from fewlabel.engine.data import IndexedSamples, make_loader
    from fewlabel.engine.trainer import build_trainer

    check_fixmatch(config.threshold, config.ratio, config.unlabelled_weight, config.ema)
    request, dataset, split, pool_idx = labels_and_pool(config)
    modality = modality_of(dataset)
    if config.backbone:
        loaded = modality.load_backbone(config.backbone, dataset, {"image_size": config.image_size, "frozen": False})
        dataset, model, source = loaded.dataset, modality.classifier(loaded.backbone, loaded.dataset), loaded.source
        meta: dict[str, Any] = {"backbone": source, "strategy": "finetune", **modality.transfer_inputs(loaded)}
    else:
        setup = modality.supervised_setup(None, "standard", config.width, dataset, split, config.seed)
        model, source, meta = setup.model, setup.backbone, dict(setup.meta)
    try:  # the weak and strong views: the modality's standard and RandAugment policies
        weak = modality.augmentation("standard", dataset, config.seed).sample_transform
        strong = modality.augmentation("randaugment", dataset, config.seed).sample_transform
    except FewlabelError:
        raise FewlabelError(f"fixmatch needs a strong augmentation policy ('randaugment') for {dataset.modality} data, "
                            "which fewlabel does not have yet; use --method label-spreading or self-training") from None
    lab_idx = split.labelled(request, dataset.labels)
    val_idx = split.validation(request, dataset.labels)
    batch = fixmatch_budget(len(lab_idx), config.budget.batch_size)
    train = fixmatch_loaders(dataset, lab_idx, pool_idx, weak, strong, batch, config.ratio, config.budget.workers)
    steps_per_epoch = max(1, len(pool_idx) // min(config.ratio * batch, len(pool_idx)))
    epochs = config.budget.resolve_epochs(steps_per_epoch)
    val_loader = make_loader(IndexedSamples(dataset.samples, val_idx, dataset.labels), 256, False, 0)
    test_loader = make_loader(IndexedSamples(dataset.samples, split.test, dataset.labels), 256, False, 0)
    optim = OptimConfig(optimizer="nesterov", lr=config.lr, weight_decay=5e-4, warmup_fraction=0.0)
    name = f"semisup-{dataset.name}-{request.slug}-fixmatch-{source.replace('/', '_')}-s{config.seed}"
    run = RunFolder.create(config.out, name[:120], base=config.runs_dir)
    handler = run.attach_log()
    try:
        run.save_split(split)
        run.write_config({"command": "semisup", **asdict(config), "backbone": source, "optim": asdict(optim),
                          "batch_size": batch, "dataset": dataset.summary()})
        L.seed_everything(config.seed, workers=True, verbose=False)
        model.train()
        module = FixMatchModule(model, dataset.num_classes, optim, config.threshold, config.unlabelled_weight,
                                config.ema)
        trainer = build_trainer(run, max_epochs=epochs, monitor="val_acc", accelerator=config.budget.accelerator,
                                devices=config.budget.devices, precision=config.budget.precision,
                                max_minutes=config.budget.max_minutes, progress=config.budget.progress)
        log.info("fixmatch on %d labelled (batch %d) + %d unlabelled (batch %d) examples, %d epochs of %d steps",
                 len(lab_idx), batch, len(pool_idx), config.ratio * batch, epochs, steps_per_epoch)
        started = time.perf_counter()
        trainer.fit(module, train, val_loader)
        seconds = time.perf_counter() - started
        best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
        trainer.test(module, test_loader, ckpt_path=best or None, verbose=False)
        last = module.history[-1] if module.history else {}
        metrics = {"method": "fixmatch", **module.test_results,
                   "best_val_accuracy": float(trainer.checkpoint_callback.best_model_score or 0.0),
                   "threshold": config.threshold, "ratio": config.ratio, "unlabelled_weight": config.unlabelled_weight,
                   "ema": config.ema, "mask_rate": last.get("mask_rate"),
                   "pseudo_label_accuracy": last.get("pseudo_label_accuracy"), "pool": len(pool_idx),
                   "pseudo_labelled": None, "labelled_only_test_accuracy": None,
                   "epochs": module.history, "train_seconds": round(seconds, 3), "batch_size": batch,
                   "split": {"seed": split.seed, "labels": str(request), **split.sizes(request, dataset.labels)}}
        if run.primary:
            save_classifier(run, module.ema.module, dataset.classes,
                            {"modality": dataset.modality, "semisupervised": "fixmatch", **meta,
                             **modality.data_meta(dataset)})
        run.write_metrics(metrics)
    finally:
        run.detach_log(handler)
    return RunResult(str(run.path), metrics)


__all__ = ["SEMISUP_METHODS", "SemiSupervisedConfig", "pseudo_label_report", "self_train", "semisupervised",
           "spread_labels"]
