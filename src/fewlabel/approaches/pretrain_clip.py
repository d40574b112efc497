"""CLIP-style contrastive pretraining on image-text pairs: an image tower and a text tower projected into one
space where each image lies closest to its own caption (:class:`fewlabel.methods.clip.CLIPPretraining`).

Towers: any fewlabel/timm image backbone (default EfficientNet-Lite0 with its ImageNet weights, offline) and any
Hugging Face text encoder (default MiniLM, offline). By default the image tower is **locked** (LiT, Zhai et al.
2022): a pretrained image tower already gives good features, and on a CPU its forward and backward passes at
224 px would cost far more than the text tower's. A locked tower's features are computed once, through the
cached frozen-feature path (:func:`fewlabel.evaluate.frozen.frozen_features`, reused by later runs and by
``evaluate``), and training runs the text tower and both projections on them. ``--option lock_image=false``
trains both towers on decoded images (``lock_text=true`` locks the text tower instead).

Only the training pairs train; the split holds out whole images (an image's captions are never on both sides).
After training: image->text and text->image recall@1/5/10 on the test pairs and, when the data has labels,
zero-shot accuracy on the test images, in ``metrics.json``. The export (:mod:`fewlabel.models.clip_export`) is
what ``fewlabel evaluate --protocol zero-shot`` and ``--backbone <run>`` (its image tower) take.
"""

from __future__ import annotations

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
from torch.utils.data import Dataset as TorchDataset

from fewlabel.data.dataset import UNLABELLED, Dataset
from fewlabel.data.splits import LabelSplit
from fewlabel.engine.classification import OptimConfig
from fewlabel.engine.run import LOGGER_NAME, RunResult, start_or_resume
from fewlabel.errors import FewlabelError
from fewlabel.models.backbones import Backbone, InputAdapter

if TYPE_CHECKING:
    from fewlabel.approaches.selfsupervised import PretrainConfig, ResumePoint
    from fewlabel.methods.clip import CLIPPretraining
    from fewlabel.modalities.base import LoadedBackbone

log = logging.getLogger(LOGGER_NAME)

# Every option `--option key=value` may set, with its default (None: decided from the data or other flags).
CLIP_OPTIONS: dict[str, Any] = {
    "image_backbone": None,  # None: --backbone, else efficientnet_lite0
    "text_backbone": "minilm",  # minilm (offline), a Hugging Face folder, a text pretraining run
    "lock_image": True,  # LiT: the image tower keeps its weights; its features are computed once
    "lock_text": False,
    "loss": "clip",  # clip (softmax InfoNCE) | siglip (pairwise sigmoid)
    "embed_dim": 256,  # the shared space
    "projection_hidden_dim": None,  # None: linear projections (CLIP); an int: two-layer MLPs
    "image_size": None,  # None: --image-size, else the tower's pretrained side (at most 4x the data's)
    "max_length": 64,  # caption tokens
    "init_temperature": None,  # None: 0.07 (clip) / 0.1 (siglip)
    "tower_lr_scale": 0.1,  # trained towers learn at this share of --lr (the new projections at the full rate)
    "prompts": None,  # zero-shot templates after training, '|'-separated; None: methods.clip.DEFAULT_TEMPLATES
    "gather_distributed": True,  # several GPUs: negatives from every GPU
    "augment_images": True,  # a trained image tower: random-resized crops (60-100% of the area), flips if allowed
}
DEFAULT_OPTIM = OptimConfig(optimizer="adamw", lr=5e-4, weight_decay=0.05, warmup_fraction=0.1)
ENCODE_BATCH = 128


def resolve_options(config: PretrainConfig) -> dict[str, Any]:
    """``config.method_options`` over :data:`CLIP_OPTIONS`; unknown keys and impossible values are one line."""
    given = dict(config.method_options)
    unknown = sorted(set(given) - set(CLIP_OPTIONS))
    if unknown:
        raise FewlabelError(f"unknown option(s) {', '.join(unknown)} for clip; valid: {', '.join(CLIP_OPTIONS)}")
    options = {**CLIP_OPTIONS, **given}
    for key in ("lock_image", "lock_text", "gather_distributed", "augment_images"):
        if not isinstance(options[key], bool):
            raise FewlabelError(f"--option {key}={options[key]!r}: give true or false")
    if options["lock_image"] and options["lock_text"]:
        raise FewlabelError("--option lock_image=true and lock_text=true leave only the projections to train; "
                            "unlock one tower (the image tower is locked by default)")
    if options["loss"] not in ("clip", "siglip"):
        raise FewlabelError(f"--option loss={options['loss']!r}: choose clip or siglip")
    for key in ("embed_dim", "max_length", "projection_hidden_dim", "image_size"):
        value = options[key]
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
            raise FewlabelError(f"--option {key}={value!r}: give a positive whole number")
    for key in ("tower_lr_scale", "init_temperature"):
        value = options[key]
        if value is not None and (not isinstance(value, int | float) or isinstance(value, bool) or not value > 0):
            raise FewlabelError(f"--option {key}={value!r}: give a positive number")
    if options["init_temperature"] is not None and options["init_temperature"] > 1:
        raise FewlabelError(f"--option init_temperature={options['init_temperature']}: give a value in (0, 1]")
    asked = options["image_backbone"]
    if asked is not None and config.backbone is not None and str(asked) != config.backbone:
        raise FewlabelError(f"--backbone {config.backbone} and --option image_backbone={asked} disagree; name the "
                            "image tower once")
    options["image_backbone"] = str(asked or config.backbone or "efficientnet_lite0")
    options["text_backbone"] = str(options["text_backbone"])
    if options["image_size"] is None:
        options["image_size"] = config.image_size
    from fewlabel.methods.clip import parse_templates

    prompts = options["prompts"]
    options["prompts"] = list(parse_templates([prompts] if isinstance(prompts, str) else prompts))
    return options


# --- towers -------------------------------------------------------------------------------------------------------


class FeatureTower(nn.Module):
    """The locked image tower while LiT trains: its features were computed once, so here it is the identity."""

    def __init__(self, embed_dim: int) -> None:
        super().__init__()
        self.embed_dim = embed_dim

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return features


class AdaptedImageTower(nn.Module):
    """A trained image tower: dataset images (uint8) through the backbone's input adapter and the backbone."""

    def __init__(self, backbone: Backbone, data_channels: int) -> None:
        super().__init__()
        self.adapter = InputAdapter(data_channels, backbone.input_spec)
        self.backbone = backbone
        self.embed_dim = backbone.embed_dim

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.backbone(self.adapter(images))


def build_image_tower(source: str, dataset: Dataset, image_size: int | None, width: int | None) -> Backbone:
    """A registry backbone (``resnet_small``...: from scratch, at the data's working side) or a pretrained one
    (``efficientnet_lite0``, a fewlabel export, a CLIP run's tower, ``timm-name@weights``, a timm hub name)."""
    from fewlabel.data.images import DEFAULT_SCRATCH_SIDE
    from fewlabel.modalities.image import prepare_backbone
    from fewlabel.models.backbones import BackboneSpec, InputSpec, create_backbone, registered_backbones

    channels, side, _ = dataset.image_shape
    if source in registered_backbones():
        backbone = create_backbone(BackboneSpec(name=source, in_chans=channels, width=width))
        size = image_size or min(side, DEFAULT_SCRATCH_SIDE)
        spec = backbone.input_spec  # a size of its own: evaluate and finetune resize other data to it
        backbone.input_spec = InputSpec(spec.channels, (size, size), spec.mean, spec.std)
        return backbone
    return prepare_backbone(source, dataset, image_size)


# --- data ---------------------------------------------------------------------------------------------------------


class PairCrops:
    """The trained image tower's light augmentation: a random-resized crop of 60-100% of the image's area (aspect
    3/4-4/3) back at the working side, and a horizontal flip at probability 1/2 only where the data allows it
    (openclipart does not: captions say "left arrow", and lettering reads mirrored). uint8 in, uint8 out."""

    SCALE = (0.6, 1.0)

    def __init__(self, side: int, flip: bool) -> None:
        from torchvision.transforms import v2

        steps: list[Any] = [v2.RandomResizedCrop(side, scale=self.SCALE, antialias=True)]
        if flip:
            steps.append(v2.RandomHorizontalFlip())
        self.transform = v2.Compose(steps)
        self.flip = flip

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        return self.transform(image)

    def describe(self) -> str:
        return f"random-resized crop {self.SCALE[0]:.0%}-{self.SCALE[1]:.0%}" + (" + flip" if self.flip else "")


class PairRows(TorchDataset):
    """Training pairs: (image-tower input, caption, caption id). The input is a row of precomputed features
    (locked tower) or the decoded image (``transform``: its augmentation)."""

    def __init__(self, inputs: Any, rows: np.ndarray, captions: list[str], caption_ids: np.ndarray,
                 precomputed: bool, transform: Any = None) -> None:
        self.inputs, self.rows, self.captions, self.caption_ids = inputs, rows, captions, caption_ids
        self.precomputed, self.transform = precomputed, transform

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, item: int) -> tuple[torch.Tensor, str, int]:
        row = int(self.rows[item])
        x = self.inputs[item] if self.precomputed else self.inputs[row]
        if self.transform is not None:
            x = self.transform(x)
        return x, self.captions[row], int(self.caption_ids[row])


class PairCollate:
    """A batch of pairs as the one list :meth:`CLIPPretraining.training_loss` takes: [inputs, tokens, ids]."""

    def __init__(self, tokenizer: Any, max_length: int) -> None:
        from fewlabel.models.tokenizers import TextCollator

        self.text = TextCollator(tokenizer, max_length=max_length)

    def __call__(self, items: list[tuple[torch.Tensor, str, int]]) -> list[Any]:
        inputs = torch.stack([item[0] for item in items])
        return [inputs, self.text([item[1] for item in items]),
                torch.as_tensor([item[2] for item in items], dtype=torch.long)]


def pair_image_features(loaded: LoadedBackbone, indices: np.ndarray,
                        device: torch.device | None) -> torch.Tensor:
    """Frozen image-tower features for each pair in ``indices``: each distinct image is computed (or read from
    the feature cache) once, however many captions it has."""
    from fewlabel.data.pairs import retrieval_images
    from fewlabel.evaluate.frozen import frozen_features

    if len(indices) == 0:
        return torch.zeros(0, loaded.backbone.embed_dim)
    firsts, owner = retrieval_images(loaded.dataset, indices)
    features, _ = frozen_features(loaded, firsts, device)
    return features[torch.as_tensor(owner)]


# --- embedding and scoring ----------------------------------------------------------------------------------------


class PairEncoder:
    """Embeds held-out images and captions with the model being trained (monitor, final metrics)."""

    def __init__(self, method: CLIPPretraining, collate: PairCollate, images: Any, precomputed: bool) -> None:
        self.method, self.collate, self.images, self.precomputed = method, collate, images, precomputed

    @torch.no_grad()
    def images_of(self, rows: np.ndarray, features: torch.Tensor | None, device: torch.device) -> torch.Tensor:
        """Embeddings of the images at pair ``rows`` (``features``: their precomputed tower features)."""
        chunks = []
        for start in range(0, len(rows), ENCODE_BATCH):
            if self.precomputed:
                assert features is not None
                x = features[start : start + ENCODE_BATCH]
            else:
                x = self.images[torch.as_tensor(rows[start : start + ENCODE_BATCH])]
            chunks.append(self.method.encode_image(x.to(device)).float().cpu())
        return torch.cat(chunks) if chunks else torch.zeros(0, self.method.embed_dim)

    @torch.no_grad()
    def texts(self, texts: list[str], device: torch.device) -> torch.Tensor:
        chunks = []
        for start in range(0, len(texts), ENCODE_BATCH):
            batch = {k: v.to(device) for k, v in self.collate.text(texts[start : start + ENCODE_BATCH]).items()}
            chunks.append(self.method.encode_text(batch).float().cpu())
        return torch.cat(chunks) if chunks else torch.zeros(0, self.method.embed_dim)


def score_pairs(encoder: PairEncoder, dataset: Dataset, indices: np.ndarray, features: torch.Tensor | None,
                device: torch.device, templates: list[str] | None = None) -> dict[str, Any]:
    """Retrieval recall@1/5/10 over the pairs ``indices`` (both directions; equal captions count as hits) and,
    with ``templates`` and labels, zero-shot accuracy on their distinct images. ``features``: per pair."""
    from fewlabel.data.pairs import retrieval_images
    from fewlabel.methods.clip import prompt_name, retrieval_recall, zero_shot_classifier

    firsts, owner = retrieval_images(dataset, indices)
    if len(firsts) < 2:
        return {}
    was_training = encoder.method.training
    encoder.method.eval().to(device)
    try:
        first_features = None
        if features is not None:  # per pair -> per distinct image (the first pair of each)
            position = {int(row): i for i, row in enumerate(indices)}
            first_features = features[torch.as_tensor([position[int(row)] for row in firsts])]
        image_emb = encoder.images_of(firsts, first_features, device)
        captions = dataset.extra["captions"]
        text_emb = encoder.texts([captions[i] for i in indices], device)
        result: dict[str, Any] = {"images": len(firsts), "captions": len(indices),
                                  **retrieval_recall(image_emb, text_emb, owner,
                                                     caption_ids=dataset.extra["caption_ids"][indices])}
        labels = dataset.labels[firsts]
        labelled = labels != UNLABELLED
        if templates and dataset.num_classes >= 2 and labelled.any():
            weights = zero_shot_classifier(lambda prompts: encoder.texts(list(prompts), device),
                                           [prompt_name(c) for c in dataset.classes], templates)
            predictions = (image_emb[torch.as_tensor(labelled)] @ weights.T).argmax(dim=1).numpy()
            truth = labels[labelled]
            counts = np.bincount(truth, minlength=dataset.num_classes)
            result["zero_shot"] = {"accuracy": float((predictions == truth).mean()), "images": int(labelled.sum()),
                                   "classes": dataset.num_classes, "templates": list(templates),
                                   "chance": 1.0 / dataset.num_classes,
                                   "majority_class_share": float(counts.max() / counts.sum())}
    finally:
        encoder.method.train(was_training)
    return result


class RetrievalMonitor(Callback):
    """Per epoch: recall@1/5 on the validation pairs (never trained on), logged and kept for metrics.json."""

    def __init__(self, encoder: PairEncoder, dataset: Dataset, indices: np.ndarray,
                 features: torch.Tensor | None) -> None:
        self.encoder, self.dataset, self.indices, self.features = encoder, dataset, indices, features
        self.history: list[dict[str, float]] = []

    def on_train_epoch_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        if not trainer.is_global_zero or len(self.indices) < 2:
            return
        scores = score_pairs(self.encoder, self.dataset, self.indices, self.features, module.device)
        if not scores:
            return
        record = {"epoch": trainer.current_epoch + 1, "loss": float(trainer.callback_metrics.get("ssl_loss_epoch",
                                                                                                  float("nan"))),
                  **{k: v for k, v in scores.items() if "R@" in k and not k.endswith("R@10")}}
        self.history.append(record)
        module.log_dict({f"val_{k}": float(v) for k, v in record.items() if "R@" in k}, rank_zero_only=True)
        log.info("epoch %d: loss %.4f, validation recall@1 image->text %.3f, text->image %.3f", record["epoch"],
                 record["loss"], record["image_to_text_R@1"], record["text_to_image_R@1"])


# --- the run ------------------------------------------------------------------------------------------------------


def pretrain_clip(dataset: Dataset, split: LabelSplit, config: PretrainConfig,
                  resume: ResumePoint | str | Path | None = None) -> RunResult:
    """CLIP / SigLIP / LiT pretraining on the training pairs of ``dataset`` (see the module doc); ``resume``: a run
    folder (or :func:`~fewlabel.approaches.selfsupervised.resume_point`'s answer) to continue."""
    from fewlabel.approaches.selfsupervised import resume_point
    from fewlabel.engine.data import default_workers, make_loader
    from fewlabel.engine.pretraining import PretrainModule
    from fewlabel.engine.trainer import build_trainer, run_device
    from fewlabel.methods.clip import CLIPPretraining
    from fewlabel.modalities import LoadedBackbone, get_modality
    from fewlabel.models.clip_export import image_tower_builder, save_clip_export
    from fewlabel.models.text_encoder import load_text_backbone

    modality = get_modality("image-text")
    modality.check(dataset, f"--method {config.method}")
    if not dataset.extra.get("captions"):
        raise FewlabelError(f"{dataset.name} holds no captions; --method clip needs an image-text table")
    point = resume_point(resume, config) if isinstance(resume, str | Path) else resume
    options = resolve_options(config)
    lock_image, lock_text = options["lock_image"], options["lock_text"]
    image_source, text_source = options["image_backbone"], options["text_backbone"]

    # Everything that can fail on bad input happens before the run folder exists.
    L.seed_everything(config.seed, workers=True, verbose=False)  # initial weights depend on the seed only
    backbone = build_image_tower(image_source, dataset, options["image_size"], config.width)
    builder = image_tower_builder(image_source, backbone.input_spec.channels, config.width)
    text_tower, tokenizer = load_text_backbone(text_source, max_length=options["max_length"], pooling="mean")
    side = backbone.input_spec.size[0]
    working = modality.working_data(dataset, side, cache=config.cache_images, resize_arrays=False)
    channels = working.image_shape[0]
    if lock_image:
        image_tower: nn.Module = FeatureTower(backbone.embed_dim)
    else:
        image_tower = AdaptedImageTower(backbone, channels).to(memory_format=torch.channels_last)
    method = CLIPPretraining(image_tower, text_tower.train(), embed_dim=options["embed_dim"],
                             projection_hidden_dim=options["projection_hidden_dim"], lock_image=lock_image,
                             lock_text=lock_text, loss=options["loss"], init_temperature=options["init_temperature"],
                             gather_distributed=options["gather_distributed"],
                             tower_lr_scale=float(options["tower_lr_scale"]))
    seed = point.seed(config.seed) if point else config.seed
    if point:
        L.seed_everything(seed, workers=True, verbose=False)
    optim = config.optim or DEFAULT_OPTIM
    device = run_device(config.budget.accelerator)
    pool = split.pool  # the training pairs; their labels are never read
    if len(pool) < 2:
        raise FewlabelError(f"{dataset.name}: {len(pool)} training pair(s); contrastive pretraining needs at least 2")

    name = f"pretrain-clip-{dataset.name}-{Path(image_source).name}-{Path(text_source).name}-s{config.seed}"
    run, handler = start_or_resume(point, config.out, name, config.runs_dir, split)
    try:
        towers = {"image": {"source": image_source, "locked": lock_image, "embed_dim": backbone.embed_dim,
                            "input_spec": backbone.input_spec.to_dict()},
                  "text": {"source": text_source, "locked": lock_text, "embed_dim": text_tower.embed_dim,
                           "max_length": text_tower.input_spec.max_length}}
        # The resolved options are the run's method_options: a resumed run rebuilds exactly this model.
        run.write_config({"command": "pretrain", **asdict(config), "method_options": options, "backbone": image_source,
                          "optim": asdict(optim), "dataset": dataset.summary(), "method_hparams": method.hparams,
                          "towers": towers})
        captions, caption_ids = dataset.extra["captions"], np.asarray(dataset.extra["caption_ids"])
        started = time.perf_counter()
        features: dict[str, torch.Tensor | None] = {"pool": None, "val": None, "test": None}
        if lock_image:
            loaded = LoadedBackbone(backbone, working, image_source)
            for part, rows in (("pool", pool), ("val", split.val), ("test", split.test)):
                features[part] = pair_image_features(loaded, rows, device)
            log.info("locked image tower %s: features of %d images in %.1f s (cached for later runs)", image_source,
                     len(np.unique(working.groups[np.concatenate([pool, split.val, split.test])]))
                     if working.groups is not None else len(working), time.perf_counter() - started)
        feature_seconds = time.perf_counter() - started
        inputs = features["pool"] if lock_image else working.samples
        collate = PairCollate(tokenizer, text_tower.input_spec.max_length)
        batch_size = config.batch_size or min(128, max(2, len(pool) // 4))
        workers = config.budget.workers if config.budget.workers is not None else default_workers(not lock_image)
        crops = PairCrops(side, flip=working.flip_invariant) if not lock_image and options["augment_images"] else None
        if crops is not None:
            log.info("image tower augmentation: %s", crops.describe())
        loader = make_loader(PairRows(inputs, pool, captions, caption_ids, precomputed=lock_image, transform=crops),
                             batch_size, shuffle=True, workers=0 if lock_image else workers, drop_last=True,
                             collate_fn=collate)
        encoder = PairEncoder(method, collate, working.samples, precomputed=lock_image)
        monitor = RetrievalMonitor(encoder, working, split.val, features["val"])
        module = PretrainModule(method, optim)
        trainer = build_trainer(run, max_epochs=config.epochs, monitor=None, accelerator=config.budget.accelerator,
                                devices=config.budget.devices, num_nodes=config.budget.num_nodes,
                                precision=config.budget.precision, max_minutes=config.budget.max_minutes,
                                progress=config.budget.progress, extra_callbacks=[monitor],
                                use_distributed_sampler=True)
        trainable = sum(p.numel() for p in method.parameters() if p.requires_grad)
        log.info("CLIP (%s loss) on %d training pairs: image tower %s (%s), text tower %s (%s), %.2f M trainable "
                 "parameters, batch %d, %d epochs", options["loss"], len(pool), image_source,
                 "locked" if lock_image else "trained", text_source, "locked" if lock_text else "trained",
                 trainable / 1e6, batch_size, config.epochs)
        fit_started = time.perf_counter()
        if config.epochs == 0:  # the towers before training (the floor): no step; scored and exported as they are
            log.info("0 epochs: the towers as loaded, joined by untrained projections; nothing is trained")
        else:
            with warnings.catch_warnings():
                # a locked tower stays in eval mode on purpose (BatchNorm statistics and dropout as pretrained)
                warnings.filterwarnings("ignore", r".*module\(s\) in eval mode at the start of training.*")
                if point:  # the run's own folders hold files
                    warnings.filterwarnings("ignore",
                                            ".*(Experiment logs|Checkpoint) directory .* exists and is not empty")
                trainer.fit(module, loader, ckpt_path=str(point.checkpoint) if point else None)
        seconds = time.perf_counter() - fit_started
        scores = score_pairs(encoder, working, split.test, features["test"], device, options["prompts"])
        retrieval = {k: v for k, v in scores.items() if "R@" in k}
        zero_shot = scores.get("zero_shot")
        metrics: dict[str, Any] = {
            "method": config.method,
            "loss": options["loss"],
            "pretrain_seconds": round(seconds, 3),
            "feature_seconds": round(feature_seconds, 3),
            "samples_per_second": round(module.samples_seen / seconds, 1) if seconds > 0 else 0.0,
            "epochs": trainer.current_epoch, "batch_size": batch_size, "pool_size": len(pool),
            "final_loss": float(trainer.callback_metrics.get("ssl_loss_epoch", float("nan"))),
            "logit_scale": method.logit_scale.scale,
            "retrieval": retrieval,
            "test_images": scores.get("images", 0), "test_captions": scores.get("captions", 0),
            "zero_shot_accuracy": zero_shot["accuracy"] if zero_shot else None,
            "zero_shot": zero_shot,
            "towers": towers,
            "val_retrieval": monitor.history,
            "monitor": [], "warnings": [],
            "split": {"seed": split.seed, "pool": len(pool), "val": len(split.val), "test": len(split.test),
                      "by": "image"},
            **({"resumed_after_epochs": point.epochs_done} if point else {}),
        }
        if retrieval:
            log.info("test retrieval (%d images, %d captions): image->text R@1 %.3f R@5 %.3f R@10 %.3f; text->image "
                     "R@1 %.3f R@5 %.3f R@10 %.3f", metrics["test_images"], metrics["test_captions"],
                     *(retrieval[f"{d}_R@{k}"] for d in ("image_to_text", "text_to_image") for k in (1, 5, 10)))
        if zero_shot:
            log.info("zero-shot accuracy on %d test images: %.4f (%d classes, chance %.3f)", zero_shot["images"],
                     zero_shot["accuracy"], zero_shot["classes"], zero_shot["chance"])
        if trainer.is_global_zero:
            data = config.data if not Path(config.data).is_file() else str(Path(config.data).resolve())
            tower = image_tower.backbone if isinstance(image_tower, AdaptedImageTower) else backbone
            save_clip_export(
                run.path / "export", method, tower,
                {"source": image_source, "builder": builder, "trained": not lock_image},
                text_tower, tokenizer,
                {"method": "clip", "dataset": data, "dataset_name": dataset.name, "columns": dict(config.columns),
                 "dataset_fingerprint": dataset.fingerprint(), "seed": config.seed,
                 "image_shape": [channels, side, side], "lock_image": lock_image, "lock_text": lock_text,
                 "loss": options["loss"], "embed_dim": options["embed_dim"], "prompts": options["prompts"],
                 "text": {"source": text_source, "trained": not lock_text}})
            run.write_metrics(metrics)
        log.info("CLIP pretraining done in %.1f s; export in %s", seconds, run.path / "export")
    finally:
        run.detach_log(handler)
    return RunResult(str(run.path), metrics)
