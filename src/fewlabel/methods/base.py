"""The interface every self-supervised method implements.

A method owns its backbone, heads, momentum networks and loss, and turns a list of augmented views
into a scalar loss. Training loops (Lightning or a plain ``for`` loop) only need:

1. ``views = generator(images)`` with the generator named by ``method.views``;
2. ``loss, logs = method.training_loss(views)``; ``loss.backward()``; ``optimizer.step()``;
3. ``method.on_train_step_end(step, max_steps)`` after every optimiser step (EMA updates, schedules).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from fewlabel.errors import FewlabelError
from fewlabel.methods.momentum import cosine_momentum, update_momentum

VIEW_KINDS = ("two_view", "multi_crop")


class SSLMethod(nn.Module, ABC):
    """Base class: a backbone plus whatever the objective needs on top of it.

    Subclasses set ``name`` and ``views``, build their heads in ``__init__`` (explicit keyword
    hyper-parameters with defaults), and implement ``training_loss``. Methods with a momentum network
    list ``(online, momentum)`` module pairs in ``momentum_pairs`` and set ``momentum_start`` and
    ``momentum_end``; the default ``on_train_step_end`` then applies the cosine EMA schedule to every pair.
    """

    name: ClassVar[str] = ""
    views: ClassVar[str] = "two_view"

    momentum_start: float = 1.0
    momentum_end: float = 1.0

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.views not in VIEW_KINDS:
            raise TypeError(f"{cls.__name__}.views must be one of {VIEW_KINDS}, got {cls.views!r}")

    def __init__(self, backbone: nn.Module, **hparams: Any) -> None:
        super().__init__()
        embed_dim = getattr(backbone, "embed_dim", None)
        if not isinstance(embed_dim, int) or embed_dim < 1:
            raise TypeError(f"the backbone must have a positive int attribute `embed_dim`, got {embed_dim!r}")
        self.backbone = backbone
        self.embed_dim = embed_dim
        self.hparams: dict[str, Any] = dict(hparams)
        self.last_momentum: float | None = None

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Backbone embedding of ``images`` (what downstream probes use)."""
        return self.backbone(images)

    def pretrained_backbone(self) -> nn.Module:
        """The backbone worth keeping after pre-training (DINO overrides this with its teacher)."""
        return self.backbone

    @abstractmethod
    def training_loss(self, views: list[torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor | float]]:
        """Loss for one batch of views (float, normalised (N, C, H, W) tensors) and scalars to log."""

    def momentum_pairs(self) -> list[tuple[nn.Module, nn.Module]]:
        """``(online, momentum)`` module pairs that follow the EMA rule; empty for SimCLR-like methods."""
        return []

    @torch.no_grad()
    def on_train_step_end(self, step: int, max_steps: int) -> None:
        """Call after the optimiser step ``step`` (counted from 0) of ``max_steps``: EMA updates etc."""
        pairs = self.momentum_pairs()
        if not pairs:
            return
        momentum = cosine_momentum(step, max_steps, self.momentum_start, self.momentum_end)
        for online, ema in pairs:
            update_momentum(online, ema, momentum)
        self.last_momentum = momentum

    def optimizer_groups(self) -> list[dict]:
        """Trainable parameters in two groups: weights, and norms/biases with ``weight_decay=0``.

        Decaying BatchNorm/LayerNorm scales and biases only hurts, a convention SimCLR (LARS), BYOL and
        DINO share. Frozen parameters (momentum networks) are excluded. The caller's optimiser supplies
        the weight decay of the first group.
        """
        return decay_groups(self)

    def _check_views(self, views: list[torch.Tensor], minimum: int, exact: bool = True) -> None:
        if len(views) < minimum or (exact and len(views) != minimum):
            expected = f"exactly {minimum}" if exact else f"at least {minimum}"
            raise ValueError(f"{self.name} expects {expected} views, got {len(views)}")


def check_momentum_range(method: str, start: float, end: float) -> None:
    """Reject EMA momenta outside ``0 <= start <= end <= 1`` with a message naming the method."""
    if not 0.0 <= start <= end <= 1.0:
        raise FewlabelError(f"{method} needs 0 <= momentum <= momentum_end <= 1, got {start} and {end}")


@torch.no_grad()
def embedding_spread(embeddings: torch.Tensor) -> torch.Tensor:
    """Per-dimension std of l2-normalised embeddings, times sqrt(dim): about 1 when healthy, 0 on collapse.

    Logged by every method as ``representation_std`` because a collapsing self-supervised run keeps a
    plausible-looking loss while this number falls to zero. A 0-dim tensor on the embeddings' device: turning it
    into a Python float every step would wait for the GPU (Lightning reduces logged tensors itself).
    """
    normalised = F.normalize(embeddings.detach().float(), dim=1)
    return normalised.std(dim=0).mean() * normalised.shape[1] ** 0.5


def decay_groups(module: nn.Module) -> list[dict]:
    """The trainable parameters of ``module`` as optimiser groups: weights (the optimiser's weight decay), and
    1-d parameters (norm scales, biases, temperatures) with ``weight_decay=0``. Frozen ones are left out."""
    decay: list[nn.Parameter] = []
    no_decay: list[nn.Parameter] = []
    for param in module.parameters():
        if param.requires_grad:
            (no_decay if param.ndim <= 1 else decay).append(param)
    groups: list[dict] = []
    if decay:
        groups.append({"params": decay})
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    return groups
