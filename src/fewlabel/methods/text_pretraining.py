"""Self-supervised text pretraining targets: masked-LM (BERT) dynamic masking and next-token (causal LM) labels,
both by ``transformers.DataCollatorForLanguageModeling``, plus small BERT / GPT-2 models built from configs for
from-scratch, in-domain pretraining.

Masking is *dynamic*: drawn anew for every batch (RoBERTa), so each epoch sees different masked positions.
Labels use ``-100`` wherever no loss is wanted, the ignore index of Hugging Face models' cross-entropy.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch

from fewlabel.errors import FewlabelError

if TYPE_CHECKING:
    from transformers import BertForMaskedLM, GPT2LMHeadModel, PreTrainedTokenizerBase

IGNORE_INDEX = -100


def special_tokens_mask(input_ids: torch.Tensor, tokenizer: PreTrainedTokenizerBase) -> torch.Tensor:
    """True where ``input_ids`` holds a special token ([CLS], [SEP], [PAD], [UNK], [MASK]...): never masked.

    Stricter than the ``special_tokens_mask`` a fast tokenizer returns, which marks only the tokens its template
    adds: an [UNK] or a literal "[MASK]" in the text would otherwise become a prediction target.
    """
    special = torch.tensor(sorted(set(tokenizer.all_special_ids)), dtype=input_ids.dtype, device=input_ids.device)
    return torch.isin(input_ids, special)


def _check_mlm(tokenizer: PreTrainedTokenizerBase, mlm_probability: float) -> None:
    if not 0.0 < mlm_probability < 1.0:
        raise FewlabelError(f"mlm_probability {mlm_probability} must be in (0, 1)")
    if tokenizer.mask_token_id is None:
        raise FewlabelError("masked-LM pretraining needs a tokenizer with a [MASK] token")


def _language_modeling_collator(tokenizer: PreTrainedTokenizerBase, mlm: bool, mlm_probability: float = 0.15,
                                seed: int | None = None, generator: torch.Generator | None = None):
    """``transformers.DataCollatorForLanguageModeling`` (80/10/10 masking, -100 labels, padding).

    Its random numbers come from its own generator: from ``seed`` (offset by the worker id in DataLoader
    workers), else ``generator``, else torch's global RNG.
    """
    from transformers import DataCollatorForLanguageModeling

    collator = DataCollatorForLanguageModeling(tokenizer, mlm=mlm, mlm_probability=mlm_probability if mlm else None,
                                               return_tensors="pt", seed=seed)
    if generator is not None and seed is None:
        collator.generator = generator  # the collator draws every mask from .generator (None: the global RNG)
    return collator


def _redraw_special_replacements(inputs: torch.Tensor, labels: torch.Tensor, tokenizer: PreTrainedTokenizerBase,
                                 generator: torch.Generator | None, ordinary: torch.Tensor | None = None) -> None:
    """The collator's random replacements come from the whole vocabulary; redraw (in place) the few that hit a
    special token other than [MASK] from the ordinary tokens, so the model is never fed a stray [CLS]/[PAD].

    A selected position holds a special token only after such a draw: special tokens are never selected.
    """
    specials = sorted(set(tokenizer.all_special_ids) - {tokenizer.mask_token_id})
    stray = (labels != IGNORE_INDEX) & torch.isin(inputs, torch.tensor(specials, dtype=inputs.dtype))
    count = int(stray.sum())
    if count:
        ordinary = _ordinary_ids(tokenizer) if ordinary is None else ordinary
        picks = torch.randint(len(ordinary), (count,), generator=generator)
        inputs[stray] = ordinary[picks].to(inputs.dtype)


def mask_tokens(
    input_ids: torch.Tensor,
    tokenizer: PreTrainedTokenizerBase,
    mlm_probability: float = 0.15,
    generator: torch.Generator | None = None,
    attention_mask: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """BERT masking of an already padded CPU batch, by ``DataCollatorForLanguageModeling``: select
    ``mlm_probability`` of the ordinary tokens; of those 80% -> [MASK], 10% -> a random ordinary token, 10%
    unchanged. Returns (masked inputs, labels = original id at selected positions, -100 elsewhere). Special tokens
    and padding (also positions with ``attention_mask == 0``) are never selected. ``input_ids`` is not modified.
    """
    _check_mlm(tokenizer, mlm_probability)
    protected = special_tokens_mask(input_ids, tokenizer)
    if attention_mask is not None:
        protected |= attention_mask == 0
    collator = _language_modeling_collator(tokenizer, True, mlm_probability, generator=generator)
    inputs, labels = collator.torch_mask_tokens(input_ids.clone(), special_tokens_mask=protected)
    _redraw_special_replacements(inputs, labels, tokenizer, generator)
    return inputs, labels


def _ordinary_ids(tokenizer: PreTrainedTokenizerBase) -> torch.Tensor:
    special = set(tokenizer.all_special_ids)
    ordinary = torch.tensor([i for i in range(len(tokenizer)) if i not in special], dtype=torch.long)
    if len(ordinary) == 0:
        raise FewlabelError("the tokenizer has only special tokens; train it on some text first")
    return ordinary


def causal_lm_labels(input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                     pad_token_id: int | None = None) -> torch.Tensor:
    """Next-token labels: ``input_ids`` with padding set to -100. Not shifted: HF causal LMs shift internally.

    Padding is found from ``attention_mask`` when given (GPT-2 often pads with its end-of-text token, which must
    stay a real target where it is not padding), otherwise from ``pad_token_id``.
    """
    labels = input_ids.clone()
    if attention_mask is not None:
        labels[attention_mask == 0] = IGNORE_INDEX
    elif pad_token_id is not None:
        labels[input_ids == pad_token_id] = IGNORE_INDEX
    return labels


def _encode(tokenizer: PreTrainedTokenizerBase, texts: Sequence[str], max_length: int,
            with_special_mask: bool = False) -> list[dict[str, list[int]]]:
    """One feature dict per text (unpadded): the examples ``DataCollatorForLanguageModeling`` pads."""
    encoded = tokenizer(list(texts), truncation=True, max_length=max_length, return_token_type_ids=False,
                        return_attention_mask=True)
    special = set(tokenizer.all_special_ids)
    examples = []
    for ids, attention in zip(encoded["input_ids"], encoded["attention_mask"], strict=True):
        example = {"input_ids": ids, "attention_mask": attention}
        if with_special_mask:  # padded with 1 by the tokenizer, so padding is never masked either
            example["special_tokens_mask"] = [int(i in special) for i in ids]
        examples.append(example)
    return examples


class MaskedLMCollator:
    """``collate_fn`` for masked-LM pretraining on raw texts: tokenize, then ``DataCollatorForLanguageModeling``
    pads and masks dynamically per batch (15% of the ordinary tokens by default, 80/10/10).

    Randomness: ``seed`` gives the collator its own generator (seed + worker id inside DataLoader workers), so
    the masks do not depend on what else drew from torch's global RNG; or pass a ``generator``; neither: the
    global RNG.
    """

    def __init__(self, tokenizer: PreTrainedTokenizerBase, max_length: int = 128, mlm_probability: float = 0.15,
                 generator: torch.Generator | None = None, seed: int | None = None):
        _check_mlm(tokenizer, mlm_probability)
        if generator is not None and seed is not None:
            raise FewlabelError("give the masked-LM collator a seed or a generator, not both")
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.mlm_probability = mlm_probability
        self.collator = _language_modeling_collator(tokenizer, True, mlm_probability, seed=seed, generator=generator)
        self._ordinary = _ordinary_ids(tokenizer)

    def __call__(self, texts: Sequence[str]) -> dict[str, torch.Tensor]:
        batch = self.collator(_encode(self.tokenizer, texts, self.max_length, with_special_mask=True))
        _redraw_special_replacements(batch["input_ids"], batch["labels"], self.tokenizer, self.collator.generator,
                                     self._ordinary)
        return {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"], "labels": batch["labels"]}


class CausalLMCollator:
    """``collate_fn`` for next-token pretraining on raw texts: tokenize, then ``DataCollatorForLanguageModeling``
    (``mlm=False``) pads and labels every token, padding -100."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase, max_length: int = 128):
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.collator = _language_modeling_collator(tokenizer, False)

    def __call__(self, texts: Sequence[str]) -> dict[str, torch.Tensor]:
        batch = self.collator(_encode(self.tokenizer, texts, self.max_length))
        # The collator finds padding by its id; a tokenizer that pads with a real token (GPT-2's end-of-text)
        # would lose that token's real targets, so positions the attention mask marks as real stay targets.
        real = batch["attention_mask"] == 1
        labels = batch["labels"]
        labels[real] = batch["input_ids"][real]
        return {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"], "labels": labels}


def build_small_encoder(vocab_size: int, hidden_size: int = 256, num_layers: int = 4, num_heads: int = 4,
                        intermediate_size: int | None = None, max_length: int = 512, dropout: float = 0.1,
                        pad_token_id: int = 0) -> BertForMaskedLM:
    """A small BERT with an MLM head, for pretraining from scratch on in-domain text (few-label regimes rarely
    have enough text for a base-sized model)."""
    from transformers import BertConfig, BertForMaskedLM

    _check_shape(hidden_size, num_heads)
    config = BertConfig(
        vocab_size=vocab_size, hidden_size=hidden_size, num_hidden_layers=num_layers, num_attention_heads=num_heads,
        intermediate_size=intermediate_size or 4 * hidden_size, max_position_embeddings=max_length,
        hidden_dropout_prob=dropout, attention_probs_dropout_prob=dropout, pad_token_id=pad_token_id,
    )
    return BertForMaskedLM(config)


def build_small_decoder(vocab_size: int, hidden_size: int = 256, num_layers: int = 4, num_heads: int = 4,
                        max_length: int = 512, dropout: float = 0.1, pad_token_id: int = 0,
                        bos_token_id: int | None = None, eos_token_id: int | None = None) -> GPT2LMHeadModel:
    """A small GPT-2 with an LM head, for next-token pretraining from scratch on in-domain text."""
    from transformers import GPT2Config, GPT2LMHeadModel

    _check_shape(hidden_size, num_heads)
    config = GPT2Config(
        vocab_size=vocab_size, n_embd=hidden_size, n_layer=num_layers, n_head=num_heads, n_positions=max_length,
        resid_pdrop=dropout, embd_pdrop=dropout, attn_pdrop=dropout, pad_token_id=pad_token_id,
        bos_token_id=bos_token_id, eos_token_id=eos_token_id,  # GPT-2's defaults (50256) exceed a small vocab
    )
    return GPT2LMHeadModel(config)


def _check_shape(hidden_size: int, num_heads: int) -> None:
    if hidden_size <= 0 or num_heads <= 0 or hidden_size % num_heads:
        raise FewlabelError(f"hidden size {hidden_size} must be a positive multiple of the {num_heads} attention heads")
