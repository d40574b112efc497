"""Every method trains for a few steps on tiny grey images through its own view generator.

Checks: finite loss, online parameters move, momentum/teacher networks get no gradients and move
exactly by the EMA rule, and the registry reports unknown names as ``FewlabelError``.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from fewlabel.augment.views import BatchedTwoViewAugment, MultiCropTransform, TwoViewTransform
from fewlabel.errors import FewlabelError
from fewlabel.methods import METHODS, SSLMethod, create_method
from fewlabel.methods.momentum import cosine_momentum

SIZE, BATCH, STEPS = 16, 8, 3
GREY_STATS = {"channels": 1, "mean": [0.5], "std": [0.25]}

SMALL_HPARAMS: dict[str, dict] = {
    "simclr": {"hidden_dim": 32, "output_dim": 16},
    "moco_v2": {"version": 2, "hidden_dim": 32, "output_dim": 16, "queue_size": 32, "momentum": 0.9},
    "moco_v3": {"version": 3, "hidden_dim": 32, "output_dim": 16, "momentum": 0.9},
    "byol": {"hidden_dim": 32, "output_dim": 16, "momentum": 0.9},
    "dino": {"output_dim": 64, "hidden_dim": 32, "bottleneck_dim": 16, "momentum": 0.9},
}


class TinyConvNet(nn.Sequential):
    """conv -> BN -> ReLU -> global pool: the smallest backbone with BatchNorm buffers."""

    def __init__(self, channels: int = 1, embed_dim: int = 12) -> None:
        super().__init__(
            nn.Conv2d(channels, embed_dim, 3, padding=1),
            nn.BatchNorm2d(embed_dim),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )
        self.embed_dim = embed_dim


def _images(seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (BATCH, 1, SIZE, SIZE), dtype=torch.uint8, generator=generator)


def _views(method: SSLMethod, images: torch.Tensor) -> list[torch.Tensor]:
    """Per-sample generators collated like a DataLoader would: one (N, C, H, W) tensor per view."""
    if method.views == "multi_crop":
        generator = MultiCropTransform(size=SIZE, num_local_crops=2, **GREY_STATS)
    else:
        generator = TwoViewTransform(size=SIZE, flip=False, **GREY_STATS)
    per_sample = [generator(image) for image in images]
    return [torch.stack(view) for view in zip(*per_sample, strict=True)]


def _build(key: str) -> SSLMethod:
    torch.manual_seed(0)
    return create_method(key.split("_")[0], TinyConvNet(), **SMALL_HPARAMS[key])


@pytest.mark.parametrize("key", list(SMALL_HPARAMS))
def test_method_trains_and_momentum_networks_follow_the_ema_rule(key: str) -> None:
    method = _build(key)
    method.train()
    optimizer = torch.optim.SGD(method.optimizer_groups(), lr=0.05, weight_decay=1e-4)
    pairs = method.momentum_pairs()
    online_modules = [online for online, _ in pairs] or [method.backbone]
    start = [copy.deepcopy(m.state_dict()) for m in online_modules]
    ema_start = [[p.detach().clone() for p in ema.parameters()] for _, ema in pairs]

    for step in range(STEPS):
        torch.manual_seed(100 + step)
        views = _views(method, _images(step))
        ema_before = [[p.detach().clone() for p in ema.parameters()] for _, ema in pairs]
        loss, logs = method.training_loss(views)
        assert torch.isfinite(loss) and loss.requires_grad
        assert logs["loss"] == pytest.approx(loss.item())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        for _, ema in pairs:
            assert all(p.grad is None and not p.requires_grad for p in ema.parameters())
        method.on_train_step_end(step, STEPS)

        m = cosine_momentum(step, STEPS, method.momentum_start, method.momentum_end)
        if pairs:
            assert method.last_momentum == pytest.approx(m)
        for (online, ema), before in zip(pairs, ema_before, strict=True):
            for ema_param, old, online_param in zip(
                ema.parameters(), before, online.parameters(), strict=True
            ):
                assert torch.allclose(ema_param, m * old + (1 - m) * online_param.detach(), atol=1e-6)

    for module, initial in zip(online_modules, start, strict=True):
        changed = [
            not torch.equal(v, initial[k]) for k, v in module.state_dict().items() if v.is_floating_point()
        ]
        assert any(changed), f"{key}: {type(module).__name__} did not train"
    for (_, ema), initial in zip(pairs, ema_start, strict=True):
        # Online weights moved and the momentum stayed below 1 before the last step, so EMA moved too.
        assert any(not torch.equal(p, q) for p, q in zip(ema.parameters(), initial, strict=True))


def test_momentum_networks_start_as_copies_and_are_excluded_from_the_optimizer() -> None:
    for key in SMALL_HPARAMS:
        method = _build(key)
        optimised = {id(p) for group in method.optimizer_groups() for p in group["params"]}
        trainable = {id(p) for p in method.parameters() if p.requires_grad}
        assert optimised == trainable
        for online, ema in method.momentum_pairs():
            assert all(torch.equal(a, b) for a, b in zip(online.parameters(), ema.parameters(), strict=True))
            assert not optimised & {id(p) for p in ema.parameters()}


def test_optimizer_groups_exclude_norms_and_biases_from_weight_decay() -> None:
    method = _build("simclr")
    decayed, not_decayed = method.optimizer_groups()
    assert "weight_decay" not in decayed and not_decayed["weight_decay"] == 0.0
    assert all(p.ndim > 1 for p in decayed["params"])
    assert all(p.ndim <= 1 for p in not_decayed["params"])


def test_batched_augment_feeds_a_two_view_method() -> None:
    method = _build("simclr")
    views = BatchedTwoViewAugment(size=SIZE, flip=False, **GREY_STATS)(_images(0))
    loss, logs = method.training_loss(views)
    loss.backward()
    assert torch.isfinite(loss) and logs["representation_std"] > 0
    assert method.backbone[0].weight.grad is not None


def test_dino_views_order_and_teacher_temperature_warmup() -> None:
    method = _build("dino")
    assert method.views == "multi_crop"
    assert method.pretrained_backbone() is method.teacher_backbone
    views = _views(method, _images(0))
    assert [v.shape[-1] for v in views] == [SIZE, SIZE, 7, 7]
    _, logs = method.training_loss(views)
    assert logs["teacher_temperature"] == pytest.approx(0.04)  # warm-up start before any step
    for step in range(10):
        method.on_train_step_end(step, max_steps=10)
    _, logs = method.training_loss(views)
    assert logs["teacher_temperature"] == pytest.approx(0.07)  # warm-up (30% of 10 steps) is over
    with pytest.raises(ValueError):
        method.training_loss(views[:1])


def test_moco_v2_queue_receives_keys() -> None:
    method = _build("moco_v2")
    queue = method.criterion.queue
    before = queue.contents()
    method.training_loss(_views(method, _images(0)))
    after = queue.contents()
    assert torch.equal(after[:-BATCH], before[BATCH:])  # FIFO: the oldest BATCH keys were replaced
    assert torch.allclose(after[-BATCH:].norm(dim=1), torch.ones(BATCH))


def test_registry_errors_are_user_errors() -> None:
    assert set(METHODS) == {"simclr", "moco", "byol", "dino"}
    with pytest.raises(FewlabelError, match="simclr, moco, byol, dino"):
        create_method("swav", TinyConvNet())
    with pytest.raises(FewlabelError, match="temprature"):
        create_method("simclr", TinyConvNet(), temprature=0.1)
    with pytest.raises(FewlabelError, match="version"):
        create_method("moco", TinyConvNet(), version=1)
    with pytest.raises(FewlabelError, match="momentum"):
        create_method("byol", TinyConvNet(), momentum=1.5)
    with pytest.raises(TypeError, match="embed_dim"):
        create_method("simclr", nn.Flatten())


def test_view_kind_is_validated_at_class_definition() -> None:
    with pytest.raises(TypeError, match="views"):

        class _Bad(SSLMethod):  # the class statement itself must fail
            views = "three_view"
