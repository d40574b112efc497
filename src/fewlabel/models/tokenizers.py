"""Tokenizers for text trained here, and the collate function that turns texts into model batches."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any

import torch

from fewlabel.errors import FewlabelError

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase, PreTrainedTokenizerFast

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")


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
