"""Contrastive image-text pretraining (CLIP, Radford et al. 2021; SigLIP, Zhai et al. 2023; LiT, Zhai et al. 2022).

Two towers (any image encoder, any text encoder) are projected into one space where the embedding of an image and
the embedding of its caption should be closer than those of other captions in the batch. The building blocks:

* :func:`clip_loss`: symmetric InfoNCE over the batch (image->text and text->image cross-entropy);
* :func:`siglip_loss`: one independent sigmoid per (image, text) pair, no softmax over the batch;
* :class:`LogitScale`: the learnable inverse temperature, kept within ``[0, log 100]``;
* :class:`ProjectionHead` and :class:`CLIPPretraining`, the model (optionally with a locked tower, LiT);
* :func:`zero_shot_classifier` and :func:`retrieval_recall` for evaluation.

Under data parallelism the losses score each rank's *local* rows against the embeddings gathered from all ranks
(:func:`fewlabel.methods.distributed.gather_with_grad`, open_clip's ``local_loss=True, gather_with_grad=True``):
the mean of the per-rank losses equals the loss of the whole global batch, and on one process it is the plain loss.

Captions repeat in real data ("gramastar" names 171 drawings of openclipart). With ``caption_ids`` (equal ids for
equal captions, see :func:`fewlabel.data.pairs.caption_ids`) pairs with the same caption are not negatives of each
other: CLIP masks those logits off, SigLIP counts them as positives.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fewlabel.errors import FewlabelError
from fewlabel.methods.base import decay_groups
from fewlabel.methods.distributed import gather_no_grad, gather_with_grad, rank, world_size

CLIP_TEMPERATURE = 0.07  # CLIP's initial temperature: logit scale log(1 / 0.07)
SIGLIP_TEMPERATURE = 0.1  # SigLIP's initial temperature (logit scale log 10) ...
SIGLIP_BIAS = -10.0  # ... and bias: most pairs are negatives, so every sigmoid starts near "no match"
MAX_LOGIT_SCALE = 100.0  # CLIP clips the scale at 100: larger values made training unstable

Ids = torch.Tensor | np.ndarray | Sequence[int]


def _check_embeddings(image_emb: torch.Tensor, text_emb: torch.Tensor) -> None:
    if image_emb.ndim != 2 or text_emb.ndim != 2 or image_emb.shape[0] != text_emb.shape[0]:
        raise ValueError(f"expected image and text embeddings (N, D) with one row per pair, got "
                         f"{tuple(image_emb.shape)} and {tuple(text_emb.shape)}")
    if image_emb.shape[1] != text_emb.shape[1]:
        raise ValueError(f"image and text embeddings must share one dimension, got {image_emb.shape[1]} and "
                         f"{text_emb.shape[1]}; project them first")


def _ids_tensor(caption_ids: Ids, length: int, device: torch.device) -> torch.Tensor:
    ids = torch.as_tensor(np.asarray(caption_ids) if not isinstance(caption_ids, torch.Tensor) else caption_ids)
    ids = ids.to(device=device, dtype=torch.long).reshape(-1)
    if len(ids) != length:
        raise ValueError(f"caption_ids has {len(ids)} entries for {length} pairs")
    return ids


def _as_scalar(value: torch.Tensor | float, like: torch.Tensor) -> torch.Tensor:
    return value.to(like.dtype) if isinstance(value, torch.Tensor) else like.new_tensor(float(value))


def _pair_logits(
    image_emb: torch.Tensor, text_emb: torch.Tensor, logit_scale: torch.Tensor | float,
    caption_ids: Ids | None, gather_distributed: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor]:
    """(scaled image->all-texts logits (n, N), text->all-images logits (n, N), target column of each local row,
    same-caption mask (n, N) or None, normalised local image embeddings)."""
    _check_embeddings(image_emb, text_emb)
    image = F.normalize(image_emb, dim=1)
    text = F.normalize(text_emb, dim=1)
    local_n = image.shape[0]
    ids = _ids_tensor(caption_ids, local_n, image.device) if caption_ids is not None else None
    all_image, all_text, all_ids, offset = image, text, ids, 0
    if gather_distributed and world_size() > 1:
        all_image, all_text = gather_with_grad(image), gather_with_grad(text)
        all_ids = gather_no_grad(ids) if ids is not None else None
        offset = rank() * local_n
    scale = _as_scalar(logit_scale, image).exp()
    logits_per_image = scale * image @ all_text.T
    logits_per_text = scale * text @ all_image.T
    targets = torch.arange(local_n, device=image.device) + offset
    same = None
    if ids is not None and all_ids is not None:
        same = ids[:, None] == all_ids[None, :]
    return logits_per_image, logits_per_text, targets, same, image


def clip_loss(
    image_emb: torch.Tensor,
    text_emb: torch.Tensor,
    logit_scale: torch.Tensor | float,
    caption_ids: Ids | None = None,
    gather_distributed: bool = True,
) -> torch.Tensor:
    """CLIP's symmetric InfoNCE: ``(CE(image -> texts) + CE(text -> images)) / 2``, row i of each the same pair.

    Embeddings ``(N, D)`` are L2-normalised here; logits are ``exp(logit_scale) * cosine`` (``logit_scale`` is the
    log of the inverse temperature, a float or a 0-dim tensor that receives gradient). ``caption_ids`` (N,):
    off-diagonal logits between pairs with equal ids are set to ``-inf`` (removed from the softmax), so the same
    caption on another image is not pushed away; each pair's own logit always stays.
    """
    per_image, per_text, targets, same, _ = _pair_logits(image_emb, text_emb, logit_scale, caption_ids,
                                                         gather_distributed)
    if same is not None:
        rows = torch.arange(len(targets), device=targets.device)
        same[rows, targets] = False  # the positive itself is never masked
        per_image = per_image.masked_fill(same, float("-inf"))
        per_text = per_text.masked_fill(same, float("-inf"))
    return (F.cross_entropy(per_image, targets) + F.cross_entropy(per_text, targets)) / 2


def siglip_loss(
    image_emb: torch.Tensor,
    text_emb: torch.Tensor,
    logit_scale: torch.Tensor | float,
    logit_bias: torch.Tensor | float,
    caption_ids: Ids | None = None,
    gather_distributed: bool = True,
) -> torch.Tensor:
    """SigLIP's pairwise sigmoid loss: ``-sum_ij log sigmoid(z_ij * (exp(logit_scale) * cos_ij + logit_bias)) / N``
    with ``z_ij = +1`` for matching pairs and ``-1`` otherwise.

    Each local image is scored against every (gathered) text, so each (image, text) pair of the global batch is
    counted once across ranks. Pairs with equal ``caption_ids`` count as matches (``z = +1``): a caption shared
    by two images describes both.
    """
    per_image, _, targets, same, image = _pair_logits(image_emb, text_emb, logit_scale, caption_ids,
                                                      gather_distributed)
    logits = per_image + _as_scalar(logit_bias, image)
    positive = torch.zeros_like(logits, dtype=torch.bool)
    positive[torch.arange(len(targets), device=targets.device), targets] = True
    if same is not None:
        positive |= same
    signs = positive.to(logits.dtype) * 2 - 1
    return -F.logsigmoid(signs * logits).sum() / image.shape[0]


class LogitScale(nn.Module):
    """The learnable log inverse temperature, started at ``log(1 / init_temperature)`` and kept in ``[0, log 100]``.

    Clamping happens twice, as a safety net: ``forward`` returns the clamped value (a caller never uses a scale above
    100 or below 1), and :meth:`clamp_` clamps the parameter itself, called after every optimiser step (open_clip
    does the same in its training loop) so the raw value cannot drift past a bound, where the forward clamp would
    give it zero gradient and leave it stuck.
    """

    def __init__(self, init_temperature: float = CLIP_TEMPERATURE, max_scale: float = MAX_LOGIT_SCALE,
                 learnable: bool = True) -> None:
        super().__init__()
        if not 0 < init_temperature <= 1:
            raise ValueError(f"init_temperature must lie in (0, 1], got {init_temperature}")
        if max_scale < 1:
            raise ValueError(f"max_scale must be at least 1, got {max_scale}")
        self.max_log_scale = math.log(max_scale)
        initial = min(math.log(1 / init_temperature), self.max_log_scale)
        self.log_scale = nn.Parameter(torch.tensor(initial), requires_grad=learnable)

    def forward(self) -> torch.Tensor:
        return self.log_scale.clamp(0.0, self.max_log_scale)

    @torch.no_grad()
    def clamp_(self) -> None:
        self.log_scale.clamp_(0.0, self.max_log_scale)

    @property
    def scale(self) -> float:
        return math.exp(float(self.forward().detach()))

    @property
    def temperature(self) -> float:
        return 1.0 / self.scale


class ProjectionHead(nn.Sequential):
    """Maps a tower's embedding into the shared space: one bias-free linear layer (CLIP), or with ``hidden_dim`` a
    two-layer MLP ``Linear -> GELU -> Linear`` (more capacity when a locked tower's features need reshaping)."""

    def __init__(self, input_dim: int, output_dim: int = 256, hidden_dim: int | None = None) -> None:
        if hidden_dim is None:
            layers: list[nn.Module] = [nn.Linear(input_dim, output_dim, bias=False)]
        else:
            layers = [nn.Linear(input_dim, hidden_dim), nn.GELU(), nn.Linear(hidden_dim, output_dim)]
        super().__init__(*layers)
        self.input_dim = input_dim
        self.output_dim = output_dim


def _tower_dim(tower: nn.Module, given: int | None, role: str) -> int:
    dim = given if given is not None else getattr(tower, "embed_dim", None)
    if not isinstance(dim, int) or dim < 1:
        raise TypeError(f"the {role} tower needs a positive int attribute `embed_dim`, or pass {role}_dim=")
    return dim


class CLIPPretraining(nn.Module):
    """An image tower and a text tower, each with a projection into one ``embed_dim`` space, and the logit scale
    (plus a bias for SigLIP), trained with :func:`clip_loss` or :func:`siglip_loss`.

    ``image_tower(images)`` maps a float, normalised ``(B, C, H, W)`` batch to ``(B, D_img)``; ``text_tower(batch)``
    maps a tokenizer batch dict (``input_ids``, ``attention_mask``...) to ``(B, D_txt)``. Their dims come from an
    ``embed_dim`` attribute or ``image_dim`` / ``text_dim``. ``lock_image`` (LiT) / ``lock_text`` freeze a tower:
    no gradient, kept in eval mode (BatchNorm statistics and dropout as pretrained) and run without autograd, so
    only the other tower, the projections and the scale learn. Call :meth:`on_train_step_end` after every
    optimiser step (it clamps the logit scale).
    """

    name: ClassVar[str] = "clip"

    def __init__(
        self,
        image_tower: nn.Module,
        text_tower: nn.Module,
        embed_dim: int = 256,
        image_dim: int | None = None,
        text_dim: int | None = None,
        projection_hidden_dim: int | None = None,
        lock_image: bool = False,
        lock_text: bool = False,
        loss: str = "clip",
        init_temperature: float | None = None,
        max_logit_scale: float = MAX_LOGIT_SCALE,
        init_logit_bias: float = SIGLIP_BIAS,
        gather_distributed: bool = True,
        tower_lr_scale: float = 1.0,
    ) -> None:
        super().__init__()
        if loss not in ("clip", "siglip"):
            raise FewlabelError(f"unknown image-text loss {loss!r}; choose clip or siglip")
        if lock_image and lock_text:
            raise FewlabelError("lock_image and lock_text together leave only the projections to train; unlock one")
        if not tower_lr_scale > 0:
            raise FewlabelError(f"tower_lr_scale {tower_lr_scale} is impossible; give a positive factor")
        if init_temperature is None:
            init_temperature = CLIP_TEMPERATURE if loss == "clip" else SIGLIP_TEMPERATURE
        self.image_tower = image_tower
        self.text_tower = text_tower
        self.image_dim = _tower_dim(image_tower, image_dim, "image")
        self.text_dim = _tower_dim(text_tower, text_dim, "text")
        self.embed_dim = embed_dim
        self.image_projection = ProjectionHead(self.image_dim, embed_dim, projection_hidden_dim)
        self.text_projection = ProjectionHead(self.text_dim, embed_dim, projection_hidden_dim)
        self.logit_scale = LogitScale(init_temperature, max_logit_scale)
        self.logit_bias = nn.Parameter(torch.tensor(float(init_logit_bias))) if loss == "siglip" else None
        self.loss = loss
        self.lock_image = lock_image
        self.lock_text = lock_text
        self.gather_distributed = gather_distributed
        self.tower_lr_scale = tower_lr_scale
        self.hparams: dict[str, Any] = {
            "embed_dim": embed_dim, "image_dim": self.image_dim, "text_dim": self.text_dim,
            "projection_hidden_dim": projection_hidden_dim, "lock_image": lock_image, "lock_text": lock_text,
            "loss": loss, "init_temperature": init_temperature, "max_logit_scale": max_logit_scale,
            "init_logit_bias": init_logit_bias if loss == "siglip" else None,
            "gather_distributed": gather_distributed, "tower_lr_scale": tower_lr_scale,
        }
        for tower, locked in ((image_tower, lock_image), (text_tower, lock_text)):
            if locked:
                tower.requires_grad_(False)
                tower.eval()

    def train(self, mode: bool = True) -> CLIPPretraining:
        """As ``nn.Module.train``, but a locked tower stays in eval mode."""
        super().train(mode)
        if self.lock_image:
            self.image_tower.eval()
        if self.lock_text:
            self.text_tower.eval()
        return self

    def _features(self, tower: nn.Module, locked: bool, inputs: Any) -> torch.Tensor:
        if locked:
            with torch.no_grad():
                return tower(inputs)
        return tower(inputs)

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        """L2-normalised, projected image embeddings ``(B, embed_dim)``."""
        features = self._features(self.image_tower, self.lock_image, images)
        return F.normalize(self.image_projection(features), dim=-1)

    def encode_text(self, text_batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """L2-normalised, projected text embeddings ``(B, embed_dim)``."""
        features = self._features(self.text_tower, self.lock_text, text_batch)
        return F.normalize(self.text_projection(features), dim=-1)

    def forward(self, images: torch.Tensor, text_batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """(image embeddings, text embeddings) of a batch of pairs, both normalised ``(B, embed_dim)``."""
        return self.encode_image(images), self.encode_text(text_batch)

    def training_loss(
        self, images: torch.Tensor | Sequence[Any], text_batch: dict[str, torch.Tensor] | None = None,
        caption_ids: Ids | None = None,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Loss of one batch of pairs (row i of ``images`` and of ``text_batch`` belong together) and 0-dim
        tensors to log: ``loss``, ``logit_scale`` (the multiplier), ``temperature``, ``image_to_text_accuracy`` and
        ``text_to_image_accuracy`` (top-1 within the local batch; a text with the same caption id counts as a hit),
        and ``logit_bias`` for SigLIP.

        ``images`` may also be the whole batch as one list ``[images, text_batch]`` or ``[images, text_batch,
        caption_ids]``: the form :class:`fewlabel.engine.pretraining.PretrainModule` passes every method."""
        if text_batch is None:
            if not isinstance(images, list | tuple) or len(images) not in (2, 3):
                raise ValueError("training_loss takes (images, text_batch[, caption_ids]) or one list of them")
            images, text_batch, *rest = images
            caption_ids = rest[0] if rest else caption_ids
        image_emb, text_emb = self(images, text_batch)
        log_scale = self.logit_scale()
        if self.logit_bias is not None:
            loss = siglip_loss(image_emb, text_emb, log_scale, self.logit_bias, caption_ids, self.gather_distributed)
        else:
            loss = clip_loss(image_emb, text_emb, log_scale, caption_ids, self.gather_distributed)
        with torch.no_grad():
            scale = log_scale.detach().exp()
            logs: dict[str, torch.Tensor] = {"loss": loss.detach(), "logit_scale": scale, "temperature": 1 / scale}
            logs.update(batch_accuracy(image_emb.detach(), text_emb.detach(), caption_ids))
            if self.logit_bias is not None:
                logs["logit_bias"] = self.logit_bias.detach().clone()
        return loss, logs

    @torch.no_grad()
    def on_train_step_end(self, step: int = 0, max_steps: int = 0) -> None:
        """After every optimiser step: keep the logit scale within ``[0, log max_logit_scale]``."""
        self.logit_scale.clamp_()

    def optimizer_groups(self) -> list[dict]:
        """Trainable parameters: weights, and biases / norms / the logit scale and bias with ``weight_decay=0``
        (decaying the temperature would pull it toward a scale of 1). With ``tower_lr_scale`` != 1 the towers'
        groups carry it as timm's ``lr_scale``: pretrained towers fine-tune at a fraction of the rate the new
        projections need."""
        if self.tower_lr_scale == 1.0:
            return decay_groups(self)
        towers = nn.ModuleList([self.image_tower, self.text_tower])
        tower_ids = {id(p) for p in towers.parameters()}
        heads = [p for p in self.parameters() if id(p) not in tower_ids]
        groups = [{**group, "lr_scale": self.tower_lr_scale} for group in decay_groups(towers)]
        holder = nn.Module()
        holder.params = nn.ParameterList(heads)
        return groups + decay_groups(holder)

    def pretrained_backbone(self) -> nn.Module:
        """The image tower: what an image classifier (probe, fine-tuning) starts from after pretraining."""
        return self.image_tower


@torch.no_grad()
def batch_accuracy(image_emb: torch.Tensor, text_emb: torch.Tensor, caption_ids: Ids | None = None
                   ) -> dict[str, torch.Tensor]:
    """Top-1 image->text and text->image accuracy within one batch of pairs (0-dim tensors). The prediction is a
    hit when it is the pair's own partner or, with ``caption_ids``, a pair with the same caption."""
    similarity = F.normalize(image_emb.float(), dim=1) @ F.normalize(text_emb.float(), dim=1).T
    n = similarity.shape[0]
    rows = torch.arange(n, device=similarity.device)
    if caption_ids is not None:
        ids = _ids_tensor(caption_ids, n, similarity.device)
        same = ids[:, None] == ids[None, :]
    else:
        same = rows[:, None] == rows[None, :]
    image_to_text = same[rows, similarity.argmax(dim=1)].float().mean()
    text_to_image = same[similarity.argmax(dim=0), rows].float().mean()
    return {"image_to_text_accuracy": image_to_text, "text_to_image_accuracy": text_to_image}


Template = str | Callable[[str], str]
# Zero-shot prompts when none are given: a few phrasings of "a picture of <class>" (prompt ensembling helps even a
# small set: CLIP reports +1.5 points on ImageNet from 80 templates over one).
DEFAULT_TEMPLATES = ("{}", "a drawing of {}.", "an illustration of {}.", "a clip art of {}.", "a photo of {}.")


def parse_templates(values: Sequence[str] | None) -> tuple[str, ...]:
    """Prompt templates from the command line: each value may hold several, ``|``-separated; each needs ``{}``
    where the class name goes. None or empty: :data:`DEFAULT_TEMPLATES`."""
    templates = tuple(t.strip() for value in values or () for t in value.split("|") if t.strip())
    for template in templates:
        if "{}" not in template:
            raise FewlabelError(f"prompt {template!r} has no {{}} for the class name; write e.g. 'a drawing of {{}}'")
    return templates or DEFAULT_TEMPLATES


def prompt_name(class_name: str) -> str:
    """How a class name reads in a prompt: folder-style names ('signs_and_symbols') become words."""
    return " ".join(class_name.replace("_", " ").split())


def _fill(template: Template, class_name: str) -> str:
    if callable(template):
        return template(class_name)
    if "{" not in template:
        raise ValueError(f"template {template!r} has no place for the class name; write e.g. 'a drawing of {{}}.'")
    return template.format(class_name, c=class_name, classname=class_name)


@torch.no_grad()
def zero_shot_classifier(
    text_encode_fn: Callable[[list[str]], torch.Tensor],
    class_names: Sequence[str],
    templates: Sequence[Template],
    texts_per_batch: int = 256,
) -> torch.Tensor:
    """Class weights ``(num_classes, dim)`` for zero-shot classification: each class's prompts (every template
    filled with its name: ``"a drawing of {}."`` or a callable) are encoded, L2-normalised, averaged, and the mean
    renormalised (prompt ensembling, as open_clip's ``build_zero_shot_classifier``). Logits of an image are then
    ``normalised image embedding @ weights.T``."""
    if not class_names or not templates:
        raise ValueError("zero-shot classification needs at least one class name and one template")
    classes_per_batch = max(1, texts_per_batch // len(templates))
    weights = []
    for start in range(0, len(class_names), classes_per_batch):
        chunk = class_names[start : start + classes_per_batch]
        prompts = [_fill(template, name) for name in chunk for template in templates]
        embeddings = text_encode_fn(prompts)
        if embeddings.ndim != 2 or embeddings.shape[0] != len(prompts):
            raise ValueError(f"text_encode_fn returned {tuple(embeddings.shape)} for {len(prompts)} prompts")
        embeddings = F.normalize(embeddings.float(), dim=-1).reshape(len(chunk), len(templates), -1)
        weights.append(F.normalize(embeddings.mean(dim=1), dim=-1))
    return torch.cat(weights)


@torch.no_grad()
def retrieval_recall(
    image_emb: torch.Tensor,
    text_emb: torch.Tensor,
    image_ids_of_texts: Ids,
    ks: Sequence[int] = (1, 5, 10),
    caption_ids: Ids | None = None,
    chunk: int = 1024,
) -> dict[str, float]:
    """Recall@k of cross-modal retrieval on held-out pairs, by cosine similarity.

    ``image_emb`` (I, D): one row per distinct image; ``text_emb`` (T, D): one row per caption;
    ``image_ids_of_texts`` (T,): the row of each caption's image (see :func:`fewlabel.data.pairs.retrieval_images`).
    ``image_to_text_R@k``: share of images (with at least one caption) for which *any* of their captions ranks in
    the top k of all T texts; ``text_to_image_R@k``: share of captions whose image ranks in the top k of all I
    images. With ``caption_ids`` (T,) a text also counts as relevant to every image that has a caption with the
    same id (a caption shared by several images retrieves any of them). Ties count against the query (a collapsed
    model that gives everything one score gets no credit). Returns fractions in [0, 1].
    """
    images = F.normalize(image_emb.float(), dim=1)
    texts = F.normalize(text_emb.float(), dim=1)
    num_images, num_texts = images.shape[0], texts.shape[0]
    owner = _ids_tensor(image_ids_of_texts, num_texts, images.device)
    if num_texts and (owner.min() < 0 or owner.max() >= num_images):
        raise ValueError(f"image_ids_of_texts must index the {num_images} images, got {int(owner.min())}.."
                         f"{int(owner.max())}")
    if caption_ids is not None:
        cid = _ids_tensor(caption_ids, num_texts, images.device)
        _, cid = torch.unique(cid, return_inverse=True)
        has_caption = torch.zeros(num_images, int(cid.max()) + 1 if num_texts else 0, dtype=torch.bool,
                                  device=images.device)
        has_caption[owner, cid] = True

        def relevant(image_rows: torch.Tensor, text_rows: torch.Tensor) -> torch.Tensor:
            return has_caption[image_rows][:, cid[text_rows]]
    else:
        def relevant(image_rows: torch.Tensor, text_rows: torch.Tensor) -> torch.Tensor:
            return image_rows[:, None] == owner[text_rows][None, :]

    all_images = torch.arange(num_images, device=images.device)
    all_texts = torch.arange(num_texts, device=images.device)
    ks = sorted({int(k) for k in ks})
    if not ks or ks[0] < 1:
        raise ValueError(f"ks must be positive, got {ks}")

    def ranks(queries: torch.Tensor, keys: torch.Tensor, hits: torch.Tensor) -> torch.Tensor:
        """Per query: how many non-relevant keys score at least as high as its best relevant key."""
        scores = queries @ keys.T
        best = scores.masked_fill(~hits, float("-inf")).max(dim=1).values
        return ((scores >= best[:, None]) & ~hits).sum(dim=1)

    image_ranks, text_ranks = [], []
    for start in range(0, num_images, chunk):
        rows = all_images[start : start + chunk]
        hits = relevant(rows, all_texts)
        with_caption = hits.any(dim=1)
        image_ranks.append(ranks(images[rows][with_caption], texts, hits[with_caption]))
    for start in range(0, num_texts, chunk):
        rows = all_texts[start : start + chunk]
        image_ranks_t = ranks(texts[rows], images, relevant(all_images, rows).T)
        text_ranks.append(image_ranks_t)
    i2t = torch.cat(image_ranks) if image_ranks else torch.zeros(0)
    t2i = torch.cat(text_ranks) if text_ranks else torch.zeros(0)
    result: dict[str, float] = {}
    for k in ks:
        result[f"image_to_text_R@{k}"] = float((i2t < k).float().mean()) if len(i2t) else float("nan")
        result[f"text_to_image_R@{k}"] = float((t2i < k).float().mean()) if len(t2i) else float("nan")
    return result
