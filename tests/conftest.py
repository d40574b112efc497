"""Shared fixtures: tiny datasets written by the tests themselves, and isolation from the user's cache."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest


@pytest.fixture(autouse=True)
def _isolated_environment(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Never touch the real cache or download anything from a test."""
    monkeypatch.setenv("FEWLABEL_CACHE", str(tmp_path_factory.mktemp("cache")))
    monkeypatch.setenv("FEWLABEL_OFFLINE", "1")
    monkeypatch.delenv("FEWLABEL_DATA", raising=False)
    # compare's local executor picks its worker count from the cores; tests ask for extra workers explicitly.
    monkeypatch.setenv("FEWLABEL_COMPARE_WORKERS", "1")


def write_idx(path: Path, array: np.ndarray, compress: bool = True) -> None:
    """Write ``array`` (uint8) in the IDX format the MNIST family uses."""
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(struct.pack(">I", d) for d in array.shape)
    payload = header + np.ascontiguousarray(array, dtype=np.uint8).tobytes()
    if compress:
        with gzip.open(path, "wb") as handle:
            handle.write(payload)
    else:
        path.write_bytes(payload)


def write_fake_fashion_mnist(folder: Path, n_train: int = 60, n_test: int = 20, seed: int = 0) -> None:
    """Tiny, valid Fashion-MNIST-shaped IDX files: 28x28 images, 10 balanced classes."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        labels = np.arange(n, dtype=np.uint8) % 10
        images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        write_idx(folder / f"{prefix}-images-idx3-ubyte.gz", images)
        write_idx(folder / f"{prefix}-labels-idx1-ubyte.gz", labels)


@pytest.fixture
def tiny_export(tmp_path: Path) -> Path:
    """A pretraining run folder holding a randomly initialised ResNet-small (width 8, 1 channel) export for
    digits: a backbone source for transfer, evaluate and semi-supervised tests."""
    import torch

    from fewlabel.models import BackboneSpec, create_backbone
    from fewlabel.models.export import save_backbone

    torch.manual_seed(0)
    backbone = create_backbone("resnet_small", in_chans=1, width=8)
    save_backbone(backbone, BackboneSpec(name="resnet_small", in_chans=1, width=8), tmp_path / "pre" / "export",
                  method="none", dataset="digits")
    return tmp_path / "pre"


@pytest.fixture
def fake_fashion_mnist(tmp_path: Path) -> Path:
    root = tmp_path / "data"
    write_fake_fashion_mnist(root / "fashion-mnist")
    return root


def save_tiny_bert(folder: Path, texts: list[str], masked_lm: bool = False) -> Path:
    """A 2-layer, 32-wide BERT with a WordPiece tokenizer trained on ``texts``, saved as a Hugging Face folder
    (``masked_lm``: with its masked-LM head, for continued pretraining)."""
    from transformers import BertConfig, BertForMaskedLM, BertModel

    from fewlabel.models.tokenizers import train_wordpiece_tokenizer

    tokenizer = train_wordpiece_tokenizer(texts, vocab_size=200, min_frequency=1)
    config = BertConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=64)
    (BertForMaskedLM if masked_lm else BertModel)(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder
