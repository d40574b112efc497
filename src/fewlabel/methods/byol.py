"""BYOL (Grill et al., 2020): predict a slowly moving target network's projection of the other view.

No negatives: the predictor plus the EMA target are what prevent collapse, so BYOL works with small
batches, which suits small labelled-data regimes.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from fewlabel.methods.base import SSLMethod, check_momentum_range, embedding_spread
from fewlabel.methods.heads import BYOLPredictionHead, BYOLProjectionHead
from fewlabel.methods.losses import BYOLRegressionLoss
from fewlabel.methods.momentum import deactivate_requires_grad


class BYOL(SSLMethod):
    """Online network (backbone, projector, predictor) regresses the target's projection of the other view.

    The target (backbone, projector) follows the online network by EMA with a cosine schedule from
    ``momentum`` to ``momentum_end``. The loss is symmetrised and averaged over both directions, so it
    lies in [0, 4].
    """

    name = "byol"
    views = "two_view"

    def __init__(
        self,
        backbone: nn.Module,
        hidden_dim: int = 1024,
        output_dim: int = 256,
        momentum: float = 0.99,
        momentum_end: float = 1.0,
    ) -> None:
        check_momentum_range("byol", momentum, momentum_end)
        super().__init__(
            backbone,
            hidden_dim=hidden_dim,
            output_dim=output_dim,
            momentum=momentum,
            momentum_end=momentum_end,
        )
        self.momentum_start = momentum
        self.momentum_end = momentum_end
        self.projector = BYOLProjectionHead(self.embed_dim, hidden_dim, output_dim)
        self.predictor = BYOLPredictionHead(output_dim, hidden_dim, output_dim)
        self.target_backbone = deactivate_requires_grad(copy.deepcopy(backbone))
        self.target_projector = deactivate_requires_grad(copy.deepcopy(self.projector))
        self.criterion = BYOLRegressionLoss()

    def momentum_pairs(self) -> list[tuple[nn.Module, nn.Module]]:
        return [(self.backbone, self.target_backbone), (self.projector, self.target_projector)]

    def _online(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        projection = self.projector(self.backbone(images))
        return projection, self.predictor(projection)

    @torch.no_grad()
    def _target(self, images: torch.Tensor) -> torch.Tensor:
        return self.target_projector(self.target_backbone(images))

    def training_loss(self, views: list[torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor | float]]:
        self._check_views(views, 2)
        target0, target1 = self._target(views[0]), self._target(views[1])  # no-grad passes first, as in MoCo
        projection, prediction0 = self._online(views[0])
        _, prediction1 = self._online(views[1])
        loss = 0.5 * (self.criterion(prediction0, target1) + self.criterion(prediction1, target0))
        return loss, {"loss": loss.detach(), "representation_std": embedding_spread(projection)}
