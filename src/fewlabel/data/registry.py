"""Named datasets and ``load_dataset``: a registered name, or a path in a generic format.

Adding a dataset is one loader function plus one ``register_dataset`` line.
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from fewlabel.data.audio import load_audio_path, register_audio_datasets
from fewlabel.data.dataset import Dataset
from fewlabel.data.images import load_digits_dataset, load_fashion_mnist, load_image_folder, load_npz
from fewlabel.data.pairs import is_pair_request, load_openclipart, load_openclipart_subcategories, load_pair_table
from fewlabel.data.text import load_text_path, register_text_datasets
from fewlabel.errors import FewlabelError

Loader = Callable[[str | None], Dataset]


@dataclass(frozen=True)
class DatasetEntry:
    name: str
    loader: Loader
    description: str


_REGISTRY: dict[str, DatasetEntry] = {}


def register_dataset(name: str, loader: Loader, description: str) -> None:
    _REGISTRY[name] = DatasetEntry(name, loader, description)


def registered_datasets() -> list[DatasetEntry]:
    return list(_REGISTRY.values())


register_dataset("digits", load_digits_dataset, "8x8 handwritten digits from scikit-learn (embedded, 1,797 images)")
register_dataset("fashion-mnist", load_fashion_mnist, "Fashion-MNIST, 28x28 grey clothing, 60k train + 10k test")
register_dataset("openclipart", load_openclipart,
                 "Open Clip Art drawings (CC0) with title + keyword captions: 3,562 image-text pairs, 22 categories")
register_dataset("openclipart-subcategories", load_openclipart_subcategories,
                 "openclipart labelled by its 20 subcategories of >= 40 drawings (1,907 drawings; the rest unlabelled)")
register_text_datasets(register_dataset)
register_audio_datasets(register_dataset)


def load_dataset(name_or_path: str | os.PathLike, data_dir: str | None = None,
                 columns: dict[str, str] | None = None, skip_bad: bool = False) -> Dataset:
    """Load a registered dataset by name, or a dataset by path: an image folder (indexed, decoded on access),
    ``.npz``, a text table (``.csv``/``.tsv``/``.jsonl``, optionally compressed; ``columns`` names its
    text/label/group columns; when it names an ``image`` column the table is read as image-text pairs, see
    :mod:`fewlabel.data.pairs`) or a folder of ``<class>/*.txt``; audio (:mod:`fewlabel.data.audio`) is a folder of
    ``<class>/*.wav|flac|ogg|mp3`` (Speech Commands layout included) or a table whose path column names audio
    files. ``skip_bad`` leaves unreadable images (or clips) out (counted in the dataset's summary) instead of
    stopping with an error that names the first. ``columns`` may also carry ``clip_seconds`` (audio: the length
    every clip is cropped or padded to), so the option travels with the run's config like the column names."""
    columns = dict(columns or {})
    clip_seconds = columns.pop("clip_seconds", None)
    dataset = _load(str(name_or_path), data_dir, columns, skip_bad,
                    {} if clip_seconds is None else {"clip_seconds": clip_seconds})
    if clip_seconds is not None and dataset.modality != "audio":
        raise FewlabelError(f"--clip-seconds applies to audio data; '{name_or_path}' is {dataset.modality} data, "
                            "so leave the flag out")
    return dataset


def _load(key: str, data_dir: str | None, columns: dict[str, str], skip_bad: bool,
          audio_options: dict[str, str]) -> Dataset:
    if key in _REGISTRY:
        loader = _REGISTRY[key].loader
        accepted = inspect.signature(loader).parameters
        return loader(data_dir, **{k: v for k, v in audio_options.items() if k in accepted})
    path = Path(key).expanduser()
    if path.exists():
        if is_pair_request(path, columns):
            return load_pair_table(path, columns, skip_bad=skip_bad)
        audio = load_audio_path(path, columns, skip_bad=skip_bad, **audio_options)
        if audio is not None:
            return audio
        text = load_text_path(path, columns)
        if text is not None:
            return text
    if path.is_dir():
        return load_image_folder(path, skip_bad=skip_bad)
    if path.is_file():
        if path.suffix.lower() == ".npz":
            return load_npz(path)
        raise FewlabelError(f"{path}: unsupported file type '{path.suffix}'; use an image folder, .npz, .csv, "
                            ".tsv, .jsonl, a folder of <class>/*.txt or of <class>/*.wav (audio)")
    names = ", ".join(sorted(_REGISTRY))
    raise FewlabelError(
        f"dataset '{key}' is neither a registered name ({names}) nor an existing path; check the spelling or path"
    )
