from __future__ import annotations

import numpy as np
import pytest
import torch

from fewlabel.data import Dataset, LabelRequest, LabelSplit, make_split
from fewlabel.errors import FewlabelError


def make_dataset(counts: list[int], groups: bool = False, unlabelled: int = 0, official_test: int = 0) -> Dataset:
    labels = np.concatenate([np.full(c, k) for k, c in enumerate(counts)] + [np.full(unlabelled, -1)])
    n = len(labels)
    test_mask = None
    if official_test:
        test_mask = np.zeros(n, dtype=bool)
        test_mask[np.random.default_rng(1).choice(np.flatnonzero(labels >= 0), official_test, replace=False)] = True
    return Dataset(
        name="toy",
        modality="image",
        samples=torch.arange(n, dtype=torch.uint8).view(n, 1, 1, 1).expand(n, 1, 2, 2).contiguous(),
        labels=labels,
        classes=[f"c{k}" for k in range(len(counts))],
        groups=np.arange(n) // 4 if groups else None,
        official_test=test_mask,
    )


@pytest.mark.parametrize(
    ("text", "fraction", "per_class"),
    [("0.01", 0.01, None), ("1.0", 1.0, None), ("10%", 0.1, None), ("10/class", None, 10), (" 3 / class ", None, 3)],
)
def test_label_request_parses(text: str, fraction: float | None, per_class: int | None) -> None:
    request = LabelRequest.parse(text)
    assert request.fraction == pytest.approx(fraction) if fraction is not None else request.fraction is None
    assert request.per_class == per_class


@pytest.mark.parametrize("text", ["0", "-0.1", "1.5", "abc", "0/class", "nan", "0%"])
def test_label_request_rejects_impossible(text: str) -> None:
    with pytest.raises(FewlabelError):
        LabelRequest.parse(text)


def test_counts_per_class_are_stratified_by_hand() -> None:
    # Classes of 200 / 100 / 20 pool samples at 10% must give exactly 20 / 10 / 2 labelled examples.
    ds = make_dataset([250, 125, 25])
    split = make_split(ds, seed=3, test_fraction=0.1, val_fraction=0.1)
    pool_counts = np.bincount(ds.labels[split.pool], minlength=3)
    chosen = split.labelled(LabelRequest.parse("0.1"), ds.labels)
    counts = np.bincount(ds.labels[chosen], minlength=3)
    expected = [max(1, round(0.1 * c)) for c in pool_counts]
    assert counts.tolist() == expected
    assert pool_counts.tolist() == [202, 101, 21]  # 250*0.9*0.9 etc., as sklearn rounds the stratified holdouts


def test_per_class_request_and_tiny_classes() -> None:
    ds = make_dataset([100, 100, 4])
    split = make_split(ds, seed=0)
    chosen = split.labelled(LabelRequest.parse("10/class"), ds.labels)
    counts = np.bincount(ds.labels[chosen], minlength=3)
    assert counts[0] == counts[1] == 10
    assert counts[2] == np.sum(ds.labels[split.pool] == 2)  # fewer than 10 available: all of them


def test_nested_fractions() -> None:
    ds = make_dataset([300, 200, 100])
    split = make_split(ds, seed=7)
    one = set(split.labelled(LabelRequest.parse("0.01"), ds.labels))
    ten = set(split.labelled(LabelRequest.parse("0.1"), ds.labels))
    half = set(split.labelled(LabelRequest.parse("0.5"), ds.labels))
    full = set(split.labelled(LabelRequest.parse("1.0"), ds.labels))
    assert one < ten < half < full
    assert full == set(split.pool)
    five_pc = set(split.labelled(LabelRequest.parse("5/class"), ds.labels))
    assert five_pc < set(split.labelled(LabelRequest.parse("20/class"), ds.labels))


def test_deterministic_for_a_seed_and_different_across_seeds() -> None:
    ds = make_dataset([100, 100])
    request = LabelRequest.parse("0.1")
    a = make_split(ds, seed=1).labelled(request, ds.labels)
    b = make_split(ds, seed=1).labelled(request, ds.labels)
    c = make_split(ds, seed=2).labelled(request, ds.labels)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    # The test split must not depend on the seed, so every seed is scored on the same examples.
    np.testing.assert_array_equal(make_split(ds, seed=1).test, make_split(ds, seed=2).test)


def test_partitions_are_disjoint_and_complete() -> None:
    ds = make_dataset([80, 60, 40], unlabelled=30)
    split = make_split(ds, seed=0)
    request = LabelRequest.parse("0.25")
    labelled = split.labelled(request, ds.labels)
    unlabelled = split.unlabelled(request, ds.labels)
    parts = [set(labelled), set(unlabelled), set(split.val), set(split.test)]
    assert sum(len(p) for p in parts) == len(ds)
    assert set().union(*parts) == set(range(len(ds)))
    # Samples without labels only ever land in the unlabelled pool.
    no_label = set(np.flatnonzero(ds.labels == -1))
    assert no_label <= set(unlabelled)
    assert not no_label & (set(split.val) | set(split.test) | set(labelled))


def test_official_test_set_is_used_as_is() -> None:
    ds = make_dataset([50, 50], official_test=20)
    split = make_split(ds, seed=5)
    np.testing.assert_array_equal(split.test, np.flatnonzero(ds.official_test))


def test_groups_never_straddle_splits() -> None:
    ds = make_dataset([120, 120], groups=True)
    split = make_split(ds, seed=0)
    groups = ds.groups
    assert not set(groups[split.test]) & set(groups[split.pool])
    assert not set(groups[split.val]) & set(groups[split.pool])


def test_validation_scales_with_budget_but_keeps_a_minimum() -> None:
    ds = make_dataset([500, 500])
    split = make_split(ds, seed=0)
    val = split.validation(LabelRequest.parse("0.01"), ds.labels, min_per_class=5)
    assert np.bincount(ds.labels[val]).tolist() == [5, 5]
    assert len(split.validation(None, ds.labels)) == len(split.val)


def test_fewer_examples_than_classes_is_an_error() -> None:
    ds = make_dataset([30, 30, 30])
    split = make_split(ds, seed=0)
    with pytest.raises(FewlabelError, match="fewer than"):
        split.check_request(LabelRequest.parse("0.01"), ds.labels)
    split.check_request(LabelRequest.parse("1/class"), ds.labels)


def test_save_and_load_round_trip(tmp_path) -> None:
    ds = make_dataset([40, 40])
    split = make_split(ds, seed=4)
    split.save(tmp_path / "split.npz")
    loaded = LabelSplit.load(tmp_path, ds)
    request = LabelRequest.parse("0.2")
    np.testing.assert_array_equal(loaded.labelled(request, ds.labels), split.labelled(request, ds.labels))
    np.testing.assert_array_equal(loaded.test, split.test)
    other = make_dataset([41, 39])
    with pytest.raises(FewlabelError, match="different data"):
        LabelSplit.load(tmp_path / "split.npz", other)
    (tmp_path / "bad.npz").write_bytes(b"not a split")
    with pytest.raises(FewlabelError, match="cannot read split"):
        LabelSplit.load(tmp_path / "bad.npz")
