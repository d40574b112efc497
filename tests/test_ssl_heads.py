"""Projection, prediction and DINO heads: layer layout, output shapes and DINO's weight normalisation."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from fewlabel.methods.heads import (
    BYOLPredictionHead,
    BYOLProjectionHead,
    DINOHead,
    MoCoV2ProjectionHead,
    MoCoV3PredictionHead,
    MoCoV3ProjectionHead,
    ProjectionHead,
    SimCLRProjectionHead,
)


def _layer_types(head: nn.Module) -> list[type]:
    return [type(m) for m in head.children()]


def test_projection_head_layout_and_bias_rules() -> None:
    head = ProjectionHead(8, [16, 12], 4, batch_norm=True, last_batch_norm=True, last_batch_norm_affine=False)
    assert _layer_types(head) == [
        nn.Linear,
        nn.BatchNorm1d,
        nn.ReLU,
        nn.Linear,
        nn.BatchNorm1d,
        nn.ReLU,
        nn.Linear,
        nn.BatchNorm1d,
    ]
    linears = [m for m in head if isinstance(m, nn.Linear)]
    assert all(layer.bias is None for layer in linears)  # every linear is followed by BN
    assert not head[-1].affine
    assert head(torch.randn(5, 8)).shape == (5, 4)

    plain = ProjectionHead(8, [16], 4, batch_norm=False)
    assert _layer_types(plain) == [nn.Linear, nn.ReLU, nn.Linear]
    assert all(m.bias is not None for m in plain if isinstance(m, nn.Linear))


@pytest.mark.parametrize(
    ("head", "in_dim", "out_dim", "has_bn"),
    [
        (SimCLRProjectionHead(10, 32, 6), 10, 6, True),
        (MoCoV2ProjectionHead(10, 32, 6), 10, 6, False),
        (MoCoV3ProjectionHead(10, 32, 6), 10, 6, True),
        (MoCoV3PredictionHead(6, 32, 6), 6, 6, True),
        (BYOLProjectionHead(10, 32, 6), 10, 6, True),
        (BYOLPredictionHead(6, 32, 6), 6, 6, True),
    ],
)
def test_method_heads_shapes(head: nn.Module, in_dim: int, out_dim: int, has_bn: bool) -> None:
    assert head(torch.randn(4, in_dim)).shape == (4, out_dim)
    assert any(isinstance(m, nn.BatchNorm1d) for m in head.modules()) == has_bn


def test_simclr_head_depth() -> None:
    assert sum(isinstance(m, nn.Linear) for m in SimCLRProjectionHead(4, 8, 2, num_layers=3)) == 3
    assert sum(isinstance(m, nn.Linear) for m in SimCLRProjectionHead(4, 8, 2, num_layers=1)) == 1
    with pytest.raises(ValueError):
        SimCLRProjectionHead(4, 8, 2, num_layers=0)


def test_dino_head_prototypes_have_unit_norm_when_norm_last_layer() -> None:
    torch.manual_seed(0)
    head = DINOHead(8, output_dim=20, hidden_dim=16, bottleneck_dim=5, norm_last_layer=True)
    assert head(torch.randn(3, 8)).shape == (3, 20)
    assert not head.last_layer.scale.requires_grad
    norms = head.last_layer.weight.norm(dim=1)
    assert torch.allclose(norms, torch.ones(20), atol=1e-6)
    # The bottleneck is l2-normalised and prototypes are unit vectors, so logits are cosines.
    assert head(torch.randn(7, 8)).abs().max() <= 1.0 + 1e-5


def test_dino_head_learnable_scale_and_gradients() -> None:
    head = DINOHead(8, output_dim=6, hidden_dim=16, bottleneck_dim=4, norm_last_layer=False, batch_norm=True)
    assert head.last_layer.scale.requires_grad
    assert any(isinstance(m, nn.BatchNorm1d) for m in head.modules())
    head(torch.randn(5, 8)).pow(2).sum().backward()
    assert head.last_layer.scale.grad is not None
    assert head.last_layer.direction.grad is not None


def test_dino_head_deepcopy_is_independent() -> None:
    head = DINOHead(8, output_dim=6, hidden_dim=16, bottleneck_dim=4)
    clone = copy.deepcopy(head)
    x = torch.randn(2, 8)
    assert torch.equal(head(x), clone(x))
    with torch.no_grad():
        clone.last_layer.direction.add_(1.0)
    assert not torch.equal(head(x), clone(x))
