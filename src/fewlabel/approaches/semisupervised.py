"""Semi-supervised learning: the labelled subset and the unlabelled pool used together.

Three methods train the network itself (:mod:`fewlabel.approaches.fixmatch`, one shared module), from scratch
(the modality's supervised network) or from ``--backbone`` (fine-tuned):

* ``fixmatch``: weak and strong views of the pool (the modality's ``semisup_views``: images ``standard`` /
  ``randaugment``; audio the ``standard`` waveform policy / waveform masks and stronger noise), one confidence
  threshold;
* ``flexmatch``: FixMatch with class-wise thresholds from each class's learning status (FlexMatch's curriculum
  pseudo-labelling), which helps hard and rare classes (imbalanced labelled sets);
* ``pseudolabel``: Lee's Pseudo-Label, one (weak) view trained on its own confident predictions, the unlabelled
  weight ramped up linearly over the first 40% of the steps (``ramp``); it needs no strong view, so it also
  trains text networks.

Two cheap methods work for every modality, because they only need the cached frozen features of a backbone
(images: EfficientNet-Lite0 or a fewlabel export; text: MiniLM; audio: a speech encoder):

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
import math
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field, replace
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
from fewlabel.models.backbones import to_channels_last

log = logging.getLogger(LOGGER_NAME)

SEMISUP_METHODS = ("self-training", "label-spreading", "fixmatch", "flexmatch", "pseudolabel")
TRAINED_METHODS = ("fixmatch", "flexmatch", "pseudolabel")  # train the network (the others: a head on features)
STRONG_VIEW_METHODS = ("fixmatch", "flexmatch")  # need the modality's strong view
# The semisup options that only some methods read (flag -> methods): any other method refuses them.
METHOD_OPTIONS = {"--neighbours": ("label-spreading",), "--alpha": ("label-spreading",),
                  "--rounds": ("self-training",), "--ratio": TRAINED_METHODS, "--unlabelled-weight": TRAINED_METHODS,
                  "--ema": TRAINED_METHODS, "--lr": TRAINED_METHODS, "--width": TRAINED_METHODS,
                  "--ramp": ("pseudolabel",)}
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
    # fixmatch, flexmatch, pseudolabel (the trained methods):
    ratio: int = 7  # unlabelled samples per labelled one in a step
    unlabelled_weight: float = 1.0  # weight of the unlabelled loss
    ema: float = 0.999  # decay of the weights' moving average (the model validated, tested, saved)
    width: int | None = None  # from scratch (no --backbone): the network's width
    # None: from scratch, the modality's optimiser (text, audio: AdamW) or FixMatch's SGD with Nesterov momentum at
    # 0.03 (images); with a backbone, fine-tuning's AdamW at 3e-4. A number: that peak rate, same optimiser.
    lr: float | None = None
    ramp: float = 0.4  # pseudolabel: share of the steps over which the unlabelled weight rises from 0
    # At most this many pool samples (a seeded random subset): caps the features to extract and the kNN graph.
    max_pool: int | None = None
    budget: Budget = field(default_factory=Budget)
    out: str | None = None
    runs_dir: str = "runs"


def check_method(method: str) -> None:
    if method not in SEMISUP_METHODS:
        raise FewlabelError(f"unknown semi-supervised method '{method}'; choose one of {', '.join(SEMISUP_METHODS)}")


def check_method_options(method: str, given: Iterable[str], backbone: str | None = None) -> None:
    """One line when an option given on the command line (``given``: flags such as ``--ratio``) means nothing to
    ``method`` (e.g. ``--neighbours`` with ``flexmatch``, ``--ramp`` with ``fixmatch``, ``--width`` with a
    ``--backbone``)."""
    check_method(method)
    for flag in given:
        methods = METHOD_OPTIONS.get(flag)
        if methods is not None and method not in methods:
            raise FewlabelError(f"{flag} applies to --method {' or '.join(methods)}, not {method}")
    if backbone and "--width" in given:
        raise FewlabelError(f"--width sizes a network trained from scratch; --backbone {backbone} brings its own")


def check_semisup_config(config: SemiSupervisedConfig) -> None:
    check_method(config.method)
    if not 0.0 < config.threshold <= 1.0:
        raise FewlabelError(f"--threshold {config.threshold} is impossible; give a confidence in (0, 1]")
    if config.neighbours < 1 or config.max_rounds < 1 or not 0.0 < config.alpha < 1.0:
        raise FewlabelError("--neighbours and --rounds must be >= 1 and --alpha in (0, 1)")
    if config.max_pool is not None and config.max_pool < 1:
        raise FewlabelError(f"--max-pool {config.max_pool} is impossible; give 1 or more pool samples, or leave it "
                            "out to use the whole pool")


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
    if config.max_pool is not None and len(pool_idx) > config.max_pool:
        rng = np.random.default_rng(config.seed)
        pool_idx = np.sort(rng.choice(pool_idx, size=config.max_pool, replace=False))
        log.info("using %d of the %d unlabelled pool samples (--max-pool)", config.max_pool,
                 len(split.unlabelled(request, dataset.labels)))
    return request, dataset, split, pool_idx


def semisupervised(config: SemiSupervisedConfig) -> RunResult:
    """Run ``config.method``: the trained methods through :func:`train_network`; the others pseudo-label the
    unlabelled pool on frozen features, then fit the final linear head on labels + pseudo-labels."""
    check_semisup_config(config)
    if config.method in TRAINED_METHODS:
        return train_network(config)
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


def threshold_policy(config: SemiSupervisedConfig, num_classes: int, pool_size: int) -> Any:
    from fewlabel.approaches.fixmatch import FixedThreshold, FlexMatchThresholds

    if config.method == "flexmatch":
        return FlexMatchThresholds(pool_size, num_classes, config.threshold)
    return FixedThreshold(config.threshold, num_classes)


def train_network(config: SemiSupervisedConfig) -> RunResult:
    """FixMatch, FlexMatch or Pseudo-Label, from scratch (the modality's supervised network) or from
    ``config.backbone`` (fine-tuned)."""
    import lightning as L

    from fewlabel.approaches.fixmatch import FixMatchModule, check_fixmatch, fixmatch_budget, semisup_loaders
    from fewlabel.approaches.transfer import STRATEGY_OPTIM
    from fewlabel.data.image_files import ImageFiles
    from fewlabel.engine.classification import OptimConfig
    from fewlabel.engine.data import IndexedSamples, default_workers, make_loader
    from fewlabel.engine.trainer import build_trainer

    method = config.method
    check_fixmatch(config.threshold, config.ratio, config.unlabelled_weight, config.ema, config.ramp)
    if config.backbone and config.width is not None:
        raise FewlabelError(f"--width sizes a network trained from scratch; --backbone {config.backbone} brings its "
                            "own")
    request, dataset, split, pool_idx = labels_and_pool(config)
    modality = modality_of(dataset)
    if config.backbone:
        loaded = modality.load_backbone(config.backbone, dataset, {"image_size": config.image_size, "frozen": False})
        dataset, model, source = loaded.dataset, modality.classifier(loaded.backbone, loaded.dataset), loaded.source
        collate, save_files = loaded.collate, None
        base_optim = STRATEGY_OPTIM["finetune"]  # the recipe `finetune` uses for a pretrained network
        meta: dict[str, Any] = {"backbone": source, "strategy": "finetune", **modality.transfer_inputs(loaded),
                                **({"backbone_dir": str(Path(source).resolve())} if Path(source).is_dir() else {})}
    else:
        dataset = modality.working_data(dataset, config.image_size)
        setup = modality.supervised_setup(None, None, config.width, dataset, split, config.seed)
        model, source, meta, collate, save_files = setup.model, setup.backbone, dict(setup.meta), setup.collate, \
            setup.save_files
        base_optim = setup.optim or OptimConfig(optimizer="nesterov", lr=0.03, weight_decay=5e-4,
                                                warmup_fraction=0.0)  # FixMatch's
    optim = replace(base_optim, lr=config.lr) if config.lr is not None else base_optim
    try:
        views = modality.semisup_views(dataset, config.seed)
    except FewlabelError:
        raise FewlabelError(f"{method} trains the network, which fewlabel cannot do on {modality.noun} yet; use "
                            "--method label-spreading or self-training") from None
    if method in STRONG_VIEW_METHODS and views.strong is None:
        raise FewlabelError(f"{method} needs a strong augmentation of {modality.noun}, which fewlabel does not have "
                            "yet; use --method pseudolabel (one view), label-spreading or self-training")
    strong = views.strong if method in STRONG_VIEW_METHODS else None
    lab_idx = split.labelled(request, dataset.labels)
    val_idx = split.validation(request, dataset.labels)
    batch = fixmatch_budget(len(lab_idx), config.budget.batch_size)
    train_samples = dataset.samples
    if views.crops_to_size and isinstance(train_samples, ImageFiles):
        train_samples = train_samples.whole_images()  # crops from the whole photo, not its centre square
    train = semisup_loaders(dataset, lab_idx, pool_idx, views.weak, strong, batch, config.ratio,
                            config.budget.workers, collate=collate, train_samples=train_samples)
    steps_per_epoch = max(1, len(pool_idx) // min(config.ratio * batch, len(pool_idx)))
    epochs = config.budget.resolve_epochs(steps_per_epoch)
    decoded = not isinstance(dataset.samples, torch.Tensor | list)  # image folders decode on access
    eval_workers = (config.budget.workers if config.budget.workers is not None else default_workers(True)) \
        if decoded else 0
    eval_batch = modality.eval_batch_size(dataset, batch)
    val_loader = make_loader(IndexedSamples(dataset.samples, val_idx, dataset.labels), eval_batch, False,
                             eval_workers, collate_fn=collate)
    test_loader = make_loader(IndexedSamples(dataset.samples, split.test, dataset.labels), eval_batch, False,
                              eval_workers, collate_fn=collate)
    ramp = config.ramp if method == "pseudolabel" else 0.0
    name = f"semisup-{dataset.name}-{request.slug}-{method}-{source.replace('/', '_')}-s{config.seed}"
    run = RunFolder.create(config.out, name[:120], base=config.runs_dir)
    handler = run.attach_log()
    try:
        run.save_split(split)
        if save_files is not None:
            save_files(run)
        view_names = {"weak": views.names.get("weak"), **({"strong": views.names.get("strong")} if strong else {})}
        run.write_config({"command": "semisup", **asdict(config), "backbone": source, "optim": asdict(optim),
                          "batch_size": batch, "views": view_names, "ramp_used": ramp,
                          "dataset": dataset.summary()})
        L.seed_everything(config.seed, workers=True, verbose=False)
        if modality.channels_last:  # convolutions: the kernels predict uses too
            model = to_channels_last(model)
        model.train()
        module = FixMatchModule(model, dataset.num_classes, optim,
                                threshold_policy(config, dataset.num_classes, len(pool_idx)),
                                config.unlabelled_weight, config.ema, ramp=ramp)
        trainer = build_trainer(run, max_epochs=epochs, monitor="val_acc", accelerator=config.budget.accelerator,
                                devices=config.budget.devices, num_nodes=config.budget.num_nodes,
                                precision=config.budget.precision, max_minutes=config.budget.max_minutes,
                                progress=config.budget.progress)
        log.info("%s on %d labelled (batch %d) + %d unlabelled (batch %d) examples, %d epochs of %d steps", method,
                 len(lab_idx), batch, len(pool_idx), config.ratio * batch, epochs, steps_per_epoch)
        started = time.perf_counter()
        trainer.fit(module, train, val_loader)
        seconds = time.perf_counter() - started
        best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
        best_val = float(trainer.checkpoint_callback.best_model_score or 0.0) if trainer.checkpoint_callback else 0.0
        last_val = trainer.callback_metrics.get("val_acc")
        last_val = float(last_val) if last_val is not None else None
        final = final_epoch_choice(best_val, last_val, len(val_idx))
        trainer.test(module, test_loader, ckpt_path=None if final["kept"] == "last epoch" else (best or None),
                     verbose=False)
        log.info("the %s's EMA model is tested: best validation %.4f, last epoch %s (one standard error %.4f)",
                 final["kept"], best_val, "n/a" if last_val is None else f"{last_val:.4f}", final["margin"])
        last = module.history[-1] if module.history else {}
        metrics = {"method": method, **module.test_results, "final_model": final,
                   "best_val_accuracy": float(trainer.checkpoint_callback.best_model_score or 0.0),
                   "threshold": config.threshold, "ratio": config.ratio, "unlabelled_weight": config.unlabelled_weight,
                   "ema": config.ema, "ramp": ramp, "mask_rate": last.get("mask_rate"),
                   "pseudo_label_accuracy": last.get("pseudo_label_accuracy"),
                   "class_thresholds": [round(float(t), 4) for t in module.policy.thresholds()],
                   "pool": len(pool_idx), "pseudo_labelled": None, "labelled_only_test_accuracy": None,
                   "epochs": module.history, "train_seconds": round(seconds, 3), "batch_size": batch,
                   "optim": asdict(optim), "views": view_names,
                   "split": {"seed": split.seed, "labels": str(request), **split.sizes(request, dataset.labels)}}
        log.info("%s: last epoch mask rate %s, pseudo-label accuracy %s (hidden labels), class thresholds %.3f-%.3f; "
                 "test accuracy %.4f", method, last.get("mask_rate"), last.get("pseudo_label_accuracy"),
                 last.get("threshold_min", float("nan")), last.get("threshold_max", float("nan")),
                 metrics["test_accuracy"])
        if run.primary:
            save_classifier(run, module.ema.module, dataset.classes,
                            {"modality": dataset.modality, "semisupervised": method, **meta,
                             **modality.data_meta(dataset)})
        run.write_metrics(metrics)
    finally:
        run.detach_log(handler)
    return RunResult(str(run.path), metrics)


def final_epoch_choice(best_val: float, last_val: float | None, val_size: int) -> dict[str, Any]:
    """Which EMA model a trained semi-supervised run tests and saves: the last epoch's, unless the best validation
    epoch beats it by more than one binomial standard error of the best score.

    These runs have no early stopping and their EMA model improves for the whole schedule, while the validation
    split at 1% labels is tiny (60 Fashion-MNIST images): the first epoch to reach the highest score kept an epoch-6
    model at 75.9% test accuracy where the last epoch's scored 82.6%, one image lower on validation."""
    margin = math.sqrt(max(best_val * (1.0 - best_val), 0.0) / max(1, val_size))
    keep_last = last_val is not None and last_val + margin >= best_val
    return {"kept": "last epoch" if keep_last else "best validation epoch", "best_val_accuracy": round(best_val, 6),
            "last_val_accuracy": None if last_val is None else round(last_val, 6), "margin": round(margin, 6)}


__all__ = ["SEMISUP_METHODS", "SemiSupervisedConfig", "check_method_options", "final_epoch_choice",
           "pseudo_label_report", "self_train",
           "semisupervised", "spread_labels", "train_network"]
