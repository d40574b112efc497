"""Self-supervised text pretraining targets: masked-LM (BERT) dynamic masking and next-token (causal LM) labels,
plus small BERT / GPT-2 models built from configs for from-scratch, in-domain pretraining.

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
    """True where ``input_ids`` holds a special token ([CLS], [SEP], [PAD], ...): these are never masked."""
    special = torch.tensor(sorted(set(tokenizer.all_special_ids)), dtype=input_ids.dtype, device=input_ids.device)
    return torch.isin(input_ids, special)


def mask_tokens(
    input_ids: torch.Tensor,
    tokenizer: PreTrainedTokenizerBase,
    mlm_probability: float = 0.15,
    generator: torch.Generator | None = None,
    attention_mask: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """BERT masking: select ``mlm_probability`` of the ordinary tokens; of those 80% -> [MASK], 10% -> a random
    ordinary token, 10% unchanged. Returns (masked inputs, labels = original id at selected positions, -100
    elsewhere). Special tokens and padding (also positions with ``attention_mask == 0``) are never selected.

    The random replacements are drawn from ordinary tokens only, so the model is never fed a stray [CLS]/[PAD].
    ``input_ids`` is not modified.
    """
    if not 0.0 < mlm_probability < 1.0:
        raise FewlabelError(f"mlm_probability {mlm_probability} must be in (0, 1)")
    if tokenizer.mask_token_id is None:
        raise FewlabelError("masked-LM pretraining needs a tokenizer with a [MASK] token")
    device = input_ids.device
    protected = special_tokens_mask(input_ids, tokenizer)
    if attention_mask is not None:
        protected |= attention_mask == 0
    probabilities = torch.full(input_ids.shape, mlm_probability, device=device)
    probabilities.masked_fill_(protected, 0.0)
    selected = torch.bernoulli(probabilities, generator=generator).bool()
    labels = input_ids.clone()
    labels[~selected] = IGNORE_INDEX
    inputs = input_ids.clone()
    to_mask = torch.bernoulli(torch.full(input_ids.shape, 0.8, device=device), generator=generator).bool() & selected
    inputs[to_mask] = tokenizer.mask_token_id
    # Half of the remaining 20% (i.e. 10% of the selected) get a random token; the last 10% stay unchanged.
    to_random = (torch.bernoulli(torch.full(input_ids.shape, 0.5, device=device), generator=generator).bool()
                 & selected & ~to_mask)
    ordinary = _ordinary_ids(tokenizer, device)
    picks = torch.randint(len(ordinary), input_ids.shape, generator=generator, device=device)
    inputs[to_random] = ordinary[picks][to_random].to(inputs.dtype)
    return inputs, labels


def _ordinary_ids(tokenizer: PreTrainedTokenizerBase, device: torch.device) -> torch.Tensor:
    special = set(tokenizer.all_special_ids)
    ordinary = torch.tensor([i for i in range(len(tokenizer)) if i not in special], dtype=torch.long, device=device)
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


class MaskedLMCollator:
    """``collate_fn`` for masked-LM pretraining on raw texts: tokenize, pad, then mask dynamically per batch."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase, max_length: int = 128, mlm_probability: float = 0.15,
                 generator: torch.Generator | None = None):
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.mlm_probability = mlm_probability
        self.generator = generator

    def __call__(self, texts: Sequence[str]) -> dict[str, torch.Tensor]:
        encoded = self.tokenizer(list(texts), padding=True, truncation=True, max_length=self.max_length,
                                 return_tensors="pt", return_token_type_ids=False)
        inputs, labels = mask_tokens(encoded["input_ids"], self.tokenizer, self.mlm_probability, self.generator,
                                     encoded["attention_mask"])
        return {"input_ids": inputs, "attention_mask": encoded["attention_mask"], "labels": labels}


class CausalLMCollator:
    """``collate_fn`` for next-token pretraining on raw texts: tokenize, pad, and label every real token."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase, max_length: int = 128):
        self.tokenizer = tokenizer
        self.max_length = max_length

    def __call__(self, texts: Sequence[str]) -> dict[str, torch.Tensor]:
        encoded = self.tokenizer(list(texts), padding=True, truncation=True, max_length=self.max_length,
                                 return_tensors="pt", return_token_type_ids=False)
        return {"input_ids": encoded["input_ids"], "attention_mask": encoded["attention_mask"],
                "labels": causal_lm_labels(encoded["input_ids"], encoded["attention_mask"])}


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
