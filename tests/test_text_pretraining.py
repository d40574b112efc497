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
from fewlabel.models.text import TextEncoderBackbone, train_wordpiece_tokenizer

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
