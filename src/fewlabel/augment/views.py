"""View generators for self-supervised pre-training on images.

Self-supervised methods learn whatever the views have in common, so the augmentations *are* the prior:
they must respect the data. The generators are therefore built from what we know about the images:

* ``channels``: colour jitter, saturation and random grayscale only make sense for RGB; grey images
  get brightness/contrast only.
* ``size``: Gaussian blur wipes out 8-28 px images (digits, Fashion-MNIST), so it is used only at 32 px
  and above.
* ``flip``: some datasets are not flip invariant (digits, text); flipping is then off.

Per-sample generators (``TwoViewTransform``, ``MultiCropTransform``) take one uint8 (C, H, W) tensor
and belong in a ``Dataset``; ``BatchedTwoViewAugment`` augments a whole (N, C, H, W) batch at once with
vectorised torch ops, e.g. on the GPU after the batch was moved there.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.transforms import v2

BLUR_MIN_SIZE = 32
RGB_LUMA_WEIGHTS = (0.299, 0.587, 0.114)


def _check_stats(channels: int, mean: Sequence[float], std: Sequence[float]) -> None:
    if channels not in (1, 3):
        raise ValueError(f"view generators support grey (1) or RGB (3) images, got {channels} channels")
    if len(mean) != channels or len(std) != channels:
        raise ValueError(
            f"need one mean and one std per channel ({channels}), got {len(mean)} and {len(std)}"
        )
    if any(s <= 0 for s in std):
        raise ValueError(f"std must be positive, got {list(std)}")


def _blur_kernel_size(size: int) -> int:
    """Odd kernel of about 10% of the image side, as in SimCLR."""
    return max(3, int(0.1 * size) // 2 * 2 + 1)


def _view_pipeline(
    channels: int,
    out_size: int,
    source_size: int,
    mean: Sequence[float],
    std: Sequence[float],
    flip: bool,
    scale: tuple[float, float],
    blur_p: float,
    solarize_p: float = 0.0,
) -> v2.Compose:
    """One random view: resized crop, [flip], colour (RGB) or brightness/contrast (grey), [blur], scale."""
    steps: list[nn.Module] = [v2.RandomResizedCrop(out_size, scale=scale, antialias=True)]
    if flip:
        steps.append(v2.RandomHorizontalFlip())
    if channels == 3:
        steps.append(v2.RandomApply([v2.ColorJitter(0.4, 0.4, 0.4, 0.1)], p=0.8))
        steps.append(v2.RandomGrayscale(p=0.2))
    else:
        steps.append(v2.RandomApply([v2.ColorJitter(brightness=0.4, contrast=0.4)], p=0.8))
    if source_size >= BLUR_MIN_SIZE and blur_p > 0:
        steps.append(
            v2.RandomApply([v2.GaussianBlur(_blur_kernel_size(out_size), sigma=(0.1, 2.0))], p=blur_p)
        )
    if channels == 3 and solarize_p > 0:
        steps.append(v2.RandomSolarize(threshold=128, p=solarize_p))
    steps.append(v2.ToDtype(torch.float32, scale=True))
    steps.append(v2.Normalize(list(mean), list(std)))
    return v2.Compose(steps)


def _local_crops(num_local_crops: int, size: int, local_size: int | None) -> int:
    """Checks the local-crop count and returns the local view size: by default 3/7 of ``size`` rounded up
    (DINO's 96 px for 224 px)."""
    if num_local_crops < 0:
        raise ValueError(f"num_local_crops must be >= 0, got {num_local_crops}")
    return local_size if local_size is not None else math.ceil(size * 3 / 7)


class _PerSampleViews:
    """Shared input check: the generators expect one uint8 (C, H, W) image with the configured channels."""

    channels: int

    def _check_image(self, image: torch.Tensor) -> None:
        if image.ndim != 3 or image.shape[0] != self.channels:
            raise ValueError(
                f"expected a ({self.channels}, H, W) image tensor, got shape {tuple(image.shape)}"
            )
        if image.dtype != torch.uint8:
            raise ValueError(f"expected a uint8 image tensor, got {image.dtype}")


class TwoViewTransform(_PerSampleViews):
    """SimCLR-style pair of views of one uint8 image (C, H, W) -> two float normalised (C, size, size)."""

    def __init__(
        self,
        channels: int,
        size: int,
        mean: Sequence[float],
        std: Sequence[float],
        flip: bool = True,
        scale: tuple[float, float] = (0.2, 1.0),
        blur_p: float = 0.5,
    ) -> None:
        _check_stats(channels, mean, std)
        self.channels = channels
        self.size = size
        self.transform = _view_pipeline(channels, size, size, mean, std, flip, scale, blur_p)

    def __call__(self, image: torch.Tensor) -> list[torch.Tensor]:
        self._check_image(image)
        return [self.transform(image), self.transform(image)]


class MultiCropTransform(_PerSampleViews):
    """DINO's multi-crop: 2 global views at ``size`` then ``num_local_crops`` local views at ``local_size``.

    Output order is ``[global_0, global_1, local_0, ..., local_{K-1}]``, the order ``DINO`` expects.
    As in DINO, the first global view is always blurred, the second rarely and possibly solarised (RGB),
    local views half of the time; blur only applies to images of at least 32 px.
    ``local_size`` defaults to 3/7 of ``size`` rounded up (DINO's 96 px for 224 px).
    """

    def __init__(
        self,
        channels: int,
        size: int,
        mean: Sequence[float],
        std: Sequence[float],
        flip: bool = True,
        num_local_crops: int = 6,
        local_size: int | None = None,
        global_scale: tuple[float, float] = (0.4, 1.0),
        local_scale: tuple[float, float] = (0.05, 0.4),
    ) -> None:
        _check_stats(channels, mean, std)
        self.local_size = _local_crops(num_local_crops, size, local_size)
        self.channels = channels
        self.size = size
        self.num_local_crops = num_local_crops
        self.global_transforms = [
            _view_pipeline(channels, size, size, mean, std, flip, global_scale, blur_p=1.0),
            _view_pipeline(channels, size, size, mean, std, flip, global_scale, blur_p=0.1, solarize_p=0.2),
        ]
        self.local_transform = _view_pipeline(
            channels, self.local_size, size, mean, std, flip, local_scale, blur_p=0.5
        )

    def __call__(self, image: torch.Tensor) -> list[torch.Tensor]:
        self._check_image(image)
        global_views = [transform(image) for transform in self.global_transforms]
        return global_views + [self.local_transform(image) for _ in range(self.num_local_crops)]


class BatchedTwoViewAugment(nn.Module):
    """Two views of a whole batch (N, C, H, W), each sample with its own random parameters.

    Vectorised: the random resized crop and flip are one ``affine_grid``/``grid_sample`` call (bilinear,
    no antialiasing, crops that would exceed the image are clamped to it instead of re-sampled), then
    per-sample brightness/contrast (and saturation plus random grayscale for RGB) jitter. Hue jitter and
    blur are left out; use ``TwoViewTransform`` for the full per-sample recipe. Input is uint8 (0-255) or
    float in [0, 1]; output is float32, normalised with ``mean``/``std``. Pass a ``generator`` living on
    the batch's device for reproducible views.
    """

    mean: torch.Tensor
    std: torch.Tensor
    luma: torch.Tensor

    def __init__(
        self,
        channels: int,
        size: int,
        mean: Sequence[float],
        std: Sequence[float],
        flip: bool = True,
        scale: tuple[float, float] = (0.2, 1.0),
        ratio: tuple[float, float] = (3 / 4, 4 / 3),
        brightness: float = 0.4,
        contrast: float = 0.4,
        saturation: float = 0.4,
        jitter_p: float = 0.8,
        grayscale_p: float = 0.2,
    ) -> None:
        super().__init__()
        _check_stats(channels, mean, std)
        self.channels = channels
        self.size = size
        self.flip = flip
        self.scale = scale
        self.log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
        self.brightness = brightness
        self.contrast = contrast
        self.saturation = saturation if channels == 3 else 0.0
        self.jitter_p = jitter_p
        self.grayscale_p = grayscale_p if channels == 3 else 0.0
        self.register_buffer("mean", torch.tensor(list(mean), dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(list(std), dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("luma", torch.tensor(RGB_LUMA_WEIGHTS).view(1, 3, 1, 1), persistent=False)

    @torch.no_grad()
    def forward(self, images: torch.Tensor, generator: torch.Generator | None = None) -> list[torch.Tensor]:
        pixels = self._pixels(images)
        return [self._one_view(pixels, generator), self._one_view(pixels, generator)]

    def _pixels(self, images: torch.Tensor) -> torch.Tensor:
        if images.ndim != 4 or images.shape[1] != self.channels:
            raise ValueError(f"expected a (N, {self.channels}, H, W) batch, got shape {tuple(images.shape)}")
        return images.float() / 255.0 if images.dtype == torch.uint8 else images.float()

    @staticmethod
    def _uniform(
        low: float, high: float, count: int, device: torch.device, generator: torch.Generator | None
    ) -> torch.Tensor:
        return low + (high - low) * torch.rand(count, device=device, generator=generator)

    def _one_view(
        self,
        pixels: torch.Tensor,
        generator: torch.Generator | None,
        size: int | None = None,
        scale: tuple[float, float] | None = None,
    ) -> torch.Tensor:
        count, channels = pixels.shape[:2]
        device = pixels.device
        view = self._resized_crop(pixels, generator, size or self.size, scale or self.scale)
        jittered = self._uniform(0.0, 1.0, count, device, generator) < self.jitter_p

        def factor(strength: float) -> torch.Tensor:
            sampled = self._uniform(1 - strength, 1 + strength, count, device, generator)
            return torch.where(jittered, sampled, torch.ones_like(sampled)).view(-1, 1, 1, 1)

        # Same order and clamping as torchvision's ColorJitter with a fixed permutation.
        view = (view * factor(self.brightness)).clamp(0.0, 1.0)
        grey_mean = self._grey(view).mean(dim=(1, 2, 3), keepdim=True)
        view = ((view - grey_mean) * factor(self.contrast) + grey_mean).clamp(0.0, 1.0)
        if channels == 3:
            grey = self._grey(view)
            view = ((view - grey) * factor(self.saturation) + grey).clamp(0.0, 1.0)
            to_grey = self._uniform(0.0, 1.0, count, device, generator) < self.grayscale_p
            view = torch.where(to_grey.view(-1, 1, 1, 1), self._grey(view).expand_as(view), view)
        return (view - self.mean) / self.std

    def _grey(self, view: torch.Tensor) -> torch.Tensor:
        if view.shape[1] == 1:
            return view
        return (view * self.luma).sum(dim=1, keepdim=True)

    def _resized_crop(
        self, pixels: torch.Tensor, generator: torch.Generator | None, size: int, scale: tuple[float, float]
    ) -> torch.Tensor:
        """Random area/aspect crop plus optional horizontal flip, resampled to ``size`` in one pass."""
        count, channels, height, width = pixels.shape
        area = self._uniform(scale[0], scale[1], count, pixels.device, generator)
        aspect = torch.exp(
            self._uniform(self.log_ratio[0], self.log_ratio[1], count, pixels.device, generator)
        )
        # Crop sides as fractions of the image sides (affine_grid works in [-1, 1] coordinates).
        crop_width = torch.sqrt(area * aspect * height / width).clamp(max=1.0)
        crop_height = torch.sqrt(area / aspect * width / height).clamp(max=1.0)
        center_x = (1 - crop_width) * self._uniform(-1.0, 1.0, count, pixels.device, generator)
        center_y = (1 - crop_height) * self._uniform(-1.0, 1.0, count, pixels.device, generator)
        direction = torch.ones(count, device=pixels.device)
        if self.flip:
            flipped = self._uniform(0.0, 1.0, count, pixels.device, generator) < 0.5
            direction = torch.where(flipped, -direction, direction)
        theta = torch.zeros(count, 2, 3, device=pixels.device)
        theta[:, 0, 0] = crop_width * direction
        theta[:, 0, 2] = center_x
        theta[:, 1, 1] = crop_height
        theta[:, 1, 2] = center_y
        grid = F.affine_grid(theta, [count, channels, size, size], align_corners=False)
        return F.grid_sample(pixels, grid, mode="bilinear", padding_mode="reflection", align_corners=False)


class BatchedMultiCropAugment(BatchedTwoViewAugment):
    """DINO's multi-crop on a whole batch: 2 global views at ``size``, then ``num_local_crops`` local views.

    The vectorised counterpart of ``MultiCropTransform`` (same scales, same output order
    ``[global_0, global_1, local_0, ...]``), with ``BatchedTwoViewAugment``'s crop, flip and jitter and
    without blur and solarisation. On a CPU it removes the per-sample PIL pipeline that otherwise limits
    DINO to a few hundred images per second.
    """

    def __init__(
        self,
        channels: int,
        size: int,
        mean: Sequence[float],
        std: Sequence[float],
        flip: bool = True,
        num_local_crops: int = 6,
        local_size: int | None = None,
        global_scale: tuple[float, float] = (0.4, 1.0),
        local_scale: tuple[float, float] = (0.05, 0.4),
        **jitter: float,
    ) -> None:
        local_size = _local_crops(num_local_crops, size, local_size)
        super().__init__(channels, size, mean, std, flip=flip, scale=global_scale, **jitter)
        self.num_local_crops = num_local_crops
        self.local_size = local_size
        self.local_scale = local_scale

    @torch.no_grad()
    def forward(self, images: torch.Tensor, generator: torch.Generator | None = None) -> list[torch.Tensor]:
        pixels = self._pixels(images)
        global_views = [self._one_view(pixels, generator) for _ in range(2)]
        local_views = [
            self._one_view(pixels, generator, size=self.local_size, scale=self.local_scale)
            for _ in range(self.num_local_crops)
        ]
        return global_views + local_views
