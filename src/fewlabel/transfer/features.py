"""Cached frozen features: computed once per (backbone weights, input spec, data, indices), reused after.

The key hashes the backbone's weights, so a different or re-trained backbone never reuses stale features,
and the dataset fingerprint, so changed data never does either.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from fewlabel.data.dataset import Dataset
from fewlabel.data.resolve import cache_dir
from fewlabel.engine.run import LOGGER_NAME
from fewlabel.evaluate.features import extract_features
from fewlabel.models.backbones import Backbone

log = logging.getLogger(LOGGER_NAME)


def backbone_digest(backbone: Backbone) -> str:
    digest = hashlib.sha256(repr(getattr(backbone, "input_spec", None)).encode())
    for name, tensor in sorted(backbone.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:20]


def feature_key(backbone: Backbone, dataset: Dataset, indices: np.ndarray) -> str:
    digest = hashlib.sha256()
    digest.update(backbone_digest(backbone).encode())
    digest.update(dataset.fingerprint().encode())
    digest.update(np.ascontiguousarray(indices, dtype=np.int64).tobytes())
    return digest.hexdigest()[:24]


def cached_features(backbone: Backbone, dataset: Dataset, indices: np.ndarray, folder: Path | None = None,
                    batch_size: int = 256,
                    extractor: Callable[[np.ndarray], torch.Tensor] | None = None) -> tuple[torch.Tensor, bool]:
    """(features, whether they came from the cache). ``extractor`` computes features of indices for
    non-image data (e.g. text through its tokenizer); images use :func:`extract_features`."""
    folder = folder or cache_dir() / "features"
    path = folder / f"{feature_key(backbone, dataset, indices)}.pt"
    if path.is_file():
        try:
            return torch.load(path, weights_only=True), True
        except (OSError, RuntimeError, EOFError):
            log.warning("feature cache %s is unreadable; recomputing", path)
    if extractor is not None:
        features = extractor(indices)
    else:
        features = extract_features(backbone, dataset.samples, indices, batch_size=batch_size)
    folder.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save(features, tmp)
    tmp.replace(path)
    return features, False
