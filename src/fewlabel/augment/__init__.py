"""Augmentation: supervised policies (``supervised``) and self-supervised view generators (``views``)."""

from fewlabel.augment.supervised import POLICIES, AugmentationPolicy, build_policy

__all__ = ["POLICIES", "AugmentationPolicy", "build_policy"]
