"""What a modality must tell the core. One subclass per modality (``image.py``, ``text.py``), one instance
registered by name in :mod:`fewlabel.modalities`.

The approaches, evaluation, transfer and compare never test a modality's name: they ask the dataset's modality
(``modality_of(dataset)``) for what differs. A modality provides:

* **data**: ``working_data`` (decode/resize to the run's working size; text: as is), ``channels_last``,
  ``eval_batch_size``, ``noun`` (for messages);
* **supervised**: ``policies`` and ``augmentation`` (the supervised policies), ``supervised_setup`` (the
  from-scratch model, its collate function, default optimiser and the files the run folder needs);
* **transfer**: ``load_backbone`` (a pretrained source for this data), ``classifier``, ``transfer_inputs``
  (what ``model.json`` needs to feed new inputs), ``check_transfer_options``;
* **frozen features**: ``feature_extractor`` (indices -> features), used by every probe through
  :func:`fewlabel.evaluate.frozen.frozen_features`;
* **semi-supervised**: ``semisup_views`` (the weak and strong views FixMatch / FlexMatch / Pseudo-Label take of
  an unlabelled sample);
* **self-supervised**: ``pretext_methods`` and ``pretrain`` (the pretext tasks it supports), ``load_export``
  (a pretraining run's backbone, for ``evaluate``);
* **compare**: ``compare_budget`` (the preset's variants in this modality), ``default_backbones``,
  ``feature_probe_settings`` (what a frozen-feature job's result depends on, part of its key);
* **predict**: ``predict_io`` (reading new inputs and batching them as the run did).

Defaults raise a one-line :class:`FewlabelError` that names the modality, so a new modality can start small.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import torch
from torch import nn

from fewlabel.errors import FewlabelError

if TYPE_CHECKING:
    from fewlabel.augment.supervised import AugmentationPolicy
    from fewlabel.compare.grid import BudgetPreset
    from fewlabel.data.dataset import Dataset
    from fewlabel.data.splits import LabelSplit
    from fewlabel.engine.classification import OptimConfig
    from fewlabel.engine.run import RunFolder
    from fewlabel.models.backbones import Backbone

FeatureExtractor = Callable[[np.ndarray], torch.Tensor]


@dataclass
class ClassifierSetup:
    """A from-scratch classifier for one dataset, with everything the shared training recipe needs."""

    model: nn.Module
    policy: AugmentationPolicy
    backbone: str  # the backbone actually built (the modality's default when none was asked for)
    augment: str  # the policy actually used
    collate: Callable | None = None  # batches for training and evaluation (None: default tensor stacking)
    optim: OptimConfig | None = None  # the modality's default optimiser, used when the user kept the default
    record: dict[str, Any] = field(default_factory=dict)  # extra config.yaml entries
    meta: dict[str, Any] = field(default_factory=dict)  # model.json entries (how predict rebuilds and feeds it)
    save_files: Callable[[RunFolder], None] | None = None  # files the run folder needs beside the model


@dataclass
class LoadedBackbone:
    """A pretrained backbone ready for a dataset: the data at the backbone's working size and the collate
    function that batches it (None: tensors stack)."""

    backbone: Backbone
    dataset: Dataset
    source: str  # what was loaded (the modality's default when none was asked for)
    collate: Callable | None = None  # (sample, label) pairs -> (model batch, labels), for training
    encode: Callable | None = None  # a list of samples -> model batch, for features (None: tensors stack)


@dataclass
class SemisupViews:
    """The views semi-supervised training takes of a pool sample (per-sample transforms, picklable; None: the sample
    as it is). The weak view's confident predictions become pseudo-labels; the strong one is trained to predict
    them (FixMatch, FlexMatch). ``strong`` None: the modality has no strong view, and only the methods that need
    one view (Pseudo-Label) train its networks. Both views must return the same kind of sample as the labelled
    batch's ``weak`` view, so that they can go through the network together."""

    weak: Callable | None
    strong: Callable | None
    names: dict[str, str]  # {"weak": ..., "strong": ...}, for config.yaml and messages
    crops_to_size: bool = False  # the transforms crop to the working size (image folders: feed whole photos)


class Modality:
    """Base of the modality modules; subclasses override what their data needs (see the module docstring)."""

    name: ClassVar[str] = ""
    noun: ClassVar[str] = "samples"  # plural, for messages: "images", "texts"
    policies: ClassVar[tuple[str, ...]] = ()
    pretext_methods: ClassVar[tuple[str, ...]] = ()
    # The backbone each approach builds when none is named: supervised, transfer, pretrain.
    default_backbones: ClassVar[dict[str, str]] = {}
    default_policy: ClassVar[str] = "none"
    channels_last: ClassVar[bool] = False  # convolutional inputs: the same kernels in training and predict
    feature_probe_settings: ClassVar[dict[str, str]] = {}  # extra key settings of frozen-feature compare jobs
    export_finetune_lr: ClassVar[float] = 1e-3  # evaluate --protocol finetune: AdamW's rate for a backbone made here

    def _unsupported(self, what: str) -> FewlabelError:
        return FewlabelError(f"{what} is not supported for {self.name} data yet")

    def default_backbone(self, approach: str, asked: str | None) -> str:
        return asked or self.default_backbones[approach]

    def check(self, dataset: Dataset, what: str) -> None:
        """One line when ``dataset`` is not of this modality (e.g. ``--method mlm`` given images)."""
        if dataset.modality != self.name:
            from fewlabel.modalities import get_modality

            holds = get_modality(dataset.modality).noun
            raise FewlabelError(f"{what} needs {self.noun}; '{dataset.name}' holds {holds} (choose a dataset of "
                                f"{self.noun})")

    # --- data -------------------------------------------------------------------------------------------------
    def working_data(self, dataset: Dataset, size: int | None = None, cache: bool = False,
                     resize_arrays: bool = True) -> Dataset:
        """The dataset as runs consume it (images: decoded at the working side); ``size`` None: the default."""
        return dataset

    def eval_batch_size(self, dataset: Dataset, train_batch: int) -> int:
        return max(train_batch, 128)

    def split(self, dataset: Dataset, seed: int, split_path: str | None) -> LabelSplit:
        """The split pretraining uses: the seed's standard split, or one saved by an earlier run. A modality whose
        data may carry no labels at all (image-text pairs) splits it otherwise."""
        from fewlabel.engine.run import prepare_split

        return prepare_split(dataset, seed, split_path)

    # --- supervised -------------------------------------------------------------------------------------------
    def augmentation(self, name: str | None, dataset: Dataset, seed: int) -> AugmentationPolicy:
        raise self._unsupported("supervised augmentation")

    def supervised_setup(self, backbone: str | None, augment: str | None, width: int | None, dataset: Dataset,
                         split: LabelSplit, seed: int) -> ClassifierSetup:
        raise self._unsupported("training from scratch")

    # --- transfer ---------------------------------------------------------------------------------------------
    def check_transfer_options(self, options: dict[str, Any], dataset: Dataset) -> None:
        """Refuse options that do not apply to this modality (one line naming the option)."""

    def load_backbone(self, source: str | None, dataset: Dataset, options: dict[str, Any]) -> LoadedBackbone:
        raise self._unsupported("transfer learning")

    def classifier(self, backbone: Backbone, dataset: Dataset) -> nn.Module:
        raise self._unsupported("a classifier head")

    def transfer_inputs(self, loaded: LoadedBackbone) -> dict[str, Any]:
        """What changes the features without changing a tensor shape (model.json and metrics need it)."""
        return {}

    def data_meta(self, dataset: Dataset) -> dict[str, Any]:
        """How samples reached the model, for ``fewlabel predict`` to decode new inputs the same way."""
        return {}

    # --- frozen features --------------------------------------------------------------------------------------
    def feature_extractor(self, loaded: LoadedBackbone, device: torch.device | None) -> FeatureExtractor:
        """Features of ``loaded.dataset``'s samples at given indices, float32 on the CPU, the backbone frozen."""
        raise self._unsupported("feature extraction")

    # --- semi-supervised -------------------------------------------------------------------------------------
    def semisup_views(self, dataset: Dataset, seed: int) -> SemisupViews:
        """The weak and strong views of unlabelled samples (see :class:`SemisupViews`)."""
        raise self._unsupported("semi-supervised training of the network")

    # --- self-supervised --------------------------------------------------------------------------------------
    def pretrain(self, dataset: Dataset, split: LabelSplit, config: Any, resume: Any = None) -> Any:
        raise self._unsupported("self-supervised pretraining")

    def load_export(self, path: str, dataset: Dataset, info: dict[str, Any], frozen: bool = True) -> LoadedBackbone:
        """A pretraining run's backbone (or its export) for ``evaluate``; ``frozen``: for probes, not fine-tuning."""
        raise self._unsupported("evaluating a pretrained backbone")

    # --- compare ----------------------------------------------------------------------------------------------
    def compare_budget(self, budget: BudgetPreset) -> BudgetPreset:
        return budget

    def linear_probe_settings(self) -> dict[str, str]:
        """What a linear-probe job's result depends on beyond its data (part of its key)."""
        return {"probe_c": "cross-validated"}

    # --- predict ----------------------------------------------------------------------------------------------
    def predict_io(self) -> Any:
        raise self._unsupported("fewlabel predict")


def batched_feature_extractor(backbone: Backbone, make_batch: Callable[[np.ndarray], Any],
                              device: torch.device | None, batch_size: int) -> FeatureExtractor:
    """A :data:`FeatureExtractor` that runs the frozen ``backbone`` (eval mode) on ``device`` over
    ``make_batch(indices)`` chunks: features float32 on the CPU. The backbone returns to the CPU and its mode
    afterwards (the Lightning loop, or the saved model, takes it from there)."""
    device = device or torch.device("cpu")

    def to_device(batch: Any) -> Any:
        if isinstance(batch, dict):
            return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
        return batch.to(device)

    @torch.no_grad()
    def extract(indices: np.ndarray) -> torch.Tensor:
        was_training = backbone.training
        backbone.eval().to(device)
        chunks = [backbone(to_device(make_batch(indices[start : start + batch_size]))).float().cpu()
                  for start in range(0, len(indices), batch_size)]
        backbone.train(was_training).to("cpu")
        return torch.cat(chunks) if chunks else torch.zeros(0, backbone.embed_dim)

    return extract
