"""Image-text pair tables: columns, caption templates, bad input, grouped splits, and the real openclipart."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fewlabel.data import load_dataset, make_split
from fewlabel.data.images import at_working_size
from fewlabel.data.pairs import caption_ids, load_openclipart, load_pair_table, retrieval_images, split_pairs
from fewlabel.data.registry import registered_datasets
from fewlabel.errors import FewlabelError

# conftest clears FEWLABEL_DATA for every test: read it when the module is imported.
_ROOTS = [*(os.environ.get("FEWLABEL_DATA") or "").split(os.pathsep), "/work/shared/data"]
OPENCLIPART_ROOT = next((Path(r) for r in _ROOTS if r and (Path(r) / "openclipart" / "captions.csv").is_file()), None)

TEMPLATE = "{headline}. {tags}"


def _write_images(folder: Path, count: int, size: int = 12) -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    names = []
    for i in range(count):
        name = f"pic{i}.png"
        Image.new("RGB", (size + i, size), color=(20 * i, 255 - 20 * i, 7 * i)).save(folder / name)
        names.append(f"pics/{name}")
    return names


def _write_table(tmp_path: Path, rows: list[tuple[str, str, str, str]], header: str = "picture,headline,tags,kind",
                 ) -> Path:
    path = tmp_path / "pairs.csv"
    lines = [header] + [",".join(f'"{cell}"' for cell in row) for row in rows]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.fixture
def table(tmp_path: Path) -> Path:
    names = _write_images(tmp_path / "pics", 6)
    rows = [
        (names[0], "Red barn", "farm; building", "buildings"),
        (names[0], "A barn in a field", "", "buildings"),  # a second caption of image 0 (repeated row)
        (names[1], "Cat", "animal; pet", "animals"),
        (names[2], "Dog", "animal", "animals"),
        (names[3], "", "tree; plant", "plants"),
        (names[4], "Cat", "animal; pet", "animals"),  # the same caption as image 1
        (names[5], "Rose", "flower", ""),  # no label
    ]
    return _write_table(tmp_path, rows)


def test_custom_columns_and_caption_template(table: Path) -> None:
    ds = load_pair_table(table, columns={"image": "picture", "label": "kind"}, caption=TEMPLATE)
    assert ds.modality == "image-text"
    assert len(ds) == 7 and ds.extra["num_images"] == 6
    assert ds.extra["captions"] == ["Red barn. farm; building", "A barn in a field", "Cat. animal; pet", "Dog. animal",
                                    "tree; plant", "Cat. animal; pet", "Rose. flower"]
    assert ds.classes == ["animals", "buildings", "plants"]
    assert ds.labels.tolist() == [1, 1, 0, 0, 2, 0, -1]
    assert ds.groups is not None and ds.groups.tolist() == [0, 0, 1, 2, 3, 4, 5]  # captions of image 0 share a group
    ids = ds.extra["caption_ids"]
    assert ids[2] == ids[5] and len(set(ids.tolist())) == 6
    assert ds.extra["columns"] == {"image": "picture", "text": ["headline", "tags"], "label": "kind"}
    assert ds.samples.shape == (7, 3, 12, 12)  # most common shorter side; RGB
    assert ds.samples[0].shape == (3, 12, 12) and np.array_equal(ds.samples[0], ds.samples[1])  # one image, twice
    assert ds.image_shape == (3, 12, 12) and ds.summary()["shape"] == [3, 12, 12]
    small = at_working_size(ds, 8)
    assert small.samples[[0, 2]].shape == (2, 3, 8, 8)
    assert small.fingerprint() == ds.fingerprint()


def test_load_dataset_reads_a_pair_table_only_when_columns_name_an_image_column(table: Path) -> None:
    pairs = load_dataset(table, columns={"image": "picture", "caption": TEMPLATE, "label": "kind"})
    assert pairs.modality == "image-text" and len(pairs) == 7
    text = load_dataset(table, columns={"text": "headline", "label": "kind"})  # unchanged: a text table
    assert text.modality == "text"


def test_fingerprint_follows_captions_but_the_pixel_cache_key_does_not(table: Path) -> None:
    one = load_pair_table(table, columns={"image": "picture"}, caption=TEMPLATE)
    other = load_pair_table(table, columns={"image": "picture"}, caption="{headline} ({tags})")
    assert one.fingerprint() != other.fingerprint()
    assert one.samples.cache_key() == other.samples.cache_key()


def test_unknown_template_field_lists_the_columns(table: Path) -> None:
    with pytest.raises(FewlabelError, match=r"names column 'title'.*available columns: picture, headline, tags, kind"):
        load_pair_table(table, columns={"image": "picture"}, caption="{title}. {tags}")
    with pytest.raises(FewlabelError, match="either a text column"):
        load_pair_table(table, columns={"image": "picture", "text": "headline"}, caption=TEMPLATE)


def test_missing_images_are_an_error_naming_the_first_or_skipped_and_counted(tmp_path: Path) -> None:
    names = _write_images(tmp_path / "pics", 3)
    rows = [(names[0], "a", "", ""), ("pics/gone1.png", "b", "", ""), (names[1], "c", "", ""),
            ("pics/gone2.png", "d", "", ""), ("pics/gone2.png", "e", "", ""), (names[2], "f", "", "")]
    path = _write_table(tmp_path, rows)
    with pytest.raises(FewlabelError) as error:
        load_pair_table(path, columns={"image": "picture", "text": "headline"})
    message = str(error.value)
    assert "\n" not in message
    assert "2 image file(s)" in message and str(tmp_path / "pics" / "gone1.png") in message and "--skip-bad" in message
    ds = load_pair_table(path, columns={"image": "picture", "text": "headline"}, skip_bad=True)
    assert ds.extra["captions"] == ["a", "c", "f"]
    assert ds.extra["skipped_bad"]["count"] == 2 and ds.extra["skipped_bad"]["pairs"] == 3
    assert ds.summary()["skipped_bad"]["count"] == 2
    (tmp_path / names[1]).write_bytes(b"not a png")  # unreadable: the same two ways
    present = _write_table(tmp_path, [rows[0], rows[2], rows[5]])
    with pytest.raises(FewlabelError, match=r"cannot read image .*pic1\.png"):
        load_pair_table(present, columns={"image": "picture", "text": "headline"})
    unreadable = load_pair_table(present, columns={"image": "picture", "text": "headline"}, skip_bad=True)
    assert unreadable.extra["captions"] == ["a", "f"] and unreadable.extra["skipped_bad"]["count"] == 1


def test_empty_caption_column_and_missing_text_column_are_errors(tmp_path: Path) -> None:
    names = _write_images(tmp_path / "pics", 2)
    path = _write_table(tmp_path, [(names[0], "", " ", "x"), (names[1], "", "", "y")])
    with pytest.raises(FewlabelError, match="'headline' is empty in every row"):
        load_pair_table(path, columns={"image": "picture", "text": "headline"})
    with pytest.raises(FewlabelError, match="are empty in every row"):
        load_pair_table(path, columns={"image": "picture"}, caption=TEMPLATE)
    with pytest.raises(FewlabelError, match=r"no text column found.*available columns: picture, headline, tags, kind"):
        load_pair_table(path, columns={"image": "picture"})
    with pytest.raises(FewlabelError, match="no image column found"):
        load_pair_table(path, columns={"text": "headline"})


def test_single_empty_captions_are_skipped_and_counted(tmp_path: Path) -> None:
    names = _write_images(tmp_path / "pics", 2)
    path = _write_table(tmp_path, [(names[0], "", "", "x"), (names[1], "b", "", "y")])
    ds = load_pair_table(path, columns={"image": "picture", "text": "headline"})
    assert ds.extra["captions"] == ["b"] and ds.extra["skipped_rows"] == {"empty caption": 1}


def test_jsonl_with_several_captions_per_image(tmp_path: Path) -> None:
    names = _write_images(tmp_path / "pics", 2)
    path = tmp_path / "pairs.jsonl"
    records = [{"image": names[0], "caption": ["a red pic", "  a  warm  pic ", ""]},
               {"image": names[1], "caption": "a green pic"}]
    path.write_text("\n".join(json.dumps(r) for r in records), encoding="utf-8")
    ds = load_pair_table(path)
    assert ds.extra["captions"] == ["a red pic", "a warm pic", "a green pic"]
    assert ds.groups.tolist() == [0, 0, 1]
    assert ds.classes == [] and ds.labels.tolist() == [-1, -1, -1]


def test_split_never_puts_one_image_in_two_splits(tmp_path: Path) -> None:
    names = _write_images(tmp_path / "pics", 20, size=8)
    rows = [(names[i % 20], f"caption {i}", "", "ab"[i % 2]) for i in range(60)]  # 3 captions per image
    ds = load_pair_table(_write_table(tmp_path, rows), columns={"image": "picture", "label": "kind"},
                         caption="{headline}")
    for seed in (0, 1, 2):
        split = split_pairs(ds, seed=seed, test_fraction=0.2, val_fraction=0.25)
        parts = [set(ds.groups[split.train]), set(ds.groups[split.val]), set(ds.groups[split.test])]
        assert all(parts) and not (parts[0] & parts[1] or parts[0] & parts[2] or parts[1] & parts[2])
        assert sorted(np.concatenate([split.train, split.val, split.test]).tolist()) == list(range(60))
        assert len(split.test) == 12  # 4 of the 20 images, 3 captions each
    assert np.array_equal(split_pairs(ds, seed=0).test, split_pairs(ds, seed=5).test)  # test fixed across seeds
    seeded = [split_pairs(ds, seed=s, test_seed=None).test for s in (0, 5)]
    assert not np.array_equal(*seeded)
    labelled = make_split(ds, seed=1)  # the label-budget split is grouped by image as well
    assert not set(ds.groups[labelled.test]) & set(ds.groups[labelled.pool])
    rows_of_images, owners = retrieval_images(ds, split.test)
    assert len(rows_of_images) == 4 and owners.tolist().count(0) == 3
    assert np.array_equal(ds.groups[rows_of_images][owners], ds.groups[split.test])


def test_caption_ids_ignore_case_and_spacing() -> None:
    assert caption_ids(["A cat", "a  cat ", "a dog"]).tolist() == [0, 0, 1]


def test_openclipart_is_registered_and_says_where_it_looked(tmp_path: Path) -> None:
    assert "openclipart" in {entry.name for entry in registered_datasets()}
    with pytest.raises(FewlabelError, match=r"captions\.csv and images/"):
        load_openclipart(str(tmp_path))


# Outside CI a checkout without the shared data skips this; CI points FEWLABEL_DATA at it, so there it must run.
@pytest.mark.skipif(OPENCLIPART_ROOT is None and not os.environ.get("CI"),
                    reason="openclipart not found in $FEWLABEL_DATA or ../shared/data")
def test_real_openclipart() -> None:
    assert OPENCLIPART_ROOT is not None, "CI: openclipart not found in $FEWLABEL_DATA"
    ds = load_dataset("openclipart", data_dir=str(OPENCLIPART_ROOT))
    assert ds.modality == "image-text" and len(ds) == 3562 and ds.extra["num_images"] == 3562
    captions = ds.extra["captions"]
    assert len(captions) == 3562 and all(c.strip() for c in captions)
    assert not any("Flat Icon Collection" in c or "hash" in c.split(", ") for c in captions)
    assert captions[:3] == ["AfricanDrum1. drum, musicstuff, africa",
                            "City flag of Gijon, Asturies, Spain. city, gijón, europe, flag, local, sign",
                            "Cheese Pizza Slice (B and W). food, pizza, menu"]
    assert len(ds.classes) == 22 and {"animals", "food", "signs_and_symbols"} <= set(ds.classes)
    assert (ds.labels >= 0).all()
    assert ds.image_shape == (3, 96, 96)
    assert ds.samples[0].shape == (3, 96, 96)
    assert len(set(ds.extra["caption_ids"].tolist())) < 3562  # repeated captions exist and share ids


SUBCATEGORIES = ["aiga symbols", "arrows", "beverages", "bugs", "clothing", "flags", "fruit", "games", "holiday",
                 "icons", "jigsaw", "led", "mammals", "music", "party", "patterns", "roadsigns", "sports", "stars",
                 "stickmen"]


@pytest.mark.skipif(OPENCLIPART_ROOT is None and not os.environ.get("CI"),
                    reason="openclipart not found in $FEWLABEL_DATA or ../shared/data")
def test_real_openclipart_subcategories() -> None:
    assert OPENCLIPART_ROOT is not None, "CI: openclipart not found in $FEWLABEL_DATA"
    assert "openclipart-subcategories" in {entry.name for entry in registered_datasets()}
    whole = load_dataset("openclipart", data_dir=str(OPENCLIPART_ROOT))
    ds = load_dataset("openclipart-subcategories", data_dir=str(OPENCLIPART_ROOT))
    assert ds.name == "openclipart-subcategories" and ds.modality == "image-text" and len(ds) == len(whole)
    assert ds.extra["captions"] == whole.extra["captions"]  # the same pairs, the same captions
    assert ds.classes == SUBCATEGORIES
    assert "transportation/aiga-symbols" in ds.extra["class_paths"] and "shapes/stars" in ds.extra["class_paths"]
    counts = ds.class_counts()
    assert min(counts.values()) >= 40 and counts["flags"] == 257 and counts["bugs"] == 42
    assert sum(counts.values()) == 1907 and (ds.labels == -1).sum() == len(ds) - 1907
    # the labels are the table's subcategory folders; every other drawing is unlabelled
    with open(OPENCLIPART_ROOT / "openclipart" / "captions.csv", encoding="utf-8", newline="") as handle:
        rows = {r["file"]: r for r in csv.DictReader(handle)}
    names = [n.decode() for n in ds.samples.names]
    for i in range(0, len(ds), 7):
        row = rows[names[i]]
        path = f"{row['category']}/{row['subcategory']}"
        assert ds.labels[i] == (ds.extra["class_paths"].index(path) if path in ds.extra["class_paths"] else -1)
    # the test images are openclipart's own held-out ones (a CLIP run on openclipart never trained on them)
    held_out = set(make_split(whole, seed=0).test.tolist())
    for seed in (0, 1):
        split = make_split(ds, seed=seed)
        assert set(split.test.tolist()) == {i for i in held_out if ds.labels[i] != -1}
        assert not set(split.pool.tolist()) & held_out and not set(split.val.tolist()) & held_out
        assert len(split.pool) + len(split.val) + len(held_out) == len(ds)  # the unlabelled still train
