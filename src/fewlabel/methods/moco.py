"""MoCo v2 (Chen et al., 2020) and MoCo v3 (Chen, Xie & He, 2021): contrast queries with momentum keys.

v2: a query from view 0 must pick out its key (view 1 through the momentum encoder) among a queue of
keys from earlier batches, so the number of negatives does not depend on the batch size.
v3: no queue; an extra prediction head and a symmetric loss with the other keys of the batch as
negatives, which is more stable on small batches of a fixed dataset.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from fewlabel.errors import FewlabelError
from fewlabel.methods.base import SSLMethod, check_momentum_range, embedding_spread
from fewlabel.methods.heads import MoCoV2ProjectionHead, MoCoV3PredictionHead, MoCoV3ProjectionHead
from fewlabel.methods.losses import InfoNCELoss, InfoNCEQueueLoss
from fewlabel.methods.momentum import deactivate_requires_grad


class MoCo(SSLMethod):
    """Query encoder (backbone + projector [+ predictor]) and an EMA key encoder (backbone + projector).

    The momentum follows a cosine schedule from ``momentum`` to ``momentum_end``; set both equal for
    MoCo v2's constant momentum. ``queue_size`` (v2 only) should stay well below the number of training
    images, otherwise stale keys of the query's own image end up among its negatives.
    """

    name = "moco"
    views = "two_view"

    def __init__(
        self,
        backbone: nn.Module,
        version: int = 2,
        hidden_dim: int | None = None,
        output_dim: int | None = None,
        temperature: float = 0.2,
        queue_size: int = 4096,
        momentum: float = 0.99,
        momentum_end: float = 1.0,
        gather_distributed: bool = True,
    ) -> None:
        if version not in (2, 3):
            raise FewlabelError(f"moco version must be 2 or 3, got {version!r}")
        if queue_size < 1:
            raise FewlabelError(f"moco queue_size must be a positive number of keys, got {queue_size}")
        check_momentum_range("moco", momentum, momentum_end)
        if hidden_dim is None:
            hidden_dim = 512 if version == 2 else 1024
        if output_dim is None:
            output_dim = 128 if version == 2 else 256
        super().__init__(
            backbone,
            version=version,
            hidden_dim=hidden_dim,
            output_dim=output_dim,
            temperature=temperature,
            queue_size=queue_size,
            momentum=momentum,
            momentum_end=momentum_end,
            gather_distributed=gather_distributed,
        )
        self.version = version
        self.momentum_start = momentum
        self.momentum_end = momentum_end
        self.predictor: nn.Module
        if version == 2:
            self.projector: nn.Module = MoCoV2ProjectionHead(self.embed_dim, hidden_dim, output_dim)
            self.predictor = nn.Identity()
            self.criterion: nn.Module = InfoNCEQueueLoss(
                output_dim,
                queue_size=queue_size,
                temperature=temperature,
                gather_distributed=gather_distributed,
            )
        else:
            self.projector = MoCoV3ProjectionHead(self.embed_dim, hidden_dim, output_dim)
            self.predictor = MoCoV3PredictionHead(output_dim, hidden_dim, output_dim)
            self.criterion = InfoNCELoss(temperature=temperature, gather_distributed=gather_distributed)
        self.momentum_backbone = deactivate_requires_grad(copy.deepcopy(backbone))
        self.momentum_projector = deactivate_requires_grad(copy.deepcopy(self.projector))

    def momentum_pairs(self) -> list[tuple[nn.Module, nn.Module]]:
        return [(self.backbone, self.momentum_backbone), (self.projector, self.momentum_projector)]

    def _query(self, images: torch.Tensor) -> torch.Tensor:
        return self.predictor(self.projector(self.backbone(images)))

    @torch.no_grad()
    def _key(self, images: torch.Tensor) -> torch.Tensor:
        return self.momentum_projector(self.momentum_backbone(images))

    def training_loss(self, views: list[torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor | float]]:
        self._check_views(views, 2)
        # Keys first: the no-grad passes free their activations before the query pass allocates the ones
        # it keeps for backward (2-3% faster per step on the CPU than the other order; same result).
        if self.version == 2:
            key = self._key(views[1])
            query = self._query(views[0])
            loss = self.criterion(query, key)
        else:
            key, other_key = self._key(views[0]), self._key(views[1])
            query, other_query = self._query(views[0]), self._query(views[1])
            loss = 0.5 * (self.criterion(query, other_key) + self.criterion(other_query, key))
        return loss, {"loss": loss.detach(), "representation_std": embedding_spread(query)}
