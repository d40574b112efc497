"""Images: uint8 tensors ``(C, H, W)`` in memory, or indexed files decoded on access at the run's working side.

Convolutional backbones from the fewlabel/timm registry, torchvision ``transforms.v2`` policies, the SimCLR /
MoCo / BYOL / DINO view generators, and pretrained timm / EfficientNet-Lite0 / fewlabel-export backbones.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import torch
from torch import nn

from fewlabel.errors import FewlabelError
from fewlabel.modalities.base import ClassifierSetup, FeatureExtractor, LoadedBackbone, Modality, SemisupViews
from fewlabel.names import IMAGE_METHODS, IMAGE_POLICIES

if TYPE_CHECKING:
    from fewlabel.augment.supervised import AugmentationPolicy
    from fewlabel.data.dataset import Dataset
    from fewlabel.data.splits import LabelSplit
    from fewlabel.models.backbones import Backbone, InputSpec


def default_image_size(spec: InputSpec, data_size: int) -> int:
    """The pretrained resolution, but no more than 4x the data's own: upsampling a 28 px image to 224 px adds
    compute, not information. At least 64 px, where ImageNet features still hold up."""
    pretrained = spec.size[0] if spec.size else 224
    return int(min(pretrained, max(64, 4 * data_size)))


def prepare_backbone(source: str, dataset: Dataset, image_size: int | None) -> Backbone:
    """A pretrained backbone whose input size is ``image_size`` or :func:`default_image_size` for the data."""
    from fewlabel.models.backbones import InputSpec
    from fewlabel.models.pretrained import load_pretrained

    backbone = load_pretrained(source)
    size = image_size or default_image_size(backbone.input_spec, max(dataset.image_shape[1:]))
    spec = backbone.input_spec
    backbone.input_spec = InputSpec(spec.channels, (size, size), spec.mean, spec.std)
    return backbone


class ImageModality(Modality):
    name: ClassVar[str] = "image"
    noun: ClassVar[str] = "images"
    policies: ClassVar[tuple[str, ...]] = IMAGE_POLICIES
    pretext_methods: ClassVar[tuple[str, ...]] = IMAGE_METHODS
    default_backbones: ClassVar[dict[str, str]] = {"supervised": "resnet_small", "transfer": "efficientnet_lite0",
                                                   "pretrain": "resnet_small"}
    default_policy: ClassVar[str] = "standard"
    channels_last: ClassVar[bool] = True

    # --- data -------------------------------------------------------------------------------------------------
    def working_data(self, dataset: Dataset, size: int | None = None, cache: bool = False,
                     resize_arrays: bool = True) -> Dataset:
        from fewlabel.data.images import at_working_size

        return at_working_size(dataset, size, cache=cache, resize_arrays=resize_arrays)

    def eval_batch_size(self, dataset: Dataset, train_batch: int) -> int:
        in_memory = isinstance(dataset.samples, torch.Tensor)  # files decode at full size: smaller batches
        return max(train_batch, 512 if in_memory else 128)

    def data_meta(self, dataset: Dataset) -> dict[str, Any]:
        channels, side, _ = dataset.image_shape
        return {"in_chans": channels, "data_size": side}

    # --- supervised -------------------------------------------------------------------------------------------
    def augmentation(self, name: str | None, dataset: Dataset, seed: int) -> AugmentationPolicy:
        from fewlabel.augment.supervised import build_policy

        return build_policy(name or self.default_policy, dataset.image_shape[1:], dataset.num_classes,
                            flip=dataset.flip_invariant)

    def supervised_setup(self, backbone: str | None, augment: str | None, width: int | None, dataset: Dataset,
                         split: LabelSplit, seed: int) -> ClassifierSetup:
        import lightning as L

        from fewlabel.models.backbones import BackboneSpec, Classifier, create_backbone

        name = self.default_backbone("supervised", backbone)
        channels, height, _ = dataset.image_shape
        policy = self.augmentation(augment, dataset, seed)
        L.seed_everything(seed, workers=True, verbose=False)  # the initial weights depend on the seed only
        body = create_backbone(BackboneSpec(name=name, in_chans=channels, width=width))
        model = Classifier(body, dataset.num_classes, data_channels=channels)
        return ClassifierSetup(
            model=model, policy=policy, backbone=name, augment=augment or self.default_policy,
            record={"backbone_stages": body.stages, "input_spec": body.input_spec.to_dict()},
            meta={"backbone": name, "width": width, "in_chans": channels, "data_size": height,
                  "input_spec": body.input_spec.to_dict(), "embed_dim": body.embed_dim})

    # --- transfer ---------------------------------------------------------------------------------------------
    def check_transfer_options(self, options: dict[str, Any], dataset: Dataset) -> None:
        if options.get("text_pooling", "auto") != "auto":
            raise FewlabelError(f"--text-pooling {options['text_pooling']} applies to text data; {dataset.name} "
                                "has images")

    def load_backbone(self, source: str | None, dataset: Dataset, options: dict[str, Any]) -> LoadedBackbone:
        source = self.default_backbone("transfer", source)
        backbone = prepare_backbone(source, dataset, options.get("image_size"))
        # Image folders decode straight to the backbone's input size (in-memory arrays are resized by the model).
        working = self.working_data(dataset, backbone.input_spec.size[0], cache=options.get("cache_images", False),
                                    resize_arrays=False)
        return LoadedBackbone(backbone, working, source)

    def classifier(self, backbone: Backbone, dataset: Dataset) -> nn.Module:
        from fewlabel.models.backbones import Classifier

        return Classifier(backbone, dataset.num_classes, data_channels=dataset.image_shape[0])

    def transfer_inputs(self, loaded: LoadedBackbone) -> dict[str, Any]:
        size = loaded.backbone.input_spec.size  # None: a backbone pretrained here takes the data's own size
        return {"image_size": size[0] if size else None}

    # --- frozen features --------------------------------------------------------------------------------------
    def feature_extractor(self, loaded: LoadedBackbone, device: torch.device | None) -> FeatureExtractor:
        from fewlabel.evaluate.features import extract_features

        def extract(indices: np.ndarray) -> torch.Tensor:
            return extract_features(loaded.backbone, loaded.dataset.samples, indices, batch_size=256, device=device)

        return extract

    # --- semi-supervised -------------------------------------------------------------------------------------
    def semisup_views(self, dataset: Dataset, seed: int) -> SemisupViews:
        """FixMatch's views: the ``standard`` crops (and flips where labels allow them) and ``randaugment`` on top."""
        weak = self.augmentation("standard", dataset, seed).sample_transform
        strong = self.augmentation("randaugment", dataset, seed).sample_transform
        return SemisupViews(weak, strong, {"weak": "standard", "strong": "randaugment"}, crops_to_size=True)

    # --- self-supervised --------------------------------------------------------------------------------------
    def pretrain(self, dataset: Dataset, split: LabelSplit, config: Any, resume: Any = None) -> Any:
        from fewlabel.approaches.pretrain_images import pretrain_images

        return pretrain_images(dataset, split, config, resume)

    def load_export(self, path: str, dataset: Dataset, info: dict[str, Any], frozen: bool = True) -> LoadedBackbone:
        from fewlabel.models.export import load_backbone

        backbone, _ = load_backbone(path)
        # Image folders decode at the side the backbone was pretrained at (in-memory arrays are left as they are);
        # arrays are resized too when the backbone has no input size of its own (pretrained with --image-size).
        working = self.working_data(dataset, (info.get("image_shape") or [None, None, None])[1],
                                    resize_arrays=backbone.input_spec.size is None)
        if working.image_shape[0] not in (1, backbone.input_spec.channels):
            raise FewlabelError(f"{working.name} has {working.image_shape[0]} channels; the backbone expects "
                                f"{backbone.input_spec.channels}")
        return LoadedBackbone(backbone, working, str(path))

    # --- predict ----------------------------------------------------------------------------------------------
    def predict_io(self) -> Any:
        from fewlabel.modalities.image_predict import ImagePredictIO

        return ImagePredictIO()
