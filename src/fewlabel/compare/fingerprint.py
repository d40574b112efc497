"""A fingerprint of the data a compare grid runs on, stored with every result so changed data reruns its jobs.

- a path: a single file by its size and a SHA-256 of its content (a file over ``HASH_LIMIT`` bytes by its size
  and modification time instead); a folder by its file list with sizes and modification times (nothing is
  read: cheap even for 100k images);
- a registered name: the files it resolved to, the same way, when its ``source`` names them (e.g.
  ``data dir: /data/rotten-tomatoes``), plus in every case the dataset's own ``fingerprint()`` (name, size,
  labels and a strided sample of the pixels or the indexed files' print), which is what covers embedded data.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path
from typing import Any

HASH_LIMIT = 64 * 2**20  # hash single files up to 64 MiB; larger ones by size and modification time


def _file_entry(path: Path) -> dict[str, Any]:
    stat = path.stat()
    entry: dict[str, Any] = {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
    if stat.st_size <= HASH_LIMIT:
        digest = hashlib.sha256()
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(2**20), b""):
                digest.update(block)
        entry = {"size": stat.st_size, "sha256": digest.hexdigest()}  # content decides: a touch reruns nothing
    return entry


def path_fingerprint(path: str | os.PathLike) -> str | None:
    """The print of a file or folder (see the module doc), or None when ``path`` does not exist."""
    path = Path(path).expanduser()
    digest = hashlib.sha256()
    if path.is_file():
        digest.update(json.dumps({"file": _file_entry(path)}, sort_keys=True).encode())
    elif path.is_dir():
        for root, dirs, files in os.walk(path):
            dirs.sort()
            for name in sorted(files):
                file = Path(root) / name
                try:
                    stat = file.stat()
                except OSError:  # a broken link or a file removed while walking
                    continue
                digest.update(f"{file.relative_to(path).as_posix()}|{stat.st_size}|{stat.st_mtime_ns}\n".encode())
    else:
        return None
    return digest.hexdigest()[:16]


_SOURCE_PATH = re.compile(r"(/[^\s()]+)")


def data_fingerprint(data: str, dataset: Any, registered: bool) -> str:
    """The fingerprint compare stores with each result of a grid on ``data`` (loaded as ``dataset``)."""
    parts: dict[str, Any] = {"dataset": dataset.fingerprint()}
    if not registered:
        parts["path"] = path_fingerprint(data)
    else:  # the files the registered name resolved to, when its source names them
        for found in _SOURCE_PATH.findall(str(getattr(dataset, "source", "") or "")):
            if Path(found).exists():
                parts[f"resolved:{found}"] = path_fingerprint(found)
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]


__all__ = ["HASH_LIMIT", "data_fingerprint", "path_fingerprint"]
