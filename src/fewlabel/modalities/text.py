"""Text: Python strings, tokenised per batch. A WordPiece tokenizer trained on the pool plus a BiLSTM/BiGRU
from scratch, Hugging Face encoders (MiniLM offline) for transfer, masked-LM / next-token pretraining, and the
text augmentation policies (deletion, swap, synonym, EDA)."""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import nn

from fewlabel.errors import FewlabelError
from fewlabel.modalities.base import (
    ClassifierSetup,
    FeatureExtractor,
    LoadedBackbone,
    Modality,
    SemisupViews,
    batched_feature_extractor,
)
from fewlabel.names import TEXT_METHODS, TEXT_POLICIES

if TYPE_CHECKING:
    from fewlabel.augment.supervised import AugmentationPolicy
    from fewlabel.compare.grid import BudgetPreset
    from fewlabel.data.dataset import Dataset
    from fewlabel.data.splits import LabelSplit
    from fewlabel.engine.run import RunFolder
    from fewlabel.models.backbones import Backbone

RNN_CELLS = {"bilstm": "lstm", "bigru": "gru"}  # from-scratch text models
# compare's image-written presets in text: policies of the same strength, the pretext task it runs
COMPARE_POLICIES = {"standard": "none", "randaugment": "eda", "mixup": "deletion"}
COMPARE_PRETEXT = ("mlm",)
FEATURE_BATCH = 128


class TextModality(Modality):
    name: ClassVar[str] = "text"
    noun: ClassVar[str] = "texts"
    policies: ClassVar[tuple[str, ...]] = TEXT_POLICIES
    pretext_methods: ClassVar[tuple[str, ...]] = TEXT_METHODS
    default_backbones: ClassVar[dict[str, str]] = {"supervised": "bilstm", "transfer": "minilm", "pretrain": "small"}
    default_policy: ClassVar[str] = "none"
    feature_probe_settings: ClassVar[dict[str, str]] = {"text_pooling": "auto"}
    export_finetune_lr: ClassVar[float] = 3e-4  # a transformer: the transfer finetune rate

    # --- supervised -------------------------------------------------------------------------------------------
    def augmentation(self, name: str | None, dataset: Dataset, seed: int) -> AugmentationPolicy:
        from fewlabel.augment.supervised import AugmentationPolicy
        from fewlabel.augment.text import build_text_policy

        name = name or self.default_policy
        policy = build_text_policy(name, rng=seed)
        return AugmentationPolicy(name, None if name == "none" else policy, None)

    def supervised_setup(self, backbone: str | None, augment: str | None, width: int | None, dataset: Dataset,
                         split: LabelSplit, seed: int) -> ClassifierSetup:
        """A WordPiece tokenizer trained on the training pool's text (labels unused) and a BiLSTM/BiGRU."""
        import lightning as L

        from fewlabel.engine.classification import OptimConfig
        from fewlabel.engine.data import PairCollator
        from fewlabel.models.rnn import RNNTextClassifier
        from fewlabel.models.tokenizers import TextCollator, train_wordpiece_tokenizer

        name = self.default_backbone("supervised", backbone)
        if name not in RNN_CELLS:
            raise FewlabelError(f"--backbone {name!r} is not a text model; use one of {', '.join(RNN_CELLS)}")
        policy = self.augmentation(augment, dataset, seed)
        L.seed_everything(seed, workers=True, verbose=False)
        tokenizer = train_wordpiece_tokenizer([dataset.samples[i] for i in split.pool], vocab_size=8000)
        model = RNNTextClassifier(len(tokenizer), dataset.num_classes, cell=RNN_CELLS[name])

        def save_tokenizer(run: RunFolder) -> None:
            if run.primary:
                tokenizer.save_pretrained(str(run.path / "tokenizer"))

        text_policy = policy.sample_transform
        return ClassifierSetup(
            model=model, policy=policy, backbone=name, augment=policy.name,
            collate=PairCollator(TextCollator(tokenizer, max_length=128)),
            # the image default (SGD 0.05) suits convnets, not RNNs
            optim=OptimConfig(optimizer="adamw", lr=2e-3, weight_decay=1e-4, warmup_fraction=0.05),
            record={"augmentation": text_policy.describe() if text_policy is not None else "identity",
                    "tokenizer": {"type": "wordpiece", "vocab_size": len(tokenizer), "trained_on": "pool text"}},
            meta={"backbone": name, "tokenizer": "tokenizer/"}, save_files=save_tokenizer)

    # --- transfer ---------------------------------------------------------------------------------------------
    def load_backbone(self, source: str | None, dataset: Dataset, options: dict[str, Any]) -> LoadedBackbone:
        """A Hugging Face encoder; ``text_pooling`` auto is ``mean-last4`` when the model has four layers or more
        (see ``frozen_feature_pooling``) for frozen features and for fine-tuning that starts from their probe
        (LP-FT, ``probe_first``), and ``mean`` for fine-tuning from a random head.

        Why LP-FT pools as feature-extract does: its first stage is then exactly the feature-extract model (same
        features, same C, same weights), so the fallback to that probe means fine-tuning never ends below it. With
        plain ``mean`` the probe was a weaker model (Rotten Tomatoes 1%, seed 0: 65.3% against 68.9%) and the
        fallback only protected that one."""
        from fewlabel.models.text_encoder import frozen_feature_pooling, load_text_backbone

        source = self.default_backbone("transfer", source)
        pooling = options.get("text_pooling", "auto")
        backbone, tokenizer = load_text_backbone(source, pooling="mean" if pooling == "auto" else pooling)
        if pooling == "auto" and (options.get("frozen", False) or options.get("probe_first", False)):
            backbone = backbone.with_pooling(frozen_feature_pooling(backbone.body))
        return self._loaded(backbone, tokenizer, dataset, source)

    @staticmethod
    def _loaded(backbone, tokenizer, dataset: Dataset, source: str) -> LoadedBackbone:
        from fewlabel.engine.data import PairCollator
        from fewlabel.models.tokenizers import TextCollator

        encode = TextCollator(tokenizer, max_length=backbone.input_spec.max_length)
        return LoadedBackbone(backbone, dataset, source, collate=PairCollator(encode), encode=encode)

    def classifier(self, backbone: Backbone, dataset: Dataset) -> nn.Module:
        from fewlabel.models.text_encoder import TextClassifier

        return TextClassifier(backbone, dataset.num_classes)

    def transfer_inputs(self, loaded: LoadedBackbone) -> dict[str, Any]:
        return {"text_pooling": loaded.backbone.pooling}

    # --- frozen features --------------------------------------------------------------------------------------
    def feature_extractor(self, loaded: LoadedBackbone, device: torch.device | None) -> FeatureExtractor:
        """Tokenise in batches, run the frozen encoder on ``device``, pool; the encoder goes back to the CPU
        afterwards (the Lightning loop, or the saved model, takes it from there)."""
        samples, encode = loaded.dataset.samples, loaded.encode
        return batched_feature_extractor(loaded.backbone, lambda idx: encode([samples[i] for i in idx]), device,
                                         FEATURE_BATCH)

    # --- semi-supervised -------------------------------------------------------------------------------------
    def semisup_views(self, dataset: Dataset, seed: int) -> SemisupViews:
        """The text as it is for the weak view (Pseudo-Label's one view); no strong view yet (FixMatch's needs
        back-translation-strength changes, which the word-level policies are not), so no FixMatch / FlexMatch."""
        return SemisupViews(None, None, {"weak": "none"})

    # --- self-supervised --------------------------------------------------------------------------------------
    def pretrain(self, dataset: Dataset, split: LabelSplit, config: Any, resume: Any = None) -> Any:
        from fewlabel.approaches.pretrain_text import pretrain_text

        return pretrain_text(dataset, split, config, resume)

    def load_export(self, path: str, dataset: Dataset, info: dict[str, Any], frozen: bool = True) -> LoadedBackbone:
        """A text pretraining run (its ``export/``) or any Hugging Face folder, pooled for frozen features when
        ``frozen``, else for ``evaluate``'s fine-tuning protocol, which always starts from the probe (LP-FT) and
        so pools as the probe does."""
        return self.load_backbone(path, dataset, {"text_pooling": "auto", "frozen": frozen, "probe_first": not frozen})

    # --- compare ----------------------------------------------------------------------------------------------
    def compare_budget(self, budget: BudgetPreset) -> BudgetPreset:
        """Text policies of the same strength, the masked-LM pretext task, and no ``partial`` (two layers of a
        6-layer encoder train much like ``finetune`` at these budgets)."""
        return replace(budget, policies=tuple(COMPARE_POLICIES[p] for p in budget.policies), methods=COMPARE_PRETEXT,
                       strategies=tuple(s for s in budget.strategies if s != "partial") or ("feature-extract",))

    def linear_probe_settings(self) -> dict[str, str]:
        # text probes have always gone through the feature-extract path: its settings are part of their key
        return {"probe_c": "cross-validated", "head": "logreg-cv", **self.feature_probe_settings}

    # --- predict ----------------------------------------------------------------------------------------------
    def predict_io(self) -> Any:
        from fewlabel.modalities.text_predict import TextPredictIO

        return TextPredictIO()
