"""DINO (Caron et al., 2021): self-distillation from a momentum teacher over multi-crop views.

The student must match, from any view (including small local crops), the teacher's centred and
sharpened distribution over prototypes computed from the *global* views: local-to-global
correspondence without negatives.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from fewlabel.errors import FewlabelError
from fewlabel.methods.base import SSLMethod, check_momentum_range, embedding_spread
from fewlabel.methods.heads import DINOHead
from fewlabel.methods.losses import DINOLoss
from fewlabel.methods.momentum import deactivate_requires_grad

NUM_GLOBAL_VIEWS = 2


class DINO(SSLMethod):
    """Student (backbone + DINOHead) and EMA teacher; views are ``[global_0, global_1, local_0, ...]``.

    The teacher temperature warms up linearly from ``warmup_teacher_temp`` to ``teacher_temp`` over
    ``teacher_temp_warmup_fraction`` of training (turned into steps with the ``max_steps`` that
    ``on_train_step_end`` reports). After training the teacher's backbone is
    the one to keep (``pretrained_backbone``): it is an ensemble of recent students and evaluates better.

    ``output_dim`` (the number of prototypes) defaults to 1,024 rather than the paper's 65,536 for ImageNet:
    the last layer and the loss scale with it on every view, and for the small backbones and datasets
    this toolkit pretrains they dominated the step (on a 77k-parameter ResNet a step with 4,096 prototypes
    took 26% longer than the backbone plus the teacher's forward alone, with 1,024 prototypes 14% longer).
    Raise it for large datasets.
    """

    name = "dino"
    views = "multi_crop"

    def __init__(
        self,
        backbone: nn.Module,
        output_dim: int = 1024,
        hidden_dim: int = 512,
        bottleneck_dim: int = 128,
        batch_norm_in_head: bool = False,
        norm_last_layer: bool = True,
        student_temp: float = 0.1,
        teacher_temp: float = 0.07,
        warmup_teacher_temp: float = 0.04,
        teacher_temp_warmup_fraction: float = 0.3,
        center_momentum: float = 0.9,
        momentum: float = 0.996,
        momentum_end: float = 1.0,
    ) -> None:
        check_momentum_range("dino", momentum, momentum_end)
        if not 0.0 <= teacher_temp_warmup_fraction <= 1.0:
            raise FewlabelError(
                f"dino teacher_temp_warmup_fraction must lie in [0, 1], got {teacher_temp_warmup_fraction}"
            )
        super().__init__(
            backbone,
            output_dim=output_dim,
            hidden_dim=hidden_dim,
            bottleneck_dim=bottleneck_dim,
            batch_norm_in_head=batch_norm_in_head,
            norm_last_layer=norm_last_layer,
            student_temp=student_temp,
            teacher_temp=teacher_temp,
            warmup_teacher_temp=warmup_teacher_temp,
            teacher_temp_warmup_fraction=teacher_temp_warmup_fraction,
            center_momentum=center_momentum,
            momentum=momentum,
            momentum_end=momentum_end,
        )
        self.momentum_start = momentum
        self.momentum_end = momentum_end
        self.teacher_temp_warmup_fraction = teacher_temp_warmup_fraction
        self.head = DINOHead(
            self.embed_dim,
            output_dim=output_dim,
            hidden_dim=hidden_dim,
            bottleneck_dim=bottleneck_dim,
            batch_norm=batch_norm_in_head,
            norm_last_layer=norm_last_layer,
        )
        self.teacher_backbone = deactivate_requires_grad(copy.deepcopy(backbone))
        self.teacher_head = deactivate_requires_grad(copy.deepcopy(self.head))
        self.criterion = DINOLoss(
            output_dim,
            teacher_temp=teacher_temp,
            warmup_teacher_temp=warmup_teacher_temp,
            student_temp=student_temp,
            center_momentum=center_momentum,
        )
        # Buffers, so that a resumed checkpoint continues the temperature schedule where it stopped.
        self.register_buffer("completed_steps", torch.zeros((), dtype=torch.long))
        self.register_buffer("max_steps", torch.zeros((), dtype=torch.long))

    def momentum_pairs(self) -> list[tuple[nn.Module, nn.Module]]:
        return [(self.backbone, self.teacher_backbone), (self.head, self.teacher_head)]

    def pretrained_backbone(self) -> nn.Module:
        return self.teacher_backbone

    def _student(self, views: list[torch.Tensor]) -> list[torch.Tensor]:
        """Student outputs per view; views of equal resolution share one forward pass."""
        outputs: list[torch.Tensor] = []
        start = 0
        while start < len(views):
            end = start
            while end < len(views) and views[end].shape[-2:] == views[start].shape[-2:]:
                end += 1
            batch = torch.cat(views[start:end])
            outputs.extend(self.head(self.backbone(batch)).chunk(end - start))
            start = end
        return outputs

    @torch.no_grad()
    def _teacher(self, global_views: list[torch.Tensor]) -> list[torch.Tensor]:
        return list(
            self.teacher_head(self.teacher_backbone(torch.cat(global_views))).chunk(len(global_views))
        )

    def training_loss(self, views: list[torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor | float]]:
        self._check_views(views, NUM_GLOBAL_VIEWS, exact=False)
        teacher_outputs = self._teacher(views[:NUM_GLOBAL_VIEWS])
        student_outputs = self._student(views)
        step = int(self.completed_steps)
        self.criterion.warmup_steps = self._teacher_temp_warmup_steps()
        loss = self.criterion(student_outputs, teacher_outputs, step=step)
        logs = {
            "loss": loss.detach(),
            "teacher_temperature": self.criterion.teacher_temperature(step),
            "representation_std": embedding_spread(student_outputs[0]),
        }
        return loss, logs

    def _teacher_temp_warmup_steps(self) -> int:
        known_max_steps = int(self.max_steps)
        if known_max_steps == 0:
            # Before the first on_train_step_end the length of training is unknown, but the step is 0,
            # the start of the warm-up: one warm-up step yields the warm-up start temperature.
            return int(self.teacher_temp_warmup_fraction > 0)
        return round(self.teacher_temp_warmup_fraction * known_max_steps)

    @torch.no_grad()
    def on_train_step_end(self, step: int, max_steps: int) -> None:
        super().on_train_step_end(step, max_steps)
        self.completed_steps.fill_(step + 1)
        self.max_steps.fill_(max_steps)
