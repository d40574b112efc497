"""EMA updates, the cosine momentum schedule and the FIFO negatives queue."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from fewlabel.methods.momentum import (
    MemoryBankQueue,
    cosine_momentum,
    deactivate_requires_grad,
    update_momentum,
)


def test_update_momentum_exact_values() -> None:
    online, ema = nn.Linear(2, 1), nn.Linear(2, 1)
    with torch.no_grad():
        online.weight.copy_(torch.tensor([[1.0, 2.0]]))
        online.bias.fill_(4.0)
        ema.weight.copy_(torch.tensor([[3.0, -2.0]]))
        ema.bias.fill_(0.0)
    update_momentum(online, ema, m=0.75)
    assert ema.weight.tolist() == [[0.75 * 3 + 0.25 * 1, 0.75 * -2 + 0.25 * 2]]
    assert ema.bias.tolist() == [1.0]
    assert online.weight.tolist() == [[1.0, 2.0]]  # the online network is untouched
    update_momentum(online, ema, m=0.0)
    assert torch.equal(ema.weight, online.weight)
    with pytest.raises(ValueError):
        update_momentum(online, ema, m=1.5)


def test_update_momentum_on_parameter_free_modules_does_nothing() -> None:
    # No parameters (an empty multi-tensor update used to raise); buffers are never averaged.
    online, ema = nn.BatchNorm1d(3, affine=False), nn.BatchNorm1d(3, affine=False)
    online.running_mean.fill_(5.0)
    update_momentum(online, ema, m=0.5)
    assert ema.running_mean.tolist() == [0.0, 0.0, 0.0]


def test_update_momentum_rejects_mismatched_networks() -> None:
    with pytest.raises(ValueError):
        update_momentum(nn.Linear(2, 2), nn.Linear(2, 3), m=0.5)
    with pytest.raises(ValueError):  # different parameter counts
        update_momentum(nn.Linear(2, 2), nn.Linear(2, 2, bias=False), m=0.5)


def test_cosine_momentum_schedule() -> None:
    assert cosine_momentum(0, 100) == pytest.approx(0.996)
    assert cosine_momentum(100, 100) == pytest.approx(1.0)
    assert cosine_momentum(50, 100, start=0.9, end=1.0) == pytest.approx(0.95)
    assert cosine_momentum(25, 100, start=0.0, end=1.0) == pytest.approx((1 - math.cos(math.pi / 4)) / 2)
    assert cosine_momentum(500, 100) == pytest.approx(1.0)  # clamped past the end
    values = [cosine_momentum(s, 10, 0.99, 1.0) for s in range(11)]
    assert values == sorted(values)
    with pytest.raises(ValueError):
        cosine_momentum(0, 0)


def test_deactivate_requires_grad() -> None:
    module = deactivate_requires_grad(nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2)))
    assert not any(p.requires_grad for p in module.parameters())


def _rows(*values: float) -> torch.Tensor:
    return torch.tensor([[v, -v] for v in values])


def test_queue_fifo_and_wrap_around() -> None:
    queue = MemoryBankQueue(size=4, dim=2, start_full=False)
    assert len(queue) == 0 and queue.contents().shape == (0, 2)
    queue.enqueue(_rows(1, 2, 3))
    assert torch.equal(queue.contents(), _rows(1, 2, 3))
    queue.enqueue(_rows(4, 5))  # wraps: 1 is evicted, 5 lands in slot 0
    assert len(queue) == 4
    assert torch.equal(queue.contents(), _rows(2, 3, 4, 5))
    assert torch.equal(queue.bank[0], _rows(5)[0])
    queue.enqueue(_rows(6, 7, 8, 9, 10, 11))  # more than the queue holds: keep the newest 4
    assert torch.equal(queue.contents(), _rows(8, 9, 10, 11))


def test_queue_dequeue_removes_oldest() -> None:
    queue = MemoryBankQueue(size=3, dim=2, start_full=False)
    queue.enqueue(_rows(1, 2, 3))
    assert torch.equal(queue.dequeue(2), _rows(1, 2))
    assert torch.equal(queue.contents(), _rows(3))
    queue.enqueue(_rows(4, 5))
    assert torch.equal(queue.contents(), _rows(3, 4, 5))
    queue.enqueue(_rows(6))
    assert torch.equal(queue.contents(), _rows(4, 5, 6))


def test_queue_starts_full_of_unit_vectors_and_is_a_checkpointed_buffer() -> None:
    queue = MemoryBankQueue(size=5, dim=3)
    assert len(queue) == 5
    assert torch.allclose(queue.contents().norm(dim=1), torch.ones(5))
    queue.enqueue(torch.ones(2, 3))
    restored = MemoryBankQueue(size=5, dim=3)
    restored.load_state_dict(queue.state_dict())
    assert torch.equal(restored.contents(), queue.contents())
    with pytest.raises(ValueError):
        queue.enqueue(torch.ones(2, 4))
