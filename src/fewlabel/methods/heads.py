"""Projection, prediction and DINO heads that sit on top of a backbone's embedding.

Self-supervised objectives are computed on a small MLP's output rather than on the embedding itself,
so the embedding keeps information the objective would otherwise throw away (SimCLR, section 4.2).
All heads are one configurable ``ProjectionHead``; the method-specific classes only fix sensible
defaults for small images and backbones.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn


class ProjectionHead(nn.Sequential):
    """MLP ``Linear -> [BN] -> ReLU`` per hidden layer, then ``Linear -> [BN]``.

    ``batch_norm`` applies to hidden layers, ``last_batch_norm`` to the output (MoCo v3 and SimCLR v2
    use a non-affine one there, ``last_batch_norm_affine=False``). Linear layers followed by BN drop
    their bias since BN's shift makes it redundant.
    """

    def __init__(
        self,
        input_dim: int,
        hidden_dims: Sequence[int],
        output_dim: int,
        batch_norm: bool = True,
        last_batch_norm: bool = False,
        last_batch_norm_affine: bool = True,
    ) -> None:
        layers: list[nn.Module] = []
        in_dim = input_dim
        for hidden_dim in hidden_dims:
            layers.append(nn.Linear(in_dim, hidden_dim, bias=not batch_norm))
            if batch_norm:
                layers.append(nn.BatchNorm1d(hidden_dim))
            layers.append(nn.ReLU(inplace=True))
            in_dim = hidden_dim
        layers.append(nn.Linear(in_dim, output_dim, bias=not last_batch_norm))
        if last_batch_norm:
            layers.append(nn.BatchNorm1d(output_dim, affine=last_batch_norm_affine))
        super().__init__(*layers)
        self.input_dim = input_dim
        self.output_dim = output_dim


class SimCLRProjectionHead(ProjectionHead):
    """SimCLR: ``num_layers`` linear layers with BN and ReLU between them."""

    def __init__(
        self, input_dim: int, hidden_dim: int = 512, output_dim: int = 128, num_layers: int = 2
    ) -> None:
        if num_layers < 1:
            raise ValueError(f"num_layers must be at least 1, got {num_layers}")
        super().__init__(input_dim, [hidden_dim] * (num_layers - 1), output_dim, batch_norm=True)


class MoCoV2ProjectionHead(ProjectionHead):
    """MoCo v2: a two-layer MLP without BatchNorm (BN would let queries and keys share batch statistics)."""

    def __init__(self, input_dim: int, hidden_dim: int = 512, output_dim: int = 128) -> None:
        super().__init__(input_dim, [hidden_dim], output_dim, batch_norm=False)


class MoCoV3ProjectionHead(ProjectionHead):
    """MoCo v3 projector: three layers with BN everywhere, a non-affine BN on the output."""

    def __init__(self, input_dim: int, hidden_dim: int = 1024, output_dim: int = 256) -> None:
        super().__init__(
            input_dim,
            [hidden_dim, hidden_dim],
            output_dim,
            last_batch_norm=True,
            last_batch_norm_affine=False,
        )


class MoCoV3PredictionHead(ProjectionHead):
    """MoCo v3 predictor: two layers with BN, a non-affine BN on the output."""

    def __init__(self, input_dim: int = 256, hidden_dim: int = 1024, output_dim: int = 256) -> None:
        super().__init__(
            input_dim, [hidden_dim], output_dim, last_batch_norm=True, last_batch_norm_affine=False
        )


class BYOLProjectionHead(ProjectionHead):
    """BYOL projector: ``Linear -> BN -> ReLU -> Linear``."""

    def __init__(self, input_dim: int, hidden_dim: int = 1024, output_dim: int = 256) -> None:
        super().__init__(input_dim, [hidden_dim], output_dim, batch_norm=True)


class BYOLPredictionHead(ProjectionHead):
    """BYOL predictor: same shape as the projector, mapping projection space onto itself."""

    def __init__(self, input_dim: int = 256, hidden_dim: int = 1024, output_dim: int = 256) -> None:
        super().__init__(input_dim, [hidden_dim], output_dim, batch_norm=True)


class WeightNormalizedLinear(nn.Module):
    """Bias-free linear layer with weight ``W = g * V / ||V||`` (one norm per output unit).

    Written out instead of using ``torch.nn.utils.weight_norm`` so that the module deep-copies cleanly
    (DINO's teacher is a copy of the student) and the EMA sees plain parameters. With
    ``learnable_scale=False`` the scale ``g`` stays 1, i.e. every output unit is a unit-norm prototype:
    DINO's ``norm_last_layer`` which stabilises training.
    """

    def __init__(self, input_dim: int, output_dim: int, learnable_scale: bool = False) -> None:
        super().__init__()
        self.direction = nn.Parameter(torch.empty(output_dim, input_dim))
        nn.init.trunc_normal_(self.direction, std=0.02)
        self.scale = nn.Parameter(torch.ones(output_dim, 1), requires_grad=learnable_scale)

    @property
    def weight(self) -> torch.Tensor:
        return self.scale * F.normalize(self.direction, dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight)


class DINOHead(nn.Module):
    """DINO head: MLP (GELU) to an l2-normalised bottleneck, then a weight-normalised prototype layer.

    The output has ``output_dim`` logits ("prototypes") and is fed to ``DINOLoss``. The defaults are
    scaled down from DINO's (2048 hidden, 256 bottleneck, 65536 prototypes) for small images and
    datasets (see ``DINO`` for the measured cost of the prototype count).
    """

    def __init__(
        self,
        input_dim: int,
        output_dim: int = 1024,
        hidden_dim: int = 512,
        bottleneck_dim: int = 128,
        num_layers: int = 3,
        batch_norm: bool = False,
        norm_last_layer: bool = True,
    ) -> None:
        super().__init__()
        if num_layers < 1:
            raise ValueError(f"num_layers must be at least 1, got {num_layers}")
        layers: list[nn.Module] = []
        in_dim = input_dim
        for _ in range(num_layers - 1):
            layers.append(nn.Linear(in_dim, hidden_dim))
            if batch_norm:
                layers.append(nn.BatchNorm1d(hidden_dim))
            layers.append(nn.GELU())
            in_dim = hidden_dim
        layers.append(nn.Linear(in_dim, bottleneck_dim))
        self.mlp = nn.Sequential(*layers)
        for module in self.mlp.modules():
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.02)
                nn.init.zeros_(module.bias)
        self.last_layer = WeightNormalizedLinear(
            bottleneck_dim, output_dim, learnable_scale=not norm_last_layer
        )
        self.input_dim = input_dim
        self.output_dim = output_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bottleneck = F.normalize(self.mlp(x), dim=-1)
        return self.last_layer(bottleneck)
