"""Audio: fixed-length clips held as int16 ``(N, samples)`` at 16 kHz (``fewlabel.data.audio``).

From scratch: log-mel features computed on the batch into any image backbone (1 channel), with the audio
policies (time shift, gain, background noise from the dataset's noise folder, SpecAugment, MixUp). Transfer:
Hugging Face speech encoders (wav2vec 2.0, HuBERT, WavLM) or a fewlabel wav2vec2 export, pooled per clip.
Self-supervised: wav2vec 2.0 pretraining.
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
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
from fewlabel.names import AUDIO_METHODS, AUDIO_POLICIES

if TYPE_CHECKING:
    from fewlabel.augment.supervised import AugmentationPolicy
    from fewlabel.compare.grid import BudgetPreset
    from fewlabel.data.dataset import Dataset
    from fewlabel.data.splits import LabelSplit
    from fewlabel.models.backbones import Backbone

# compare's image-written presets in audio: policies of the same strength, the pretext task
COMPARE_POLICIES = {"standard": "standard", "randaugment": "specaugment", "mixup": "mixup"}
FEATURE_BATCH = 64


class AudioModality(Modality):
    name: ClassVar[str] = "audio"
    noun: ClassVar[str] = "audio clips"
    policies: ClassVar[tuple[str, ...]] = AUDIO_POLICIES
    pretext_methods: ClassVar[tuple[str, ...]] = AUDIO_METHODS
    # No speech encoder installs offline: transfer needs --backbone (a model folder, a wav2vec2 run, a hub id).
    default_backbones: ClassVar[dict[str, str]] = {"supervised": "resnet_small", "pretrain": "tiny"}
    default_policy: ClassVar[str] = "standard"
    feature_probe_settings: ClassVar[dict[str, str]] = {"audio_layer": "last"}
    export_finetune_lr: ClassVar[float] = 1e-4  # a speech transformer pretrained here (wav2vec 2.0: 5e-5 to 1e-4)

    def default_backbone(self, approach: str, asked: str | None) -> str:
        if asked:
            return asked
        if approach not in self.default_backbones:
            raise FewlabelError("audio transfer needs --backbone: a Hugging Face speech encoder folder (wav2vec 2.0, "
                                "HuBERT, WavLM), a `fewlabel pretrain --method wav2vec2` run folder, or a hub id when "
                                "online")
        return self.default_backbones[approach]

    @staticmethod
    def sample_rate(dataset: Dataset) -> int:
        return int(dataset.extra.get("sample_rate", 16000))

    def eval_batch_size(self, dataset: Dataset, train_batch: int) -> int:
        return max(train_batch, 256)

    def data_meta(self, dataset: Dataset) -> dict[str, Any]:
        return {"sample_rate": self.sample_rate(dataset), "clip_samples": int(dataset.samples.shape[1])}

    # --- supervised -------------------------------------------------------------------------------------------
    def augmentation(self, name: str | None, dataset: Dataset, seed: int, log_mel: nn.Module | None = None
                     ) -> AugmentationPolicy:
        from fewlabel.augment.audio import build_audio_policy

        if name == "specaugment" and log_mel is None:
            raise FewlabelError("--augment specaugment masks log-mel features: it applies to `fewlabel train` "
                                "(log-mel CNNs), not to speech encoders; use standard, mixup or none")
        return build_audio_policy(name or self.default_policy, dataset.extra.get("noise") or (), seed=seed,
                                  sample_rate=self.sample_rate(dataset), num_classes=dataset.num_classes,
                                  log_mel=log_mel)

    def supervised_setup(self, backbone: str | None, augment: str | None, width: int | None, dataset: Dataset,
                         split: LabelSplit, seed: int) -> ClassifierSetup:
        """Log-mel features on the batch into an image backbone with one input channel, and a linear head."""
        import lightning as L

        from fewlabel.augment.audio import LogMel
        from fewlabel.engine.classification import OptimConfig
        from fewlabel.models.backbones import BackboneSpec, EmbeddingClassifier, create_backbone
        from fewlabel.models.spectrogram import SpectrogramBackbone

        name = self.default_backbone("supervised", backbone)
        rate = self.sample_rate(dataset)
        # 40 mel bands every 20 ms (a 40 x 51 map per second): keyword spotting's usual resolution, and 3x cheaper
        # than 64 x 101 on CPUs; it also trained better in 600 steps (79% vs 59% on spoken-words, BENCHMARKS.md).
        log_mel = LogMel(rate, n_mels=40, hop_length=round(0.020 * rate))
        policy = self.augmentation(augment, dataset, seed, log_mel=log_mel)
        L.seed_everything(seed, workers=True, verbose=False)  # the initial weights depend on the seed only
        body = SpectrogramBackbone(create_backbone(BackboneSpec(name=name, in_chans=1, width=width)), log_mel)
        model = EmbeddingClassifier(body, dataset.num_classes)
        features = {"n_mels": log_mel.n_mels, "hop_length": log_mel.hop_length,
                    "frames": log_mel.num_frames(int(dataset.samples.shape[1]))}
        return ClassifierSetup(
            model=model, policy=policy, backbone=name, augment=policy.name,
            # SGD at 0.05 (the image default) barely moves a spectrogram CNN in the first few hundred steps
            optim=OptimConfig(optimizer="adamw", lr=3e-3, weight_decay=1e-4, warmup_fraction=0.05),
            record={"backbone_stages": body.stages, "log_mel": repr(log_mel), "features": features},
            meta={"backbone": name, "width": width, "front_end": "log-mel", **features, **self.data_meta(dataset),
                  "embed_dim": body.embed_dim})

    # --- transfer ---------------------------------------------------------------------------------------------
    def check_transfer_options(self, options: dict[str, Any], dataset: Dataset) -> None:
        if options.get("text_pooling", "auto") != "auto":
            raise FewlabelError(f"--text-pooling {options['text_pooling']} applies to text data; {dataset.name} "
                                "holds audio clips (use --audio-layer)")

    def load_backbone(self, source: str | None, dataset: Dataset, options: dict[str, Any]) -> LoadedBackbone:
        from fewlabel.models.audio_encoder import load_audio_backbone

        source = self.default_backbone("transfer", source)
        backbone = load_audio_backbone(source, layer=str(options.get("audio_layer") or "last"))
        if backbone.input_spec.sample_rate != self.sample_rate(dataset):
            raise FewlabelError(f"{source} expects {backbone.input_spec.sample_rate} Hz audio; {dataset.name} is at "
                                f"{self.sample_rate(dataset)} Hz")
        return LoadedBackbone(backbone, dataset, source)

    def classifier(self, backbone: Backbone, dataset: Dataset) -> nn.Module:
        from fewlabel.models.backbones import EmbeddingClassifier

        return EmbeddingClassifier(backbone, dataset.num_classes)

    def transfer_inputs(self, loaded: LoadedBackbone) -> dict[str, Any]:
        return {"audio_layer": getattr(loaded.backbone, "layer", "last")}

    # --- frozen features --------------------------------------------------------------------------------------
    def feature_extractor(self, loaded: LoadedBackbone, device: torch.device | None) -> FeatureExtractor:
        samples = loaded.dataset.samples
        return batched_feature_extractor(loaded.backbone, lambda idx: samples[torch.as_tensor(np.asarray(idx))],
                                         device, FEATURE_BATCH)

    # --- semi-supervised -------------------------------------------------------------------------------------
    def semisup_views(self, dataset: Dataset, seed: int) -> SemisupViews:
        """Weak: the ``standard`` waveform policy (shift, background noise, gain). Strong: SpecAugment-like masks on
        the waveform (band-stop bands, silenced spans, white noise), then stronger shifts, gains and noise
        (:func:`fewlabel.augment.audio.strong_waveform_augment`). Both stay waveforms, so any audio model (log-mel
        CNN or speech encoder) takes them, and the labelled batch and both views share one forward pass."""
        from fewlabel.augment.audio import strong_waveform_augment

        weak = self.augmentation("standard", dataset, seed).sample_transform
        strong = strong_waveform_augment(dataset.extra.get("noise") or (), seed=seed,
                                         sample_rate=self.sample_rate(dataset))
        return SemisupViews(weak, strong, {"weak": "standard", "strong": "masked-waveform"})

    # --- self-supervised --------------------------------------------------------------------------------------
    def pretrain(self, dataset: Dataset, split: LabelSplit, config: Any, resume: Any = None) -> Any:
        from fewlabel.approaches.pretrain_audio import pretrain_audio

        return pretrain_audio(dataset, split, config, resume)

    def load_export(self, path: str, dataset: Dataset, info: dict[str, Any], frozen: bool = True) -> LoadedBackbone:
        return self.load_backbone(path, dataset, {"audio_layer": "last"})

    # --- compare ----------------------------------------------------------------------------------------------
    def compare_budget(self, budget: BudgetPreset) -> BudgetPreset:
        return replace(budget, policies=tuple(COMPARE_POLICIES[p] for p in budget.policies), methods=AUDIO_METHODS)

    # --- predict ----------------------------------------------------------------------------------------------
    def predict_io(self) -> Any:
        from fewlabel.modalities.audio_predict import AudioPredictIO

        return AudioPredictIO()
