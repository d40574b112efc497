"""Self-supervised pretraining on the unlabelled pool, then evaluation of the exported backbone.

``pretrain`` never reads the labels of the pretraining pool: it hands the trainer the pool's image indices
only. A small labelled slice of the *validation* split feeds the online kNN monitor.
"""

from __future__ import annotations

import dataclasses
import logging
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
import yaml

from fewlabel.augment.views import (
    BatchedMultiCropAugment,
    BatchedTwoViewAugment,
    MultiCropTransform,
    TwoViewTransform,
)
from fewlabel.data.dataset import Dataset
from fewlabel.data.images import at_working_size
from fewlabel.data.registry import load_dataset
from fewlabel.data.splits import LabelRequest, LabelSplit
from fewlabel.engine.classification import OptimConfig
from fewlabel.engine.data import IndexedSamples, default_workers, make_loader
from fewlabel.engine.fit import Budget
from fewlabel.engine.pretraining import PretrainModule, RepresentationMonitor
from fewlabel.engine.run import LOGGER_NAME, RunFolder, RunResult, atomic_folder, prepare_split
from fewlabel.engine.trainer import build_trainer, run_device
from fewlabel.errors import FewlabelError
from fewlabel.evaluate.features import extract_features
from fewlabel.evaluate.probes import accuracy, fit_linear_probe, knn_predict, representation_health
from fewlabel.methods.registry import METHODS, create_method, method_hparams
from fewlabel.models.backbones import BackboneSpec, create_backbone
from fewlabel.models.export import load_backbone, save_backbone
from fewlabel.names import TEXT_METHODS

log = logging.getLogger(LOGGER_NAME)

# Per-method optimiser defaults that train stably at small batch sizes on small images.
METHOD_OPTIM = {
    "simclr": OptimConfig(optimizer="adamw", lr=2e-3, weight_decay=1e-4, warmup_fraction=0.05),
    "moco": OptimConfig(optimizer="adamw", lr=2e-3, weight_decay=1e-4, warmup_fraction=0.05),
    "byol": OptimConfig(optimizer="adamw", lr=2e-3, weight_decay=1e-4, warmup_fraction=0.05),
    "dino": OptimConfig(optimizer="adamw", lr=1e-3, weight_decay=0.04, warmup_fraction=0.1),
}


@dataclass(frozen=True)
class PretrainConfig:
    method: str = "simclr"
    data: str = "digits"
    data_dir: str | None = None
    backbone: str = "resnet_small"
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
    """Pretrain ``config.backbone`` with ``config.method`` on the unlabelled pool and export it."""
    if config.method in TEXT_METHODS:
        if config.epochs < 1:
            raise FewlabelError(f"--epochs {config.epochs} is impossible; give a positive number")
        point = resume_point(resume, config) if resume else None
        dataset = load_dataset(config.data, config.data_dir)
        # A resumed run keeps its own split (checked against the data: changed data is an error, not a new split).
        split = prepare_split(dataset, config.seed, str(point.run.path) if point else config.split)
        return pretrain_text(dataset, split, config, resume=point)
    if config.method not in METHODS:
        raise FewlabelError(f"unknown method '{config.method}'; choose one of {', '.join(METHODS)}")
    if config.views not in ("auto", "batched", "per-sample"):
        raise FewlabelError(f"--views {config.views!r}: choose auto, batched or per-sample")
    if config.epochs < 1:
        raise FewlabelError(f"--epochs {config.epochs} is impossible; give a positive number")
    if resume:
        resume_point(resume, config)  # a clear error before any data is loaded (nothing left to train, ...)
    dataset = load_dataset(config.data, config.data_dir, skip_bad=config.skip_bad)
    if dataset.modality != "image":
        raise FewlabelError(f"'{dataset.name}' is a {dataset.modality} dataset; image methods need images")
    split = prepare_split(dataset, config.seed, config.split)
    return pretrain_on(dataset, split, config, resume)


def pretrain_on(dataset: Dataset, split: LabelSplit, config: PretrainConfig, resume: str | None = None) -> RunResult:
    """``pretrain`` on an already loaded dataset and split (the Python entry point for custom data)."""
    dataset = at_working_size(dataset, config.image_size, cache=config.cache_images)
    channels, height, _ = dataset.image_shape  # views are square crops of the image height
    L.seed_everything(config.seed, workers=True, verbose=False)
    spec = BackboneSpec(name=config.backbone, in_chans=channels, width=config.width)
    backbone = create_backbone(spec)
    # channels-last weights as well as inputs: with only the inputs converted, every convolution reorders
    # its weights and pretraining runs ~1.4x slower on CPU (benchmarks/ssl_fmnist.py measures the overhead).
    method = create_method(config.method, backbone, **config.method_options).to(memory_format=torch.channels_last)
    input_spec = backbone.input_spec
    mode = "batched" if config.views == "auto" else config.views
    sample_views, batched_views = _view_generator(method.views, mode, channels, height, input_spec.mean,
                                                  input_spec.std, dataset.flip_invariant, config.local_crops)
    optim = config.optim or METHOD_OPTIM[config.method]

    if resume:
        run = RunFolder(Path(resume))
        checkpoint = run.checkpoints / "last.ckpt"
        if not checkpoint.is_file():
            raise FewlabelError(f"nothing to resume in {resume}: {checkpoint} is missing")
    else:
        name = f"pretrain-{config.method}-{dataset.name}-{config.backbone}-s{config.seed}"
        run = RunFolder.create(config.out, name, base=config.runs_dir)
        checkpoint = None
    handler = run.attach_log()
    try:
        run.save_split(split)
        run.write_config({"command": "pretrain", **asdict(config), "optim": asdict(optim), "views_mode": mode,
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
        monitor = _monitor(dataset, split, config.monitor_per_class)
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


def _monitor(dataset: Dataset, split: LabelSplit, per_class: int) -> RepresentationMonitor:
    """kNN monitor on the validation split only: half of each class as memory, the other half as queries."""
    request = LabelRequest(per_class=2 * per_class)
    chosen = split.validation(request, dataset.labels, min_per_class=2)
    labels = dataset.labels[chosen]
    memory_mask = np.zeros(len(chosen), dtype=bool)
    for cls in np.unique(labels):
        members = np.flatnonzero(labels == cls)
        memory_mask[members[: (len(members) + 1) // 2]] = True
    return RepresentationMonitor(dataset.samples, chosen[memory_mask], labels[memory_mask], chosen[~memory_mask],
                                 labels[~memory_mask], dataset.num_classes)


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


def evaluate_backbone(config: EvaluateConfig) -> dict[str, Any]:
    """kNN or linear probe of an exported backbone on the labelled subset; scored on the test split."""
    if config.protocol not in ("knn", "linear", "finetune"):
        raise FewlabelError(f"unknown protocol '{config.protocol}'; choose knn, linear or finetune")
    if config.probe_c is not None and not config.probe_c > 0:
        raise FewlabelError(f"--probe-c {config.probe_c} is impossible; give a positive inverse regularisation "
                            "strength, or leave it out to choose it by cross-validation")
    request = LabelRequest.parse(config.labels)
    backbone, info = load_backbone(config.backbone)
    data = config.data or info.get("dataset")
    dataset = load_dataset(data, config.data_dir)
    # Image folders decode at the side the backbone was pretrained at (in-memory arrays are left as they are).
    # Arrays are resized too when the backbone has no input size of its own (pretrained with --image-size).
    dataset = at_working_size(dataset, (info.get("image_shape") or [None, None, None])[1],
                              resize_arrays=backbone.input_spec.size is None)
    run_split = Path(config.backbone) / "split.npz"
    same_data = info.get("dataset_fingerprint") == dataset.fingerprint()
    seed = config.seed if config.seed is not None else int(info.get("seed", 0))
    if same_data and run_split.is_file() and config.seed is None:
        split = LabelSplit.load(run_split, dataset)  # the pretraining run's split: its test set was never seen
    else:
        split = prepare_split(dataset, seed, None)
    split.check_request(request, dataset.labels)
    if dataset.image_shape[0] not in (1, backbone.input_spec.channels):
        raise FewlabelError(f"{dataset.name} has {dataset.image_shape[0]} channels; the backbone expects "
                            f"{backbone.input_spec.channels}")
    train_idx = split.labelled(request, dataset.labels)
    if config.protocol == "finetune":
        return _finetune(backbone, dataset, split, request, seed, config)
    started = time.perf_counter()
    device = run_device(config.budget.accelerator)
    train_x = extract_features(backbone, dataset.samples, train_idx, device=device)
    test_x = extract_features(backbone, dataset.samples, split.test, device=device)
    train_y = dataset.labels[train_idx]
    test_y = dataset.labels[split.test]
    probe: dict[str, Any]
    if config.protocol == "knn":
        predictions = knn_predict(train_x, torch.as_tensor(train_y), test_x, dataset.num_classes, k=config.k,
                                  temperature=config.temperature)
        probe = {"k": config.k, "temperature": config.temperature}
    else:
        fitted = fit_linear_probe(train_x.numpy(), train_y, seed=seed, c=config.probe_c)
        predictions = fitted.predict(test_x.numpy())
        probe = {"probe_c": float(fitted[-1].C), "probe_c_chosen": config.probe_c is None}
    return {
        "protocol": config.protocol,
        "test_accuracy": accuracy(predictions, test_y),
        "labelled": len(train_idx),
        "test": len(test_y),
        "seconds": round(time.perf_counter() - started, 3),
        "backbone": str(config.backbone),
        "dataset": dataset.name,
        "labels": str(request),
        **probe,
        **representation_health(test_x),
    }


def _finetune(backbone, dataset: Dataset, split: LabelSplit, request: LabelRequest, seed: int,
              config: EvaluateConfig) -> dict[str, Any]:
    """Fine-tune every layer of the exported backbone with a new head (low learning rate, warm-up)."""
    from fewlabel.augment.supervised import build_policy
    from fewlabel.engine.fit import fit_classifier
    from fewlabel.models.backbones import Classifier

    channels, height, width = dataset.image_shape
    L.seed_everything(seed, workers=True, verbose=False)
    model = Classifier(backbone, dataset.num_classes, data_channels=channels)
    policy = build_policy("standard", (height, width), dataset.num_classes, flip=dataset.flip_invariant)
    optim = OptimConfig(optimizer="adamw", lr=1e-3, weight_decay=1e-4, warmup_fraction=0.1)
    run = RunFolder.create(config.out, f"evaluate-finetune-{dataset.name}-{request.slug}-s{seed}",
                           base=config.runs_dir)
    handler = run.attach_log()
    try:
        run.save_split(split)
        run.write_config({"command": "evaluate", **asdict(config), "optim": asdict(optim)})
        # What `fewlabel predict` needs to rebuild the classifier and decode new images as these were decoded.
        size = backbone.input_spec.size
        meta = {"backbone": str(config.backbone), "backbone_dir": str(Path(config.backbone).resolve()),
                "strategy": "finetune", "protocol": "evaluate", "image_size": size[0] if size else None,
                "in_chans": channels, "data_size": height}
        metrics = fit_classifier(model, dataset, split, request, policy, optim, config.budget, run, seed=seed,
                                 model_meta=meta)
    finally:
        run.detach_log(handler)
    return {"protocol": "finetune", "test_accuracy": metrics["test_accuracy"], "labelled": metrics["split"]["labelled"],
            "test": metrics["split"]["test"], "seconds": metrics["train_seconds"], "backbone": str(config.backbone),
            "dataset": dataset.name, "labels": str(request), "run_dir": str(run.path)}


def pretrain_text(dataset: Dataset, split: LabelSplit, config: PretrainConfig,
                  resume: ResumePoint | str | None = None) -> RunResult:
    """Masked-LM (``mlm``, 80/10/10 dynamic masking) or next-token (``clm``) pretraining on the pool's text.

    ``config.backbone`` picks the model: ``small`` (default for text) builds a small BERT (mlm) or GPT-2 (clm)
    from a config with a WordPiece tokenizer trained on the pool's text; an existing model folder or ``minilm``
    continues pretraining that model on the user's text (domain-adaptive pretraining, mlm only). The export
    folder is a Hugging Face model + tokenizer that ``fewlabel finetune --backbone <run>/export`` accepts.

    ``resume`` (a run folder, or :func:`resume_point`'s answer) continues that run in its own folder from its last
    checkpoint: model, optimiser, schedule and epoch count come from the checkpoint, the tokenizer from the run
    (``tokenizer/``), so the vocabulary is the one the checkpoint was trained with.
    """
    from transformers import AutoModelForMaskedLM, AutoTokenizer

    from fewlabel.engine.language_modeling import LanguageModelingModule
    from fewlabel.methods.text_pretraining import (
        CausalLMCollator,
        MaskedLMCollator,
        build_small_decoder,
        build_small_encoder,
    )
    from fewlabel.models.text import load_text_backbone, position_limit, train_wordpiece_tokenizer

    if dataset.modality != "text":
        raise FewlabelError(f"--method {config.method} needs text; '{dataset.name}' is a {dataset.modality} dataset")
    point = resume_point(resume, config) if isinstance(resume, str | Path) else resume
    texts = [dataset.samples[i] for i in split.pool]  # the pool's text; its labels are never read
    L.seed_everything(config.seed, workers=True, verbose=False)
    options = dict(config.method_options)
    source = "small" if config.backbone in (PretrainConfig.backbone, "small") else config.backbone
    max_length = int(options.pop("max_length", 128))
    if source == "small":
        vocab_size = int(options.pop("vocab_size", 8000))
        tokenizer = _run_tokenizer(point.run) if point else train_wordpiece_tokenizer(texts, vocab_size=vocab_size)
        size = {k: int(options.pop(k)) for k in ("hidden_size", "num_layers", "num_heads") if k in options}
        builder = build_small_encoder if config.method == "mlm" else build_small_decoder
        model = builder(len(tokenizer), max_length=max(max_length, 64), **size)
    else:
        if config.method != "mlm":
            raise FewlabelError("continued pretraining of an existing model is supported for --method mlm")
        encoder, _ = load_text_backbone(source)
        folder = encoder.input_spec.tokenizer
        tokenizer = _run_tokenizer(point.run, default=folder) if point else AutoTokenizer.from_pretrained(folder)
        model = AutoModelForMaskedLM.from_pretrained(folder)
        max_length = min(max_length, position_limit(model.config) or max_length)
    if options:
        raise FewlabelError(f"unknown option(s) {', '.join(options)} for text pretraining; valid: max_length, "
                            "vocab_size, hidden_size, num_layers, num_heads")
    # The model's initial weights depend on the seed only; what is drawn after (shuffles, dropout, masks) comes
    # from the seed, or on resume from a seed derived from it and the finished epochs.
    seed = point.seed(config.seed) if point else config.seed
    if point:
        L.seed_everything(seed, workers=True, verbose=False)
    collate = (MaskedLMCollator(tokenizer, max_length=max_length, seed=seed) if config.method == "mlm"
               else CausalLMCollator(tokenizer, max_length=max_length))
    optim = config.optim or OptimConfig(optimizer="adamw", lr=5e-4 if source == "small" else 5e-5,
                                        weight_decay=0.01, warmup_fraction=0.06)
    if point:
        run = point.run
    else:
        name = f"pretrain-{config.method}-{dataset.name}-{Path(source).name}-s{config.seed}"
        run = RunFolder.create(config.out, name, base=config.runs_dir)
    handler = run.attach_log()
    try:
        if point:
            log.info("resuming %s after %d epoch(s) from %s", run.path, point.epochs_done, point.checkpoint)
            if run.primary:
                _keep_epoch_log(run, point.epochs_done)
        else:
            run.save_split(split)
            if run.primary:  # what a resumed run must tokenize with
                tokenizer.save_pretrained(str(run.path / "tokenizer"))
        run.write_config({"command": "pretrain", **asdict(config), "optim": asdict(optim), "source": source,
                          "dataset": dataset.summary(), "texts": len(texts)})
        batch_size = config.batch_size or 32
        loader = make_loader(texts, batch_size, shuffle=True, workers=0, drop_last=True, collate_fn=collate)
        module = LanguageModelingModule(model.train(), optim)  # from_pretrained returns eval mode
        trainer = build_trainer(run, max_epochs=config.epochs, monitor=None, accelerator=config.budget.accelerator,
                                devices=config.budget.devices, num_nodes=config.budget.num_nodes,
                                precision=config.budget.precision, max_minutes=config.budget.max_minutes,
                                progress=config.budget.progress)
        log.info("%s pretraining of %s on %d texts, batch %d, %d epochs", config.method, source, len(texts),
                 batch_size, config.epochs)
        started = time.perf_counter()
        with warnings.catch_warnings():
            if point:  # the run's own folders hold files, and may have been moved since the checkpoint
                warnings.filterwarnings("ignore", ".*(Experiment logs|Checkpoint) directory .* exists and is not empty")
                warnings.filterwarnings("ignore", ".*The dirpath has changed from")
            trainer.fit(module, loader, ckpt_path=str(point.checkpoint) if point else None)
        seconds = time.perf_counter() - started
        metrics = {"method": config.method, "pretrain_seconds": round(seconds, 3),
                   "samples_per_second": round(module.samples_seen / seconds, 1) if seconds > 0 else None,
                   "epochs": trainer.current_epoch, "batch_size": batch_size, "pool_size": len(texts),
                   "final_loss": float(trainer.callback_metrics.get("lm_loss_epoch", float("nan"))),
                   "monitor": [], "warnings": []}
        if point:
            metrics["resumed_after_epochs"] = point.epochs_done
        if trainer.is_global_zero:
            # The backbone downstream commands need is the encoder/decoder body; the LM head stays in the
            # checkpoints, so loading the export with AutoModel reports no unused or missing weights. Written
            # whole or not at all: a resumed run replaces its earlier export only once the new one is complete.
            with atomic_folder(run.path / "export") as export:
                model.base_model.save_pretrained(export)
                tokenizer.save_pretrained(export)
            run.write_metrics(metrics)
        log.info("text pretraining done in %.1f s; model exported to %s", seconds, run.path / "export")
    finally:
        run.detach_log(handler)
    return RunResult(str(run.path), metrics)


def _keep_epoch_log(run: RunFolder, epochs_done: int) -> None:
    """Lightning's CSV logger deletes ``logs/csv/metrics.csv`` when it starts: on resume, keep the rows of the
    epochs already trained as ``logs/csv/metrics-until-epoch-<n>.csv``."""
    current = run.logs / "csv" / "metrics.csv"
    if current.is_file():
        current.replace(current.with_name(f"metrics-until-epoch-{epochs_done}.csv"))


def _run_tokenizer(run: RunFolder, default: str | Path | None = None):
    """The tokenizer a text pretraining run started with: its ``tokenizer/``, else its ``export/``, else the
    model folder ``default`` it continues (a run trained from scratch has no other source of its vocabulary)."""
    from transformers import AutoTokenizer

    for folder in (run.path / "tokenizer", run.path / "export"):
        if (folder / "tokenizer.json").is_file():
            return AutoTokenizer.from_pretrained(str(folder))
    if default is not None:
        return AutoTokenizer.from_pretrained(str(default))
    raise FewlabelError(f"cannot resume {run.path}: it holds no tokenizer (tokenizer/ or export/), so its "
                        "checkpoint's vocabulary is unknown; start a new run")
