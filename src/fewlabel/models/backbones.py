"""``create_backbone``: one factory for every feature extractor fewlabel trains or probes.

A :class:`Backbone` maps an input batch to an embedding ``(N, embed_dim)`` and knows its ordered stages (for
partial freezing and layer-wise learning-rate decay) and the input it expects (:class:`InputSpec`). Sources
are registered by name; any timm model name also works (``timm:<name>`` or the bare name).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import timm
import torch
from timm.models.resnet import BasicBlock, ResNet
from torch import nn

from fewlabel.errors import FewlabelError


@dataclass(frozen=True)
class InputSpec:
    """What a backbone expects: channels, spatial size (None = any) and normalisation of [0, 1] inputs."""

    channels: int
    size: tuple[int, int] | None = None
    mean: tuple[float, ...] = (0.5,)
    std: tuple[float, ...] = (0.5,)

    def to_dict(self) -> dict:
        return {"channels": self.channels, "size": list(self.size) if self.size else None,
                "mean": list(self.mean), "std": list(self.std)}


@dataclass(frozen=True)
class BackboneSpec:
    """How to build a backbone: a registered or timm name, plus input channels and width where relevant."""

    name: str = "resnet_small"
    in_chans: int = 1
    width: int | None = None
    options: dict = field(default_factory=dict)


class Backbone(nn.Module):
    """A feature extractor with the metadata the rest of fewlabel relies on."""

    def __init__(self, body: nn.Module, embed_dim: int, stages: list[str], input_spec: InputSpec, name: str):
        super().__init__()
        self.body = body
        self.embed_dim = embed_dim
        self.stages = stages
        self.input_spec = input_spec
        self.name = name
        # The output columns its own pooling (the one it was pretrained with) fills, when the backbone pools more
        # for frozen features (text mean-last4: the last layer's mean); None: all of them. LP-FT fine-tunes a head
        # on these columns only: fine-tuning wants the encoder's own pooling, the frozen probe wants all.
        self.own_pooling_columns: slice | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)

    def stage_of(self, parameter_name: str) -> int:
        """Index of the stage a parameter (named relative to this module) belongs to; -1 when none."""
        local = parameter_name.removeprefix("body.")
        for index, stage in enumerate(self.stages):
            if local == stage or local.startswith(stage + "."):
                return index
        return -1


class EmbeddingClassifier(nn.Module):
    """Any backbone that maps its own batches to embeddings + a linear head (text, audio); the ``backbone`` and
    ``head`` attributes are what transfer strategies configure, as for :class:`Classifier`."""

    def __init__(self, backbone: Backbone, num_classes: int, dropout: float = 0.0):
        super().__init__()
        self.backbone = backbone
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.head = nn.Linear(backbone.embed_dim, num_classes)

    def features(self, batch: Any) -> torch.Tensor:
        return self.backbone(batch)

    def forward(self, batch: Any) -> torch.Tensor:
        return self.head(self.dropout(self.features(batch)))


_STAGE_CONTAINERS = ("blocks", "stages", "layers", "features")


# Narrowest convolution or BatchNorm that runs channels-last: PyTorch 2.14's CPU kernels corrupt the heap
# ("corrupted double-linked list", then SIGABRT) in the backward pass of a ResNet whose layers have fewer than 8
# channels (one vector of floats) when channels-last runs on one thread; at 8 and more they are fine.
CHANNELS_LAST_MIN = 8


def channels_last_safe(module: nn.Module) -> bool:
    """Whether ``module`` may run channels-last: every Conv2d's output and every BatchNorm2d has at least
    :data:`CHANNELS_LAST_MIN` channels (the first convolution's input, e.g. 1 grey channel, does not count)."""
    for layer in module.modules():
        if isinstance(layer, nn.Conv2d) and layer.out_channels < CHANNELS_LAST_MIN:
            return False
        if isinstance(layer, nn.BatchNorm2d) and layer.num_features < CHANNELS_LAST_MIN:
            return False
    return True


def to_channels_last(module: nn.Module) -> nn.Module:
    """``module`` in channels-last memory format (faster convolutions on CPUs and GPUs) where that is safe
    (:func:`channels_last_safe`); as it is otherwise."""
    return module.to(memory_format=torch.channels_last) if channels_last_safe(module) else module


def stages_with_parameters(body: nn.Module) -> list[str]:
    """Children that own parameters, in forward order: the natural 'stages' of a timm model.

    Containers of stages (EfficientNet's ``blocks``, ConvNeXt's ``stages``, ViT's ``blocks``) are opened one
    level so partial freezing and layer-wise decay can address ``blocks.5`` rather than all blocks at once.
    """
    stages = []
    for name, child in body.named_children():
        if not any(True for _ in child.parameters()):
            continue
        if name in _STAGE_CONTAINERS and isinstance(child, nn.Sequential | nn.ModuleList) and len(child) > 1:
            stages.extend(f"{name}.{sub}" for sub, grandchild in child.named_children()
                          if any(True for _ in grandchild.parameters()))
        else:
            stages.append(name)
    return stages


def small_resnet(in_chans: int, width: int, layers: tuple[int, ...]) -> nn.Module:
    """A CIFAR-style ResNet from timm's ``ResNet``: 3x3 stride-1 stem and no max-pool, for 8-32 px images."""
    if width < 2 or width % 2:
        raise FewlabelError(f"backbone width must be an even number >= 2, got {width}")
    channels = tuple(width * 2**i for i in range(len(layers)))
    # A 'deep' stem makes timm size the stem output (and layer1's input) as 2 * stem_width = width;
    # its stride-2 convolutions are then replaced by one stride-1 3x3 convolution.
    body = ResNet(BasicBlock, list(layers), channels=channels, in_chans=in_chans, num_classes=0,
                  stem_type="deep", stem_width=width // 2)
    body.conv1 = nn.Conv2d(in_chans, width, kernel_size=3, stride=1, padding=1, bias=False)
    body.maxpool = nn.Identity()
    if len(layers) == 3:
        body.layer4 = nn.Identity()  # timm's forward_features always calls layer4
    return body


BackboneBuilder = Callable[[BackboneSpec], Backbone]
_BUILDERS: dict[str, tuple[BackboneBuilder, str]] = {}


def register_backbone(name: str, builder: BackboneBuilder, description: str) -> None:
    _BUILDERS[name] = (builder, description)


def registered_backbones() -> dict[str, str]:
    return {name: description for name, (_, description) in _BUILDERS.items()}


def _small_builder(layers: tuple[int, ...], default_width: int) -> BackboneBuilder:
    def build(spec: BackboneSpec) -> Backbone:
        width = spec.width or default_width
        body = small_resnet(spec.in_chans, width, layers)
        input_spec = InputSpec(channels=spec.in_chans, mean=(0.5,) * spec.in_chans, std=(0.5,) * spec.in_chans)
        return Backbone(body, body.num_features, stages_with_parameters(body), input_spec, spec.name)

    return build


register_backbone("resnet_small", _small_builder((1, 1, 1), 32), "3-stage ResNet (1 block/stage), 3x3 stem, width 32")
register_backbone("resnet20_small", _small_builder((3, 3, 3), 16), "CIFAR ResNet-20 (3 blocks/stage), width 16")
register_backbone("resnet10_small", _small_builder((1, 1, 1, 1), 32), "4-stage ResNet-10, 3x3 stem, width 32")
register_backbone("resnet18_small", _small_builder((2, 2, 2, 2), 64), "CIFAR-style ResNet-18, 3x3 stem, width 64")


def _timm_backbone(spec: BackboneSpec, model_name: str) -> Backbone:
    if model_name not in timm.list_models():
        close = timm.list_models(f"*{model_name[:6]}*")[:5]
        hint = f" (similar timm names: {', '.join(close)})" if close else ""
        raise FewlabelError(
            f"unknown backbone '{spec.name}'; use one of {', '.join(_BUILDERS)} or a timm model name{hint}"
        )
    body = timm.create_model(model_name, pretrained=False, num_classes=0, in_chans=spec.in_chans, **spec.options)
    config = body.pretrained_cfg or {}
    channels = spec.in_chans
    mean = tuple(config.get("mean", (0.5,) * channels))
    std = tuple(config.get("std", (0.5,) * channels))
    if len(mean) != channels:
        mean, std = (sum(mean) / len(mean),) * channels, (sum(std) / len(std),) * channels
    input_spec = InputSpec(channels=channels, mean=mean, std=std)
    return Backbone(body, body.num_features, stages_with_parameters(body), input_spec, spec.name)


def create_backbone(spec: BackboneSpec | str, **overrides) -> Backbone:
    """Build a backbone from a spec or a name: ``create_backbone("resnet_small", in_chans=1, width=16)``."""
    if isinstance(spec, str):
        spec = BackboneSpec(name=spec)
    if overrides:
        spec = replace(spec, **overrides)
    if spec.name in _BUILDERS:
        return _BUILDERS[spec.name][0](spec)
    return _timm_backbone(spec, spec.name.removeprefix("timm:"))


class InputAdapter(nn.Module):
    """Turns dataset images (uint8 or [0,1] floats) into what a backbone expects: channels, size, normalisation."""

    def __init__(self, data_channels: int, spec: InputSpec):
        super().__init__()
        if data_channels not in (1, spec.channels) and spec.channels != 1:
            raise FewlabelError(f"cannot feed {data_channels}-channel images to a {spec.channels}-channel backbone")
        self.data_channels = data_channels
        self.channels = spec.channels
        self.size = spec.size
        self.register_buffer("mean", torch.tensor(spec.mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(spec.std, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype == torch.uint8:
            x = x.float().div_(255.0)
        if x.shape[1] != self.channels:
            x = x.expand(-1, self.channels, -1, -1) if x.shape[1] == 1 else x.mean(dim=1, keepdim=True)
        if self.size is not None and tuple(x.shape[-2:]) != tuple(self.size):
            x = nn.functional.interpolate(x, size=self.size, mode="bilinear", align_corners=False, antialias=True)
        # channels-last runs convolutions ~1.5x faster on CPU (oneDNN) and on GPU tensor cores.
        return ((x - self.mean) / self.std).contiguous(memory_format=torch.channels_last)


class Classifier(nn.Module):
    """Input adapter + backbone + linear head: the model every supervised run trains and exports."""

    def __init__(self, backbone: Backbone, num_classes: int, data_channels: int, dropout: float = 0.0):
        super().__init__()
        self.adapter = InputAdapter(data_channels, backbone.input_spec)
        self.backbone = backbone
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.head = nn.Linear(backbone.embed_dim, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone(self.adapter(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.dropout(self.features(x)))
