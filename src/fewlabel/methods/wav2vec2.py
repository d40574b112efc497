"""wav2vec 2.0 pretraining (Baevski et al., 2020) on raw waveforms, built on Hugging Face's
``Wav2Vec2ForPreTraining`` from a config (no weights are downloaded).

A convolutional feature encoder turns the waveform into frames (20 ms apart: 49 frames for a 1 s clip at 16 kHz);
spans of frames are masked (``_compute_mask_indices``) and a transformer predicts, at every masked frame, which of
the Gumbel-quantised encoder outputs is the true one among ``num_negatives`` distractors drawn from the other
masked frames of the same clip (``_sample_negative_indices``). A diversity term keeps the codebooks in use.
Both helpers come from ``transformers.models.wav2vec2.modeling_wav2vec2``; the loss follows the library's
``run_wav2vec2_pretraining_no_trainer.py``: ``(contrastive + diversity_loss_weight * diversity) / masked frames``.

The body (``Wav2Vec2Model``) is what downstream tasks keep: ``export`` writes it with its feature extractor as a
Hugging Face folder that ``Wav2Vec2Model.from_pretrained`` / ``AutoFeatureExtractor.from_pretrained`` read
without fewlabel.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import torch
from torch import nn

from fewlabel.errors import FewlabelError
from fewlabel.methods.base import decay_groups

if TYPE_CHECKING:
    from transformers import Wav2Vec2ForPreTraining, Wav2Vec2Model

SAMPLE_RATE = 16000

# Every preset sets the same keys; they are also the overrides build_wav2vec2 accepts.
# mask_time_* are NOT the pretraining masks (those are Wav2Vec2Pretraining's mask_prob / mask_length /
# min_masks): they are the SpecAugment the exported model applies to itself when fine-tuned in train mode,
# sized for 1 s clips (2 spans of 5 frames: about 20% of 49 frames).
PRESETS: dict[str, dict[str, Any]] = {
    # Sized for CPU runs (about 1 M parameters; ~135 one-second clips/s fwd+bwd+AdamW step at batch 32 on 2 cores):
    # a 4-layer feature encoder with the base model's 320-sample stride and about its 400-sample receptive field
    # (425), thin channels, a 4-layer, 128-wide transformer, 2 codebooks of 64 entries, 20 negatives.
    "tiny": {
        "conv_dim": (32, 64, 128, 128),
        "conv_kernel": (10, 8, 8, 4),
        "conv_stride": (5, 4, 4, 4),
        "conv_bias": False,
        "feat_extract_norm": "group",
        "do_stable_layer_norm": False,
        "hidden_size": 128,
        "num_hidden_layers": 4,
        "num_attention_heads": 4,
        "intermediate_size": 512,
        "num_conv_pos_embeddings": 32,
        "num_conv_pos_embedding_groups": 16,
        "hidden_dropout": 0.1,
        "attention_dropout": 0.1,
        "activation_dropout": 0.0,
        "feat_proj_dropout": 0.1,
        "feat_quantizer_dropout": 0.0,
        "layerdrop": 0.0,
        "num_codevector_groups": 2,
        "num_codevectors_per_group": 64,
        "codevector_dim": 64,
        "proj_codevector_dim": 64,
        "num_negatives": 20,
        "contrastive_logits_temperature": 0.1,
        "diversity_loss_weight": 0.1,
        "mask_time_prob": 0.05,
        "mask_time_length": 5,
        "mask_time_min_masks": 2,
    },
    # The BASE model as released (facebook/wav2vec2-base; the paper's text says 8 heads, the checkpoint has 12):
    # 7 conv layers of 512 channels, 12 transformer layers of 768 (FFN 3072), G=2 x V=320 codebooks, 100 negatives,
    # layer drop 0.05.
    "base": {
        "conv_dim": (512, 512, 512, 512, 512, 512, 512),
        "conv_kernel": (10, 3, 3, 3, 3, 2, 2),
        "conv_stride": (5, 2, 2, 2, 2, 2, 2),
        "conv_bias": False,
        "feat_extract_norm": "group",
        "do_stable_layer_norm": False,
        "hidden_size": 768,
        "num_hidden_layers": 12,
        "num_attention_heads": 12,
        "intermediate_size": 3072,
        "num_conv_pos_embeddings": 128,
        "num_conv_pos_embedding_groups": 16,
        "hidden_dropout": 0.1,
        "attention_dropout": 0.1,
        "activation_dropout": 0.0,
        "feat_proj_dropout": 0.1,
        "feat_quantizer_dropout": 0.0,
        "layerdrop": 0.05,
        "num_codevector_groups": 2,
        "num_codevectors_per_group": 320,
        "codevector_dim": 256,
        "proj_codevector_dim": 256,
        "num_negatives": 100,
        "contrastive_logits_temperature": 0.1,
        "diversity_loss_weight": 0.1,
        "mask_time_prob": 0.05,
        "mask_time_length": 5,
        "mask_time_min_masks": 2,
    },
}
OVERRIDE_KEYS = tuple(PRESETS["tiny"])


def build_wav2vec2(preset: str = "tiny", **overrides: Any) -> Wav2Vec2ForPreTraining:
    """A randomly initialised ``Wav2Vec2ForPreTraining`` from preset ``tiny`` or ``base`` with config keys
    overridden by keyword (only the keys the presets set; seed torch's RNG first for a repeatable init)."""
    from transformers import Wav2Vec2Config, Wav2Vec2ForPreTraining

    if preset not in PRESETS:
        raise FewlabelError(f"unknown wav2vec2 preset {preset!r}; choose one of: {', '.join(PRESETS)}")
    unknown = sorted(set(overrides) - set(OVERRIDE_KEYS))
    if unknown:
        raise FewlabelError(f"unknown wav2vec2 setting(s) {', '.join(unknown)}; valid: {', '.join(OVERRIDE_KEYS)}")
    settings = {**PRESETS[preset], **overrides}
    _check_settings(settings)
    config = Wav2Vec2Config(**settings)
    return Wav2Vec2ForPreTraining(config)


def _check_settings(settings: Mapping[str, Any]) -> None:
    layers = {len(settings[key]) for key in ("conv_dim", "conv_kernel", "conv_stride")}
    if len(layers) != 1:
        raise FewlabelError("conv_dim, conv_kernel and conv_stride need one entry per feature-encoder layer each")
    if settings["hidden_size"] % settings["num_attention_heads"]:
        raise FewlabelError(f"hidden_size {settings['hidden_size']} must be a multiple of the "
                            f"{settings['num_attention_heads']} attention heads")
    if settings["codevector_dim"] % settings["num_codevector_groups"]:
        raise FewlabelError(f"codevector_dim {settings['codevector_dim']} must be a multiple of the "
                            f"{settings['num_codevector_groups']} codevector groups")
    if not 0.0 < settings["mask_time_prob"] <= 1.0:
        # The body creates its learned mask embedding only when mask_time_prob > 0; pretraining masks need it.
        raise FewlabelError(f"mask_time_prob {settings['mask_time_prob']} must be in (0, 1]; it is the exported "
                            "model's fine-tuning SpecAugment, not the pretraining masks (see Wav2Vec2Pretraining)")
    if settings["num_negatives"] < 1 or settings["num_codevectors_per_group"] < 2:
        raise FewlabelError("wav2vec2 needs num_negatives >= 1 and num_codevectors_per_group >= 2")


def normalize_waveforms(batch: torch.Tensor) -> torch.Tensor:
    """Zero mean, unit variance per clip, as ``Wav2Vec2FeatureExtractor(do_normalize=True)`` does:
    ``(x - mean) / sqrt(var + 1e-7)`` (population variance), float32. int16 input is scaled to [-1, 1) first
    (the result is the same up to the 1e-7). Applying it twice changes nothing that matters."""
    x = batch.float() / 32768.0 if batch.dtype == torch.int16 else batch.float()
    mean = x.mean(dim=-1, keepdim=True)
    var = x.var(dim=-1, keepdim=True, unbiased=False)
    return (x - mean) / torch.sqrt(var + 1e-7)


def gumbel_temperature(step: int, maximum: float = 2.0, minimum: float = 0.5, decay: float = 0.999995) -> float:
    """Temperature after ``step`` optimiser steps: ``max(maximum * decay ** step, minimum)`` (paper, HF example)."""
    return max(maximum * decay**step, minimum)


class Wav2Vec2Pretraining(nn.Module):
    """wav2vec 2.0 pretraining around a ``Wav2Vec2ForPreTraining`` (or a preset name for ``build_wav2vec2``).

    A training loop needs: ``loss, logs = method.training_loss(waveforms)``; ``loss.backward()``;
    ``optimizer.step()``; ``method.on_train_step_end(step, max_steps)`` (Gumbel temperature). ``waveforms`` is a
    ``(B, L)`` batch of equal-length clips, int16 or float; it is normalised per clip here (see
    ``normalize_waveforms``), as the exported feature extractor will normalise downstream inputs.

    Pretraining masks: ``mask_prob`` / ``mask_length`` / ``min_masks`` for ``_compute_mask_indices``, suited to
    1 s clips (49 frames): spans of 5 frames (100 ms) at 0.65 -> about half the frames masked, at least 2 spans.
    Masks and negatives are drawn on the CPU from this method's own numpy state (seeded by ``seed`` and the rank):
    the library's helpers use numpy's global RNG, which is swapped in only around the draw.

    Gumbel temperature: ``max_gumbel_temperature * gumbel_temperature_decay ** steps``, floored at
    ``min_gumbel_temperature`` (2.0, 0.999995, 0.5 as the paper's 400k-update runs). A short run barely moves at
    that rate; ``gumbel_temperature_decay=None`` picks the rate that reaches the floor at the run's last step.
    """

    name: ClassVar[str] = "wav2vec2"

    def __init__(
        self,
        model: Wav2Vec2ForPreTraining | str = "tiny",
        mask_prob: float = 0.65,
        mask_length: int = 5,
        min_masks: int = 2,
        max_gumbel_temperature: float = 2.0,
        min_gumbel_temperature: float = 0.5,
        gumbel_temperature_decay: float | None = 0.999995,
        sample_rate: int = SAMPLE_RATE,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if not 0.0 < mask_prob <= 1.0 or mask_length < 1 or min_masks < 0:
            raise FewlabelError(f"wav2vec2 masking needs 0 < mask_prob <= 1, mask_length >= 1, min_masks >= 0; "
                                f"got {mask_prob}, {mask_length}, {min_masks}")
        if mask_length < 2 and min_masks < 2:
            raise FewlabelError("wav2vec2 needs at least 2 masked frames per clip (negatives come from the other "
                                "masked frames): use mask_length >= 2 or min_masks >= 2")
        if not 0.0 < min_gumbel_temperature <= max_gumbel_temperature:
            raise FewlabelError(f"Gumbel temperatures need 0 < min <= max, got {min_gumbel_temperature} and "
                                f"{max_gumbel_temperature}")
        if gumbel_temperature_decay is not None and not 0.0 < gumbel_temperature_decay <= 1.0:
            raise FewlabelError(f"gumbel_temperature_decay {gumbel_temperature_decay} must be in (0, 1]")
        preset = model if isinstance(model, str) else "custom"
        self.model = build_wav2vec2(model) if isinstance(model, str) else model
        can_mask = getattr(self.model.wav2vec2, "masked_spec_embed", None) is not None
        if not getattr(self.model.config, "apply_spec_augment", True) or not can_mask:
            # Wav2Vec2Model silently ignores mask_time_indices then: the model would see every frame it predicts.
            raise FewlabelError("this Wav2Vec2 model cannot mask frames (apply_spec_augment is off or "
                                "mask_time_prob is 0); build it with build_wav2vec2")
        self.config = self.model.config
        self.embed_dim = int(self.config.hidden_size)
        self.hparams: dict[str, Any] = {
            "preset": preset, "mask_prob": mask_prob, "mask_length": mask_length, "min_masks": min_masks,
            "max_gumbel_temperature": max_gumbel_temperature, "min_gumbel_temperature": min_gumbel_temperature,
            "gumbel_temperature_decay": gumbel_temperature_decay, "sample_rate": sample_rate, "seed": seed,
        }
        self.mask_prob, self.mask_length, self.min_masks = mask_prob, mask_length, min_masks
        self.max_gumbel_temperature = max_gumbel_temperature
        self.min_gumbel_temperature = min_gumbel_temperature
        self.gumbel_temperature_decay = gumbel_temperature_decay
        self.sample_rate = sample_rate
        self.seed = seed
        self._numpy_state: tuple | None = None
        self.gumbel_temperature = max_gumbel_temperature
        self.model.set_gumbel_temperature(max_gumbel_temperature)

    # --- masks and negatives -------------------------------------------------------------------------------------

    def _with_own_numpy_rng(self, draw: Callable[[], np.ndarray]) -> np.ndarray:
        if self._numpy_state is None:
            distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
            rank = torch.distributed.get_rank() if distributed else 0
            self._numpy_state = np.random.RandomState([self.seed, rank]).get_state()
        outer = np.random.get_state()
        np.random.set_state(self._numpy_state)
        try:
            return draw()
        finally:
            self._numpy_state = np.random.get_state()
            np.random.set_state(outer)

    def num_frames(self, num_samples: int) -> int:
        """Frames the feature encoder makes of a clip of ``num_samples`` (49 for 1 s at 16 kHz)."""
        return int(self.model._get_feat_extract_output_lengths(num_samples))

    def draw_masks(self, batch_size: int, num_frames: int) -> tuple[np.ndarray, np.ndarray]:
        """Masked frames (bool ``(B, T)``) and negatives (int64 ``(B, T, num_negatives)``, flat indices into the
        ``B * T`` frames of the batch; set only at masked frames: other masked frames of the same clip, never the
        frame itself)."""
        from transformers.models.wav2vec2.modeling_wav2vec2 import _compute_mask_indices, _sample_negative_indices

        if self.mask_length > num_frames:
            raise FewlabelError(f"clips of {num_frames} frames are shorter than wav2vec2's mask_length "
                                f"{self.mask_length}; use longer clips or a shorter mask_length")
        shape = (batch_size, num_frames)
        mask = self._with_own_numpy_rng(
            lambda: _compute_mask_indices(shape, self.mask_prob, self.mask_length, min_masks=self.min_masks))
        if int(mask.sum(axis=1).min()) < 2:
            raise FewlabelError(f"clips of {num_frames} frames leave fewer than 2 masked frames to contrast; "
                                "use longer clips or raise mask_prob / min_masks")
        negatives = self._with_own_numpy_rng(
            lambda: _sample_negative_indices(shape, self.config.num_negatives, mask))
        return mask, negatives.astype(np.int64)

    # --- training --------------------------------------------------------------------------------------------------

    def forward(self, waveforms: torch.Tensor) -> torch.Tensor:
        """Mean over frames of the body's last hidden states, ``(B, hidden_size)``: an embedding for probes."""
        hidden = self.model.wav2vec2(normalize_waveforms(waveforms)).last_hidden_state
        return hidden.mean(dim=1)

    def training_loss(self, batch: torch.Tensor | Sequence[torch.Tensor]
                      ) -> tuple[torch.Tensor, dict[str, torch.Tensor | float]]:
        """Loss per masked frame for a ``(B, L)`` waveform batch (or a one-element list of it), and scalars to log:
        ``loss``, ``contrastive_loss`` and ``diversity_loss`` (per masked frame; diversity is
        ``(G*V - perplexity) / (G*V)``, 0 when every code is used), ``codevector_perplexity`` (summed over the G
        groups: G at codebook collapse, G*V at best), ``gumbel_temperature``, ``mask_share``. Tensors stay on the
        device (no sync per step); the masked count comes from the CPU masks."""
        if isinstance(batch, list | tuple):
            batch = batch[0]
        if batch.ndim != 2:
            raise ValueError(f"wav2vec2 expects waveforms (B, L), got {tuple(batch.shape)}")
        waveforms = normalize_waveforms(batch)
        size, length = waveforms.shape
        mask_np, negatives_np = self.draw_masks(size, self.num_frames(length))
        device = waveforms.device
        mask = torch.from_numpy(mask_np).to(device, non_blocking=True)
        negatives = torch.from_numpy(negatives_np).to(device, non_blocking=True)
        out = self.model(waveforms, mask_time_indices=mask, sampled_negative_indices=negatives)
        masked = float(mask_np.sum())
        contrastive = out.contrastive_loss / masked
        diversity = out.diversity_loss / masked
        loss = contrastive + self.config.diversity_loss_weight * diversity
        logs: dict[str, torch.Tensor | float] = {
            "loss": loss.detach(),
            "contrastive_loss": contrastive.detach(),
            "diversity_loss": diversity.detach(),
            "codevector_perplexity": out.codevector_perplexity.detach(),
            "gumbel_temperature": float(self.gumbel_temperature),
            "mask_share": masked / mask_np.size,
        }
        return loss, logs

    @torch.no_grad()
    def on_train_step_end(self, step: int, max_steps: int) -> None:
        """After optimiser step ``step`` (from 0) of ``max_steps``: anneal the Gumbel temperature."""
        decay = self.gumbel_temperature_decay
        if decay is None:
            decay = (self.min_gumbel_temperature / self.max_gumbel_temperature) ** (1.0 / max(1, max_steps))
        self.gumbel_temperature = gumbel_temperature(step + 1, self.max_gumbel_temperature,
                                                     self.min_gumbel_temperature, decay)
        self.model.set_gumbel_temperature(self.gumbel_temperature)

    def optimizer_groups(self) -> list[dict]:
        """Trainable parameters in two groups: weights, and norms/biases with ``weight_decay=0`` (as the image
        methods do); the caller's optimiser supplies the first group's weight decay."""
        return decay_groups(self)

    # --- results ---------------------------------------------------------------------------------------------------

    def pretrained_backbone(self) -> Wav2Vec2Model:
        """The body worth keeping: the feature encoder + transformer, without quantizer and projections."""
        return self.model.wav2vec2

    def export(self, folder: str | Path) -> Path:
        """Write the body and its feature extractor as a Hugging Face folder (whole or not at all):
        ``Wav2Vec2Model.from_pretrained(folder)`` and ``AutoFeatureExtractor.from_pretrained(folder)`` load it."""
        from transformers import Wav2Vec2FeatureExtractor

        from fewlabel.engine.run import atomic_folder

        extractor = Wav2Vec2FeatureExtractor(feature_size=1, sampling_rate=self.sample_rate, padding_value=0.0,
                                             do_normalize=True, return_attention_mask=False)
        folder = Path(folder)
        architectures = self.model.config.architectures  # save_pretrained rewrites it on the shared config
        try:
            with atomic_folder(folder) as tmp:
                self.model.wav2vec2.save_pretrained(tmp)
                extractor.save_pretrained(tmp)
        finally:
            self.model.config.architectures = architectures
        return folder

    def collapse_warnings(self, history: Sequence[Mapping[str, Any]], window: int = 5) -> list[str]:
        """``collapse_warnings`` for this model's codebooks."""
        return collapse_warnings(history, self.config.num_codevector_groups, self.config.num_codevectors_per_group,
                                 window=window)


def _value(entry: Mapping[str, Any], key: str) -> float | None:
    value = entry.get(key)
    if value is None:
        return None
    return float(value.detach().float().mean()) if isinstance(value, torch.Tensor) else float(value)


def collapse_warnings(history: Sequence[Mapping[str, Any]], num_groups: int = 2, num_codevectors: int | None = None,
                      window: int = 5, perplexity_floor: float = 2.0, min_drop: float = 0.01) -> list[str]:
    """Warnings (empty when healthy) for a run's per-step logs (dicts as ``training_loss`` returns, in order):

    * a loss that is NaN or infinite;
    * codebook collapse: the mean perplexity per group over the last ``window`` steps stays at or below
      ``perplexity_floor`` (1 means every frame gets the same code, so the contrastive task is trivial to game);
    * a contrastive loss that has not fallen by ``min_drop`` (relative) from the first ``window`` steps to the last.

    The last two need at least ``2 * window`` steps.
    """
    found: list[str] = []
    for key in ("loss", "contrastive_loss"):
        bad = [i for i, entry in enumerate(history) if (v := _value(entry, key)) is not None and not math.isfinite(v)]
        if bad:
            found.append(f"{key} is NaN or infinite at step {bad[0]} ({len(bad)} steps): lower the learning rate")
    if len(history) < 2 * window or found:
        return found
    tail = [v for entry in history[-window:] if (v := _value(entry, "codevector_perplexity")) is not None]
    if tail:
        per_group = sum(tail) / len(tail) / num_groups
        if per_group <= perplexity_floor:
            size = f" of {num_codevectors}" if num_codevectors else ""
            found.append(f"codebook collapse: perplexity {per_group:.2f}{size} per group over the last {window} steps; "
                         "raise diversity_loss_weight or the Gumbel temperature")
    head = [v for entry in history[:window] if (v := _value(entry, "contrastive_loss")) is not None]
    last = [v for entry in history[-window:] if (v := _value(entry, "contrastive_loss")) is not None]
    if head and last:
        first_mean, last_mean = sum(head) / len(head), sum(last) / len(last)
        if last_mean > first_mean * (1.0 - min_drop):
            found.append(f"contrastive loss is not falling ({first_mean:.3f} over the first {window} steps, "
                         f"{last_mean:.3f} over the last): check the learning rate and the masking")
    return found
