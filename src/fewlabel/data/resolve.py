"""Find a named dataset's files: data dir flag -> ``FEWLABEL_DATA`` -> known local copies -> download.

A download is only attempted when nothing local was found, is verified by SHA-256 and lands in the user
cache (``~/.cache/fewlabel``). When all places fail, the error names every place that was searched.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from fewlabel.errors import FewlabelError

DATA_ENV = "FEWLABEL_DATA"


@dataclass(frozen=True)
class RemoteFile:
    name: str
    url: str
    sha256: str


def cache_dir() -> Path:
    root = os.environ.get("FEWLABEL_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "fewlabel")
    return Path(root)


def data_roots(data_dir: str | os.PathLike | None) -> list[Path]:
    """The user-given roots, in priority order: the explicit flag, then the environment variable."""
    roots = []
    if data_dir:
        roots.append(Path(data_dir))
    env = os.environ.get(DATA_ENV)
    if env:
        roots.extend(Path(p) for p in env.split(os.pathsep) if p)
    return roots


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def resolve_files(
    dataset: str,
    files: Sequence[RemoteFile],
    data_dir: str | os.PathLike | None,
    subdirs: Sequence[str],
    known_local: Sequence[str],
    allow_download: bool = True,
) -> tuple[Path, str]:
    """Return (folder holding all ``files``, how it was found); download into the cache as a last resort."""
    searched: list[str] = []
    candidates: list[tuple[Path, str]] = []
    for root in data_roots(data_dir):
        for sub in subdirs:
            candidates.append((root / sub if sub else root, "data dir"))
    for path in known_local:
        candidates.append((Path(path), "known local copy"))
    cached = cache_dir() / dataset
    candidates.append((cached, "cache"))
    for folder, how in candidates:
        searched.append(str(folder))
        if all((folder / f.name).is_file() for f in files):
            return folder, f"{how}: {folder}"
    if allow_download and os.environ.get("FEWLABEL_OFFLINE") != "1":
        try:
            download_files(files, cached)
            return cached, f"downloaded: {cached}"
        except OSError as exc:
            searched.append(f"download failed ({exc.__class__.__name__}: {exc})")
    raise FewlabelError(
        f"dataset '{dataset}' not found; searched {', '.join(searched)}. "
        f"Put its files ({', '.join(f.name for f in files)}) in one of these or pass --data-dir / set {DATA_ENV}."
    )


def download_files(files: Sequence[RemoteFile], target: Path) -> None:
    """Download each missing file, check its SHA-256, and move it in place only when it matches."""
    target.mkdir(parents=True, exist_ok=True)
    for remote in files:
        final = target / remote.name
        if final.is_file():
            continue
        with tempfile.NamedTemporaryFile(dir=target, delete=False, suffix=".part") as tmp:
            tmp_path = Path(tmp.name)
        try:
            with urllib.request.urlopen(remote.url, timeout=30) as response, open(tmp_path, "wb") as out:
                shutil.copyfileobj(response, out)
            actual = sha256_of(tmp_path)
            if actual != remote.sha256:
                raise OSError(f"checksum mismatch for {remote.url}: got {actual[:12]}..., want {remote.sha256[:12]}...")
            tmp_path.replace(final)
        finally:
            tmp_path.unlink(missing_ok=True)
