"""Supervised augmentation policies (torchvision ``transforms.v2``) for uint8 image tensors ``(C, H, W)``.

A policy is a per-sample transform (applied in the data loader) plus an optional batch transform (MixUp /
CutMix, applied to the whole batch in the training step). Flips are only used when the dataset says they
preserve labels (fine for clothing, wrong for digits).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from fewlabel.errors import FewlabelError
from fewlabel.names import IMAGE_POLICIES

if TYPE_CHECKING:
    from torchvision.transforms import v2

POLICIES = IMAGE_POLICIES

BatchTransform = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


@dataclass
class AugmentationPolicy:
    name: str
    sample_transform: Callable[[torch.Tensor], torch.Tensor] | None
    batch_transform: BatchTransform | None
    # The sample transform starts with a crop to the working size, so it also takes whole, non-square images
    # (image folders then feed it the full decoded photo instead of its centre square).
    crops_to_size: bool = False

    def describe(self) -> str:
        parts = [repr(self.sample_transform) if self.sample_transform else "identity"]
        if self.batch_transform is not None:
            parts.append(repr(self.batch_transform))
        return " + ".join(parts)


# From this side up, images are photos rather than thumbnails: crops of random area and aspect (the ImageNet
# recipe) replace the padded crop of small images.
RESIZED_CROP_FROM = 64


def standard_transform(size: tuple[int, int], flip: bool) -> v2.Transform:
    """Small images: random crop with 1/8 padding (the CIFAR recipe, scaled to the image size). Images of
    ``RESIZED_CROP_FROM`` px and more: random-resized crops (25-100% of the area). Optional flips."""
    from torchvision.transforms import v2

    if min(size) >= RESIZED_CROP_FROM:
        steps: list[v2.Transform] = [v2.RandomResizedCrop(size, scale=(0.25, 1.0), antialias=True)]
    else:
        padding = max(1, round(min(size) / 8))
        steps = [v2.RandomCrop(size, padding=padding, padding_mode="reflect")]
    if flip:
        steps.append(v2.RandomHorizontalFlip())
    return v2.Compose(steps)


def build_policy(name: str, image_size: tuple[int, int], num_classes: int, flip: bool = True) -> AugmentationPolicy:
    """Build one of ``POLICIES`` for images of ``image_size`` (H, W)."""
    if name not in POLICIES:
        raise FewlabelError(f"unknown augmentation policy '{name}'; choose one of {', '.join(POLICIES)}")
    if name == "none":
        return AugmentationPolicy(name, None, None)
    from torchvision.transforms import v2  # imported here: it costs seconds, and `--help` should not pay it

    base = standard_transform(image_size, flip)
    if name == "standard":
        return AugmentationPolicy(name, base, None, crops_to_size=True)
    if name == "autoaugment":
        return AugmentationPolicy(name, v2.Compose([base, v2.AutoAugment(v2.AutoAugmentPolicy.IMAGENET)]), None,
                                  crops_to_size=True)
    if name == "randaugment":
        return AugmentationPolicy(name, v2.Compose([base, v2.RandAugment(num_ops=2, magnitude=9)]), None,
                                  crops_to_size=True)
    if name == "mixup":
        return AugmentationPolicy(name, base, v2.MixUp(alpha=0.2, num_classes=num_classes), crops_to_size=True)
    return AugmentationPolicy(name, base, v2.CutMix(alpha=1.0, num_classes=num_classes), crops_to_size=True)
