"""Self-supervised losses: NT-Xent (SimCLR), InfoNCE with and without a queue (MoCo v2/v3),
BYOL's normalised regression and DINO's centred, sharpened cross-entropy.

All losses take embeddings straight from a head; normalisation happens inside so that callers cannot
forget it.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from fewlabel.methods.distributed import all_reduce_mean, gather_no_grad, gather_with_grad, rank, world_size
from fewlabel.methods.momentum import MemoryBankQueue


def _check_pair(a: torch.Tensor, b: torch.Tensor) -> None:
    if a.ndim != 2 or a.shape != b.shape:
        raise ValueError(
            f"expected two (N, D) tensors of one shape, got {tuple(a.shape)} and {tuple(b.shape)}"
        )


def _check_temperature(temperature: float) -> None:
    if temperature <= 0:
        raise ValueError(f"temperature must be positive, got {temperature}")


class NTXentLoss(nn.Module):
    """SimCLR's normalised temperature-scaled cross-entropy over 2N views.

    For every anchor (each sample of each view) the positive is the other view of the same sample and
    the negatives are the other 2N - 2 views in the batch. With ``gather_distributed=True`` the
    negatives come from all ranks while each rank scores only its local anchors; the mean of the
    per-rank losses equals the loss of the concatenated global batch.
    """

    def __init__(self, temperature: float = 0.5, gather_distributed: bool = False) -> None:
        super().__init__()
        _check_temperature(temperature)
        self.temperature = temperature
        self.gather_distributed = gather_distributed

    def forward(self, z0: torch.Tensor, z1: torch.Tensor) -> torch.Tensor:
        """Loss for two views ``z0``, ``z1`` of shape (N, D) where row i of each is the same sample."""
        _check_pair(z0, z1)
        z0, z1 = F.normalize(z0, dim=1), F.normalize(z1, dim=1)
        local_n = z0.shape[0]
        if self.gather_distributed and world_size() > 1:
            all_z0, all_z1 = gather_with_grad(z0), gather_with_grad(z1)
            offset = rank() * local_n
        else:
            all_z0, all_z1, offset = z0, z1, 0
        global_n = all_z0.shape[0]

        anchors = torch.cat([z0, z1])  # (2n, D): local view-0 anchors, then local view-1 anchors
        candidates = torch.cat([all_z0, all_z1])  # (2N, D): every view on every rank
        logits = anchors @ candidates.T / self.temperature

        local_index = torch.arange(local_n, device=z0.device) + offset
        self_column = torch.cat([local_index, local_index + global_n])
        positive_column = torch.cat([local_index + global_n, local_index])
        rows = torch.arange(2 * local_n, device=z0.device)
        is_self = torch.zeros_like(logits, dtype=torch.bool)
        is_self[rows, self_column] = True
        logits = logits.masked_fill(is_self, float("-inf"))  # an anchor is never its own negative
        return F.cross_entropy(logits, positive_column)


class InfoNCEQueueLoss(nn.Module):
    """MoCo v2's InfoNCE: one positive key per query, negatives from a FIFO queue of past keys.

    Keys are treated as constants (they come from the momentum encoder). After scoring, the batch's
    keys (gathered from all ranks when ``gather_distributed``) are pushed into the queue, so the
    queue always holds keys from *previous* steps.
    """

    def __init__(
        self,
        dim: int,
        queue_size: int = 4096,
        temperature: float = 0.2,
        gather_distributed: bool = False,
        start_full: bool = True,
    ) -> None:
        super().__init__()
        _check_temperature(temperature)
        self.temperature = temperature
        self.gather_distributed = gather_distributed
        self.queue = MemoryBankQueue(queue_size, dim, start_full=start_full)

    def forward(self, query: torch.Tensor, key: torch.Tensor, update_queue: bool = True) -> torch.Tensor:
        """Loss of ``query`` (N, D) against its ``key`` (N, D) and the queued negatives."""
        _check_pair(query, key)
        query = F.normalize(query, dim=1)
        key = F.normalize(key.detach(), dim=1)
        positive_logits = (query * key).sum(dim=1, keepdim=True)
        negatives = self.queue.contents().to(query.dtype)
        negative_logits = query @ negatives.T
        logits = torch.cat([positive_logits, negative_logits], dim=1) / self.temperature
        target = torch.zeros(query.shape[0], dtype=torch.long, device=query.device)
        loss = F.cross_entropy(logits, target)
        if update_queue:
            self.queue.enqueue(gather_no_grad(key) if self.gather_distributed else key)
        return loss


class InfoNCELoss(nn.Module):
    """MoCo v3's InfoNCE without a queue: the negatives of a query are the other keys in the batch.

    ``forward(query, key)`` is one direction; MoCo v3 symmetrises by averaging ``(q0, k1)`` and
    ``(q1, k0)``. Keys are gathered from all ranks when ``gather_distributed`` (without gradient, since
    they come from the momentum encoder); the positive of local query i is global key ``rank * n + i``.
    """

    def __init__(self, temperature: float = 0.2, gather_distributed: bool = False) -> None:
        super().__init__()
        _check_temperature(temperature)
        self.temperature = temperature
        self.gather_distributed = gather_distributed

    def forward(self, query: torch.Tensor, key: torch.Tensor) -> torch.Tensor:
        _check_pair(query, key)
        query = F.normalize(query, dim=1)
        key = F.normalize(key.detach(), dim=1)
        offset = 0
        if self.gather_distributed and world_size() > 1:
            key = gather_no_grad(key)
            offset = rank() * query.shape[0]
        logits = query @ key.T / self.temperature
        target = torch.arange(query.shape[0], device=query.device) + offset
        return F.cross_entropy(logits, target)


class NegativeCosineSimilarity(nn.Module):
    """``-cos(prediction, target)`` averaged over the batch (SimSiam); the target gets no gradient."""

    def forward(self, prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        _check_pair(prediction, target)
        return -F.cosine_similarity(prediction, target.detach(), dim=1).mean()


class BYOLRegressionLoss(nn.Module):
    """BYOL's normalised mean squared error ``||p/|p| - z/|z|||^2 = 2 - 2 cos(p, z)``, batch mean.

    The target comes from the momentum network and is detached: gradients flow only through the
    online prediction, which is what makes BYOL asymmetric.
    """

    def forward(self, prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        _check_pair(prediction, target)
        return (2.0 - 2.0 * F.cosine_similarity(prediction, target.detach(), dim=1)).mean()


def linear_warmup(step: int, warmup_steps: int, start: float, end: float) -> float:
    """Linear ramp from ``start`` (step 0) to ``end`` (``warmup_steps`` and after)."""
    if warmup_steps <= 0 or step >= warmup_steps:
        return end
    return start + (end - start) * max(step, 0) / warmup_steps


class DINOLoss(nn.Module):
    """DINO's cross-entropy between sharpened, centred teacher outputs and student outputs.

    Views are ordered ``[global_0, global_1, local_0, ..., local_{K-1}]``: the student scores every
    view, the teacher only the global ones, and a teacher view is never compared with the student's
    output for the *same* view. Centering (subtracting an EMA of the teacher's mean output) stops one
    dimension from dominating; a low teacher temperature (sharpening) stops the uniform collapse. The
    teacher temperature warms up linearly from ``warmup_teacher_temp`` to ``teacher_temp`` over
    ``warmup_steps`` steps because a very sharp teacher is unstable early in training.
    """

    center: torch.Tensor

    def __init__(
        self,
        output_dim: int,
        teacher_temp: float = 0.07,
        warmup_teacher_temp: float = 0.04,
        warmup_steps: int = 0,
        student_temp: float = 0.1,
        center_momentum: float = 0.9,
    ) -> None:
        super().__init__()
        for value in (teacher_temp, warmup_teacher_temp, student_temp):
            _check_temperature(value)
        if not 0.0 <= center_momentum <= 1.0:
            raise ValueError(f"center_momentum must lie in [0, 1], got {center_momentum}")
        self.teacher_temp = teacher_temp
        self.warmup_teacher_temp = warmup_teacher_temp
        self.warmup_steps = warmup_steps
        self.student_temp = student_temp
        self.center_momentum = center_momentum
        self.register_buffer("center", torch.zeros(1, output_dim))

    def teacher_temperature(self, step: int) -> float:
        """Teacher temperature at training step ``step`` (linear warm-up, then constant)."""
        return linear_warmup(step, self.warmup_steps, self.warmup_teacher_temp, self.teacher_temp)

    def forward(
        self,
        student_outputs: Sequence[torch.Tensor],
        teacher_outputs: Sequence[torch.Tensor],
        step: int = 0,
        update_center: bool = True,
    ) -> torch.Tensor:
        """Mean cross-entropy over all (teacher view, other student view) pairs, then update the center.

        ``student_outputs``: one (N, K) tensor per view, global views first; ``teacher_outputs``: one
        (N, K) tensor per global view, in the same order.
        """
        if len(teacher_outputs) < 1 or len(student_outputs) < len(teacher_outputs):
            raise ValueError(
                f"need at least one teacher view and at least as many student views, "
                f"got {len(teacher_outputs)} teacher and {len(student_outputs)} student views"
            )
        num_teacher, num_student = len(teacher_outputs), len(student_outputs)
        if num_student < 2:
            raise ValueError("DINO needs at least two views so that some pair compares different views")
        temperature = self.teacher_temperature(step)
        teacher_probs = [F.softmax((t.detach() - self.center) / temperature, dim=-1) for t in teacher_outputs]
        # Summing over teachers first: a student view's target is the sum of the *other* views' teacher
        # distributions, so there is one product per student view instead of one per (teacher, student) pair
        # (8 views: 8 instead of 14 products of (N, K) tensors, forward and backward; ~30% less loss time).
        all_teachers = torch.stack(teacher_probs).sum(dim=0)
        total = student_outputs[0].new_zeros(())
        for index, student in enumerate(student_outputs):
            target = all_teachers - teacher_probs[index] if index < num_teacher else all_teachers
            total = total + (target * F.log_softmax(student / self.student_temp, dim=-1)).sum()
        pairs = num_teacher * num_student - num_teacher
        loss = -total / (pairs * student_outputs[0].shape[0])
        if update_center:
            self.update_center(teacher_outputs)
        return loss

    @torch.no_grad()
    def update_center(self, teacher_outputs: Sequence[torch.Tensor]) -> None:
        """``center = m * center + (1 - m) * mean teacher output`` (mean over views, batch and ranks)."""
        batch_center = torch.cat([t.detach() for t in teacher_outputs]).mean(dim=0, keepdim=True)
        batch_center = all_reduce_mean(batch_center)
        self.center.mul_(self.center_momentum).add_(batch_center, alpha=1.0 - self.center_momentum)
