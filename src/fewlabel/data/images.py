"""Image datasets: the embedded ``digits``, ``fashion-mnist`` (IDX), an image folder and ``.npz`` arrays."""

from __future__ import annotations

import gzip
import os
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from fewlabel.data.dataset import Dataset
from fewlabel.data.image_files import IMAGE_SUFFIXES, ImageArrayFile, ImageFiles, cached_store, index_image_folder
from fewlabel.data.resolve import RemoteFile, cache_dir, resolve_files
from fewlabel.errors import FewlabelError

__all__ = ["IMAGE_SUFFIXES", "at_working_size", "load_digits_dataset", "load_fashion_mnist", "load_image_folder",
           "load_npz"]

FASHION_MNIST_URL = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
FASHION_MNIST_FILES = (
    RemoteFile("train-images-idx3-ubyte.gz", FASHION_MNIST_URL + "train-images-idx3-ubyte.gz",
               "b0564c3eedabfbf835052cff8503ea422014ce006caf5b757f851416ee8300c7"),
    RemoteFile("train-labels-idx1-ubyte.gz", FASHION_MNIST_URL + "train-labels-idx1-ubyte.gz",
               "0ae29f65d86684f32d1b9c85147786c547b9c6aebcaf235f0400a0cce308b056"),
    RemoteFile("t10k-images-idx3-ubyte.gz", FASHION_MNIST_URL + "t10k-images-idx3-ubyte.gz",
               "cc1d090a38ace84dfa1aa66e3ada7c336ef481a96936906477e6dd344da56eaa"),
    RemoteFile("t10k-labels-idx1-ubyte.gz", FASHION_MNIST_URL + "t10k-labels-idx1-ubyte.gz",
               "8d3605d196f4be44669e46906da9733c8131fef761fdbfec72c424d5222f1a05"),
)
FASHION_MNIST_CLASSES = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]
FASHION_MNIST_LOCAL = ("/usr/share/datasets/fashion-mnist",)


def load_digits_dataset(data_dir: str | None = None) -> Dataset:
    """scikit-learn's 8x8 handwritten digits (1,797 images): ships with scikit-learn, needs no download."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = np.rint(bunch.images * (255.0 / 16.0)).astype(np.uint8)[:, None]
    return Dataset(
        name="digits",
        modality="image",
        samples=torch.from_numpy(images),
        labels=bunch.target,
        classes=[str(c) for c in bunch.target_names],
        source="embedded: sklearn.datasets.load_digits",
        flip_invariant=False,
    )


def read_idx(path: Path) -> np.ndarray:
    """Read an IDX file (optionally gzip-compressed) as the MNIST family distributes it."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as handle:
            raw = handle.read()
    except (OSError, EOFError) as exc:
        raise FewlabelError(f"cannot read {path}: {exc}; the file is corrupt, replace it") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise FewlabelError(f"{path} is not an unsigned-byte IDX file (bad magic number); replace it")
    ndim = raw[3]
    header = 4 + 4 * ndim
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    expected = int(np.prod(shape))
    if len(raw) - header != expected:
        raise FewlabelError(
            f"{path} is truncated or corrupt: header says {shape} ({expected} bytes), "
            f"file has {len(raw) - header}; replace it"
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape)


def load_fashion_mnist(data_dir: str | None = None) -> Dataset:
    """Fashion-MNIST: 60k train + 10k official test, 28x28 grey, 10 clothing classes."""
    folder, how = resolve_files(
        "fashion-mnist",
        FASHION_MNIST_FILES,
        data_dir,
        subdirs=("fashion-mnist", "fashion_mnist", "FashionMNIST/raw", ""),
        known_local=FASHION_MNIST_LOCAL,
    )
    parts = [read_idx(folder / f.name) for f in FASHION_MNIST_FILES]
    train_x, train_y, test_x, test_y = parts
    if len(train_x) != len(train_y) or len(test_x) != len(test_y):
        raise FewlabelError(f"Fashion-MNIST files in {folder} disagree on sizes; replace them")
    images = np.concatenate([train_x, test_x])[:, None]
    labels = np.concatenate([train_y, test_y]).astype(np.int64)
    official_test = np.zeros(len(labels), dtype=bool)
    official_test[len(train_y) :] = True
    return Dataset(
        name="fashion-mnist",
        modality="image",
        samples=torch.from_numpy(np.ascontiguousarray(images)),
        labels=labels,
        classes=list(FASHION_MNIST_CLASSES),
        source=how,
        official_test=official_test,
        flip_invariant=True,
    )


def load_image_folder(root: str | os.PathLike, skip_bad: bool = False) -> Dataset:
    """``root/<class>/**/<image>``, indexed, not loaded (see :mod:`fewlabel.data.image_files`).

    Samples decode on access to squares of the most common shorter side until a run picks its working size
    with :func:`at_working_size`. Grey stays grey (1 channel); any colour image makes the set RGB.
    """
    index = index_image_folder(root, skip_bad=skip_bad)
    root = Path(root)
    dataset = Dataset(
        name=root.name,
        modality="image",
        samples=index.files,
        labels=index.labels,
        classes=index.classes,
        source=f"image folder: {root}",
    )
    if index.skipped:
        dataset.extra["skipped_bad"] = {"count": len(index.skipped), "examples": index.skipped[:5]}
    return dataset


# A from-scratch backbone without a pretrained input size (the small CIFAR-style ResNets) trains photos at this
# side: enough for the shapes of everyday objects, and it keeps CPU epochs in seconds to minutes.
DEFAULT_SCRATCH_SIDE = 96


def at_working_size(dataset: Dataset, image_size: int | None, preferred: int | None = None,
                    cache: bool = False, resize_arrays: bool = True) -> Dataset:
    """The dataset as a run sees it: lazily decoded images at ``image_size`` (or ``min(native, preferred)``,
    ``preferred`` defaulting to :data:`DEFAULT_SCRATCH_SIDE`), optionally read from the one-time decoded cache.

    In-memory arrays (digits, Fashion-MNIST, ``.npz``) keep their size unless ``image_size`` asks for another and
    ``resize_arrays`` allows it (training from scratch); transfer passes ``resize_arrays=False`` because its
    model's input adapter resizes batches on the fly, which costs no memory.
    """
    if image_size is not None and image_size < 8:
        raise FewlabelError(f"--image-size {image_size} is impossible; give a side of at least 8 pixels")
    files = dataset.samples
    if isinstance(files, ImageArrayFile):
        if image_size not in (None, files.size):
            raise FewlabelError(f"{dataset.name} is already read from its {files.size} px cache; start from the "
                                f"dataset as loaded to work at {image_size} px")
        return dataset
    if not isinstance(files, ImageFiles):
        if not resize_arrays or image_size is None or not isinstance(files, torch.Tensor) \
                or tuple(files.shape[-2:]) == (image_size, image_size):
            return dataset
        resized = replace(dataset, samples=resize_array(files, image_size), extra=dict(dataset.extra))
        resized.extra["working_size"] = image_size
        resized.extra["data_fingerprint"] = dataset.fingerprint()  # the data, not its resized copy (split checks)
        return resized
    size = image_size or min(files.size, preferred or DEFAULT_SCRATCH_SIDE)
    samples: ImageFiles | ImageArrayFile = files.at_size(size)
    if cache:
        samples = cached_store(samples, cache_dir() / "images")
    resized = replace(dataset, samples=samples, extra=dict(dataset.extra))
    resized.extra["working_size"] = size
    resized.extra["image_cache"] = samples.path if isinstance(samples, ImageArrayFile) else None
    resized.extra["fingerprint"] = files.fingerprint
    return resized


def resize_array(images: torch.Tensor, side: int, chunk: int = 1024) -> torch.Tensor:
    """uint8 ``(N, C, H, W)`` to ``(N, C, side, side)`` (shorter side to ``side``, centre square), antialiased,
    a chunk at a time so that no float copy of the whole set exists."""
    height, width = images.shape[-2:]
    scale = side / min(height, width)
    new = (max(side, round(height * scale)), max(side, round(width * scale)))
    top, left = (new[0] - side) // 2, (new[1] - side) // 2
    out = torch.empty((len(images), images.shape[1], side, side), dtype=torch.uint8)
    for start in range(0, len(images), chunk):
        part = torch.nn.functional.interpolate(images[start : start + chunk].float(), size=new, mode="bilinear",
                                               align_corners=False, antialias=True)
        out[start : start + chunk] = part[..., top : top + side, left : left + side].round().clamp(0, 255)
    return out


def _to_uint8(x: np.ndarray, path: Path, chunk: int = 4096) -> np.ndarray:
    """Float (or wider integer) images as uint8, a chunk at a time in their own dtype (never the whole set
    as float64): values in [0, 1] are scaled by 255, values in [0, 255] are rounded."""
    if x.size == 0:
        return x.astype(np.uint8)
    low, high = float(x.min()), float(x.max())
    if low < 0 or high > 255 or not np.isfinite(low) or not np.isfinite(high):
        raise FewlabelError(f"{path}: images must lie in [0, 1] (or [0, 255]); got {low}..{high}")
    scale = 255.0 if high <= 1.0 and x.dtype.kind == "f" else 1.0
    out = np.empty(x.shape, dtype=np.uint8)
    for start in range(0, len(x), chunk):
        part = x[start : start + chunk]
        out[start : start + chunk] = np.rint(part * part.dtype.type(scale) if scale != 1.0 else part)
    return out


def load_npz(path: str | os.PathLike) -> Dataset:
    """``.npz`` with images under ``x``/``images``/``X`` and labels under ``y``/``labels``/``Y``.

    Images may be (N,H,W), (N,H,W,C) or (N,C,H,W) with C in {1,3}; uint8, or floats in [0,1].
    Labels may be any integers or strings (mapped to sorted classes); ``-1`` marks an unlabelled image.
    An optional ``classes`` array names integer labels.
    """
    path = Path(path)
    try:
        archive = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise FewlabelError(f"cannot read {path} as .npz: {exc}") from None
    with archive:
        keys = set(archive.files)
        x_key = next((k for k in ("x", "images", "X") if k in keys), None)
        y_key = next((k for k in ("y", "labels", "Y") if k in keys), None)
        if x_key is None or y_key is None:
            raise FewlabelError(f"{path} needs arrays 'x' (images) and 'y' (labels); it has {sorted(keys)}")
        x = archive[x_key]
        y = archive[y_key]
        classes = [str(c) for c in archive["classes"]] if "classes" in keys else None
    if x.ndim == 3:
        x = x[:, None]
    elif x.ndim == 4 and x.shape[-1] in (1, 3) and x.shape[1] not in (1, 3):
        x = x.transpose(0, 3, 1, 2)
    if x.ndim != 4 or x.shape[1] not in (1, 3):
        raise FewlabelError(f"{path}: images must be (N,H,W), (N,H,W,C) or (N,C,H,W) with C=1 or 3, got {x.shape}")
    if len(x) != len(y):
        raise FewlabelError(f"{path}: {len(x)} images but {len(y)} labels")
    if x.dtype != np.uint8:
        x = _to_uint8(x, path)
    if y.dtype.kind in "iu":
        labels = y.astype(np.int64)
        if classes is None:
            classes = [str(c) for c in range(int(labels.max()) + 1 if len(labels) else 0)]
    else:
        names, labels = np.unique(np.asarray(y).astype(str), return_inverse=True)  # sorted class names
        classes = [str(n) for n in names]
        labels = labels.astype(np.int64).reshape(-1)
    return Dataset(
        name=path.stem,
        modality="image",
        samples=torch.from_numpy(np.ascontiguousarray(x)),
        labels=labels,
        classes=classes,
        source=f"npz: {path}",
    )
