"""The export of a ``fewlabel pretrain --method clip`` run: both towers, both projections and the logit scale.

Layout of ``<run>/export/`` (written whole or not at all)::

    clip.json            what everything is: towers, sources, dims, loss, logit scale, data, prompts
    heads.safetensors    image_projection.*, text_projection.*, logit_scale.log_scale (+ logit_bias for SigLIP)
    image/tower.json     how to rebuild the image tower's architecture offline (its source, builder, input spec)
    image/tower.safetensors   its weights (written also when it was locked: the export never depends on the source)
    text/                the text tower as a Hugging Face folder with its tokenizer (``AutoModel.from_pretrained``)

The image tower alone is a backbone source like any other (:func:`load_clip_image_tower`, reached through
:func:`fewlabel.models.pretrained.load_pretrained` with the run folder or its export); :func:`load_clip` rebuilds
the whole model for zero-shot classification and retrieval.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from fewlabel.errors import FewlabelError
from fewlabel.models.backbones import Backbone, BackboneSpec, InputSpec

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

    from fewlabel.methods.clip import CLIPPretraining
    from fewlabel.models.text_encoder import TextEncoderBackbone

CLIP_META = "clip.json"
CLIP_FORMAT = "fewlabel-clip/1"
HEADS_FILE = "heads.safetensors"
TOWER_META = "tower.json"
TOWER_WEIGHTS = "tower.safetensors"
TOWER_PREFIXES = ("image_tower.", "text_tower.")


def clip_folder(path: str | Path) -> Path | None:
    """The export folder when ``path`` is a CLIP run folder or its export, else None."""
    path = Path(path).expanduser()
    if not path.is_dir():
        return None
    return next((folder for folder in (path / "export", path) if (folder / CLIP_META).is_file()), None)


def read_clip_folder(path: str | Path) -> Path:
    """:func:`clip_folder`, or a one-line error when ``path`` is not a CLIP run or export."""
    folder = clip_folder(path)
    if folder is None:
        raise FewlabelError(f"{path} is not a CLIP export (no {CLIP_META})")
    return folder


def read_clip_info(path: str | Path) -> dict[str, Any]:
    """``clip.json`` of a CLIP run folder or export (one-line error when it is missing or corrupt)."""
    folder = clip_folder(path)
    if folder is None:
        raise FewlabelError(f"{path} is not a CLIP export (no {CLIP_META}); pass a `fewlabel pretrain --method clip` "
                            "run folder or its export/")
    try:
        info = json.loads((folder / CLIP_META).read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise FewlabelError(f"{folder / CLIP_META} is corrupt ({exc}); pretrain again") from None
    if not isinstance(info, dict) or info.get("format") != CLIP_FORMAT:
        raise FewlabelError(f"{folder / CLIP_META} is not a fewlabel CLIP export (format "
                            f"{info.get('format') if isinstance(info, dict) else None})")
    return info


# --- the image tower --------------------------------------------------------------------------------------------


def image_tower_builder(source: str, in_chans: int, width: int | None = None) -> dict[str, Any]:
    """How to rebuild the architecture of image backbone ``source`` offline (its weights come from the export):
    a fewlabel registry spec, EfficientNet-Lite0's own timm configuration, or a bare timm architecture."""
    from fewlabel.models.backbones import registered_backbones
    from fewlabel.models.pretrained import parse_source

    if source in registered_backbones():
        return {"kind": "fewlabel", "spec": asdict(BackboneSpec(name=source, in_chans=in_chans, width=width))}
    parsed = parse_source(source)
    if parsed.kind == "pypi":
        return {"kind": "efficientnet_lite0"}
    if parsed.kind == "clip":  # a CLIP run's image tower, pretrained further
        return dict(json.loads((Path(read_clip_folder(source)) / "image" / TOWER_META).read_text("utf-8"))["builder"])
    if parsed.kind == "export":
        from fewlabel.models.export import load_backbone

        _, info = load_backbone(source)
        return {"kind": "fewlabel", "spec": info["spec"]}
    return {"kind": "timm", "name": parsed.name}


def _build_image_tower(builder: dict[str, Any], input_spec: InputSpec, name: str) -> Backbone:
    """The architecture ``builder`` describes (weights follow), with the input spec the tower was trained with."""
    kind = builder.get("kind")
    if kind == "fewlabel":
        from fewlabel.models.backbones import create_backbone

        backbone = create_backbone(BackboneSpec(**builder["spec"]))
    elif kind == "efficientnet_lite0":
        from fewlabel.models.pretrained import load_pretrained

        backbone = load_pretrained("efficientnet_lite0")  # offline; the export's weights replace the package's
    elif kind == "timm":
        import timm

        from fewlabel.models.pretrained import wrap_body

        if builder.get("name") not in timm.list_models():
            raise FewlabelError(f"the CLIP image tower's architecture {builder.get('name')!r} is not a timm model")
        body = timm.create_model(builder["name"], pretrained=False, num_classes=0)
        backbone = wrap_body(body, builder["name"], input_spec)
    else:
        raise FewlabelError(f"unknown image tower builder {kind!r} in a CLIP export; re-export it")
    backbone.input_spec = input_spec
    backbone.name = name
    return backbone


def _input_spec(raw: dict[str, Any]) -> InputSpec:
    return InputSpec(channels=int(raw["channels"]), size=tuple(raw["size"]) if raw.get("size") else None,
                     mean=tuple(raw["mean"]), std=tuple(raw["std"]))


def load_clip_image_tower(path: str | Path, image_size: int | None = None) -> Backbone:
    """The image tower of a CLIP run or export as a :class:`Backbone` (features before the projection, the
    features CLIP's linear probes use); ``image_size`` overrides the side inputs are resized to."""
    from fewlabel.models.weights import apply_state_dict, load_state_dict_file

    folder = read_clip_folder(path)
    read_clip_info(folder)  # checks the format
    tower = folder / "image"
    try:
        record = json.loads((tower / TOWER_META).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise FewlabelError(f"cannot read {tower / TOWER_META} ({exc.__class__.__name__}); pretrain again") from None
    spec = _input_spec(record["input_spec"])
    if image_size:
        spec = InputSpec(spec.channels, (image_size, image_size), spec.mean, spec.std)
    backbone = _build_image_tower(record["builder"], spec, f"clip-image:{record.get('source', '?')}")
    apply_state_dict(backbone, load_state_dict_file(tower / TOWER_WEIGHTS), source=str(tower / TOWER_WEIGHTS))
    return backbone.eval()


# --- writing ------------------------------------------------------------------------------------------------------


def save_clip_export(folder: str | Path, method: CLIPPretraining, image_backbone: Backbone,
                     image_record: dict[str, Any], text_backbone: TextEncoderBackbone,
                     tokenizer: PreTrainedTokenizerBase, info: dict[str, Any]) -> Path:
    """Write the export (layout in the module doc) atomically: a resumed run replaces its earlier export only
    once the new one is complete. ``image_record``: source, builder, trained; ``info``: the rest of clip.json."""
    from fewlabel.engine.run import atomic_folder  # here: fewlabel.engine imports the models

    heads = {k: v.detach().cpu().contiguous() for k, v in method.state_dict().items()
             if not k.startswith(TOWER_PREFIXES)}
    with atomic_folder(Path(folder)) as tmp:
        (tmp / "image").mkdir()
        save_file({k: v.detach().cpu().contiguous() for k, v in image_backbone.state_dict().items()},
                  str(tmp / "image" / TOWER_WEIGHTS), metadata={"format": CLIP_FORMAT})
        tower = {**image_record, "embed_dim": image_backbone.embed_dim,
                 "input_spec": image_backbone.input_spec.to_dict(), "stages": image_backbone.stages}
        (tmp / "image" / TOWER_META).write_text(json.dumps(tower, indent=2) + "\n", encoding="utf-8")
        text_backbone.body.save_pretrained(str(tmp / "text"))
        tokenizer.save_pretrained(str(tmp / "text"))
        save_file(heads, str(tmp / HEADS_FILE), metadata={"format": CLIP_FORMAT})
        meta = {"format": CLIP_FORMAT, **info,
                "image": {**image_record, "embed_dim": image_backbone.embed_dim, "folder": "image",
                          "input_spec": image_backbone.input_spec.to_dict()},
                "text": {**info.get("text", {}), "embed_dim": text_backbone.embed_dim, "folder": "text",
                         "pooling": text_backbone.pooling, "max_length": text_backbone.input_spec.max_length},
                "heads": HEADS_FILE, "hparams": method.hparams,
                "logit_scale": method.logit_scale.scale, "temperature": method.logit_scale.temperature}
        (tmp / CLIP_META).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    return Path(folder)


# --- reading the whole model ---------------------------------------------------------------------------------------


@dataclass
class LoadedCLIP:
    """A CLIP export rebuilt: ``model`` (towers, projections, logit scale; eval mode), the text tokenizer, and
    clip.json. Images reach it as features of ``model.image_tower`` (a :class:`Backbone`, fed through the image
    modality's frozen-feature path), texts as strings."""

    model: CLIPPretraining
    tokenizer: PreTrainedTokenizerBase
    info: dict[str, Any]
    folder: Path

    @property
    def image_tower(self) -> Backbone:
        return self.model.image_tower  # type: ignore[return-value]

    @torch.no_grad()
    def encode_texts(self, texts: list[str], batch_size: int = 256,
                     device: torch.device | None = None) -> torch.Tensor:
        """L2-normalised, projected embeddings of ``texts`` (float32, on the CPU)."""
        from fewlabel.models.tokenizers import TextCollator

        device = device or torch.device("cpu")
        self.model.eval().to(device)
        collate = TextCollator(self.tokenizer, max_length=self.model.text_tower.input_spec.max_length)
        chunks = []
        for start in range(0, len(texts), batch_size):
            batch = {k: v.to(device) for k, v in collate(list(texts[start : start + batch_size])).items()}
            chunks.append(self.model.encode_text(batch).float().cpu())
        self.model.to("cpu")
        return torch.cat(chunks) if chunks else torch.zeros(0, self.model.embed_dim)

    @torch.no_grad()
    def project_image_features(self, features: torch.Tensor) -> torch.Tensor:
        """L2-normalised, projected image embeddings from image-tower features ``(N, D_img)``."""
        projection = self.model.image_projection.to("cpu").eval()
        return F.normalize(projection(features.float()), dim=-1)


def load_clip(path: str | Path, image_size: int | None = None) -> LoadedCLIP:
    """Rebuild a CLIP export (a run folder or its export/) for zero-shot classification and retrieval."""
    from safetensors.torch import load_file

    from fewlabel.methods.clip import CLIPPretraining
    from fewlabel.models.text_encoder import load_text_backbone

    folder = read_clip_folder(path)
    info = read_clip_info(folder)
    image_tower = load_clip_image_tower(folder, image_size)
    text = info.get("text") or {}
    text_tower, tokenizer = load_text_backbone(folder / "text", max_length=int(text.get("max_length") or 64),
                                               pooling=str(text.get("pooling") or "mean"))
    hparams = info.get("hparams") or {}
    model = CLIPPretraining(image_tower, text_tower, embed_dim=int(hparams["embed_dim"]),
                            projection_hidden_dim=hparams.get("projection_hidden_dim"),
                            loss=str(hparams.get("loss") or "clip"),
                            init_temperature=float(hparams.get("init_temperature") or 0.07),
                            max_logit_scale=float(hparams.get("max_logit_scale") or 100.0))
    try:
        heads = load_file(str(folder / HEADS_FILE))
    except Exception as exc:  # safetensors raises its own error types on a damaged file
        raise FewlabelError(f"cannot read {folder / HEADS_FILE} ({exc.__class__.__name__}); pretrain again") from None
    missing, unexpected = model.load_state_dict(heads, strict=False)
    missing = [k for k in missing if not k.startswith(TOWER_PREFIXES)]
    if missing or unexpected:
        raise FewlabelError(f"{folder / HEADS_FILE} does not fit clip.json (missing {missing[:3]}, unexpected "
                            f"{unexpected[:3]}); pretrain again")
    return LoadedCLIP(model.eval(), tokenizer, info, folder)
