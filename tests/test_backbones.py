from __future__ import annotations

import pytest
import torch

from fewlabel.errors import FewlabelError
from fewlabel.models import Classifier, InputAdapter, InputSpec, create_backbone


@pytest.mark.parametrize(("chans", "size"), [(1, 8), (1, 28), (3, 32)])
def test_small_resnet_shapes(chans: int, size: int) -> None:
    backbone = create_backbone("resnet_small", in_chans=chans, width=8)
    out = backbone(torch.randn(2, chans, size, size))
    assert out.shape == (2, backbone.embed_dim) == (2, 32)  # 3 stages: width * 4 channels
    assert backbone.stages == ["conv1", "bn1", "layer1", "layer2", "layer3"]


def test_small_stem_keeps_resolution() -> None:
    # 3x3 stride-1 stem and no max-pool: a 28 px input is 28 px after the stem, 7 px after the last stage.
    backbone = create_backbone("resnet_small", in_chans=1, width=8)
    body = backbone.body
    x = body.act1(body.bn1(body.conv1(torch.randn(1, 1, 28, 28))))
    assert x.shape[-1] == 28
    assert body.layer3(body.layer2(body.layer1(body.maxpool(x)))).shape[-1] == 7


def test_stage_of_parameter() -> None:
    backbone = create_backbone("resnet_small", in_chans=1, width=8)
    assert backbone.stage_of("body.layer2.0.conv1.weight") == 3
    assert backbone.stage_of("body.conv1.weight") == 0


def test_timm_name_works_and_unknown_name_fails() -> None:
    backbone = create_backbone("resnet10t", in_chans=1)
    assert backbone(torch.randn(2, 1, 32, 32)).shape == (2, backbone.embed_dim)
    with pytest.raises(FewlabelError, match="unknown backbone"):
        create_backbone("resnet_smol")
    with pytest.raises(FewlabelError, match="even"):
        create_backbone("resnet_small", width=7)


def test_input_adapter_channels_size_and_normalisation() -> None:
    adapter = InputAdapter(1, InputSpec(channels=3, size=(16, 16), mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25)))
    x = torch.full((2, 1, 8, 8), 255, dtype=torch.uint8)
    out = adapter(x)
    assert out.shape == (2, 3, 16, 16)
    torch.testing.assert_close(out, torch.full_like(out, (1.0 - 0.5) / 0.25))


def test_classifier_forward() -> None:
    model = Classifier(create_backbone("resnet_small", in_chans=1, width=8), num_classes=5, data_channels=1)
    logits = model(torch.randint(0, 255, (4, 1, 8, 8), dtype=torch.uint8))
    assert logits.shape == (4, 5)


def test_resnet20_small_is_the_cifar_resnet20() -> None:
    """3 stages x 3 basic blocks, widths 16/32/64: about 0.27M parameters, as in He et al. (2016)."""
    backbone = create_backbone("resnet20_small", in_chans=3)
    parameters = sum(p.numel() for p in backbone.parameters())
    assert backbone.embed_dim == 64 and 260_000 < parameters < 290_000
    assert backbone(torch.zeros(2, 3, 16, 16)).shape == (2, 64)


def test_channels_last_only_where_every_layer_has_eight_channels_or_more() -> None:
    """PyTorch's CPU kernels corrupt the heap in the backward pass of channels-last layers narrower than 8 channels
    on one thread; such networks stay in the default memory format."""
    from fewlabel.models.backbones import channels_last_safe, to_channels_last

    narrow = create_backbone("resnet_small", in_chans=1, width=4)
    wide = create_backbone("resnet_small", in_chans=1, width=8)
    assert not channels_last_safe(narrow) and channels_last_safe(wide)
    assert to_channels_last(narrow).body.conv1.weight.is_contiguous()
    assert to_channels_last(wide).body.conv1.weight.is_contiguous(memory_format=torch.channels_last)
