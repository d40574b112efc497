from __future__ import annotations

import pytest
import torch

from fewlabel.errors import FewlabelError
from fewlabel.methods.text_pretraining import (
    IGNORE_INDEX,
    CausalLMCollator,
    MaskedLMCollator,
    build_small_decoder,
    build_small_encoder,
    causal_lm_labels,
    mask_tokens,
)
from fewlabel.models.text_encoder import TextEncoderBackbone
from fewlabel.models.tokenizers import train_wordpiece_tokenizer

CORPUS = [
    "the film is a quiet delight with a warm heart",
    "a dull and lifeless sequel that nobody asked for",
    "the cast shines even when the plot wanders",
    "sharp writing and a great score make it work",
    "too long too loud and far too pleased with itself",
    "an honest small story told with care",
] * 5


@pytest.fixture(scope="module")
def tokenizer():
    return train_wordpiece_tokenizer(CORPUS, vocab_size=300, min_frequency=1)


def test_masking_follows_the_80_10_10_rule(tokenizer) -> None:
    rows, length = 400, 128
    specials = torch.tensor(sorted(set(tokenizer.all_special_ids)))
    ordinary_low = int(max(specials)) + 1
    ids = torch.randint(ordinary_low, len(tokenizer), (rows, length))
    ids[:, 0] = tokenizer.cls_token_id
    lengths = torch.randint(20, length, (rows,))
    positions = torch.arange(length)
    attention = (positions[None] < lengths[:, None]).long()
    ids[torch.arange(rows), lengths - 1] = tokenizer.sep_token_id
    ids[attention == 0] = tokenizer.pad_token_id
    original = ids.clone()

    inputs, labels = mask_tokens(ids, tokenizer, 0.15, generator=torch.Generator().manual_seed(0))
    assert torch.equal(ids, original)  # the input is not modified in place
    selected = labels != IGNORE_INDEX
    maskable = ~torch.isin(ids, specials)
    assert not (selected & ~maskable).any()  # specials and padding are never selected
    assert torch.equal(inputs[~selected], ids[~selected])
    assert torch.equal(labels[selected], ids[selected])  # labels hold the original token
    rate = selected.sum().item() / maskable.sum().item()
    assert 0.14 < rate < 0.16
    n = selected.sum().item()
    masked = (inputs[selected] == tokenizer.mask_token_id).sum().item() / n
    unchanged = (inputs[selected] == ids[selected]).sum().item() / n
    randomised = 1 - masked - unchanged
    assert 0.78 < masked < 0.82
    assert 0.085 < unchanged < 0.115  # includes the rare random draw of the same token
    assert 0.085 < randomised < 0.115
    replacements = inputs[selected & (inputs != ids) & (inputs != tokenizer.mask_token_id)]
    assert not torch.isin(replacements, specials).any()  # random tokens are ordinary tokens


def test_masking_respects_attention_mask_and_is_seeded(tokenizer) -> None:
    ids = torch.full((4, 50), tokenizer.convert_tokens_to_ids("film"))
    attention = torch.ones_like(ids)
    attention[:, 25:] = 0  # e.g. padding with an ordinary id (GPT-style): still never masked
    _, labels = mask_tokens(ids, tokenizer, 0.5, torch.Generator().manual_seed(1), attention_mask=attention)
    assert (labels[:, 25:] == IGNORE_INDEX).all()
    assert (labels[:, :25] != IGNORE_INDEX).any()
    a = mask_tokens(ids, tokenizer, 0.5, torch.Generator().manual_seed(2))
    b = mask_tokens(ids, tokenizer, 0.5, torch.Generator().manual_seed(2))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    with pytest.raises(FewlabelError, match="mlm_probability"):
        mask_tokens(ids, tokenizer, 0.0)


def test_causal_labels_ignore_padding_only() -> None:
    ids = torch.tensor([[5, 6, 7, 0], [5, 0, 0, 0]])
    attention = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]])  # row 2 has a real token with the pad id
    assert causal_lm_labels(ids, attention).tolist() == [[5, 6, 7, -100], [5, 0, -100, -100]]
    assert causal_lm_labels(ids, pad_token_id=0).tolist() == [[5, 6, 7, -100], [5, -100, -100, -100]]


def _train_three_steps(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> list[float]:
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    losses = []
    for _ in range(3):
        loss = model(**batch).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    return losses


def test_tiny_mlm_takes_optimizer_steps(tokenizer) -> None:
    torch.manual_seed(0)
    model = build_small_encoder(len(tokenizer), hidden_size=32, num_layers=2, num_heads=2, max_length=64,
                                dropout=0.0, pad_token_id=tokenizer.pad_token_id)
    collate = MaskedLMCollator(tokenizer, max_length=32, mlm_probability=0.3,
                               generator=torch.Generator().manual_seed(0))
    batch = collate(CORPUS[:6])
    assert set(batch) == {"input_ids", "attention_mask", "labels"}
    assert (batch["labels"] != IGNORE_INDEX).any()
    losses = _train_three_steps(model, batch)
    assert all(torch.isfinite(torch.tensor(losses)))
    assert losses[-1] < losses[0]  # same batch: three steps must reduce its loss
    # The pretrained encoder becomes a fewlabel backbone (the MLM head is dropped).
    backbone = TextEncoderBackbone(model, "trained-wordpiece")
    assert backbone.stages == ["embeddings", "encoder.layer.0", "encoder.layer.1"]
    assert backbone(batch).shape == (6, 32)


def test_tiny_clm_takes_optimizer_steps(tokenizer) -> None:
    torch.manual_seed(0)
    model = build_small_decoder(len(tokenizer), hidden_size=32, num_layers=2, num_heads=2, max_length=64,
                                dropout=0.0, pad_token_id=tokenizer.pad_token_id)
    batch = CausalLMCollator(tokenizer, max_length=32)(CORPUS[:6])
    assert (batch["labels"][batch["attention_mask"] == 0] == IGNORE_INDEX).all()
    losses = _train_three_steps(model, batch)
    assert all(torch.isfinite(torch.tensor(losses)))
    assert losses[-1] < losses[0]
    backbone = TextEncoderBackbone(model, "trained-wordpiece", pooling="last")
    assert backbone.stages == ["wte", "wpe", "h.0", "h.1", "ln_f"]
    assert backbone(batch).shape == (6, 32)


def test_model_shape_is_checked() -> None:
    with pytest.raises(FewlabelError, match="multiple"):
        build_small_encoder(100, hidden_size=30, num_heads=4)


def _varied_texts(count: int) -> list[str]:
    words = " ".join(CORPUS).split()
    rng = torch.Generator().manual_seed(0)
    lengths = torch.randint(3, 40, (count,), generator=rng).tolist()
    starts = torch.randint(0, len(words) - 40, (count,), generator=rng).tolist()
    return [" ".join(words[s : s + n]) for s, n in zip(starts, lengths, strict=True)]


def test_collator_masks_15_percent_of_ordinary_tokens_and_never_padding(tokenizer) -> None:
    collate = MaskedLMCollator(tokenizer, max_length=48, seed=0)
    specials = torch.tensor(sorted(set(tokenizer.all_special_ids)))
    selected_total = maskable_total = 0
    corpus = _varied_texts(800)
    for start in range(0, 800, 32):
        texts = corpus[start : start + 32]
        batch = collate(texts)
        plain = tokenizer(texts, padding=True, truncation=True, max_length=48, return_tensors="pt")
        ids, attention, labels = plain["input_ids"], batch["attention_mask"], batch["labels"]
        assert torch.equal(attention, plain["attention_mask"]) and (attention == 0).any()  # the batch is padded
        selected = labels != IGNORE_INDEX
        assert not (selected & (attention == 0)).any()  # padding is never a target...
        assert (batch["input_ids"][attention == 0] == tokenizer.pad_token_id).all()  # ...nor replaced
        assert not (selected & torch.isin(ids, specials)).any()  # nor are [CLS]/[SEP]
        assert torch.equal(labels[selected], ids[selected])
        maskable = (attention == 1) & ~torch.isin(ids, specials)
        selected_total += int(selected.sum())
        maskable_total += int(maskable.sum())
    assert 0.13 < selected_total / maskable_total < 0.17


def test_collator_masks_are_seeded_and_ignore_the_global_rng(tokenizer) -> None:
    texts = _varied_texts(64)
    one = MaskedLMCollator(tokenizer, max_length=48, seed=5)
    two = MaskedLMCollator(tokenizer, max_length=48, seed=5)
    for i in range(0, 64, 16):
        a = one(texts[i : i + 16])
        torch.manual_seed(100 + i)  # whatever else draws from the global RNG in between
        torch.rand(10)
        b = two(texts[i : i + 16])
        assert torch.equal(a["input_ids"], b["input_ids"]) and torch.equal(a["labels"], b["labels"])
    repeat = one(texts[:16])  # dynamic masking: the same texts get new masks in the next batch
    assert not torch.equal(repeat["labels"], MaskedLMCollator(tokenizer, max_length=48, seed=5)(texts[:16])["labels"])
    other = MaskedLMCollator(tokenizer, max_length=48, seed=6)(texts[:16])
    assert not torch.equal(other["labels"], MaskedLMCollator(tokenizer, max_length=48, seed=5)(texts[:16])["labels"])
    g1 = MaskedLMCollator(tokenizer, generator=torch.Generator().manual_seed(2))(texts)
    g2 = MaskedLMCollator(tokenizer, generator=torch.Generator().manual_seed(2))(texts)
    assert torch.equal(g1["input_ids"], g2["input_ids"]) and torch.equal(g1["labels"], g2["labels"])
    with pytest.raises(FewlabelError, match="mlm_probability"):
        MaskedLMCollator(tokenizer, mlm_probability=1.0)
    with pytest.raises(FewlabelError, match="not both"):
        MaskedLMCollator(tokenizer, seed=1, generator=torch.Generator())


def test_causal_collator_keeps_real_tokens_that_share_the_pad_id(tokenizer) -> None:
    from copy import deepcopy

    texts = ["the film is a quiet delight", "a dull sequel"]
    batch = CausalLMCollator(tokenizer, max_length=32)(texts)
    real = batch["attention_mask"] == 1
    assert torch.equal(batch["labels"][real], batch["input_ids"][real])
    assert (batch["labels"][~real] == IGNORE_INDEX).all() and (~real).any()
    gpt_style = deepcopy(tokenizer)
    gpt_style.pad_token = gpt_style.sep_token  # pads with a token that also ends every text (like GPT-2's eos)
    batch = CausalLMCollator(gpt_style, max_length=32)(texts)
    real = batch["attention_mask"] == 1
    assert (batch["input_ids"][real] == gpt_style.sep_token_id).sum() == 2  # each text's own [SEP]...
    assert torch.equal(batch["labels"][real], batch["input_ids"][real])  # ...stays a target
    assert (batch["labels"][~real] == IGNORE_INDEX).all()
