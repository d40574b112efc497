"""Data loaders over in-memory samples, shared by every training module."""

from __future__ import annotations

import math
import os
from collections.abc import Callable

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset


class IndexedSamples(Dataset):
    """A view of ``samples[indices]`` (with labels when given), applying a per-sample transform."""

    def __init__(
        self,
        samples: torch.Tensor,
        indices: np.ndarray,
        labels: np.ndarray | None = None,
        transform: Callable[[torch.Tensor], object] | None = None,
    ):
        self.samples = samples
        self.indices = torch.as_tensor(np.asarray(indices, dtype=np.int64))
        self.labels = None if labels is None else torch.as_tensor(np.asarray(labels, dtype=np.int64))
        self.transform = transform

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, item: int):
        index = int(self.indices[item])
        sample = self.samples[index]
        if self.transform is not None:
            sample = self.transform(sample)
        if self.labels is None:
            return sample
        return sample, self.labels[index]


def default_workers(has_transform: bool) -> int:
    """Workers only pay off when per-sample augmentation is costly; on small CPUs keep one core for the model."""
    if not has_transform:
        return 0
    cores = os.cpu_count() or 1
    return max(1, min(8, cores - 1))


def auto_batch_size(num_samples: int, maximum: int = 256) -> int:
    """A power of two near 1/8 of the data (at least 16): small labelled sets still get several steps per epoch."""
    target = max(16, min(maximum, num_samples // 8))
    return 2 ** math.floor(math.log2(target))


def make_loader(
    dataset: Dataset, batch_size: int, shuffle: bool, workers: int, drop_last: bool = False,
    collate_fn: Callable | None = None,
) -> DataLoader:
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle,
        collate_fn=collate_fn,
        num_workers=workers,
        persistent_workers=workers > 0,
        drop_last=drop_last and len(dataset) > batch_size,
        pin_memory=torch.cuda.is_available(),
    )


class PairCollator:
    """Adapts a collator that returns a dict with ``labels`` (text) to the ``(inputs, labels)`` pairs the
    training modules take, so images and text share one training loop."""

    def __init__(self, collate: Callable):
        self.collate = collate

    def __call__(self, items):
        batch = self.collate(items)
        labels = batch.pop("labels")
        return batch, labels
