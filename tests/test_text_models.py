from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from transformers import BartConfig, BartModel, BertConfig, BertModel

from fewlabel.errors import FewlabelError
from fewlabel.models.rnn import RNNTextClassifier
from fewlabel.models.text_encoder import TextClassifier, TextEncoderBackbone, frozen_feature_pooling, load_text_backbone
from fewlabel.models.tokenizers import TextCollator, train_wordpiece_tokenizer
from fewlabel.transfer.strategies import apply_strategy

SENTENCES = [
    "the movie was a delight from start to finish",
    "a dull and lifeless film",
    "the cast is great but the plot drags",
    "the film is a delight",
    "the plot is dull",
] * 4


@pytest.fixture(scope="module")
def tokenizer():
    return train_wordpiece_tokenizer(SENTENCES, vocab_size=200, min_frequency=1)


def tiny_bert(vocab_size: int, pooler: bool = True) -> BertModel:
    config = BertConfig(vocab_size=vocab_size, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=32, max_position_embeddings=64)
    return BertModel(config, add_pooling_layer=pooler).eval()


def test_tokenizer_has_bert_specials_and_known_vocab(tokenizer) -> None:
    assert tokenizer.convert_ids_to_tokens([0, 1, 2, 3, 4]) == ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    assert tokenizer.mask_token_id == 4 and tokenizer.pad_token_id == 0
    vocab = tokenizer.get_vocab()
    assert {"the", "movie", "delight", "plot"} <= set(vocab)
    ids = tokenizer("The Movie")["input_ids"]  # lowercased, wrapped in [CLS] ... [SEP]
    assert ids == [2, vocab["the"], vocab["movie"], 3]
    assert tokenizer.convert_ids_to_tokens(tokenizer("zzzq")["input_ids"]) == ["[CLS]", "[UNK]", "[SEP]"]
    assert len(tokenizer) < 200  # the tiny corpus has fewer pieces than the cap
    with pytest.raises(FewlabelError, match="no text"):
        train_wordpiece_tokenizer(["", "  "], vocab_size=50)


def test_tokenizer_training_is_deterministic() -> None:
    """Equally frequent merges abound in a small corpus; the vocabulary must not depend on hash-map order
    (huggingface/tokenizers#1794): same texts, same pieces and ids, run after run and process after process."""
    import subprocess
    import sys

    texts = ["a wonderful heartfelt film", "great acting and a lovely story", "brilliant funny and warm",
             "a dull boring mess", "terrible acting and a weak plot", "tedious and flat", "awful lifeless script"] * 3
    first = train_wordpiece_tokenizer(texts, vocab_size=120, min_frequency=1)
    for _ in range(5):
        assert train_wordpiece_tokenizer(texts, vocab_size=120, min_frequency=1).get_vocab() == first.get_vocab()
    code = ("import json, sys; from fewlabel.models.tokenizers import train_wordpiece_tokenizer as t; "
            "print(json.dumps(t(json.loads(sys.argv[1]), vocab_size=120, min_frequency=1).get_vocab()))")
    other = subprocess.run([sys.executable, "-c", code, json.dumps(texts)], capture_output=True, text=True, check=True)
    assert json.loads(other.stdout) == first.get_vocab()
    assert first.all_special_ids == [1, 3, 0, 2, 4] and first.all_special_tokens == [
        "[UNK]", "[SEP]", "[PAD]", "[CLS]", "[MASK]"]  # the pieces added for training are ordinary tokens
    assert "##e" in first.get_vocab()


def test_collator_shapes_labels_and_augment(tokenizer) -> None:
    collate = TextCollator(tokenizer, max_length=6, augment=str.upper)
    batch = collate([("the film is a delight", 1), ("dull", 0)])
    assert set(batch) == {"input_ids", "attention_mask", "labels"}
    assert batch["input_ids"].shape == (2, 6)  # truncated to max_length
    assert batch["attention_mask"].tolist()[1] == [1, 1, 1, 0, 0, 0]
    assert batch["input_ids"][1, 3:].tolist() == [0, 0, 0]
    assert batch["labels"].tolist() == [1, 0] and batch["labels"].dtype == torch.long
    plain = TextCollator(tokenizer, max_length=32)(["a", "the plot"])
    assert set(plain) == {"input_ids", "attention_mask"}
    assert plain["input_ids"].shape == (2, 4)  # padded to the longest, not to max_length
    with pytest.raises(ValueError, match="all be texts"):
        plain_collate = TextCollator(tokenizer)
        plain_collate(["a", ("b", 1)])


def test_tiny_bert_backbone_shapes_stages_and_pooling(tokenizer) -> None:
    body = tiny_bert(len(tokenizer))
    backbone = TextEncoderBackbone(body, "trained-wordpiece", max_length=32)
    assert backbone.body is body
    assert backbone.embed_dim == 16
    assert backbone.stages == ["embeddings", "encoder.layer.0", "encoder.layer.1"]  # unused pooler removed
    assert body.pooler is None
    assert backbone.input_spec.to_dict() == {"tokenizer": "trained-wordpiece", "max_length": 32}
    for name, _ in backbone.named_parameters():
        assert backbone.stage_of(name) >= 0, name
    assert backbone.stage_of("body.encoder.layer.1.output.dense.weight") == 2

    batch = TextCollator(tokenizer, 32)(["the movie was a delight from start to finish", "dull"])
    with torch.no_grad():
        pooled = backbone(batch)
        hidden = body(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
    assert pooled.shape == (2, 16)
    for row in range(2):
        length = int(batch["attention_mask"][row].sum())
        torch.testing.assert_close(pooled[row], hidden[row, :length].mean(dim=0))
    assert int(batch["attention_mask"][1].sum()) < batch["input_ids"].shape[1]  # row 1 really is padded

    with_pooler = TextEncoderBackbone(tiny_bert(len(tokenizer)), "tok", pooling="pooler")
    assert with_pooler.stages[-1] == "pooler"
    with pytest.raises(FewlabelError, match="unknown text pooling"):
        TextEncoderBackbone(tiny_bert(len(tokenizer)), "tok", pooling="median")


def test_mean_last4_pooling_concatenates_the_masked_means_of_the_last_four_layers(tokenizer) -> None:
    config = BertConfig(vocab_size=len(tokenizer), hidden_size=8, num_hidden_layers=5, num_attention_heads=2,
                        intermediate_size=16, max_position_embeddings=64)
    body = BertModel(config, add_pooling_layer=False).eval()
    backbone = TextEncoderBackbone(body, "tok", pooling="mean-last4")
    assert backbone.embed_dim == 4 * 8
    batch = TextCollator(tokenizer, 32)(["the movie was a delight from start to finish", "dull"])
    with torch.no_grad():
        pooled = backbone(batch)
        states = body(**batch, output_hidden_states=True).hidden_states  # embeddings + 5 layers
    assert len(states) == 6 and pooled.shape == (2, 32)
    length = int(batch["attention_mask"][1].sum())
    for block, layer in enumerate((2, 3, 4, 5)):  # the outputs of layers 2-5, in order
        torch.testing.assert_close(pooled[1, 8 * block:8 * (block + 1)], states[layer][1, :length].mean(dim=0))
    with pytest.raises(FewlabelError, match="at least 4 layers"):
        TextEncoderBackbone(tiny_bert(len(tokenizer), pooler=False), "tok", pooling="mean-last4")
    # The same encoder under another pooling shares its weights; frozen features pick mean-last4 only when
    # the model has four layers.
    mean = backbone.with_pooling("mean")
    assert mean.body is body and mean.embed_dim == 8 and backbone.with_pooling("mean-last4") is backbone
    assert frozen_feature_pooling(body) == "mean-last4"
    assert frozen_feature_pooling(tiny_bert(len(tokenizer), pooler=False)) == "mean"
    # Encoder-decoders (BART) have two stacks of hidden states: plain mean, and a clear error when asked for more.
    bart = BartModel(BartConfig(vocab_size=len(tokenizer), d_model=8, encoder_layers=4, decoder_layers=4,
                                encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=16,
                                decoder_ffn_dim=16, max_position_embeddings=64))
    assert frozen_feature_pooling(bart) == "mean"
    with pytest.raises(FewlabelError, match="encoder-decoder"):
        TextEncoderBackbone(bart, "tok", pooling="mean-last4")


def test_text_classifier_works_with_transfer_strategies(tokenizer) -> None:
    backbone = TextEncoderBackbone(tiny_bert(len(tokenizer), pooler=False), "tok")
    model = TextClassifier(backbone, num_classes=2)
    plan = apply_strategy(model, "partial", trainable=["encoder.layer.1"])
    trainable = {n for n, p in model.backbone.body.named_parameters() if p.requires_grad}
    assert trainable and all(n.startswith("encoder.layer.1.") for n in trainable)
    assert plan.record["trainable_stages"] == ["encoder.layer.1"]
    plan = apply_strategy(model, "partial")  # default: a text encoder's last two layers
    assert plan.record["trainable_default"] == "last:2"
    assert plan.record["trainable_stages"] == ["encoder.layer.0", "encoder.layer.1"]
    plan = apply_strategy(model, "finetune", layer_decay=0.5)
    scales = {g["name"]: g["lr_scale"] for g in plan.param_groups}
    assert scales["stage0:embeddings"] == pytest.approx(0.5**3)
    assert scales["stage2:encoder.layer.1"] == pytest.approx(0.5)
    batch = TextCollator(tokenizer, 16)([("the plot is dull", 0), ("a delight", 1)])
    logits = model(batch)
    assert logits.shape == (2, 2)
    torch.nn.functional.cross_entropy(logits, batch["labels"]).backward()


def test_minilm_loads_offline_from_the_package() -> None:
    backbone, tokenizer = load_text_backbone("all-MiniLM-L6-v2")
    assert backbone.embed_dim == 384
    assert backbone.stages == ["embeddings"] + [f"encoder.layer.{i}" for i in range(6)]
    assert Path(backbone.input_spec.tokenizer, "config.json").is_file()
    batch = TextCollator(tokenizer, 64)(["A wonderful, moving film.", "A boring mess."])
    backbone.eval()
    with torch.no_grad():
        emb = backbone(batch)
        again = load_text_backbone("minilm")[0].eval()(batch)
    assert emb.shape == (2, 384)
    assert torch.isfinite(emb).all()
    torch.testing.assert_close(emb, again)  # pretrained weights, not a random init
    cosine = torch.nn.functional.cosine_similarity(emb[0], emb[1], dim=0)
    assert -1.0 < float(cosine) < 0.99


def test_backbone_errors_are_one_line(tmp_path: Path) -> None:
    with pytest.raises(FewlabelError, match="does not exist"):
        load_text_backbone(str(tmp_path / "nope"))
    with pytest.raises(FewlabelError, match=r"no config\.json"):
        load_text_backbone(str(tmp_path))
    with pytest.raises(FewlabelError, match="cannot load text backbone 'no-such-org/no-such-model'") as info:
        load_text_backbone("no-such-org/no-such-model")
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(("cell", "packed", "pooling"), [("lstm", True, "mean"), ("gru", False, "max"),
                                                         ("lstm", True, "last")])
def test_rnn_classifier_forward_backward(tokenizer, cell: str, packed: bool, pooling: str) -> None:
    torch.manual_seed(0)
    model = RNNTextClassifier(len(tokenizer), num_classes=3, embedding_dim=8, hidden_size=6, num_layers=2,
                              cell=cell, packed=packed, pooling=pooling, dropout=0.0)
    batch = TextCollator(tokenizer, 16)([("the movie was a delight from start to finish", 0), ("dull", 2)])
    logits = model(batch)
    assert logits.shape == (2, 3)
    torch.nn.functional.cross_entropy(logits, batch["labels"]).backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters() if p.requires_grad)


@pytest.mark.parametrize(("cell", "pooling"), [("lstm", "mean"), ("gru", "max"), ("lstm", "last")])
def test_packed_rnn_ignores_padding(tokenizer, cell: str, pooling: str) -> None:
    """A packed RNN never reads padding: a short text gives the same logits alone and padded in a batch."""
    torch.manual_seed(0)
    model = RNNTextClassifier(len(tokenizer), num_classes=3, embedding_dim=8, hidden_size=6, num_layers=2,
                              cell=cell, packed=True, pooling=pooling).eval()
    collate = TextCollator(tokenizer, 16)
    with torch.no_grad():
        alone = model(collate(["dull"]))
        padded = model(collate(["the movie was a delight from start to finish", "dull"]))
    torch.testing.assert_close(alone[0], padded[1])


def test_rnn_rejects_bad_options() -> None:
    with pytest.raises(FewlabelError, match="lstm or gru"):
        RNNTextClassifier(10, 2, cell="rnn")
    with pytest.raises(FewlabelError, match="packed=True"):
        RNNTextClassifier(10, 2, pooling="last", packed=False)
