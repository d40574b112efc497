"""Resumable benchmark cells: each finished cell is stored in one JSON file and never rerun."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch


class CellStore:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.data = json.loads(self.path.read_text(encoding="utf-8")) if self.path.exists() else {"cells": []}
        self.data["machine"] = {"torch": str(torch.__version__), "threads": torch.get_num_threads(),
                                "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}

    def find(self, **key: Any) -> dict[str, Any] | None:
        return next((c for c in self.data["cells"] if all(c.get(k) == v for k, v in key.items())), None)

    def done(self, **key: Any) -> bool:
        return self.find(**key) is not None

    def run(self, key: dict[str, Any], work: Callable[[], dict[str, Any]]) -> None:
        if self.done(**key):
            return
        result = work()
        self.data["cells"].append({**key, **result})
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text(json.dumps(self.data, indent=2) + "\n", encoding="utf-8")
        print(json.dumps({**key, **{k: v for k, v in result.items() if not isinstance(v, dict | list)}}), flush=True)
