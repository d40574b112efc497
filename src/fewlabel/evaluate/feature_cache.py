"""Cached frozen features: each sample's features are computed once per (backbone weights, input spec, data).

The cache is one table per backbone and dataset with a row per sample, so every split, seed and label fraction
reuses the rows already computed and extracts only the missing ones. The key hashes the backbone's weights, so
a different or re-trained backbone never reuses stale features, and the dataset fingerprint, so changed data
never does either.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch

from fewlabel.data.dataset import Dataset
from fewlabel.data.resolve import cache_dir
from fewlabel.engine.run import LOGGER_NAME
from fewlabel.models.backbones import Backbone

log = logging.getLogger(LOGGER_NAME)


def backbone_digest(backbone: Backbone) -> str:
    # The input spec and the pooling (text) decide the features as much as the weights do.
    digest = hashlib.sha256(repr(getattr(backbone, "input_spec", None)).encode())
    digest.update(str(getattr(backbone, "pooling", "")).encode())
    for name, tensor in sorted(backbone.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:20]


def feature_key(backbone: Backbone, dataset: Dataset) -> str:
    digest = hashlib.sha256()
    digest.update(backbone_digest(backbone).encode())
    digest.update(dataset.fingerprint().encode())
    return digest.hexdigest()[:24]


def _read_mask(path: Path, rows: int, warn: bool = False) -> np.ndarray:
    """Which rows of the table hold computed features (all False when absent or unreadable). Only the locked
    writer's read warns about a damaged mask, so one lookup logs it once."""
    try:
        done = np.load(path)
        if done.shape == (rows,) and done.dtype == bool:
            return done
    except (OSError, ValueError, EOFError):
        pass
    if warn and path.exists():
        log.warning("feature cache mask %s is unreadable; recomputing its rows", path)
    return np.zeros(rows, dtype=bool)


def _open_table(path: Path, rows: int, dim: int) -> np.memmap | None:
    """The on-disk (rows, dim) float32 table, memory-mapped so large datasets never load whole into RAM."""
    if not path.is_file():
        return None
    try:
        table = np.load(path, mmap_mode="r+")
        if table.shape == (rows, dim) and table.dtype == np.float32:
            return table
    except (OSError, ValueError, EOFError):
        pass
    log.warning("feature cache %s does not fit this data; rebuilding it", path)
    return None


@contextmanager
def _exclusive(place: Path) -> Iterator[None]:
    """One extracting writer at a time per table (e.g. two compare workers whose jobs need the same features: the
    second waits, then finds the rows done instead of computing them again); readers need no lock, they trust the
    mask."""
    place.mkdir(parents=True, exist_ok=True)
    with open(place / "lock", "a+") as handle:
        try:
            import fcntl
        except ImportError:  # not POSIX: one writer at a time is assumed
            yield
            return
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.info("another process is extracting these features (%s); waiting for it", place)
            fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _store(place: Path, rows: int, missing: np.ndarray, computed: np.ndarray) -> tuple[np.memmap, np.ndarray]:
    """Write computed rows, then the mask that vouches for them (an interrupted write is only recomputed).
    The caller holds :func:`_exclusive`."""
    done = _read_mask(place / "done.npy", rows)  # fresh: another process may have added rows meanwhile
    table = _open_table(place / "features.npy", rows, computed.shape[1]) if done.any() else None
    if table is None:
        done[:] = False
        table = np.lib.format.open_memmap(place / "features.npy", mode="w+", dtype=np.float32,
                                          shape=(rows, computed.shape[1]))
    table[missing] = computed
    table.flush()
    done[missing] = True
    tmp = place / "done.tmp.npy"
    np.save(tmp, done)
    tmp.replace(place / "done.npy")
    return table, done


def _read_rows(place: Path, rows: int, indices: np.ndarray) -> torch.Tensor | None:
    """The cached features of ``indices`` when the mask vouches for all of them and the table reads back."""
    done = _read_mask(place / "done.npy", rows)
    if not (len(indices) and done[indices].all()):
        return None
    try:
        table = np.load(place / "features.npy", mmap_mode="r")
        if table.shape[0] == rows and table.dtype == np.float32:
            return torch.from_numpy(np.array(table[indices]))
    except (OSError, ValueError, EOFError):
        pass
    return None


def cached_features(backbone: Backbone, dataset: Dataset, indices: np.ndarray, folder: Path | None = None,
                    extractor: Callable[[np.ndarray], torch.Tensor] | None = None,
                    device: str | torch.device | None = None) -> tuple[torch.Tensor, bool]:
    """(features of ``indices``, whether all came from the cache). ``extractor`` computes the missing rows
    (a modality's ``feature_extractor``); without one, the dataset's modality builds it for ``backbone``."""
    place = (folder or cache_dir() / "features") / feature_key(backbone, dataset)
    rows = len(dataset.samples)
    indices = np.asarray(indices, dtype=np.int64)
    cached = _read_rows(place, rows, indices)
    if cached is not None:
        return cached, True
    with _exclusive(place):
        cached = _read_rows(place, rows, indices)  # another process may have computed them while we waited
        if cached is not None:
            return cached, True
        done = _read_mask(place / "done.npy", rows, warn=True)
        missing = np.unique(indices[~done[indices]])
        if len(missing) == 0:  # the mask vouches for rows the table could not give back: compute them again
            missing = np.unique(indices)
        if extractor is None:  # the dataset's modality says how (images: batched forward passes on ``device``)
            from fewlabel.modalities import LoadedBackbone, modality_of

            extractor = modality_of(dataset).feature_extractor(LoadedBackbone(backbone, dataset, ""), device)
        computed = extractor(missing)
        table, done = _store(place, rows, missing, computed.detach().cpu().float().numpy())
    if not done[indices].all():  # the table was rebuilt meanwhile: compute what it lost
        return cached_features(backbone, dataset, indices, folder, extractor, device)[0], False
    return torch.from_numpy(np.array(table[indices])), False
