"""Audio from scratch: log-mel features computed on the batch (on the GPU when there is one) fed to any image
backbone as a 1-channel picture of ``n_mels x frames``."""

from __future__ import annotations

import torch

from fewlabel.augment.audio import LogMel
from fewlabel.models.audio_encoder import AudioInputSpec
from fewlabel.models.backbones import Backbone


class SpectrogramBackbone(Backbone):
    """Clips ``(N, samples)`` (int16 or float) -> :class:`LogMel` -> an image backbone with one input channel.

    Already computed features ``(N, 1, n_mels, frames)`` (a SpecAugment batch) pass the front end unchanged. The
    image backbone is kept whole as ``body``, so its stages (``body.<stage>``) still drive partial freezing.
    """

    def __init__(self, image_backbone: Backbone, log_mel: LogMel):
        super().__init__(image_backbone, image_backbone.embed_dim, [f"body.{s}" for s in image_backbone.stages],
                         AudioInputSpec(log_mel.sample_rate, normalize=False),  # type: ignore[arg-type]
                         f"logmel-{image_backbone.name}")
        self.log_mel = log_mel

    def forward(self, clips: torch.Tensor) -> torch.Tensor:
        return self.body(self.log_mel(clips))
