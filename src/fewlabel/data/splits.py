"""Train / validation / test splits and nested, stratified, seeded label fractions.

``make_split`` fixes, for one seed, which samples are test, validation and the training pool, and ranks every
pool sample within its class by a seeded permutation. A label request (``0.01``, ``10%``, ``10/class``) then
takes the first ``k_c`` ranked samples of each class, so a smaller request is always inside a larger one
(the 1% set is inside the 10% set) and every approach sees exactly the same labelled subset.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from sklearn.model_selection import GroupShuffleSplit, train_test_split

from fewlabel.data.dataset import UNLABELLED, Dataset
from fewlabel.errors import FewlabelError


@dataclass(frozen=True)
class LabelRequest:
    """How many labels to use: a fraction of each class, or a fixed count per class."""

    fraction: float | None = None
    per_class: int | None = None

    @classmethod
    def parse(cls, text: str | float) -> LabelRequest:
        raw = str(text).strip()
        match = re.fullmatch(r"(\d+)\s*/\s*class", raw)
        if match:
            count = int(match.group(1))
            if count < 1:
                raise FewlabelError(f"--labels {raw}: need at least 1 labelled example per class")
            return cls(per_class=count)
        try:
            value = float(raw[:-1]) / 100.0 if raw.endswith("%") else float(raw)
        except ValueError:
            raise FewlabelError(
                f"--labels {raw!r} is not understood; use a fraction (0.01, 0.1, 1.0), a percentage (10%) "
                "or a count per class (10/class)"
            ) from None
        if not (0.0 < value <= 1.0) or math.isnan(value):
            raise FewlabelError(f"--labels {raw}: a label fraction must be in (0, 1]; e.g. 0.01, 0.1 or 1.0")
        return cls(fraction=value)

    def count_for(self, available: int) -> int:
        """Labelled examples to take from a class with ``available`` pool samples (at least one)."""
        if self.per_class is not None:
            return min(self.per_class, available)
        assert self.fraction is not None
        return min(available, max(1, round(self.fraction * available)))

    def __str__(self) -> str:
        if self.per_class is not None:
            return f"{self.per_class}/class"
        text = f"{self.fraction:g}"
        return text if "." in text or "e" in text else f"{text}.0"  # "1.0", not "1"

    @property
    def slug(self) -> str:
        return f"{self.per_class}pc" if self.per_class is not None else f"{self.fraction:g}"


@dataclass(frozen=True)
class LabelSplit:
    """A fixed test / validation / training-pool split plus a seeded per-class ranking of the pool."""

    seed: int
    fingerprint: str
    num_classes: int
    pool: np.ndarray  # indices of the training pool (labelled ones first get ranks)
    pool_rank: np.ndarray  # rank of each pool sample within its class; -1 for unlabelled samples
    val: np.ndarray
    val_rank: np.ndarray
    test: np.ndarray

    def labelled(self, request: LabelRequest, labels: np.ndarray) -> np.ndarray:
        """Indices of the labelled training subset for ``request`` (sorted)."""
        return self._take(self.pool, self.pool_rank, request, labels)

    def unlabelled(self, request: LabelRequest, labels: np.ndarray) -> np.ndarray:
        """The rest of the training pool (including samples that never had labels)."""
        chosen = self.labelled(request, labels)
        return np.setdiff1d(self.pool, chosen)

    def validation(self, request: LabelRequest | None, labels: np.ndarray, min_per_class: int = 5) -> np.ndarray:
        """Validation indices: all of them, or the same label budget as training (at least ``min_per_class``).

        Scaling validation with the label budget keeps low-label results honest: a user with 1% of labels
        does not have a large labelled validation set for early stopping either.
        """
        if request is None:
            return np.sort(self.val)
        return self._take(self.val, self.val_rank, request, labels, min_per_class)

    def _take(
        self, indices: np.ndarray, ranks: np.ndarray, request: LabelRequest, labels: np.ndarray, minimum: int = 1
    ) -> np.ndarray:
        if len(indices) == 0:
            return indices
        pool_labels = labels[indices]
        keep = np.zeros(len(indices), dtype=bool)
        for cls in range(self.num_classes):
            in_class = pool_labels == cls
            available = int(in_class.sum())
            if available == 0:
                continue
            count = min(available, max(minimum, request.count_for(available)))
            keep |= in_class & (ranks < count)
        return np.sort(indices[keep])

    def check_request(self, request: LabelRequest, labels: np.ndarray) -> None:
        """Refuse requests that cannot be honoured, e.g. fewer labelled examples than classes."""
        pool_labels = labels[self.pool]
        labelled = pool_labels[pool_labels != UNLABELLED]
        total = len(labelled)
        present = np.unique(labelled)
        if len(present) < 2:
            raise FewlabelError(
                f"the training data has labelled examples of {len(present)} class{'es' if len(present) != 1 else ''}"
                "; a classifier needs at least two classes: add examples of another class (or check the label "
                "column)")
        if request.fraction is not None and request.fraction * total < self.num_classes:
            raise FewlabelError(
                f"--labels {request} keeps {request.fraction * total:.1f} of {total} training examples, fewer than "
                f"the {self.num_classes} classes; ask for at least {self.num_classes / total:.3g} or use N/class"
            )

    def save(self, path: str | Path) -> None:
        path = Path(path)
        np.savez_compressed(
            path,
            seed=self.seed,
            fingerprint=self.fingerprint,
            num_classes=self.num_classes,
            pool=self.pool,
            pool_rank=self.pool_rank,
            val=self.val,
            val_rank=self.val_rank,
            test=self.test,
        )

    @classmethod
    def load(cls, path: str | Path, dataset: Dataset | None = None) -> LabelSplit:
        path = Path(path)
        if path.is_dir():
            path = path / "split.npz"
        try:
            with np.load(path, allow_pickle=False) as data:
                split = cls(
                    seed=int(data["seed"]),
                    fingerprint=str(data["fingerprint"]),
                    num_classes=int(data["num_classes"]),
                    pool=data["pool"],
                    pool_rank=data["pool_rank"],
                    val=data["val"],
                    val_rank=data["val_rank"],
                    test=data["test"],
                )
        except (OSError, KeyError, ValueError) as exc:
            raise FewlabelError(f"cannot read split {path}: {exc}; pass a run folder or its split.npz") from None
        if dataset is not None and split.fingerprint != dataset.fingerprint():
            raise FewlabelError(f"split {path} was made for different data than '{dataset.name}'; use the same dataset")
        return split

    def sizes(self, request: LabelRequest, labels: np.ndarray) -> dict[str, int]:
        return {
            "labelled": len(self.labelled(request, labels)),
            "unlabelled": len(self.unlabelled(request, labels)),
            "val": len(self.validation(request, labels)),
            "val_pool": len(self.val),
            "test": len(self.test),
        }

    def describe(self, request: LabelRequest, labels: np.ndarray) -> str:
        return json.dumps({"seed": self.seed, "labels": str(request), **self.sizes(request, labels)})


def _class_ranks(labels: np.ndarray, rng: np.random.Generator, num_classes: int) -> np.ndarray:
    """Rank each sample within its class by a random permutation; unlabelled samples get -1."""
    ranks = np.full(len(labels), -1, dtype=np.int64)
    for cls in range(num_classes):
        members = np.flatnonzero(labels == cls)
        ranks[members[rng.permutation(len(members))]] = np.arange(len(members))
    return ranks


def _holdout(
    candidates: np.ndarray, dataset: Dataset, fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Split labelled ``candidates`` into (keep, held out), by group when the dataset has groups."""
    if fraction <= 0:
        return candidates, candidates[:0]
    labels = dataset.labels[candidates]
    if dataset.groups is not None:
        splitter = GroupShuffleSplit(n_splits=1, test_size=fraction, random_state=seed)
        keep, held = next(splitter.split(candidates, labels, dataset.groups[candidates]))
        return candidates[keep], candidates[held]
    counts = np.bincount(labels, minlength=dataset.num_classes)
    stratify = labels if counts[counts > 0].min() >= 2 else None
    held_count = math.ceil(fraction * len(candidates))  # what scikit-learn takes for a float test_size
    if stratify is not None:
        # A handful of examples: still one per class on each side (scikit-learn refuses a smaller stratified
        # hold-out), else an unstratified draw.
        present = int((counts > 0).sum())
        held_count = max(held_count, present)
        if len(candidates) - held_count < present:
            stratify = None
    keep, held = train_test_split(candidates, test_size=held_count, random_state=seed, stratify=stratify)
    return np.sort(keep), np.sort(held)


def make_split(dataset: Dataset, seed: int = 0, test_fraction: float = 0.2, val_fraction: float = 0.1) -> LabelSplit:
    """Split ``dataset`` for ``seed``. An official test set is used as is; otherwise ``test_fraction`` is held out.
    An official validation set (``dataset.official_val``) is likewise used as is instead of ``val_fraction``.

    The test split does not depend on ``seed`` (seed 0 is used for it) so results across seeds are measured on
    the same test set; validation (unless official) and the label ranking do depend on it.
    """
    labels = dataset.labels
    labelled = np.flatnonzero(labels != UNLABELLED)
    never_labelled = np.flatnonzero(labels == UNLABELLED)
    if len(labelled) < 2 * dataset.num_classes:
        raise FewlabelError(
            f"{dataset.name}: {len(labelled)} labelled samples for {dataset.num_classes} classes; too few to split"
        )
    official_val = np.flatnonzero(dataset.official_val) if dataset.official_val is not None else labelled[:0]
    if dataset.official_test is not None:
        test = np.flatnonzero(dataset.official_test & (labels != UNLABELLED))
        train_candidates = np.setdiff1d(labelled, test)
        never_labelled = np.setdiff1d(never_labelled, np.flatnonzero(dataset.official_test))
    elif dataset.official_val is not None:
        # An official validation set is never drawn into a test split of our own.
        train_candidates, test = _holdout(np.setdiff1d(labelled, official_val), dataset, test_fraction, seed=0)
        train_candidates = np.union1d(train_candidates, official_val[labels[official_val] != UNLABELLED])
    else:
        train_candidates, test = _holdout(labelled, dataset, test_fraction, seed=0)
    if dataset.official_val is not None:
        # Like the official test set, an official validation set is used as is (it does not depend on ``seed``).
        val = np.setdiff1d(official_val[labels[official_val] != UNLABELLED], test)
        pool_labelled = np.setdiff1d(train_candidates, val)
        never_labelled = np.setdiff1d(never_labelled, official_val)
    else:
        pool_labelled, val = _holdout(train_candidates, dataset, val_fraction, seed=seed)
    if dataset.groups is not None:
        # Unlabelled samples of a test or validation group (e.g. the plot synopsis of a test movie) would leak
        # that group into pretraining: they stay out of the pool.
        held_groups = set(dataset.groups[np.concatenate([test, val])].tolist())
        never_labelled = np.asarray([i for i in never_labelled if dataset.groups[i] not in held_groups], dtype=np.int64)
    rng = np.random.default_rng(seed)
    pool = np.sort(np.concatenate([pool_labelled, never_labelled]))
    pool_rank = _class_ranks(labels[pool], rng, dataset.num_classes)
    val_rank = _class_ranks(labels[val], rng, dataset.num_classes)
    return LabelSplit(
        seed=seed,
        fingerprint=dataset.fingerprint(),
        num_classes=dataset.num_classes,
        pool=pool,
        pool_rank=pool_rank,
        val=val,
        val_rank=val_rank,
        test=np.sort(test),
    )
