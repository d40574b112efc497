"""Image-text pairs (CLIP-style data): a table naming image files and their captions, plus ``openclipart``.

A pair table is a CSV/TSV/JSONL (optionally compressed) with an image path column and caption text. Image
paths are relative to the table's folder (or ``images_root``; absolute paths are kept). An image may have
several captions, written either as **repeated rows** naming the same image, or (JSONL) as a **list of strings**
in the text column of one row; either way the dataset holds one row per (image, caption) pair.

Captions come from one text column or from a *template* over several columns, e.g.
``caption="{title}. {keywords}"``: each ``{field}`` names a column (a field may carry a format spec, ``{x:>5}``;
dots and brackets in a name are read literally, never as attributes). Runs of whitespace are collapsed and
separators left dangling by an empty field (``"card. "``, ``". drum"``) are trimmed.

The result is a :class:`~fewlabel.data.dataset.Dataset` of modality ``"image-text"``:

* ``samples``: an :class:`~fewlabel.data.image_files.ImageFiles` store, one row per pair (an image with three
  captions appears three times; it decodes lazily at the run's working size like any image folder);
* ``labels``: class ids from an optional label column (for zero-shot / probe evaluation), else ``-1``;
* ``groups``: the image id of each pair, so that :func:`split_pairs` and
  :func:`fewlabel.data.splits.make_split` never put captions of one image on both sides of a split;
* ``extra["captions"]``: ``list[str]``, the caption of each pair; ``extra["caption_ids"]``: int64, equal for
  pairs whose captions are the same text (ignoring case and spacing), so a contrastive loss can stop treating
  identical captions as negatives of each other; plus ``num_images``, ``columns``, ``caption_template`` and
  the skip counts (``skipped_rows``, ``skipped_bad``).

Bad input is a one-line :class:`~fewlabel.errors.FewlabelError`: image files named in the table but missing
(the first one and the count; ``skip_bad=True`` leaves their pairs out and counts them), an unreadable image,
a caption template naming an unknown column (the available columns are listed), a table without a text column,
or a caption column empty in every row. Single rows with an empty caption or image path are skipped and counted.
"""

from __future__ import annotations

import hashlib
import os
import re
import string
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fewlabel.data.dataset import UNLABELLED, Dataset
from fewlabel.data.image_files import GREY_MODES, ImageFiles, decode_image
from fewlabel.data.resolve import RemoteFile, resolve_files
from fewlabel.data.text import LABEL_COLUMNS, RowLog, label_key, pick_column, read_records, table_format
from fewlabel.errors import FewlabelError

IMAGE_COLUMNS = ("image", "file", "filename", "file_name", "image_path", "filepath", "path", "img")
CAPTION_COLUMNS = ("caption", "captions", "text", "description", "title", "sentence")
FieldCleaner = Callable[[str, str], str]  # (column, value) -> cleaned value, applied before the template

OPENCLIPART_CAPTION = "{title}. {keywords}"
OPENCLIPART_REMOTE = RemoteFile("captions.csv", url="", sha256="")  # a local copy only; no download exists
_DANGLING = " .,;:"
_SURROGATE = re.compile("[\udc80-\udcff]")


def caption_fields(template: str) -> list[str]:
    """The column names a caption template refers to, in order (``"{title}. {keywords}"`` -> title, keywords)."""
    try:
        return [field for _, field, _, _ in string.Formatter().parse(template) if field is not None]
    except ValueError as exc:
        raise FewlabelError(f"caption template {template!r} is malformed ({exc}); write column names in braces, "
                            "e.g. '{title}. {keywords}', and double literal braces") from None


def render_caption(template: str, record: dict[str, Any], clean: FieldCleaner | None = None) -> str:
    """Fill ``template`` from ``record`` (missing/None values read as empty) and collapse whitespace. A template
    with literal text around its fields also loses the separators an empty field leaves dangling ("card. ",
    ". drum", "a. . b"); a plain ``{column}`` caption is kept as written."""
    parts: list[str] = []
    plain = True
    for literal, field, spec, _ in string.Formatter().parse(template):
        parts.append(literal)
        plain = plain and not literal.strip()
        if field is None:
            continue
        value = _as_text(record.get(field))
        if clean is not None:
            value = clean(field, value)
        parts.append(format(value, spec) if spec else value)
    text = " ".join("".join(parts).split())
    if plain:
        return text
    text = re.sub(r"([.,;:])(?:\s+[.,;:](?=\s|$))+", r"\1", text)
    return text.strip(_DANGLING).strip()


def caption_key(caption: str) -> str:
    """What makes two captions "the same" for duplicate masking: case and spacing are ignored."""
    return " ".join(caption.casefold().split())


def caption_ids(captions: list[str]) -> np.ndarray:
    """Integer id per caption, equal for captions with the same :func:`caption_key` (first-seen order)."""
    index: dict[str, int] = {}
    return np.asarray([index.setdefault(caption_key(c), len(index)) for c in captions], dtype=np.int64)


def _as_text(value: Any) -> str:
    """A field as text; undecodable bytes (kept as surrogates by the table reader) become U+FFFD."""
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return ""
    return _SURROGATE.sub("\ufffd", str(value))


@dataclass(frozen=True)
class _Row:
    image: str
    caption: str
    label: str | int | None


def _table_rows(records: list[tuple[int, dict[str, Any]]], image_col: str, template: str,
                label_col: str | None, clean: FieldCleaner | None, log: RowLog) -> list[_Row]:
    """One :class:`_Row` per (image, caption) pair; a JSONL list in a single-field template's column fans out."""
    fields = caption_fields(template)
    single = fields[0] if len(fields) == 1 and template.strip() == "{" + fields[0] + "}" else None
    rows: list[_Row] = []
    for number, record in records:
        image = _as_text(record.get(image_col)).strip()
        if not image:
            log.skip("missing image path", number)
            continue
        label = label_key(record.get(label_col)) if label_col else None
        value = record.get(single) if single else None
        texts = ([render_caption(template, {single: v}, clean) for v in value] if isinstance(value, list)
                 else [render_caption(template, record, clean)])
        kept = [t for t in texts if t]
        if not kept:
            log.skip("empty caption", number)
        rows.extend(_Row(image, text, label) for text in kept)
    return rows


def _encode_labels(keys: list[str | int | None]) -> tuple[np.ndarray, list[str]]:
    """Class ids: integer labels in numeric order, otherwise sorted names; missing -> ``-1``."""
    present = {k for k in keys if k is not None}
    if all(isinstance(k, int) for k in present):
        ordered: list[Any] = sorted(present)
    else:
        ordered = sorted({str(k) for k in present})
        keys = [None if k is None else str(k) for k in keys]
    index = {k: i for i, k in enumerate(ordered)}
    labels = np.asarray([UNLABELLED if k is None else index[k] for k in keys], dtype=np.int64)
    return labels, [str(k) for k in ordered]


def _check_images(root: Path, names: list[str], skip_bad: bool, table: Path, column: str
                  ) -> tuple[set[str], int, int, Any, Any]:
    """Stat and read the header of each distinct image file once. Returns (bad names, channels, the most common
    shorter side, fingerprint digest, cache digest). Missing files are reported together (first + count)."""
    from PIL import Image

    missing: list[str] = []
    stats: dict[str, os.stat_result] = {}
    for name in names:
        try:
            stats[name] = os.stat(os.path.join(root, name))
        except OSError:
            missing.append(name)
    if missing and not skip_bad:
        raise FewlabelError(
            f"{table}: {len(missing)} image file(s) named in column '{column}' are missing, the first: "
            f"{os.path.join(root, missing[0])}; fix the paths (relative to {root}) or pass --skip-bad to skip them")
    bad = set(missing)
    colour = 0
    sides: Counter[int] = Counter()
    for name in stats:
        full = os.path.join(root, name)
        try:
            with Image.open(full) as img:  # the header only
                mode, (width, height) = img.mode, img.size
            if skip_bad:
                decode_image(full, 32, 1)  # a truncated file surfaces here, not mid-training
        except (OSError, ValueError, FewlabelError, Image.DecompressionBombError) as exc:
            if not skip_bad:
                reason = str(exc).split(";")[0]
                raise FewlabelError(f"cannot read image {full}: {reason}; fix or remove the file, or pass "
                                    "--skip-bad to skip unreadable images") from None
            bad.add(name)
            continue
        colour += mode not in GREY_MODES
        sides[min(width, height)] += 1
    if not sides:
        raise FewlabelError(f"{table}: none of the {len(names)} images named in column '{column}' can be read")
    fingerprint, cache = hashlib.sha256(), hashlib.sha256()
    for name in sorted(stats):
        stat = stats[name]
        fingerprint.update(f"{name}|{stat.st_size}|{stat.st_mtime_ns}\n".encode("utf-8", "surrogateescape"))
        cache.update(f"{name}|{stat.st_ino}|{stat.st_ctime_ns}\n".encode("utf-8", "surrogateescape"))
    return bad, 3 if colour else 1, sides.most_common(1)[0][0], fingerprint, cache


def load_pair_table(
    path: str | os.PathLike,
    columns: dict[str, str] | None = None,
    caption: str | None = None,
    images_root: str | os.PathLike | None = None,
    skip_bad: bool = False,
    name: str | None = None,
    clean: FieldCleaner | None = None,
) -> Dataset:
    """An image-text pair table as an ``"image-text"`` :class:`Dataset` (see the module doc for the layout).

    ``columns`` names the ``image``, ``text`` and ``label`` columns (each detected when absent: the first of
    :data:`IMAGE_COLUMNS` / :data:`CAPTION_COLUMNS` / :data:`LABEL_COLUMNS` present, any case); it may also hold
    the ``caption`` template. ``caption`` (a template such as ``"{title}. {keywords}"``) replaces the text
    column. ``clean(column, value)`` tidies field values before they fill the template.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise FewlabelError(f"{path} does not exist or is not a file")
    if table_format(path) is None:
        raise FewlabelError(f"{path}: an image-text table must be .csv, .tsv or .jsonl (optionally .bz2/.gz/.xz)")
    columns = dict(columns or {})
    template = caption or columns.get("caption")
    if template and columns.get("text"):
        raise FewlabelError(f"{path}: give either a text column ('{columns['text']}') or a caption template "
                            f"({template!r}), not both")
    log = RowLog()
    names, records, bad_bytes = read_records(path, log)
    image_col = pick_column(names, columns.get("image"), IMAGE_COLUMNS, "image", path, required=True)
    assert image_col is not None
    if template:
        unknown = [f for f in caption_fields(template) if f not in names]
        if unknown or not caption_fields(template):
            problem = f"names column '{unknown[0]}', which the table lacks" if unknown else "names no column"
            raise FewlabelError(f"{path}: caption template {template!r} {problem}; available columns: "
                                f"{', '.join(names)}")
        text_cols = caption_fields(template)
    else:
        text_col = pick_column(names, columns.get("text"), CAPTION_COLUMNS, "text", path, required=True)
        assert text_col is not None
        if "{" in text_col or "}" in text_col:
            raise FewlabelError(f"{path}: text column name '{text_col}' has braces; rename the column")
        template, text_cols = "{" + text_col + "}", [text_col]
    label_col = pick_column(names, columns.get("label"), LABEL_COLUMNS, "label", path, required=False)

    rows = _table_rows(records, image_col, template, label_col, clean, log)
    if not rows:
        raise FewlabelError(f"{path}: the caption column{'s' if len(text_cols) > 1 else ''} "
                            f"{', '.join(repr(c) for c in text_cols)} {'are' if len(text_cols) > 1 else 'is'} empty "
                            f"in every row (skipped: {dict(log.counts) or 'none'}); check the column names")
    root = Path(images_root).expanduser() if images_root is not None else path.parent
    image_names = list(dict.fromkeys(os.path.normpath(r.image) for r in rows))
    bad, channels, side, fingerprint, cache = _check_images(root, image_names, skip_bad, path, image_col)
    skipped_pairs = 0
    if bad:
        kept_rows = [r for r in rows if os.path.normpath(r.image) not in bad]
        skipped_pairs = len(rows) - len(kept_rows)
        rows = kept_rows
        image_names = [n for n in image_names if n not in bad]
        if not rows:
            raise FewlabelError(f"{path}: no readable images left")
    image_index = {n: i for i, n in enumerate(image_names)}
    row_names = [os.path.normpath(r.image) for r in rows]
    groups = np.asarray([image_index[n] for n in row_names], dtype=np.int64)
    captions = [r.caption for r in rows]
    labels, classes = _encode_labels([r.label for r in rows])

    # The store's fingerprint identifies the data (split files, feature caches): files, pair order and captions.
    # Its cache token keys decoded pixels only: files (inode, change time) and the pair order, not the captions.
    order = hashlib.sha256("\n".join(row_names).encode("utf-8", "surrogateescape")).digest()
    fingerprint.update(order)
    cache.update(fingerprint.digest())  # files (names, sizes, modification times) and pair order
    fingerprint.update(hashlib.sha256("\n".join(captions).encode("utf-8", "surrogateescape")).digest())
    store = ImageFiles(root, np.asarray([n.encode("utf-8", "surrogateescape") for n in row_names]), channels, side,
                       fingerprint.hexdigest()[:24], cache.hexdigest()[:24])
    extra: dict[str, Any] = {
        "captions": captions,
        "caption_ids": caption_ids(captions),
        "num_images": len(image_names),
        "caption_template": template,
        "columns": {"image": image_col, "text": text_cols, "label": label_col},
        **log.record(),
        "replaced_bytes": bad_bytes,
    }
    if bad:
        extra["skipped_bad"] = {"count": len(bad), "pairs": skipped_pairs, "examples": sorted(bad)[:5]}
    return Dataset(
        name=name or path.name.split(".")[0],
        modality="image-text",
        samples=store,
        labels=labels,
        classes=classes,
        source=f"image-text table: {path}",
        groups=groups,
        flip_invariant=False,  # captions may say "left"/"right", and text in images reads wrongly mirrored
        extra=extra,
    )


def is_pair_request(path: str | os.PathLike, columns: dict[str, str] | None) -> bool:
    """True when ``load_dataset(path, columns=...)`` should read ``path`` as an image-text table: a table file and
    ``columns`` naming an ``image`` column. Without it, tables stay text tables (the existing behaviour)."""
    return bool(columns and columns.get("image")) and Path(path).is_file() and table_format(Path(path)) is not None


# --- openclipart ------------------------------------------------------------------------------------------------

_FLAT_ICON_TITLE = re.compile(r"^Part of the Flat Icon Collection\b")
_NICU_PREFIX = "Clipart by Nicu Buculei - "
_NOISE_KEYWORDS = {"hash", "unsorted", ""}


def _openclipart_field(column: str, value: str) -> str:
    """Tidy openclipart's fields for captions: a title that only names its collection ("Part of the Flat Icon
    Collection (Wed Aug 25 ...)", 162 drawings) becomes "flat icon" and an author prefix ("Clipart by Nicu
    Buculei - ") is cut; keywords lose library noise (``hash``, ``hash(0x8a393fc)``, ``unsorted``) and are joined
    by commas. Underscores read as spaces in both."""
    value = value.strip()
    if column == "title":
        if _FLAT_ICON_TITLE.match(value):
            return "flat icon"
        value = value.removeprefix(_NICU_PREFIX)
        return value.replace("_", " ")
    if column == "keywords":
        words = [w.strip().replace("_", " ") for w in value.split(";")]
        kept = [w for w in words if w.lower() not in _NOISE_KEYWORDS and not w.lower().startswith("hash(")]
        return ", ".join(dict.fromkeys(kept))
    return value


def load_openclipart(data_dir: str | None = None, caption: str = OPENCLIPART_CAPTION) -> Dataset:
    """Open Clip Art Library drawings (CC0): 3,562 images at 96 px, one caption each from the artist's title and
    keywords, labelled by the library's top-level ``category`` folder (22 classes) for zero-shot evaluation.

    Found through the usual data-dir chain (``--data-dir`` / ``$FEWLABEL_DATA``, as ``openclipart/`` or the
    folder itself); there is no download. Many drawings share a caption ("gramastar", "card"), which
    ``extra["caption_ids"]`` marks for the loss.
    """
    try:
        folder, how = resolve_files("openclipart", [OPENCLIPART_REMOTE], data_dir,
                                    subdirs=("openclipart", ""), known_local=(), allow_download=False)
    except FewlabelError as exc:
        raise FewlabelError(f"{exc} No download is available: the folder holds captions.csv and images/.") from None
    dataset = load_pair_table(folder / OPENCLIPART_REMOTE.name, columns={"image": "file", "label": "category"},
                              caption=caption, name="openclipart", clean=_openclipart_field)
    dataset.source = how
    return dataset


OPENCLIPART_MIN_SUBCATEGORY = 40


def load_openclipart_subcategories(data_dir: str | None = None, caption: str = OPENCLIPART_CAPTION,
                                   min_count: int = OPENCLIPART_MIN_SUBCATEGORY) -> Dataset:
    """``openclipart`` (the same pairs and captions) labelled by ``category/subcategory`` for the subcategories
    with at least ``min_count`` drawings (20 at 40: flags, icons, games, stars, mammals ...); every other drawing
    is unlabelled (``-1``) and still a training pair. Class names are the subcategory words ("aiga symbols"),
    ready for zero-shot prompts; ``extra["class_paths"]`` keeps the ``category/subcategory`` of each class.

    The test images are openclipart's own (its seed-independent 20% split, marked as ``official_test``), so a CLIP
    run on ``openclipart`` never trained on the images scored here; a subcategory's test images are those of its
    drawings among them."""
    import csv

    from fewlabel.data.splits import make_split

    dataset = load_openclipart(data_dir, caption)
    held_out = np.zeros(len(dataset), dtype=bool)
    held_out[make_split(dataset, seed=0).test] = True  # what a run on `openclipart` holds out, whatever its seed
    store = dataset.samples
    table = Path(store.root) / OPENCLIPART_REMOTE.name
    with open(table, encoding="utf-8", errors="surrogateescape", newline="") as handle:
        folders = {os.path.normpath(r["file"]): ((r.get("category") or "").strip(),
                                                 (r.get("subcategory") or "").strip())
                   for r in csv.DictReader(handle)}
    paths = [folders.get(name.decode("utf-8", "surrogateescape"), ("", "")) for name in store.names]
    counts = Counter(p for p in paths if p[1])
    kept = sorted((p for p, n in counts.items() if n >= min_count), key=lambda p: " ".join(re.split("[_-]", p[1])))
    names = [" ".join(re.split("[_-]", sub)) for _, sub in kept]
    if len(set(names)) != len(names):  # the same subcategory word under two categories: name both in full
        names = [" ".join(re.split("[_/-]", f"{cat}/{sub}")) for cat, sub in kept]
    index = {p: i for i, p in enumerate(kept)}
    dataset.labels = np.asarray([index.get(p, UNLABELLED) for p in paths], dtype=np.int64)
    dataset.classes = names
    dataset.name = "openclipart-subcategories"
    dataset.official_test = held_out
    dataset.extra["class_paths"] = [f"{cat}/{sub}" for cat, sub in kept]
    return dataset


# --- splits -----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PairSplit:
    """Pair indices (sorted) of train / validation / test; the captions of one image are all on one side."""

    seed: int
    train: np.ndarray
    val: np.ndarray
    test: np.ndarray


def split_pairs(dataset: Dataset, seed: int = 0, test_fraction: float = 0.2, val_fraction: float = 0.1,
                test_seed: int | None = 0) -> PairSplit:
    """Split pairs by image (``dataset.groups``): ``test_fraction`` of the images for test, ``val_fraction`` of
    the rest for validation. As in :func:`~fewlabel.data.splits.make_split` the test images do not depend on
    ``seed`` (``test_seed`` 0; ``None`` draws them with ``seed`` too), so results of several seeds share a test set.
    """
    from sklearn.model_selection import GroupShuffleSplit

    for label, value in (("test_fraction", test_fraction), ("val_fraction", val_fraction)):
        if not 0.0 <= value < 1.0:
            raise FewlabelError(f"{label} {value} must be in [0, 1)")
    groups = dataset.groups if dataset.groups is not None else np.arange(len(dataset))

    def hold_out(indices: np.ndarray, fraction: float, draw_seed: int) -> tuple[np.ndarray, np.ndarray]:
        if fraction == 0.0 or len(indices) == 0:
            return indices, indices[:0]
        if len(np.unique(groups[indices])) < 2:
            raise FewlabelError(f"{dataset.name}: {len(np.unique(groups[indices]))} image(s); too few to split")
        splitter = GroupShuffleSplit(n_splits=1, test_size=fraction, random_state=draw_seed)
        keep, held = next(splitter.split(indices, groups=groups[indices]))
        return np.sort(indices[keep]), np.sort(indices[held])

    rest, test = hold_out(np.arange(len(dataset)), test_fraction, seed if test_seed is None else test_seed)
    train, val = hold_out(rest, val_fraction, seed)
    return PairSplit(seed=seed, train=train, val=val, test=test)


def retrieval_images(dataset: Dataset, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For retrieval on the pairs ``indices``: (one pair row per distinct image, whose pixels to encode; for each
    pair in ``indices``, the position of its image in that first array) -- the ``image_ids_of_texts`` of
    :func:`fewlabel.methods.clip.retrieval_recall`."""
    indices = np.asarray(indices, dtype=np.int64)
    groups = dataset.groups[indices] if dataset.groups is not None else indices
    _, first, inverse = np.unique(groups, return_index=True, return_inverse=True)
    return indices[first], inverse.astype(np.int64)
