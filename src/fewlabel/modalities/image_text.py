"""Image-text pairs: an image store with one row per (image, caption) pair, the captions beside it
(:mod:`fewlabel.data.pairs`).

Pairs pretrain with CLIP (:mod:`fewlabel.approaches.pretrain_clip`). Everything else treats the pairs' images as
an image dataset, labelled by the table's label column (openclipart: its categories): supervised training,
transfer, frozen features and predict are the image modality's, so a CLIP run's image tower (or any image backbone)
is probed or fine-tuned on the pairs' labels exactly as on an image folder.
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import torch
from torch import nn

from fewlabel.errors import FewlabelError
from fewlabel.modalities.base import ClassifierSetup, FeatureExtractor, LoadedBackbone, Modality
from fewlabel.modalities.image import ImageModality
from fewlabel.names import IMAGE_POLICIES, IMAGE_TEXT_METHODS

if TYPE_CHECKING:
    from fewlabel.augment.supervised import AugmentationPolicy
    from fewlabel.compare.grid import BudgetPreset
    from fewlabel.data.dataset import Dataset
    from fewlabel.data.splits import LabelSplit
    from fewlabel.models.backbones import Backbone

_IMAGES = ImageModality()  # what the pairs' images do is what images do


class ImageTextModality(Modality):
    name: ClassVar[str] = "image-text"
    noun: ClassVar[str] = "image-text pairs"
    policies: ClassVar[tuple[str, ...]] = IMAGE_POLICIES
    pretext_methods: ClassVar[tuple[str, ...]] = IMAGE_TEXT_METHODS
    # supervised / transfer as for images; pretrain names the image tower (efficientnet_lite0, locked: LiT)
    default_backbones: ClassVar[dict[str, str]] = {**ImageModality.default_backbones, "pretrain": "efficientnet_lite0"}
    default_policy: ClassVar[str] = ImageModality.default_policy
    channels_last: ClassVar[bool] = True

    def check(self, dataset: Dataset, what: str) -> None:
        """As every modality, plus how a table becomes pairs (a table without --image-column reads as text)."""
        try:
            super().check(dataset, what)
        except FewlabelError as exc:
            raise FewlabelError(f"{exc}; a CSV/TSV/JSONL of image paths and captions is read as pairs when "
                                "--image-column names its image column") from None

    # --- data -------------------------------------------------------------------------------------------------
    def working_data(self, dataset: Dataset, size: int | None = None, cache: bool = False,
                     resize_arrays: bool = True) -> Dataset:
        return _IMAGES.working_data(dataset, size, cache=cache, resize_arrays=resize_arrays)

    def eval_batch_size(self, dataset: Dataset, train_batch: int) -> int:
        return _IMAGES.eval_batch_size(dataset, train_batch)

    def data_meta(self, dataset: Dataset) -> dict[str, Any]:
        return _IMAGES.data_meta(dataset)

    def split(self, dataset: Dataset, seed: int, split_path: str | None) -> LabelSplit:
        """Labelled pairs: the standard split, which holds out whole images (``dataset.groups`` is the image id,
        so no image has captions on both sides). Pairs without any label: :func:`fewlabel.data.pairs.split_pairs`
        (by image too) as a split with an empty label ranking, so retrieval still has held-out pairs."""
        from fewlabel.data.dataset import UNLABELLED
        from fewlabel.data.pairs import split_pairs
        from fewlabel.data.splits import LabelSplit

        if split_path or (dataset.labels != UNLABELLED).any():
            return super().split(dataset, seed, split_path)
        pairs = split_pairs(dataset, seed=seed)
        none = np.full(len(pairs.train), -1, dtype=np.int64)
        return LabelSplit(seed=seed, fingerprint=dataset.fingerprint(), num_classes=dataset.num_classes,
                          pool=pairs.train, pool_rank=none, val=pairs.val,
                          val_rank=np.full(len(pairs.val), -1, dtype=np.int64), test=pairs.test)

    # --- supervised (the pairs' images, by their labels) --------------------------------------------------------
    def augmentation(self, name: str | None, dataset: Dataset, seed: int) -> AugmentationPolicy:
        return _IMAGES.augmentation(name, dataset, seed)

    def supervised_setup(self, backbone: str | None, augment: str | None, width: int | None, dataset: Dataset,
                         split: LabelSplit, seed: int) -> ClassifierSetup:
        return _IMAGES.supervised_setup(backbone, augment, width, dataset, split, seed)

    # --- transfer ---------------------------------------------------------------------------------------------
    def check_transfer_options(self, options: dict[str, Any], dataset: Dataset) -> None:
        _IMAGES.check_transfer_options(options, dataset)

    def load_backbone(self, source: str | None, dataset: Dataset, options: dict[str, Any]) -> LoadedBackbone:
        """Any image backbone over the pairs' images; a CLIP run gives its image tower."""
        return _IMAGES.load_backbone(source or self.default_backbones["transfer"], dataset, options)

    def classifier(self, backbone: Backbone, dataset: Dataset) -> nn.Module:
        return _IMAGES.classifier(backbone, dataset)

    def transfer_inputs(self, loaded: LoadedBackbone) -> dict[str, Any]:
        return _IMAGES.transfer_inputs(loaded)

    # --- frozen features --------------------------------------------------------------------------------------
    def feature_extractor(self, loaded: LoadedBackbone, device: torch.device | None) -> FeatureExtractor:
        return _IMAGES.feature_extractor(loaded, device)

    # --- self-supervised --------------------------------------------------------------------------------------
    def pretrain(self, dataset: Dataset, split: LabelSplit, config: Any, resume: Any = None) -> Any:
        from fewlabel.approaches.pretrain_clip import pretrain_clip

        return pretrain_clip(dataset, split, config, resume)

    def load_export(self, path: str, dataset: Dataset, info: dict[str, Any], frozen: bool = True) -> LoadedBackbone:
        """A CLIP export's image tower as a frozen image backbone over the pairs' images, at the side it was
        trained at; any other image export (SimCLR ...) as the image modality loads it."""
        from fewlabel.models.clip_export import clip_folder

        if clip_folder(path) is None:
            return _IMAGES.load_export(path, dataset, info, frozen)
        side = (info.get("image_shape") or [None, None, None])[1]
        return self.load_backbone(str(path), dataset, {"image_size": side, "frozen": frozen})

    # --- compare ----------------------------------------------------------------------------------------------
    def compare_budget(self, budget: BudgetPreset) -> BudgetPreset:
        """The pretext task of pairs is CLIP (the image methods would need an image dataset)."""
        return replace(budget, methods=IMAGE_TEXT_METHODS)

    # --- predict ----------------------------------------------------------------------------------------------
    def predict_io(self) -> Any:
        return _IMAGES.predict_io()
