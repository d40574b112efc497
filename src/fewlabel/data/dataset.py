"""The one dataset type every part of fewlabel consumes.

A dataset is a set of samples with optional labels (``-1`` = unlabelled), optional groups (samples of one
group never straddle train and test, e.g. reviews of one movie) and a modality. Image samples behave like one
``uint8`` tensor ``(N, C, H, W)``: the embedded and benchmark sets hold such a tensor in memory (it keeps
augmentation fast), while image folders are indexed files decoded on access at the run's working size
(:mod:`fewlabel.data.image_files`), so a folder of photos never has to fit in memory.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch

Modality = Literal["image", "text", "audio", "image-text"]
UNLABELLED = -1


@dataclass
class Dataset:
    """Samples + labels (+ groups) of one modality.

    ``official_test`` marks samples of an upstream test set (e.g. Fashion-MNIST's 10k); when it is absent a
    stratified test split is drawn by :func:`fewlabel.data.splits.make_split`. ``official_val`` likewise marks an
    upstream validation set (e.g. Speech Commands' ``validation_list.txt``), used as is instead of a drawn one.
    Audio samples are an ``int16`` tensor ``(N, num_samples)`` at ``extra["sample_rate"]`` (see
    :mod:`fewlabel.data.audio`). Image-text pairs (``"image-text"``) hold one image row per (image, caption) pair,
    the captions in ``extra["captions"]`` and the image id in ``groups`` (see :mod:`fewlabel.data.pairs`).
    """

    name: str
    modality: Modality
    samples: Any
    labels: np.ndarray
    classes: list[str]
    source: str = ""
    groups: np.ndarray | None = None
    official_test: np.ndarray | None = None
    flip_invariant: bool = True
    extra: dict[str, Any] = field(default_factory=dict)
    official_val: np.ndarray | None = None

    def __post_init__(self) -> None:
        self.labels = np.asarray(self.labels, dtype=np.int64)
        if len(self.labels) != len(self):
            raise ValueError(f"{self.name}: {len(self)} samples but {len(self.labels)} labels")
        if self.official_test is not None:
            self.official_test = np.asarray(self.official_test, dtype=bool)
        if self.official_val is not None:
            self.official_val = np.asarray(self.official_val, dtype=bool)

    def __len__(self) -> int:
        return len(self.samples)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(channels, height, width) of an image (or image-text pair) dataset."""
        if self.modality not in ("image", "image-text"):
            raise ValueError(f"{self.name} is a {self.modality} dataset, not an image dataset")
        return tuple(self.samples.shape[1:])  # type: ignore[return-value]

    def fingerprint(self) -> str:
        """A short hash of what identifies the data: name, size and labels (used to validate saved splits).

        A copy resized for a run (``at_working_size``) keeps the fingerprint of the data it was made from."""
        if self.extra.get("data_fingerprint"):
            return str(self.extra["data_fingerprint"])
        digest = hashlib.sha256()
        digest.update(f"{self.name}|{len(self)}|{self.modality}".encode())
        digest.update(np.ascontiguousarray(self.labels).tobytes())
        files_print = self.extra.get("fingerprint") or getattr(self.samples, "fingerprint", None)
        if isinstance(files_print, str):  # indexed files: their names, sizes and modification times
            digest.update(files_print.encode())
        elif self.modality in ("image", "audio") and isinstance(self.samples, torch.Tensor):
            # A strided sample of pixels (or audio samples) catches different data with the same labels, cheaply.
            flat = self.samples.reshape(len(self), -1)
            digest.update(flat[:: max(1, len(self) // 512), ::7].contiguous().numpy().tobytes())
        return digest.hexdigest()[:16]

    def class_counts(self) -> dict[str, int]:
        labelled = self.labels[self.labels != UNLABELLED]
        counts = np.bincount(labelled, minlength=self.num_classes)
        return {name: int(c) for name, c in zip(self.classes, counts, strict=True)}

    def summary(self) -> dict[str, Any]:
        info: dict[str, Any] = {
            "name": self.name,
            "modality": self.modality,
            "samples": len(self),
            "labelled": int((self.labels != UNLABELLED).sum()),
            "classes": self.num_classes,
            "source": self.source,
        }
        if self.modality in ("image", "image-text"):
            info["shape"] = list(self.image_shape)
        if self.modality == "audio":
            info["shape"] = list(self.samples.shape[1:])
            info["noise_recordings"] = len(self.extra.get("noise") or ())
        for key in ("working_size", "image_cache", "skipped_bad", "sample_rate", "clip_seconds", "audio_cache"):
            if self.extra.get(key) is not None:
                info[key] = self.extra[key]
        if self.official_test is not None:
            info["official_test"] = int(self.official_test.sum())
        if self.official_val is not None:
            info["official_val"] = int(self.official_val.sum())
        return info
