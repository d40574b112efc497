"""Run folders: every run writes its config, metrics and logs next to its checkpoints.

Layout::

    <run>/config.yaml    the full, resolved configuration (+ versions)
    <run>/split.npz      the exact split, reusable by any later run (``--split <run>``)
    <run>/metrics.json   headline and detailed metrics (written atomically, last)
    <run>/logs/          train.log (human) and csv/metrics.csv (per step/epoch, Lightning CSVLogger)
    <run>/checkpoints/   Lightning checkpoints (best by validation accuracy)
    <run>/model.safetensors + model.json   the trained weights and what is needed to rebuild them
"""

from __future__ import annotations

import json
import logging
import os
import platform
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from fewlabel.errors import FewlabelError

LOGGER_NAME = "fewlabel"


def atomic_write(path: Path, text: str) -> None:
    """Write through a temporary file + rename so an interrupted run never leaves half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", dir=path.parent, delete=False, suffix=".tmp", encoding="utf-8") as tmp:
        tmp.write(text)
        tmp_name = tmp.name
    os.replace(tmp_name, path)


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "item") and callable(value.item):
        return value.item()
    return value


@dataclass
class RunFolder:
    path: Path

    @classmethod
    def create(cls, out: str | os.PathLike | None, default_name: str, base: str | os.PathLike = "runs") -> RunFolder:
        """A new, empty run folder: ``out`` exactly (must not hold files), or a unique ``base/default_name``."""
        if out is not None:
            path = Path(out)
            if path.exists() and (not path.is_dir() or any(path.iterdir())):
                raise FewlabelError(f"run folder {path} already exists and is not empty; choose another --out")
        else:
            path = Path(base) / default_name
            suffix = 2
            while path.exists():
                path = Path(base) / f"{default_name}-{suffix}"
                suffix += 1
        try:
            (path / "logs").mkdir(parents=True, exist_ok=True)
            (path / "checkpoints").mkdir(exist_ok=True)
        except OSError as exc:
            raise FewlabelError(f"cannot create run folder {path}: {exc.strerror}; choose another --out") from None
        return cls(path)

    @property
    def checkpoints(self) -> Path:
        return self.path / "checkpoints"

    @property
    def logs(self) -> Path:
        return self.path / "logs"

    def write_config(self, config: dict[str, Any]) -> None:
        import torch

        from fewlabel import __version__

        versions = {"fewlabel": __version__, "torch": str(torch.__version__), "python": platform.python_version()}
        atomic_write(self.path / "config.yaml", yaml.safe_dump({**_jsonable(config), "versions": versions},
                                                                 sort_keys=False))

    def write_metrics(self, metrics: dict[str, Any]) -> None:
        atomic_write(self.path / "metrics.json", json.dumps(_jsonable(metrics), indent=2) + "\n")

    def read_metrics(self) -> dict[str, Any]:
        return json.loads((self.path / "metrics.json").read_text())

    def attach_log(self) -> logging.Handler:
        """Send fewlabel's log records to ``logs/train.log`` for the lifetime of this run."""
        handler = logging.FileHandler(self.logs / "train.log", encoding="utf-8")
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        logger = logging.getLogger(LOGGER_NAME)
        if logger.getEffectiveLevel() > logging.INFO:
            logger.setLevel(logging.INFO)
        logger.addHandler(handler)
        return handler

    def detach_log(self, handler: logging.Handler) -> None:
        logging.getLogger(LOGGER_NAME).removeHandler(handler)
        handler.close()
