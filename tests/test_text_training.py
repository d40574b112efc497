"""Text through the same core: BiLSTM from scratch and HF-encoder transfer with every strategy, on tiny data."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import BertConfig, BertModel

from fewlabel.cli import main
from fewlabel.models.tokenizers import train_wordpiece_tokenizer

POSITIVE = ["a wonderful heartfelt film", "great acting and a lovely story", "brilliant funny and warm",
            "a joy to watch", "superb and moving", "delightful clever fun"]
NEGATIVE = ["a dull boring mess", "terrible acting and a weak plot", "tedious and flat", "a waste of time",
            "awful lifeless script", "clumsy dreary failure"]


@pytest.fixture
def reviews_csv(tmp_path: Path) -> Path:
    rng = np.random.default_rng(0)
    rows = []
    for i in range(160):
        positive = i % 2 == 0
        words = list(rng.choice(POSITIVE if positive else NEGATIVE, size=2))
        rows.append({"review": " and ".join(words), "sentiment": "pos" if positive else "neg", "movie": f"m{i // 4}"})
    path = tmp_path / "reviews.csv"
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["review", "sentiment", "movie"])
        writer.writeheader()
        writer.writerows(rows)
    return path


@pytest.fixture
def tiny_encoder(tmp_path: Path) -> Path:
    folder = tmp_path / "tiny-bert"
    tokenizer = train_wordpiece_tokenizer(POSITIVE + NEGATIVE, vocab_size=200, min_frequency=1)
    config = BertConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=64)
    BertModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def test_bilstm_from_scratch_with_text_augmentation(reviews_csv: Path, tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    assert main(["-q", "train", "--data", str(reviews_csv), "--labels", "0.5", "--augment", "deletion",
                 "--epochs", "3", "--workers", "0", "--group-column", "movie", "--out", str(out)]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics["per_class_accuracy"]) == {"neg", "pos"}
    assert (out / "tokenizer" / "tokenizer.json").is_file()
    assert "test accuracy" in capsys.readouterr().out


@pytest.mark.parametrize(("strategy", "extra"), [("feature-extract", []), ("finetune", []),
                                                 ("partial", ["--trainable", "encoder.layer.1"])])
def test_text_transfer_strategies(strategy: str, extra: list[str], reviews_csv: Path, tiny_encoder: Path,
                                  tmp_path: Path) -> None:
    out = tmp_path / strategy
    assert main(["-q", "finetune", "--backbone", str(tiny_encoder), "--strategy", strategy, "--data",
                 str(reviews_csv), "--labels", "0.5", "--epochs", "2", "--workers", "0", *extra,
                 "--out", str(out)]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    record = metrics["transfer"]
    if strategy == "feature-extract":
        assert record["trainable_parameters"] == 32 * 2 + 2
    elif strategy == "partial":
        assert 0 < record["trainable_parameters"] < record["trainable_parameters"] + record["frozen_parameters"]
        assert record["trainable_stages"] == ["encoder.layer.1"]
    else:
        assert record["frozen_parameters"] == 0
    assert 0.0 <= metrics["test_accuracy"] <= 1.0
    if strategy != "feature-extract":  # LP-FT, the learning-rate sweep and the fallback work for text encoders too
        assert metrics["kept"] in ("fine-tuned", "linear probe") and metrics["start"]["probe_c"] > 0
        assert [t["start"] for t in metrics["lr_sweep"]["trials"]] == ["linear probe"] * 3 + ["random head"]
        assert record["batchnorm"] == "none in this backbone"


def test_text_pooling_auto_uses_the_last_four_layers_for_frozen_features(reviews_csv: Path, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    folder = tmp_path / "four-layer-bert"
    tokenizer = train_wordpiece_tokenizer(POSITIVE + NEGATIVE, vocab_size=200, min_frequency=1)
    BertModel(BertConfig(vocab_size=len(tokenizer), hidden_size=16, num_hidden_layers=4, num_attention_heads=2,
                         intermediate_size=32, max_position_embeddings=64)).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    # auto (the default): feature-extract on a 4-layer model pools the last four layers; the head sees 4 x 16.
    for name, extra, pooling, features in [("fe", [], "mean-last4", 4 * 16), ("fe-mean", ["--text-pooling", "mean"],
                                                                         "mean", 16)]:
        out = tmp_path / name
        assert main(["-q", "finetune", "--backbone", str(folder), "--data", str(reviews_csv), "--labels", "0.5",
                     *extra, "--out", str(out)]) == 0
        metrics = json.loads((out / "metrics.json").read_text())
        assert metrics["text_pooling"] == pooling
        assert json.loads((out / "model.json").read_text())["text_pooling"] == pooling  # needed to rebuild it
        assert metrics["transfer"]["trainable_parameters"] == features * 2 + 2
    # LP-FT (the default) pools as feature-extract does, so its first stage is the feature-extract model itself;
    # fine-tuning from a random head (--no-lp-ft) adapts the last layer and keeps plain mean pooling.
    # Its fine-tuning trains the head on the last layer's mean only (the encoder's own pooling: the last 16 of the
    # 64 features), from a probe on those; --no-own-pooling fine-tunes on all 64.
    from safetensors.torch import load_file

    fe = json.loads((tmp_path / "fe" / "metrics.json").read_text())
    fe_head = load_file(tmp_path / "fe" / "model.safetensors")["head.weight"]
    for name, extra, pooling in [("ft", [], "mean-last4"), ("ft-all-columns", ["--no-own-pooling"], "mean-last4"),
                                 ("ft-random-head", ["--no-lp-ft"], "mean")]:
        out = tmp_path / name
        assert main(["-q", "finetune", "--backbone", str(folder), "--strategy", "finetune", "--data", str(reviews_csv),
                     "--labels", "0.5", "--epochs", "1", "--workers", "0", *extra, "--out", str(out)]) == 0
        metrics = json.loads((out / "metrics.json").read_text())
        assert metrics["text_pooling"] == pooling
        if name == "ft-random-head":
            continue
        assert metrics["start"]["test_accuracy"] == fe["test_accuracy"]
        assert metrics["start"]["probe_c"] == fe["probe_c"]
        head = load_file(out / "model.safetensors")["head.weight"]
        if metrics["kept"] == "linear probe":  # the fallback is the probe on all 64 features
            assert torch.equal(head, fe_head)
        if name == "ft":
            assert metrics["start"]["own_pooling_probe"]["columns"] == [48, 64]
            assert metrics["start"]["own_pooling_probe"]["of"] == 64
            trials = metrics["lr_sweep"]["trials"]
            assert len(trials) == 4 and trials[-1]["start"] == "random head"
            if metrics["kept"] == "fine-tuned":  # trained on the own pooling only: the other columns stay zero
                assert torch.count_nonzero(head[:, :48]) == 0 and torch.count_nonzero(head[:, 48:]) > 0
        else:
            assert "own_pooling_probe" not in metrics["start"]
    # The option is for text: on images it is one clear line, not a silently ignored flag.
    assert main(["finetune", "--data", "digits", "--text-pooling", "cls", "--out", str(tmp_path / "img")]) != 0
    assert "applies to text data" in capsys.readouterr().err and not (tmp_path / "img").exists()


def test_text_dataset_split_keeps_groups_apart(reviews_csv: Path) -> None:
    from fewlabel.data import load_dataset, make_split

    dataset = load_dataset(str(reviews_csv), columns={"group": "movie"})
    assert dataset.modality == "text" and dataset.groups is not None
    split = make_split(dataset, seed=0)
    assert not set(dataset.groups[split.test]) & set(dataset.groups[split.pool])


@pytest.mark.parametrize("method", ["mlm", "clm"])
def test_text_pretraining_exports_a_model_finetune_accepts(method: str, reviews_csv: Path, tmp_path: Path,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    from safetensors import safe_open

    from fewlabel.models.text_encoder import load_text_backbone

    pre = tmp_path / method
    tiny = ["--option", "hidden_size=32", "--option", "num_layers=2", "--option", "num_heads=2",
            "--option", "vocab_size=300"]
    assert main(["-q", "pretrain", "--method", method, "--data", str(reviews_csv), "--epochs", "1",
                 "--batch-size", "16", *tiny, "--out", str(pre)]) == 0
    metrics = json.loads((pre / "metrics.json").read_text())
    assert metrics["final_loss"] > 0 and metrics["pool_size"] > 0
    assert (pre / "export" / "config.json").is_file() and (pre / "export" / "tokenizer.json").is_file()
    with safe_open(str(pre / "export" / "model.safetensors"), framework="pt") as handle:
        keys = list(handle.keys())
    assert keys and not [k for k in keys if k.startswith(("cls.", "lm_head"))]  # the body only, no LM head
    backbone, _ = load_text_backbone(pre / "export")
    assert backbone.embed_dim == 32
    assert set(backbone.body.state_dict()) == set(keys)  # every weight used, none newly initialised
    out = tmp_path / f"{method}-ft"
    assert main(["-q", "finetune", "--backbone", str(pre / "export"), "--strategy", "finetune", "--data",
                 str(reviews_csv), "--labels", "0.5", "--epochs", "1", "--workers", "0", "--out", str(out)]) == 0
    assert 0.0 <= json.loads((out / "metrics.json").read_text())["test_accuracy"] <= 1.0


def test_domain_adaptive_pretraining_continues_a_pretrained_encoder(reviews_csv: Path, tiny_encoder: Path,
                                                                   tmp_path: Path) -> None:
    from transformers import BertForMaskedLM

    BertForMaskedLM.from_pretrained(tiny_encoder).save_pretrained(tiny_encoder)  # give the folder an MLM head
    out = tmp_path / "dapt"
    assert main(["-q", "pretrain", "--method", "mlm", "--backbone", str(tiny_encoder), "--data", str(reviews_csv),
                 "--epochs", "1", "--batch-size", "16", "--out", str(out)]) == 0
    assert (out / "export" / "model.safetensors").is_file()


def test_text_method_on_images_is_an_error(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert main(["pretrain", "--method", "mlm", "--data", "digits", "--runs-dir", str(tmp_path)]) == 2
    assert "needs text" in capsys.readouterr().err


def test_compare_runs_end_to_end_on_text(reviews_csv: Path, tiny_encoder: Path, tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "cmp"
    assert main(["-q", "compare", "--data", str(reviews_csv), "--labels", "0.5", "--seeds", "1",
                 "--backbones", str(tiny_encoder), "--out", str(out)]) == 0
    results = [json.loads(p.read_text()) for p in (out / "results").glob("*.json")]
    approaches = {r["job"]["approach"] for r in results}
    assert approaches == {"supervised", "transfer", "pretrain", "probe", "semisupervised"}  # label spreading on text
    assert all(r["test_accuracy"] is not None for r in results if r["job"]["approach"] != "pretrain")
    md = (out / "report.md").read_text()
    assert "self-supervised: mlm+linear" in md and "data augmentation: none" in md and "semi-supervised: " in md


def test_texts_longer_than_the_position_table_are_truncated_to_it(tiny_encoder: Path) -> None:
    from fewlabel.models.text_encoder import load_text_backbone
    from fewlabel.models.tokenizers import TextCollator

    backbone, tokenizer = load_text_backbone(tiny_encoder)  # 64 position embeddings, asked for 128 tokens
    assert backbone.input_spec.max_length == 64
    batch = TextCollator(tokenizer, backbone.input_spec.max_length)([" ".join(POSITIVE * 20), "short"])
    assert batch["input_ids"].shape[1] == 64
    assert backbone(batch).shape == (2, 32)
