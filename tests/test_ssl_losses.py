"""Self-supervised losses against values computed by hand with plain ``math``."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from fewlabel.methods.losses import (
    BYOLRegressionLoss,
    DINOLoss,
    InfoNCELoss,
    InfoNCEQueueLoss,
    NegativeCosineSimilarity,
    NTXentLoss,
    linear_warmup,
)


def _cos(a: list[float], b: list[float]) -> float:
    dot = sum(x * y for x, y in zip(a, b, strict=True))
    return dot / (math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b)))


def test_ntxent_orthogonal_pairs_closed_form() -> None:
    # Each anchor: positive cos 1, two negatives (the other sample, both views) cos 0.
    t = 0.5
    z0 = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    z1 = torch.tensor([[3.0, 0.0], [0.0, 0.5]])
    expected = -math.log(math.exp(1 / t) / (math.exp(1 / t) + 2 * math.exp(0.0)))
    assert NTXentLoss(temperature=t)(z0, z1).item() == pytest.approx(expected, rel=1e-6)


def test_ntxent_general_two_by_two_by_hand() -> None:
    t = 0.3
    a, b = [1.0, 0.0], [0.0, 1.0]  # view 0 of samples 0 and 1
    c, d = [0.6, 0.8], [0.8, -0.6]  # view 1 of samples 0 and 1
    # anchor -> (positive, [negatives]) among the 4 views, excluding the anchor itself
    terms = {
        "a": (_cos(a, c), [_cos(a, b), _cos(a, d)]),
        "b": (_cos(b, d), [_cos(b, a), _cos(b, c)]),
        "c": (_cos(c, a), [_cos(c, b), _cos(c, d)]),
        "d": (_cos(d, b), [_cos(d, a), _cos(d, c)]),
    }
    losses = []
    for positive, negatives in terms.values():
        denominator = math.exp(positive / t) + sum(math.exp(n / t) for n in negatives)
        losses.append(-math.log(math.exp(positive / t) / denominator))
    expected = sum(losses) / len(losses)
    loss = NTXentLoss(temperature=t)(torch.tensor([a, b]), torch.tensor([c, d]))
    assert loss.item() == pytest.approx(expected, rel=1e-6)


def test_ntxent_is_symmetric_in_views_and_rejects_bad_shapes() -> None:
    torch.manual_seed(0)
    z0, z1 = torch.randn(6, 5), torch.randn(6, 5)
    criterion = NTXentLoss(temperature=0.2)
    assert criterion(z0, z1).item() == pytest.approx(criterion(z1, z0).item(), rel=1e-6)
    with pytest.raises(ValueError):
        criterion(z0, z1[:5])
    with pytest.raises(ValueError):
        NTXentLoss(temperature=0.0)


def test_infonce_queue_loss_by_hand_and_fifo_update() -> None:
    t = 0.2
    criterion = InfoNCEQueueLoss(dim=2, queue_size=2, temperature=t, start_full=False)
    negatives = [[1.0, 0.0], [0.0, 1.0]]
    criterion.queue.enqueue(torch.tensor(negatives))
    query, key = [0.6, 0.8], [0.8, 0.6]
    positive = _cos(query, key)
    denominator = math.exp(positive / t) + sum(math.exp(_cos(query, n) / t) for n in negatives)
    expected = -math.log(math.exp(positive / t) / denominator)

    loss = criterion(torch.tensor([query]), torch.tensor([[8.0, 6.0]]))  # key length is irrelevant
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    # The key replaced the oldest entry and was stored normalised.
    assert torch.allclose(criterion.queue.contents(), torch.tensor([[0.0, 1.0], key]))


def test_infonce_queue_key_gets_no_gradient() -> None:
    criterion = InfoNCEQueueLoss(dim=3, queue_size=8, temperature=0.2)
    query = torch.randn(4, 3, requires_grad=True)
    key = torch.randn(4, 3, requires_grad=True)
    criterion(query, key).backward()
    assert query.grad is not None and query.grad.abs().sum() > 0
    assert key.grad is None


def test_infonce_in_batch_by_hand() -> None:
    t = 0.5
    q = [[1.0, 0.0], [0.0, 1.0]]
    k = [[0.6, 0.8], [-0.8, 0.6]]
    losses = []
    for i in range(2):
        logits = [_cos(q[i], k[j]) / t for j in range(2)]
        losses.append(-math.log(math.exp(logits[i]) / sum(math.exp(x) for x in logits)))
    loss = InfoNCELoss(temperature=t)(torch.tensor(q), torch.tensor(k))
    assert loss.item() == pytest.approx(sum(losses) / 2, rel=1e-6)


def test_byol_and_negative_cosine_values() -> None:
    prediction = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    target = torch.tensor([[0.0, 5.0], [2.0, 2.0]])  # cos = 0 and cos = 1
    assert BYOLRegressionLoss()(prediction, target).item() == pytest.approx((2.0 + 0.0) / 2)
    assert NegativeCosineSimilarity()(prediction, target).item() == pytest.approx(-(0.0 + 1.0) / 2)
    opposite = torch.tensor([[-3.0, 0.0]])
    assert BYOLRegressionLoss()(torch.tensor([[1.0, 0.0]]), opposite).item() == pytest.approx(4.0)
    # 2 - 2cos equals the squared distance of the normalised vectors.
    torch.manual_seed(0)
    p, z = torch.randn(5, 7), torch.randn(5, 7)
    squared_distance = (F.normalize(p, dim=1) - F.normalize(z, dim=1)).pow(2).sum(dim=1).mean()
    assert BYOLRegressionLoss()(p, z).item() == pytest.approx(squared_distance.item(), rel=1e-5)


def _softmax(values: list[float]) -> list[float]:
    exps = [math.exp(v) for v in values]
    return [e / sum(exps) for e in exps]


def test_dino_loss_with_centering_by_hand() -> None:
    student_temp, teacher_temp, momentum = 0.1, 0.05, 0.9
    criterion = DINOLoss(
        output_dim=2,
        teacher_temp=teacher_temp,
        warmup_teacher_temp=teacher_temp,
        student_temp=student_temp,
        center_momentum=momentum,
    )
    teacher = [[0.2, 0.1], [0.0, 0.3]]  # global views 0 and 1, batch of one
    student = [[0.5, -0.5], [0.1, 0.2], [-0.3, 0.4]]  # global 0, global 1, local 0

    def expected_loss(center: list[float]) -> float:
        terms = []
        for ti, t in enumerate(teacher):
            probs = _softmax([(t[k] - center[k]) / teacher_temp for k in range(2)])
            for si, s in enumerate(student):
                if si == ti:
                    continue
                log_probs = [math.log(p) for p in _softmax([x / student_temp for x in s])]
                terms.append(-sum(p * lp for p, lp in zip(probs, log_probs, strict=True)))
        assert len(terms) == 4  # 2 teacher views x 2 *other* student views
        return sum(terms) / len(terms)

    student_tensors = [torch.tensor([s]) for s in student]
    teacher_tensors = [torch.tensor([t]) for t in teacher]
    first = criterion(student_tensors, teacher_tensors)
    assert first.item() == pytest.approx(expected_loss([0.0, 0.0]), rel=1e-5)

    center = [(1 - momentum) * (teacher[0][k] + teacher[1][k]) / 2 for k in range(2)]
    assert criterion.center.squeeze(0).tolist() == pytest.approx(center, rel=1e-6)
    second = criterion(student_tensors, teacher_tensors)
    assert second.item() == pytest.approx(expected_loss(center), rel=1e-5)
    assert second.item() != pytest.approx(first.item(), rel=1e-6)


def test_dino_loss_gradients_reach_only_the_student() -> None:
    criterion = DINOLoss(output_dim=4)
    student = [torch.randn(3, 4, requires_grad=True) for _ in range(4)]
    teacher = [torch.randn(3, 4, requires_grad=True) for _ in range(2)]
    criterion(student, teacher).backward()
    assert all(s.grad is not None and s.grad.abs().sum() > 0 for s in student)
    assert all(t.grad is None for t in teacher)


def test_dino_loss_equals_the_pairwise_definition_with_many_views() -> None:
    """The batched contraction gives the loss and gradients of the per-pair definition (2 global + 4 local)."""
    torch.manual_seed(0)
    student = [torch.randn(6, 32, requires_grad=True) for _ in range(6)]
    teacher = [torch.randn(6, 32) for _ in range(2)]
    center = torch.randn(1, 32) * 0.1
    criterion = DINOLoss(output_dim=32, teacher_temp=0.07, warmup_teacher_temp=0.07, student_temp=0.1)
    criterion.center.copy_(center)
    loss = criterion(student, teacher, update_center=False)
    loss.backward()
    fast_grads = [s.grad.clone() for s in student]
    for s in student:
        s.grad = None
    reference = []
    for ti, t in enumerate(teacher):
        probs = F.softmax((t - center) / 0.07, dim=-1)
        for si, s in enumerate(student):
            if si != ti:
                reference.append(-(probs * F.log_softmax(s / 0.1, dim=-1)).sum(dim=-1).mean())
    expected = torch.stack(reference).mean()
    expected.backward()
    assert len(reference) == 10
    torch.testing.assert_close(loss, expected)
    for fast, s in zip(fast_grads, student, strict=True):
        torch.testing.assert_close(fast, s.grad)


def test_dino_teacher_temperature_warmup_schedule() -> None:
    criterion = DINOLoss(output_dim=3, warmup_teacher_temp=0.04, teacher_temp=0.07, warmup_steps=10)
    assert criterion.teacher_temperature(0) == pytest.approx(0.04)
    assert criterion.teacher_temperature(5) == pytest.approx(0.055)
    assert criterion.teacher_temperature(10) == pytest.approx(0.07)
    assert criterion.teacher_temperature(1000) == pytest.approx(0.07)
    assert linear_warmup(3, 0, start=1.0, end=2.0) == 2.0  # no warm-up: final value right away
    assert linear_warmup(-4, 8, start=1.0, end=2.0) == 1.0
