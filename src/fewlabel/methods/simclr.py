"""SimCLR (Chen et al., 2020): pull two views of an image together, push all other views apart."""

from __future__ import annotations

import torch
from torch import nn

from fewlabel.methods.base import SSLMethod, embedding_spread
from fewlabel.methods.heads import SimCLRProjectionHead
from fewlabel.methods.losses import NTXentLoss


class SimCLR(SSLMethod):
    """Backbone + MLP projection head trained with NT-Xent on two views.

    Needs reasonably large batches (every other image in the batch is a negative); with
    ``gather_distributed=True`` negatives come from all ranks.
    """

    name = "simclr"
    views = "two_view"

    def __init__(
        self,
        backbone: nn.Module,
        hidden_dim: int = 512,
        output_dim: int = 128,
        num_layers: int = 2,
        temperature: float = 0.5,
        gather_distributed: bool = True,
    ) -> None:
        super().__init__(
            backbone,
            hidden_dim=hidden_dim,
            output_dim=output_dim,
            num_layers=num_layers,
            temperature=temperature,
            gather_distributed=gather_distributed,
        )
        self.projector = SimCLRProjectionHead(self.embed_dim, hidden_dim, output_dim, num_layers)
        self.criterion = NTXentLoss(temperature=temperature, gather_distributed=gather_distributed)

    def training_loss(self, views: list[torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor | float]]:
        self._check_views(views, 2)
        batch_size = views[0].shape[0]
        projections = self.projector(self.backbone(torch.cat(views)))
        z0, z1 = projections[:batch_size], projections[batch_size:]
        loss = self.criterion(z0, z1)
        return loss, {"loss": loss.detach(), "representation_std": embedding_spread(z0)}
