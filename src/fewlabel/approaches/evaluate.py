"""Evaluate a pretrained backbone (a ``fewlabel pretrain`` run, its export, or any model folder the data's
modality loads) on the labelled subset: kNN, linear probe or fine-tuning, scored on the test split; and, for a
CLIP run, zero-shot classification with no labels at all.

kNN, the linear probe and zero-shot go through the one frozen-feature path (:mod:`fewlabel.evaluate.frozen`):
cached features, one probe; the linear probe saves its classifier in a run folder that ``fewlabel predict`` uses.
A CLIP run (``pretrain --method clip``) is an image backbone here: its image tower, without the projection.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import lightning as L
import torch
import yaml

from fewlabel.data.registry import load_dataset
from fewlabel.data.splits import LabelRequest, LabelSplit
from fewlabel.engine.classification import OptimConfig
from fewlabel.engine.fit import Budget, fit_classifier, save_classifier, sweep_rates
from fewlabel.engine.run import RunFolder, prepare_split
from fewlabel.engine.trainer import run_device
from fewlabel.errors import FewlabelError
from fewlabel.evaluate.frozen import fit_frozen_classifier, frozen_features, linear_probe_start
from fewlabel.evaluate.probes import accuracy, knn_predict, representation_health
from fewlabel.modalities import LoadedBackbone, Modality, modality_of
from fewlabel.models.export import EXPORT_META

PROTOCOLS = ("knn", "linear", "finetune", "zero-shot")


@dataclass(frozen=True)
class EvaluateConfig:
    backbone: str
    protocol: str = "knn"
    labels: str = "1.0"
    data: str | None = None
    data_dir: str | None = None
    seed: int | None = None
    k: int = 200
    temperature: float = 0.1
    probe_c: float | None = None  # linear: inverse L2 strength; None = chosen by cross-validation on the labels
    budget: Budget = field(default_factory=Budget)
    out: str | None = None
    runs_dir: str = "runs"
    columns: dict[str, str] = field(default_factory=dict)  # tables: {"image": ..., "text": ..., "label": ...}
    prompts: tuple[str, ...] = ()  # zero-shot templates ("a drawing of {}"); empty: the default set
    class_names: tuple[str, ...] = ()  # zero-shot: one per class in the dataset's order; empty: its class names
    skip_bad: bool = False  # image folders and audio: leave unreadable files out (counted) instead of stopping


def export_info(path: str | Path) -> dict[str, Any]:
    """What a pretrained backbone says about itself: a fewlabel export's ``backbone.json``, else the pretraining
    run's ``config.yaml`` (its data and seed), else nothing (a plain model folder: ``--data`` is needed)."""
    from fewlabel.models.clip_export import clip_folder, read_clip_info

    path = Path(path)
    if not path.exists():
        raise FewlabelError(f"no exported backbone at {path}; pass a `fewlabel pretrain` run folder or its export/")
    if clip_folder(path) is not None:  # a CLIP run: its data, seed, table columns and image side
        clip = read_clip_info(path)
        return {"dataset": clip.get("dataset"), "seed": clip.get("seed"), "columns": clip.get("columns") or {},
                "image_shape": clip.get("image_shape"), "clip": True}
    folders = [path / "export", path] if path.is_dir() else [path.parent]
    meta = next((folder / EXPORT_META for folder in folders if (folder / EXPORT_META).is_file()), None)
    if meta is not None:
        try:
            return json.loads(meta.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise FewlabelError(f"{meta} is corrupt ({exc.msg}); re-export the backbone") from None
    try:
        config = yaml.safe_load((path / "config.yaml").read_text(encoding="utf-8")) if path.is_dir() else None
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        config = None
    if isinstance(config, dict) and config.get("command") == "pretrain":
        return {"dataset": config.get("data"), "seed": config.get("seed")}
    return {}


def _run_split(backbone: str, dataset) -> LabelSplit | None:
    """The pretraining run's own split when it was made for this data: its test set was never seen."""
    path = Path(backbone) / "split.npz"
    if not path.is_file():
        return None
    split = LabelSplit.load(path)
    return split if split.fingerprint == dataset.fingerprint() else None


def evaluate_backbone(config: EvaluateConfig) -> dict[str, Any]:
    """kNN, linear probe or fine-tuning of a pretrained backbone on the labelled subset, or zero-shot (a CLIP run,
    no labels); scored on the test split."""
    if config.protocol not in PROTOCOLS:
        raise FewlabelError(f"unknown protocol '{config.protocol}'; choose {', '.join(PROTOCOLS)}")
    if config.probe_c is not None and not config.probe_c > 0:
        raise FewlabelError(f"--probe-c {config.probe_c} is impossible; give a positive inverse regularisation "
                            "strength, or leave it out to choose it by cross-validation")
    request = LabelRequest.parse(config.labels)
    info = export_info(config.backbone)
    if config.protocol == "zero-shot" and not info.get("clip"):
        raise FewlabelError(f"--protocol zero-shot needs a CLIP backbone (a `fewlabel pretrain --method clip` run "
                            f"or its export/); {config.backbone} is not one")
    if config.protocol == "zero-shot":
        from fewlabel.methods.clip import parse_templates

        parse_templates(config.prompts)  # a prompt without {} is an error before any data is loaded
    data = config.data or info.get("dataset")
    if not data:
        raise FewlabelError(f"{config.backbone} does not say which data it was pretrained on; pass --data")
    # A table's columns: as given, else (the CLIP run's own data) as the run read it.
    columns = config.columns or (info.get("columns") if not config.data else None) or None
    dataset = load_dataset(data, config.data_dir, columns, skip_bad=config.skip_bad)
    modality = modality_of(dataset)
    frozen = config.protocol != "finetune"
    if info.get("clip"):  # the image tower, at the side it was trained at, as a transfer source
        side = (info.get("image_shape") or [None, None, None])[1]
        loaded = modality.load_backbone(config.backbone, dataset, {"image_size": side, "frozen": frozen})
    else:
        loaded = modality.load_export(config.backbone, dataset, info, frozen=frozen)
    dataset = loaded.dataset
    seed = config.seed if config.seed is not None else int(info.get("seed") or 0)
    split = _run_split(config.backbone, dataset) if config.seed is None else None
    split = split or prepare_split(dataset, seed, None)
    if config.protocol == "zero-shot":
        return _zero_shot(loaded, split, config, run_device(config.budget.accelerator))
    split.check_request(request, dataset.labels)
    if config.protocol == "finetune":
        return _finetune(modality, loaded, split, request, seed, config)
    started = time.perf_counter()
    device = run_device(config.budget.accelerator)
    train_idx = split.labelled(request, dataset.labels)
    summary = {"protocol": config.protocol, "backbone": str(config.backbone), "dataset": dataset.name,
               "labels": str(request)}
    if config.protocol == "knn":
        train_x, _ = frozen_features(loaded, train_idx, device)
        test_x, _ = frozen_features(loaded, split.test, device)
        test_y = dataset.labels[split.test]
        predictions = knn_predict(train_x, torch.as_tensor(dataset.labels[train_idx]), test_x, dataset.num_classes,
                                  k=config.k, temperature=config.temperature)
        return {**summary, "test_accuracy": accuracy(predictions.numpy(), test_y), "labelled": len(train_idx),
                "test": len(test_y), "seconds": round(time.perf_counter() - started, 3), "k": config.k,
                "temperature": config.temperature, **representation_health(test_x)}
    return _linear(modality, loaded, split, request, seed, config, summary, device)


def _zero_shot(loaded: LoadedBackbone, split: LabelSplit, config: EvaluateConfig, device) -> dict[str, Any]:
    """One classifier from the class names alone (each class's prompts, encoded by the text tower, averaged:
    :func:`~fewlabel.methods.clip.zero_shot_classifier`), scored on the test split's images (an image with
    several captions counts once). No label is used: ``labelled`` is 0."""
    from fewlabel.data.dataset import UNLABELLED
    from fewlabel.data.pairs import retrieval_images
    from fewlabel.methods.clip import parse_templates, prompt_name, zero_shot_classifier
    from fewlabel.models.clip_export import load_clip

    started = time.perf_counter()
    dataset = loaded.dataset
    templates = parse_templates(config.prompts)
    names = list(config.class_names) or [prompt_name(c) for c in dataset.classes]
    if len(names) != dataset.num_classes:
        raise FewlabelError(f"--class-names gives {len(names)} names; {dataset.name} has {dataset.num_classes} "
                            f"classes ({', '.join(dataset.classes[:10])}{' ...' if dataset.num_classes > 10 else ''})")
    if dataset.num_classes < 2:
        raise FewlabelError(f"{dataset.name} has {dataset.num_classes} class(es); zero-shot classification needs "
                            "labelled data of at least two classes")
    images, _ = retrieval_images(dataset, split.test)  # one row per distinct image
    images = images[dataset.labels[images] != UNLABELLED]
    if len(images) == 0:
        raise FewlabelError(f"{dataset.name} has no labelled test images to score")
    clip = load_clip(config.backbone)
    features, _ = frozen_features(loaded, images, device)
    image_emb = clip.project_image_features(features)
    weights = zero_shot_classifier(lambda prompts: clip.encode_texts(list(prompts), device=device), names, templates)
    predictions = (image_emb @ weights.T).argmax(dim=1).numpy()
    truth = dataset.labels[images]
    per_class = {c: accuracy(predictions[truth == i], truth[truth == i]) for i, c in enumerate(dataset.classes)
                 if (truth == i).any()}
    return {"protocol": "zero-shot", "test_accuracy": accuracy(predictions, truth), "labelled": 0,
            "test": len(images), "seconds": round(time.perf_counter() - started, 3),
            "backbone": str(config.backbone), "dataset": dataset.name, "labels": str(config.labels),
            "prompts": list(templates), "class_names": names, "chance": 1.0 / dataset.num_classes,
            "per_class_accuracy": per_class}


def _meta(modality: Modality, loaded: LoadedBackbone, config: EvaluateConfig, strategy: str) -> dict[str, Any]:
    """model.json: what ``fewlabel predict`` needs to rebuild the classifier and feed it as the data was fed."""
    return {"backbone": str(config.backbone), "backbone_dir": str(Path(config.backbone).resolve()),
            "strategy": strategy, "protocol": "evaluate", **modality.transfer_inputs(loaded),
            **modality.data_meta(loaded.dataset)}


def _linear(modality: Modality, loaded: LoadedBackbone, split: LabelSplit, request: LabelRequest, seed: int,
            config: EvaluateConfig, summary: dict[str, Any], device) -> dict[str, Any]:
    """Logistic regression on the frozen features, saved as a classifier (backbone + linear head)."""
    dataset = loaded.dataset
    model = modality.classifier(loaded.backbone, dataset)
    run = RunFolder.create(config.out, f"evaluate-linear-{dataset.name}-{request.slug}-s{seed}", base=config.runs_dir)
    handler = run.attach_log()
    try:
        run.save_split(split)
        run.write_config({"command": "evaluate", **asdict(config), "dataset": dataset.summary()})
        metrics, test_x = fit_frozen_classifier(model, loaded, split, request, head="logreg", seed=seed,
                                                probe_c=config.probe_c, device=device, validate=False)
        if run.primary:
            save_classifier(run, model, dataset.classes, {**_meta(modality, loaded, config, "feature-extract"),
                                                          "head": "logreg", "modality": dataset.modality})
        run.write_metrics(metrics)
    finally:
        run.detach_log(handler)
    return {**summary, "test_accuracy": metrics["test_accuracy"], "labelled": metrics["split"]["labelled"],
            "test": metrics["split"]["test"], "seconds": metrics["train_seconds"], "probe_c": metrics["probe_c"],
            "probe_c_chosen": config.probe_c is None, "macro_f1": metrics["macro_f1"], "run_dir": str(run.path),
            **representation_health(test_x)}


def _finetune(modality: Modality, loaded: LoadedBackbone, split: LabelSplit, request: LabelRequest, seed: int,
              config: EvaluateConfig) -> dict[str, Any]:
    """Fine-tune every layer of the pretrained backbone with a new head (low learning rate, warm-up)."""
    dataset = loaded.dataset
    L.seed_everything(seed, workers=True, verbose=False)
    model = modality.classifier(loaded.backbone, dataset)
    policy = modality.augmentation(None, dataset, seed)
    optim = OptimConfig(optimizer="adamw", lr=modality.export_finetune_lr, weight_decay=1e-4, warmup_fraction=0.1)
    run = RunFolder.create(config.out, f"evaluate-finetune-{dataset.name}-{request.slug}-s{seed}",
                           base=config.runs_dir)
    handler = run.attach_log()
    try:
        run.save_split(split)
        run.write_config({"command": "evaluate", **asdict(config), "optim": asdict(optim)})
        # LP-FT, as `finetune` does: the probe first, a learning-rate sweep (with a random-head trial), never below
        # the probe on validation.
        start = linear_probe_start(model, loaded, split, request, seed, accelerator=config.budget.accelerator,
                                   random_head_trial=True)
        metrics = fit_classifier(model, dataset, split, request, policy, optim, config.budget, run, seed=seed,
                                 model_meta=_meta(modality, loaded, config, "finetune"),
                                 train_collate=loaded.collate, eval_collate=loaded.collate,
                                 lr_sweep=sweep_rates(optim.lr, 3), starting_point=start,
                                 extra_metrics={"lp_seconds": start.metrics["train_seconds"]})
    finally:
        run.detach_log(handler)
    return {"protocol": "finetune", "test_accuracy": metrics["test_accuracy"], "kept": metrics["kept"],
            "labelled": metrics["split"]["labelled"],
            "test": metrics["split"]["test"], "seconds": metrics["train_seconds"], "backbone": str(config.backbone),
            "dataset": dataset.name, "labels": str(request), "run_dir": str(run.path)}
