"""Image datasets: the embedded ``digits``, ``fashion-mnist`` (IDX), an image folder and ``.npz`` arrays."""

from __future__ import annotations

import gzip
import os
from collections import Counter
from pathlib import Path

import numpy as np
import torch

from fewlabel.data.dataset import Dataset
from fewlabel.data.resolve import RemoteFile, resolve_files
from fewlabel.errors import FewlabelError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}

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


def load_image_folder(root: str | os.PathLike, image_size: int | None = None) -> Dataset:
    """``root/<class>/*.png|jpg``: grey stays grey (1 channel), any colour image makes the set RGB.

    Images of different sizes are resized to ``image_size`` (default: the most common size).
    """
    from PIL import Image, UnidentifiedImageError

    root = Path(root)
    class_dirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not class_dirs:
        raise FewlabelError(f"{root} has no class sub-folders; expected {root}/<class>/<image>.png")
    paths: list[Path] = []
    labels: list[int] = []
    for label, class_dir in enumerate(class_dirs):
        files = sorted(p for p in class_dir.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        paths.extend(files)
        labels.extend([label] * len(files))
    if not paths:
        raise FewlabelError(f"{root} has class folders but no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
    pil_images = []
    for path in paths:
        try:
            with Image.open(path) as img:
                img.load()
                pil_images.append(img.copy())
        except (UnidentifiedImageError, OSError) as exc:
            raise FewlabelError(f"cannot read image {path}: {exc}; fix or remove the file") from None
    grey = all(img.mode in ("L", "1", "I;16", "I", "F") for img in pil_images)
    mode = "L" if grey else "RGB"
    if image_size is None:
        width, height = Counter(img.size for img in pil_images).most_common(1)[0][0]
    else:
        width = height = image_size
    arrays = []
    for img in pil_images:
        img = img.convert(mode)
        if img.size != (width, height):
            img = img.resize((width, height), Image.BILINEAR)
        arr = np.asarray(img, dtype=np.uint8)
        arrays.append(arr[None] if grey else arr.transpose(2, 0, 1))
    return Dataset(
        name=root.name,
        modality="image",
        samples=torch.from_numpy(np.stack(arrays)),
        labels=np.asarray(labels),
        classes=[d.name for d in class_dirs],
        source=f"image folder: {root}",
    )


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
        x = x.astype(np.float64)
        if x.size and (x.min() < 0 or x.max() > 255):
            raise FewlabelError(f"{path}: float images must lie in [0, 1] (or [0, 255]); got {x.min()}..{x.max()}")
        scale = 255.0 if x.size and x.max() <= 1.0 else 1.0
        x = np.rint(x * scale).astype(np.uint8)
    if y.dtype.kind in "iu":
        labels = y.astype(np.int64)
        if classes is None:
            classes = [str(c) for c in range(int(labels.max()) + 1 if len(labels) else 0)]
    else:
        names = sorted({str(v) for v in y})
        classes = names
        labels = np.asarray([names.index(str(v)) for v in y], dtype=np.int64)
    return Dataset(
        name=path.stem,
        modality="image",
        samples=torch.from_numpy(np.ascontiguousarray(x)),
        labels=labels,
        classes=classes,
        source=f"npz: {path}",
    )
