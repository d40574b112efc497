"""Export and reload backbones (safetensors + JSON metadata), the hand-off from pretraining to downstream use."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from fewlabel.errors import FewlabelError
from fewlabel.models.backbones import Backbone, BackboneSpec, InputSpec, create_backbone
from fewlabel.models.weights import apply_state_dict, load_state_dict_file

EXPORT_WEIGHTS = "backbone.safetensors"
EXPORT_META = "backbone.json"
FORMAT = "fewlabel-backbone/1"


def save_backbone(backbone: Backbone, spec: BackboneSpec, folder: str | Path, **meta: Any) -> Path:
    """Write ``backbone.safetensors`` + ``backbone.json`` into ``folder``; returns the weights path."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    from fewlabel.engine.run import atomic_path, atomic_write  # here: fewlabel.engine imports the models

    tensors = {k: v.detach().cpu().contiguous() for k, v in backbone.state_dict().items()}
    with atomic_path(folder / EXPORT_WEIGHTS, suffix=".safetensors") as tmp:
        save_file(tensors, str(tmp), metadata={"format": FORMAT})
    info = {"format": FORMAT, "spec": asdict(spec), "embed_dim": backbone.embed_dim,
            "input_spec": backbone.input_spec.to_dict(), "stages": backbone.stages, **meta}
    atomic_write(folder / EXPORT_META, json.dumps(info, indent=2) + "\n")
    return folder / EXPORT_WEIGHTS


def load_backbone(path: str | Path) -> tuple[Backbone, dict[str, Any]]:
    """Rebuild an exported backbone from its folder (a run folder or ``export/``) or its weights file."""
    path = Path(path)
    candidates = [path / "export", path] if path.is_dir() else [path.parent]
    folder = next((c for c in candidates if (c / EXPORT_META).is_file()), None)
    if folder is None:
        raise FewlabelError(f"no exported backbone at {path}; pass a `fewlabel pretrain` run folder or its export/")
    try:
        info = json.loads((folder / EXPORT_META).read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise FewlabelError(f"{folder / EXPORT_META} is corrupt ({exc.msg}); re-export the backbone") from None
    if info.get("format") != FORMAT:
        raise FewlabelError(f"{folder / EXPORT_META} is not a fewlabel backbone export (format {info.get('format')})")
    spec = BackboneSpec(**info["spec"])
    backbone = create_backbone(spec)
    raw = info["input_spec"]
    backbone.input_spec = InputSpec(channels=raw["channels"], size=tuple(raw["size"]) if raw["size"] else None,
                                    mean=tuple(raw["mean"]), std=tuple(raw["std"]))
    state = load_state_dict_file(folder / EXPORT_WEIGHTS)
    apply_state_dict(backbone, state, source=str(folder / EXPORT_WEIGHTS))
    return backbone, info


@torch.no_grad()
def same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    """True when two modules hold identical tensors (used by tests and export checks)."""
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
