"""Image folders indexed, not loaded: files are decoded on access, at the run's working size.

Why: a folder of 12-megapixel photos decoded whole and kept in memory needs tens of gigabytes, and training at
the files' native size costs hundreds of times the compute of the backbone's own input size. An
:class:`ImageFiles` store holds only relative file names (one byte per character, shared by forked data-loader
workers) and decodes each image when it is indexed, straight to a square of ``size`` pixels (JPEG files are
decoded at a reduced scale by libjpeg itself). Both stores here behave like the ``uint8 (N, C, H, W)`` tensor
that in-memory datasets hold: ``len``, ``shape``, ``store[i]`` and ``store[indices]``.

:func:`cached_store` optionally decodes every file once into a uint8 ``.npy`` array at the working size, keyed
by the files' fingerprint (names, sizes, modification times) and the size, so later runs and every compare job
read rows without decoding. The array is an ordinary ``.npy`` file (``np.load(path, mmap_mode="r")`` maps it);
fewlabel reads its rows with positioned reads rather than through a memory map, because every mapped page
read during an epoch would count toward the process's resident memory.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from abc import ABC, abstractmethod
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fewlabel.data.resolve import cache_dir
from fewlabel.errors import FewlabelError

log = logging.getLogger("fewlabel")

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
GREY_MODES = {"L", "LA", "1", "I;16", "I;16B", "I;16L", "I", "F"}
# Part of the cache key: bump when decoding changes (resampling, cropping), so old caches are not reused.
DECODE_VERSION = "shorter-side-bilinear-centre-crop-v1"


def hidden(name: str) -> bool:
    """macOS resource forks (``._x.jpg``), ``.ipynb_checkpoints/``, ``.DS_Store``, ``__MACOSX/``."""
    return name.startswith(".") or name == "__MACOSX"


def decode_image(path: str | os.PathLike, size: int, channels: int, crop: bool = True) -> torch.Tensor:
    """One file as ``uint8 (channels, size, size)``: shorter side scaled to ``size``, centre square kept
    (``crop=False``: the whole image, ``size`` on its shorter side, for training crops from the full photo).

    The same preprocessing serves training, evaluation and ``fewlabel predict``. Raises ``FewlabelError``
    naming the file when it cannot be decoded.
    """
    from PIL import Image, ImageOps, UnidentifiedImageError

    mode = "L" if channels == 1 else "RGB"
    try:
        with Image.open(path) as img:
            img.draft(mode, (size, size))  # JPEG: libjpeg decodes at 1/2..1/8 scale, never below the request
            img = ImageOps.exif_transpose(img)  # photos from phones store their rotation in EXIF
            if img.mode.startswith("I"):  # 16/32-bit grey: scale to 8 bits (convert() would clip at 255)
                wide = np.asarray(img, dtype=np.float64)
                top = 65535.0 if wide.max(initial=0) <= 65535 else float(wide.max())
                img = Image.fromarray(np.rint(wide.clip(0, top) * (255.0 / top)).astype(np.uint8), "L")
            img = img.convert(mode)
            width, height = img.size
            scale = size / min(width, height)
            new = (max(size, round(width * scale)), max(size, round(height * scale)))
            if new != (width, height):
                img = img.resize(new, Image.BILINEAR, reducing_gap=3.0)
            left, top = (new[0] - size) // 2, (new[1] - size) // 2
            if crop and new != (size, size):
                img = img.crop((left, top, left + size, top + size))
            array = np.array(img, dtype=np.uint8)  # a writable copy
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as exc:
        raise FewlabelError(f"cannot decode image {path}: {exc}; fix or remove the file, or pass --skip-bad "
                            "to skip unreadable images") from None
    array = array[None] if array.ndim == 2 else array.transpose(2, 0, 1)
    return torch.from_numpy(np.ascontiguousarray(array))


def _as_indices(index: Any, length: int) -> np.ndarray | None:
    """``None`` for a single integer index, else the selected positions as an int64 array."""
    if isinstance(index, int | np.integer):
        return None
    if isinstance(index, torch.Tensor):
        if index.ndim == 0:
            return None
        index = index.numpy()
    if isinstance(index, slice):
        return np.arange(length)[index]
    array = np.asarray(index)
    if array.dtype == bool:
        return np.flatnonzero(array)
    return array.astype(np.int64, copy=False)


class _SampleStore(ABC):
    """What both stores share: tensor-like indexing over ``_read(i)``."""

    channels: int
    size: int
    dtype = torch.uint8

    @abstractmethod
    def __len__(self) -> int: ...

    @abstractmethod
    def _read(self, index: int) -> torch.Tensor: ...

    @property
    def shape(self) -> tuple[int, int, int, int]:
        return (len(self), self.channels, self.size, self.size)

    def __getitem__(self, index: Any) -> torch.Tensor:
        chosen = _as_indices(index, len(self))
        if chosen is None:
            position = int(index)
            if not -len(self) <= position < len(self):
                raise IndexError(f"index {position} is out of range for {len(self)} images")
            return self._read(position % len(self))
        batch = torch.empty((len(chosen), self.channels, self.size, self.size), dtype=torch.uint8)
        for row, position in enumerate(chosen.tolist()):
            batch[row] = self._read(position)
        return batch


class ImageFiles(_SampleStore):
    """Files under ``root`` (relative names), decoded on access to ``uint8 (channels, size, size)``."""

    def __init__(self, root: str | os.PathLike, names: np.ndarray, channels: int, size: int, fingerprint: str,
                 cache_token: str | None = None, crop: bool = True):
        self.root = str(root)
        self.names = np.asarray(names, dtype=np.bytes_)  # one byte per character; no per-name Python objects
        self.channels = channels
        self.size = int(size)
        self.fingerprint = fingerprint  # names, sizes, modification times: identifies the data (splits, features)
        self.cache_token = cache_token or fingerprint  # adds inodes and change times: keys decoded-pixel caches
        self.crop = crop  # False: whole images of varying shape, only for per-sample training transforms

    def __len__(self) -> int:
        return len(self.names)

    def path(self, index: int) -> str:
        return os.path.join(self.root, self.names[index].decode("utf-8", "surrogateescape"))

    def _read(self, index: int) -> torch.Tensor:
        return decode_image(self.path(index), self.size, self.channels, crop=self.crop)

    def __getitem__(self, index: Any) -> torch.Tensor:
        if not self.crop and _as_indices(index, len(self)) is not None:
            raise ValueError("whole (uncropped) images differ in shape: index them one at a time")
        return super().__getitem__(index)

    def whole_images(self) -> ImageFiles:
        """The same files decoded whole (shorter side at ``size``, nothing cropped away), for a training
        transform that crops to ``size`` itself: random-resized crops then come from the full photo."""
        return ImageFiles(self.root, self.names, self.channels, self.size, self.fingerprint, self.cache_token,
                          crop=False)

    def at_size(self, size: int) -> ImageFiles:
        """The same files, decoded at another working size."""
        return ImageFiles(self.root, self.names, self.channels, size, self.fingerprint, self.cache_token, self.crop)

    def subset(self, keep: np.ndarray) -> ImageFiles:
        return ImageFiles(self.root, self.names[keep], self.channels, self.size, self.fingerprint, self.cache_token,
                          self.crop)

    def cache_key(self) -> str:
        text = f"{self.cache_token}|{self.channels}|{self.size}|{DECODE_VERSION}"
        return hashlib.sha256(text.encode()).hexdigest()[:24]

    def __repr__(self) -> str:
        return f"ImageFiles({self.root!r}, {len(self)} files, {self.channels}x{self.size}x{self.size})"


class ImageArrayFile(_SampleStore):
    """Rows of a uint8 ``(N, C, S, S)`` ``.npy`` file, read with ``os.preadv`` (no memory map, see module doc).

    The file descriptor is opened lazily per process, so the store pickles into data-loader workers.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = str(path)
        with open(self.path, "rb") as handle:
            version = np.lib.format.read_magic(handle)
            read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                           else np.lib.format.read_array_header_2_0)
            shape, fortran, dtype = read_header(handle)
            self.offset = handle.tell()
        if dtype != np.uint8 or fortran or len(shape) != 4 or shape[2] != shape[3]:
            raise FewlabelError(f"{self.path} is not an image cache (uint8 N x C x S x S); delete it to rebuild")
        self.length, self.channels, self.size = int(shape[0]), int(shape[1]), int(shape[2])
        self.row_bytes = self.channels * self.size * self.size
        if os.path.getsize(self.path) < self.offset + self.length * self.row_bytes:
            raise FewlabelError(f"image cache {self.path} is truncated; delete it to rebuild")
        self._fd: int | None = None
        self._pid = -1

    def __len__(self) -> int:
        return self.length

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_fd": None, "_pid": -1}

    def _descriptor(self) -> int:
        if self._fd is None or self._pid != os.getpid():
            self._fd, self._pid = os.open(self.path, os.O_RDONLY), os.getpid()
        return self._fd

    def _read(self, index: int) -> torch.Tensor:
        row = np.empty((self.channels, self.size, self.size), dtype=np.uint8)
        got = os.preadv(self._descriptor(), [memoryview(row).cast("B")], self.offset + index * self.row_bytes)
        if got != self.row_bytes:
            raise FewlabelError(f"image cache {self.path} is truncated; delete it to rebuild")
        return torch.from_numpy(row)

    def __del__(self) -> None:
        if getattr(self, "_fd", None) is not None and self._pid == os.getpid():
            os.close(self._fd)

    def __repr__(self) -> str:
        return f"ImageArrayFile({self.path!r}, {self.length} images, {self.channels}x{self.size}x{self.size})"


@dataclass
class FolderIndex:
    """What indexing an image folder found."""

    files: ImageFiles
    labels: np.ndarray
    classes: list[str]
    native_side: int  # the most common shorter side among the files
    skipped: list[str]  # unreadable files left out (only with ``skip_bad``)


def _read_header(path: str) -> tuple[str, tuple[int, int]]:
    from PIL import Image

    with Image.open(path) as img:  # reads the header only
        return img.mode, img.size


def index_image_folder(root: str | os.PathLike, skip_bad: bool = False) -> FolderIndex:
    """``root/<class>/**/<image>``: names, labels and each file's header (mode, size), nothing decoded.

    Hidden files and folders are ignored. A class folder without images is an error that names it.
    Unreadable files are an error naming the file, or with ``skip_bad`` are left out and counted; with
    ``skip_bad`` every file is also decoded once (small) so that no bad file surfaces later mid-training.
    """
    root = Path(root)
    class_dirs = sorted(p for p in root.iterdir() if p.is_dir() and not hidden(p.name))
    if not class_dirs:
        raise FewlabelError(f"{root} has no class sub-folders; expected {root}/<class>/<image>.jpg")
    names: list[str] = []
    labels: list[int] = []
    empty: list[str] = []
    unreadable: list[str] = []  # only with skip_bad: files that could not even be stat-ed
    digest = hashlib.sha256()
    content = hashlib.sha256()
    for label, class_dir in enumerate(class_dirs):
        found = 0
        for folder, subdirs, files in os.walk(class_dir):
            subdirs[:] = sorted(d for d in subdirs if not hidden(d))
            for name in sorted(files):
                if hidden(name) or os.path.splitext(name)[1].lower() not in IMAGE_SUFFIXES:
                    continue
                full = os.path.join(folder, name)
                relative = os.path.relpath(full, root)
                try:
                    stat = os.stat(full)
                except OSError as exc:  # a dangling link, a file removed meanwhile
                    if not skip_bad:
                        raise FewlabelError(f"cannot read image {full}: {exc.strerror}; fix or remove the file, or "
                                            "pass --skip-bad to skip unreadable images") from None
                    unreadable.append(relative)
                    continue
                digest.update(f"{relative}|{stat.st_size}|{stat.st_mtime_ns}\n".encode("utf-8", "surrogateescape"))
                # Rewritten in place with the old size and time kept (cp -p, rsync -t, unzip): a new inode or
                # status-change time still tells the decoded-pixel caches apart.
                content.update(f"{stat.st_ino}|{stat.st_ctime_ns}\n".encode())
                names.append(relative)
                labels.append(label)
                found += 1
        if not found:
            empty.append(str(class_dir))
    if empty:
        raise FewlabelError(f"class folder {empty[0]} has no images ({', '.join(sorted(IMAGE_SUFFIXES))})"
                            + (f" (and {len(empty) - 1} more empty class folders)" if len(empty) > 1 else "")
                            + "; add images or remove the folder")
    fingerprint = digest.hexdigest()[:24]
    content.update(digest.digest())
    cache_token = content.hexdigest()[:24]
    # The headers of an unchanged folder (same names, sizes and modification times) are read once: on a cold
    # disk, reading 200,000 headers takes minutes, listing and stat-ing the files seconds.
    summary_path = cache_dir() / "image-index" / f"{cache_token}-{'skip-bad' if skip_bad else 'strict'}-v1.json"
    summary = _read_index_summary(summary_path)
    if summary is None:
        summary = _read_headers(root, names, skip_bad)
        try:
            summary_path.parent.mkdir(parents=True, exist_ok=True)
            tmp = summary_path.with_name(f"{summary_path.stem}.{os.getpid()}.tmp")
            tmp.write_text(json.dumps(summary), encoding="utf-8")
            os.replace(tmp, summary_path)
        except OSError:  # a read-only cache only costs the next run the header pass
            pass
    skipped = [*unreadable, *summary["skipped"]]
    if skipped:
        log.warning("skipped %d unreadable image(s) in %s, e.g. %s", len(skipped), root, skipped[0])
    bad = set(skipped)
    keep = np.asarray([name not in bad for name in names], dtype=bool)
    kept_labels = np.asarray(labels, dtype=np.int64)[keep]
    if not len(kept_labels):
        raise FewlabelError(f"{root}: no readable images left")
    files = ImageFiles(root, np.asarray([n.encode("utf-8", "surrogateescape") for n in names])[keep],
                       summary["channels"], summary["side"], fingerprint, cache_token)
    missing = [class_dirs[c].name for c in range(len(class_dirs)) if not (kept_labels == c).any()]
    if missing:
        raise FewlabelError(f"class folder {root / missing[0]} has no readable images; fix or remove it")
    return FolderIndex(files, kept_labels, [d.name for d in class_dirs], summary["side"], skipped)


def _read_headers(root: Path, names: list[str], skip_bad: bool) -> dict[str, Any]:
    """Channels (any colour image makes the set RGB), the most common shorter side, and the unreadable files
    (only with ``skip_bad``, which also decodes each file once; without it the first is an error)."""
    from PIL import Image

    modes: Counter[bool] = Counter()
    sides: Counter[int] = Counter()
    skipped: list[str] = []
    for relative in names:
        full = os.path.join(root, relative)
        try:
            mode, (width, height) = _read_header(full)
            if skip_bad:
                decode_image(full, 32, 1)
        except (OSError, ValueError, FewlabelError, Image.DecompressionBombError) as exc:
            if not skip_bad:
                reason = str(exc).split(";")[0]
                raise FewlabelError(f"cannot read image {full}: {reason}; fix or remove the file, or pass "
                                    "--skip-bad to skip unreadable images") from None
            skipped.append(relative)
            continue
        modes[mode in GREY_MODES] += 1
        sides[min(width, height)] += 1
    if not sides:
        raise FewlabelError(f"{root}: no readable images left")
    return {"channels": 3 if modes[False] else 1, "side": sides.most_common(1)[0][0], "skipped": skipped}


def _read_index_summary(path: Path) -> dict[str, Any] | None:
    try:
        summary = json.loads(path.read_text(encoding="utf-8"))
        if isinstance(summary, dict) and {"channels", "side", "skipped"} <= summary.keys():
            return summary
    except (OSError, ValueError):
        pass
    return None


def cached_store(files: ImageFiles, cache_root: str | os.PathLike, workers: int | None = None) -> ImageArrayFile:
    """Decode every file once into ``<cache_root>/<key>.npy`` (uint8 at the working size); reuse it after.

    The key covers the files' fingerprint, the channels, the size and the decoding version, so changed files
    or another size build a new cache. The array is written under a temporary name and renamed when complete,
    so an interrupted build is never read.
    """
    from torch.utils.data import DataLoader

    if not files.crop:
        raise ValueError("the cache holds squares of the working size; cache the cropped store")
    cache_root = Path(cache_root)
    path = cache_root / f"{files.cache_key()}.npy"
    if path.is_file():
        try:
            store = ImageArrayFile(path)
            if store.shape == files.shape:
                return store
        except (OSError, ValueError, FewlabelError):
            pass
        log.warning("image cache %s does not fit these files; rebuilding it", path)
    cache_root.mkdir(parents=True, exist_ok=True)
    remove_abandoned_builds(cache_root, path.stem)
    tmp = path.with_name(f"{path.stem}.{os.getpid()}.tmp.npy")
    # The header and the file's full length come from numpy; rows are then written with positioned writes,
    # since pages written through a memory map would stay in this process's resident memory.
    header_only = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=files.shape)
    del header_only
    layout = ImageArrayFile(tmp)
    workers = max(1, min(8, (os.cpu_count() or 1))) if workers is None else workers
    loader = DataLoader(_Rows(files), batch_size=64, num_workers=workers, collate_fn=_stack_rows)
    started, done, next_report = time.perf_counter(), 0, 0.1
    log.info("building the image cache for %d files at %d px in %s", len(files), files.size, path)
    try:
        with open(tmp, "r+b") as handle:
            for positions, batch in loader:
                data = memoryview(batch.numpy().tobytes())
                where = layout.offset + positions[0] * layout.row_bytes
                while data:  # pwrite may write less than asked (large batches, signals)
                    written = os.pwrite(handle.fileno(), data, where)
                    data, where = data[written:], where + written
                done += len(positions)
                if done / len(files) >= next_report:
                    log.info("image cache: %d/%d images (%.0f images/s)", done, len(files),
                             done / max(time.perf_counter() - started, 1e-9))
                    next_report += 0.1
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return ImageArrayFile(path)


def remove_abandoned_builds(cache_root: Path, stem: str, suffix: str = "npy") -> None:
    """Delete ``<stem>.<pid>.tmp.<suffix>`` files of builds whose process is gone (killed, out of memory): each
    can be as large as the whole cache. A build still running elsewhere is left alone (``suffix="*"``: every
    file a build writes)."""
    for leftover in cache_root.glob(f"{stem}.*.tmp.{suffix}"):
        pid = leftover.name[len(stem) + 1 :].split(".", 1)[0]
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            leftover.unlink(missing_ok=True)
        except PermissionError:  # alive, another user's
            pass


class _Rows(torch.utils.data.Dataset):
    def __init__(self, files: ImageFiles):
        self.files = files

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> tuple[int, torch.Tensor]:
        return index, self.files[index]


def _stack_rows(items: list[tuple[int, torch.Tensor]]) -> tuple[list[int], torch.Tensor]:
    return [i for i, _ in items], torch.stack([t for _, t in items])
