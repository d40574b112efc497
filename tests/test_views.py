"""View generators: shapes, dtypes, grey vs RGB, seeding, multi-crop layout and the batched augment."""

from __future__ import annotations

import math

import pytest
import torch
from torchvision.transforms import v2

from fewlabel.augment.views import (
    BatchedMultiCropAugment,
    BatchedTwoViewAugment,
    MultiCropTransform,
    TwoViewTransform,
)

GREY = {"channels": 1, "mean": [0.5], "std": [0.25]}
RGB = {"channels": 3, "mean": [0.5, 0.4, 0.3], "std": [0.2, 0.2, 0.2]}


def _image(channels: int, size: int, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (channels, size, size), dtype=torch.uint8, generator=generator)


def _transform_types(transform: TwoViewTransform) -> set[type]:
    found: set[type] = set()
    for step in transform.transform.transforms:
        found.add(type(step))
        found.update(type(inner) for inner in getattr(step, "transforms", []))
    return found


@pytest.mark.parametrize(("stats", "size"), [(GREY, 8), (GREY, 16), (RGB, 16), (RGB, 32)])
def test_two_view_shapes_and_dtype(stats: dict, size: int) -> None:
    transform = TwoViewTransform(size=size, **stats)
    views = transform(_image(stats["channels"], size))
    assert len(views) == 2
    for view in views:
        assert view.shape == (stats["channels"], size, size)
        assert view.dtype == torch.float32
    assert not torch.equal(views[0], views[1])


def test_two_view_normalises_with_mean_and_std() -> None:
    constant = torch.full((1, 8, 8), 255, dtype=torch.uint8)
    transform = TwoViewTransform(size=8, **GREY)
    # A constant image survives crop/flip/contrast; brightness can only darken a saturated pixel.
    for view in transform(constant):
        assert view.max().item() <= (1.0 - 0.5) / 0.25 + 1e-5
        assert view.std().item() < 1e-5


def test_grey_gets_no_colour_ops_and_small_images_no_blur() -> None:
    grey = _transform_types(TwoViewTransform(size=16, **GREY))
    rgb_small = _transform_types(TwoViewTransform(size=16, **RGB))
    rgb_large = _transform_types(TwoViewTransform(size=32, **RGB))
    assert v2.RandomGrayscale not in grey and v2.ColorJitter in grey
    assert v2.RandomGrayscale in rgb_small
    assert v2.GaussianBlur not in rgb_small and v2.GaussianBlur not in grey
    assert v2.GaussianBlur in rgb_large
    grey_jitter = next(
        inner
        for step in TwoViewTransform(size=16, **GREY).transform.transforms
        for inner in getattr(step, "transforms", [])
        if isinstance(inner, v2.ColorJitter)
    )
    assert grey_jitter.saturation is None and grey_jitter.hue is None


def test_flip_option() -> None:
    assert v2.RandomHorizontalFlip in _transform_types(TwoViewTransform(size=8, flip=True, **GREY))
    assert v2.RandomHorizontalFlip not in _transform_types(TwoViewTransform(size=8, flip=False, **GREY))


def test_views_are_deterministic_under_a_seed() -> None:
    transform = TwoViewTransform(size=16, **RGB)
    image = _image(3, 20)
    torch.manual_seed(123)
    first = transform(image)
    torch.manual_seed(123)
    second = transform(image)
    torch.manual_seed(124)
    third = transform(image)
    assert all(torch.equal(a, b) for a, b in zip(first, second, strict=True))
    assert not torch.equal(first[0], third[0])


def test_rejects_wrong_inputs() -> None:
    with pytest.raises(ValueError):
        TwoViewTransform(channels=3, size=8, mean=[0.5], std=[0.5])
    transform = TwoViewTransform(size=8, **GREY)
    with pytest.raises(ValueError):
        transform(_image(3, 8))
    with pytest.raises(ValueError):
        transform(torch.rand(1, 8, 8))


@pytest.mark.parametrize(("size", "local_size"), [(8, 4), (16, 7), (28, 12), (224, 96)])
def test_multi_crop_counts_and_sizes(size: int, local_size: int) -> None:
    transform = MultiCropTransform(size=size, num_local_crops=3, **GREY)
    assert transform.local_size == local_size == math.ceil(size * 3 / 7)
    if size > 32:
        return  # the size rule is what matters here; keep the test fast
    views = transform(_image(1, size))
    assert len(views) == 2 + 3
    assert [tuple(v.shape) for v in views] == [(1, size, size)] * 2 + [(1, local_size, local_size)] * 3
    assert all(v.dtype == torch.float32 for v in views)


def test_multi_crop_rgb_with_custom_local_size_and_no_locals() -> None:
    views = MultiCropTransform(size=32, num_local_crops=2, local_size=10, **RGB)(_image(3, 40))
    assert [tuple(v.shape) for v in views] == [(3, 32, 32)] * 2 + [(3, 10, 10)] * 2
    assert len(MultiCropTransform(size=16, num_local_crops=0, **GREY)(_image(1, 16))) == 2


@pytest.mark.parametrize("stats", [GREY, RGB])
def test_batched_augment_shapes_dtype_and_per_sample_randomness(stats: dict) -> None:
    channels = stats["channels"]
    augment = BatchedTwoViewAugment(size=12, **stats)
    same_image = _image(channels, 16).unsqueeze(0).expand(6, -1, -1, -1).contiguous()
    views = augment(same_image, generator=torch.Generator().manual_seed(0))
    assert len(views) == 2
    for view in views:
        assert view.shape == (6, channels, 12, 12) and view.dtype == torch.float32
        # Identical inputs, so differences between samples come from per-sample random parameters.
        assert all(not torch.allclose(view[0], view[i]) for i in range(1, 6))
    assert not torch.allclose(views[0], views[1])


def test_batched_augment_is_seeded_and_accepts_float_input() -> None:
    augment = BatchedTwoViewAugment(size=8, **GREY)
    images = _image(1, 8).unsqueeze(0).repeat(4, 1, 1, 1)
    first = augment(images, generator=torch.Generator().manual_seed(7))
    second = augment(images.float() / 255.0, generator=torch.Generator().manual_seed(7))
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(first, second, strict=True))


def test_batched_augment_identity_settings_reproduce_the_image() -> None:
    # Full-size crop, square aspect, no flip, no jitter: the view is the normalised input itself.
    augment = BatchedTwoViewAugment(
        size=8, flip=False, scale=(1.0, 1.0), ratio=(1.0, 1.0), jitter_p=0.0, **GREY
    )
    images = _image(1, 8).unsqueeze(0).repeat(3, 1, 1, 1)
    expected = (images.float() / 255.0 - 0.5) / 0.25
    for view in augment(images):
        assert torch.allclose(view, expected, atol=1e-4)


def test_batched_augment_flip_only_mirrors() -> None:
    augment = BatchedTwoViewAugment(
        size=8, flip=True, scale=(1.0, 1.0), ratio=(1.0, 1.0), jitter_p=0.0, **GREY
    )
    images = _image(1, 8).unsqueeze(0).repeat(16, 1, 1, 1)
    plain = (images.float() / 255.0 - 0.5) / 0.25
    view = augment(images, generator=torch.Generator().manual_seed(3))[0]
    mirrored = torch.tensor(
        [torch.allclose(v, p.flip(-1), atol=1e-4) for v, p in zip(view, plain, strict=True)]
    )
    unchanged = torch.tensor([torch.allclose(v, p, atol=1e-4) for v, p in zip(view, plain, strict=True)])
    assert bool((mirrored | unchanged).all())
    assert mirrored.any() and unchanged.any()


def test_batched_multi_crop_order_sizes_and_seeding() -> None:
    augment = BatchedMultiCropAugment(size=28, num_local_crops=3, **GREY)
    assert augment.local_size == 12  # 3/7 of the global size, rounded up, as in MultiCropTransform
    images = _image(1, 28).unsqueeze(0).repeat(5, 1, 1, 1)
    views = augment(images, generator=torch.Generator().manual_seed(0))
    assert [tuple(v.shape) for v in views] == [(5, 1, 28, 28)] * 2 + [(5, 1, 12, 12)] * 3
    again = augment(images, generator=torch.Generator().manual_seed(0))
    assert all(torch.equal(a, b) for a, b in zip(views, again, strict=True))
    assert len(BatchedMultiCropAugment(size=16, num_local_crops=0, **GREY)(images[:, :, :16, :16])) == 2
    with pytest.raises(ValueError, match="num_local_crops"):
        BatchedMultiCropAugment(size=16, num_local_crops=-1, **GREY)


def test_batched_multi_crop_local_views_cover_small_areas() -> None:
    # A full-scale local crop of a 16 px image resampled to 16 px is the image itself; a crop of 1/16 of
    # the area (a quarter of each side) is a zoom, so its pixels span far less of the stripes' range.
    stripes = torch.arange(16, dtype=torch.uint8).mul(16).view(1, 1, 1, 16).expand(4, 1, 16, 16).contiguous()
    identity = BatchedMultiCropAugment(size=16, num_local_crops=1, local_size=16, local_scale=(1.0, 1.0),
                                       ratio=(1.0, 1.0), flip=False, jitter_p=0.0, **GREY)
    expected = (stripes.float() / 255.0 - 0.5) / 0.25
    assert torch.allclose(identity(stripes)[2], expected, atol=1e-4)
    zoom = BatchedMultiCropAugment(size=16, num_local_crops=1, local_size=16, local_scale=(0.0625, 0.0625),
                                   ratio=(1.0, 1.0), flip=False, jitter_p=0.0, **GREY)
    local = zoom(stripes, generator=torch.Generator().manual_seed(0))[2]
    local_range = local.amax(dim=(1, 2, 3)) - local.amin(dim=(1, 2, 3))
    assert float(local_range.max()) < 0.4 * float(expected.max() - expected.min())
