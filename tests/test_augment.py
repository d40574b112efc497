from __future__ import annotations

import pytest
import torch

from fewlabel.augment import POLICIES, build_policy
from fewlabel.errors import FewlabelError

IMAGE = torch.arange(28 * 28, dtype=torch.int64).remainder(251).to(torch.uint8).view(1, 28, 28)


@pytest.mark.parametrize("name", POLICIES)
def test_every_policy_keeps_shape_and_dtype(name: str) -> None:
    torch.manual_seed(0)
    policy = build_policy(name, (28, 28), num_classes=10)
    out = policy.sample_transform(IMAGE) if policy.sample_transform else IMAGE
    assert out.shape == IMAGE.shape and out.dtype == torch.uint8
    rgb = IMAGE.expand(3, -1, -1).contiguous()
    out_rgb = policy.sample_transform(rgb) if policy.sample_transform else rgb
    assert out_rgb.shape == rgb.shape


def test_none_is_identity() -> None:
    policy = build_policy("none", (28, 28), num_classes=10)
    assert policy.sample_transform is None and policy.batch_transform is None


@pytest.mark.parametrize("name", ["standard", "autoaugment", "randaugment"])
def test_random_policies_change_images_and_are_seeded(name: str) -> None:
    policy = build_policy(name, (28, 28), num_classes=10)
    torch.manual_seed(1)
    first = [policy.sample_transform(IMAGE) for _ in range(8)]
    torch.manual_seed(1)
    again = [policy.sample_transform(IMAGE) for _ in range(8)]
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))
    assert any(not torch.equal(a, IMAGE) for a in first)


def test_flips_only_for_flip_invariant_data() -> None:
    names = repr(build_policy("standard", (8, 8), 10, flip=False).sample_transform)
    assert "RandomHorizontalFlip" not in names and "RandomCrop" in names
    assert "RandomHorizontalFlip" in repr(build_policy("standard", (8, 8), 10, flip=True).sample_transform)


def test_standard_crop_is_a_translation_of_the_reflect_padded_image() -> None:
    # With 28 px images the padding is 28/8 = 3.5 -> 4 px: every output is a 28x28 window of the padded image.
    policy = build_policy("standard", (28, 28), 10, flip=False)
    padded = torch.nn.functional.pad(IMAGE.float()[None], (4, 4, 4, 4), mode="reflect")[0].to(torch.uint8)
    torch.manual_seed(3)
    out = policy.sample_transform(IMAGE)
    windows = [padded[:, i : i + 28, j : j + 28] for i in range(9) for j in range(9)]
    assert any(torch.equal(out, w) for w in windows)


@pytest.mark.parametrize("name", ["mixup", "cutmix"])
def test_batch_policies_mix_labels(name: str) -> None:
    torch.manual_seed(0)
    policy = build_policy(name, (28, 28), num_classes=4)
    x = torch.rand(8, 1, 28, 28)
    y = torch.tensor([0, 1, 2, 3, 0, 1, 2, 3])
    mixed_x, soft = policy.batch_transform(x, y)
    assert mixed_x.shape == x.shape and soft.shape == (8, 4)
    torch.testing.assert_close(soft.sum(dim=1), torch.ones(8))
    assert (soft.max(dim=1).values < 1).any()  # some labels are really mixed


def test_unknown_policy() -> None:
    with pytest.raises(FewlabelError, match="unknown augmentation policy"):
        build_policy("rand-augment", (28, 28), 10)


def test_loader_workers_draw_their_own_image_augmentations() -> None:
    """Each DataLoader worker gets its own torch seed (base seed + worker id): the same image augmented in two
    workers differs, and the same seed gives the same batches again."""
    import lightning as L
    import numpy as np

    from fewlabel.augment.supervised import build_policy
    from fewlabel.engine.data import IndexedSamples, make_loader

    images = torch.arange(32 * 32, dtype=torch.float32).reshape(1, 1, 32, 32).remainder(251).to(torch.uint8)
    images = images.expand(8, 1, 32, 32).contiguous()  # one image, eight times
    policy = build_policy("randaugment", (32, 32), num_classes=2)

    def batches(seed: int) -> list[torch.Tensor]:
        L.seed_everything(seed, workers=True, verbose=False)
        loader = make_loader(IndexedSamples(images, np.arange(8), np.zeros(8, dtype=np.int64),
                                            policy.sample_transform), 4, shuffle=False, workers=2)
        return [x for x, _ in loader]

    first = batches(0)
    assert not torch.equal(first[0], first[1])  # worker 0 made batch 0, worker 1 batch 1
    assert all(torch.equal(a, b) for a, b in zip(first, batches(0), strict=True))
