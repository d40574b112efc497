"""Audio front end (log-mel features) and supervised augmentation policies for int16 waveforms ``(N, num_samples)``.

Where each step runs, so that the policies fit ``ClassificationModule`` unchanged:

* **per-sample transform** (data-loader workers): ``WaveformAugment``, int16 ``(L,)`` in, float32 ``(L,)`` in
  [-1, 1] (before gain) out: random time shift, background noise at a random SNR, random gain. Cheap element-wise
  work on one clip, so it overlaps with the model's step.
* **batch transform** (on the training device, after transfer, ``(x, y) -> (x, y)``): ``SpecAugment`` (computes
  the log-mel itself and returns features ``(B, 1, n_mels, frames)``) and ``MixUp`` (mixes whatever it gets,
  waveforms here, and returns soft labels ``(B, num_classes)``, which ``F.cross_entropy`` takes as class
  probabilities, as it does for the image policies' MixUp).

The strong view of semi-supervised training (FixMatch, FlexMatch) is per-sample too and stays a waveform:
``strong_waveform_augment`` chains ``WaveformMasking`` (SpecAugment's frequency and time masks done on the waveform:
band-stop bands through the FFT, silenced spans, a white-noise floor) with a stronger ``WaveformAugment``. Any audio
model takes it (log-mel CNNs and speech encoders), and the labelled batch and both views share one forward pass.

The classifier is expected to start with a ``LogMel``: it takes int16 waveforms (validation and test batches, and
the ``none`` policy, reach the model untransformed), float waveforms (after ``WaveformAugment`` or ``MixUp``) and
passes already computed features through, so a SpecAugment batch needs no engine change. ``specaugment`` therefore
suits log-mel classifiers only; a waveform backbone (wav2vec 2.0) takes ``none``, ``standard`` and ``mixup``, and
masks its own frames when fine-tuned (its config's ``mask_time_prob``).

All transforms are written in torch: ``torch-audiomentations`` requires ``torchaudio``, which would pull a second
torch build.
"""

from __future__ import annotations

import hashlib
import math
import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import get_worker_info

from fewlabel.augment.supervised import AugmentationPolicy
from fewlabel.errors import FewlabelError
from fewlabel.names import AUDIO_POLICIES

SAMPLE_RATE = 16000
INT16_SCALE = 32768.0


def to_float_waveform(x: torch.Tensor) -> torch.Tensor:
    """int16 samples -> float32 in [-1, 1); floating tensors are returned as they are (assumed already scaled)."""
    if x.dtype == torch.int16:
        return x.float().div_(INT16_SCALE)
    if x.is_floating_point():
        return x
    raise TypeError(f"audio waveforms must be int16 or floating point, got {x.dtype}")


def _rank() -> int:
    distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
    return torch.distributed.get_rank() if distributed else 0


def _mix(*parts: int) -> int:
    """A 63-bit seed from integers, the same in every process (unlike ``hash``)."""
    digest = hashlib.sha256(":".join(str(p) for p in parts).encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


class LogMel(nn.Module):
    """Waveforms ``(B, L)`` (int16, or float in [-1, 1]) -> log-mel features ``(B, 1, n_mels, 1 + L // hop)``.

    Power STFT (``torch.stft``, periodic Hann window, centred frames with reflect padding; 25 ms windows every
    10 ms by default: n_fft 400 / hop 160 at 16 kHz), an HTK mel filter bank from
    ``transformers.audio_utils.mel_filter_bank`` (unnormalised triangles, ``f_min``..``f_max``), then
    ``log(mel + 1e-6)``.

    Normalisation is **per utterance** (``normalize=True``): each clip's log-mel map is shifted and scaled to mean 0,
    std 1 over all its bins and frames. It needs no dataset statistics (few labels, any domain), and it makes the
    features independent of the recording level; SpecAugment's fill value (the clip's mean) is then 0.

    Runs on the device of the batch (the module follows the batch there on first use) in float32 even under
    autocast: log of a bf16 power spectrum loses the quiet bins. A 4-D input ``(B, 1, n_mels, frames)`` is taken
    to be features already computed (by a SpecAugment batch transform) and is returned unchanged.
    """

    def __init__(self, sample_rate: int = SAMPLE_RATE, n_mels: int = 64, n_fft: int | None = None,
                 hop_length: int | None = None, f_min: float = 0.0, f_max: float | None = None,
                 normalize: bool = True, eps: float = 1e-6) -> None:
        super().__init__()
        from transformers.audio_utils import mel_filter_bank

        self.sample_rate = sample_rate
        self.n_mels = n_mels
        self.n_fft = n_fft or round(0.025 * sample_rate)
        self.hop_length = hop_length or round(0.010 * sample_rate)
        self.f_min = f_min
        self.f_max = f_max if f_max is not None else sample_rate / 2
        self.normalize = normalize
        self.eps = eps
        if not 0 <= self.f_min < self.f_max <= sample_rate / 2:
            raise FewlabelError(f"mel range {self.f_min}..{self.f_max} Hz must lie within 0..{sample_rate / 2} Hz")
        bank = mel_filter_bank(num_frequency_bins=self.n_fft // 2 + 1, num_mel_filters=n_mels, min_frequency=self.f_min,
                               max_frequency=self.f_max, sampling_rate=sample_rate, norm=None, mel_scale="htk")
        # Derived constants: not part of a checkpoint, rebuilt from the arguments.
        self.register_buffer("mel_filters", torch.from_numpy(np.ascontiguousarray(bank.T)).float(), persistent=False)
        self.register_buffer("window", torch.hann_window(self.n_fft), persistent=False)

    def num_frames(self, num_samples: int) -> int:
        """Frames for a clip of ``num_samples`` (centred STFT): ``1 + num_samples // hop``."""
        return 1 + num_samples // self.hop_length

    def extra_repr(self) -> str:
        return (f"sample_rate={self.sample_rate}, n_mels={self.n_mels}, n_fft={self.n_fft}, hop={self.hop_length}, "
                f"normalize={self.normalize}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim == 4:
            if x.shape[1] != 1 or x.shape[2] != self.n_mels:
                raise ValueError(f"expected features (B, 1, {self.n_mels}, frames), got {tuple(x.shape)}")
            return x
        if x.ndim != 2:
            raise ValueError(f"expected waveforms (B, L), got {tuple(x.shape)}")
        if self.window.device != x.device:
            self.to(x.device)
        with torch.autocast(device_type=x.device.type, enabled=False):
            wave = to_float_waveform(x).float()
            spec = torch.stft(wave, self.n_fft, self.hop_length, window=self.window, center=True,
                              pad_mode="reflect", return_complex=True)
            power = spec.real.square() + spec.imag.square()  # (B, n_fft // 2 + 1, frames)
            features = torch.log(torch.matmul(self.mel_filters, power) + self.eps)
            if self.normalize:
                mean = features.mean(dim=(1, 2), keepdim=True)
                std = features.std(dim=(1, 2), keepdim=True).clamp_min(1e-5)
                features = (features - mean) / std
        return features.unsqueeze(1)


# Deterministic pieces (tested directly; the random transforms only draw their parameters).

def shift_waveform(wave: torch.Tensor, shift: int) -> torch.Tensor:
    """Move the clip ``shift`` samples later (negative: earlier) along its last axis, filling with silence.

    Zero fill rather than a roll: a wrapped-around word ending at the start of a clip sounds like nothing real.
    """
    if shift == 0:
        return wave.clone()
    out = torch.zeros_like(wave)
    if abs(shift) >= wave.shape[-1]:
        return out
    if shift > 0:
        out[..., shift:] = wave[..., :-shift]
    else:
        out[..., :shift] = wave[..., -shift:]
    return out


def apply_gain(wave: torch.Tensor, gain_db: float) -> torch.Tensor:
    """Scale by ``gain_db`` decibels (amplitude factor 10^(dB/20)); no clipping, the features are float."""
    return wave * 10.0 ** (gain_db / 20.0)


def noise_segment(noise: torch.Tensor, length: int, offset: int) -> torch.Tensor:
    """``length`` float samples of ``noise`` (1-D, int16 or float) from ``offset``, tiled when it is shorter.

    Only the segment is converted to float: background-noise recordings are long (a minute in Speech Commands).
    """
    if len(noise) < length:
        noise = noise.repeat(math.ceil(length / len(noise)) + 1)
    offset = offset % max(1, len(noise) - length + 1)
    return to_float_waveform(noise[offset:offset + length]).float()


def mix_at_snr(wave: torch.Tensor, noise: torch.Tensor, snr_db: float) -> torch.Tensor:
    """``wave + a * noise`` with ``a`` chosen so that mean power(wave) / power(a * noise) = 10^(snr/10).

    A silent clip (or silent noise) is returned unchanged: an SNR means nothing without a signal.
    """
    signal_power = wave.float().square().mean()
    noise_power = noise.float().square().mean()
    if signal_power <= 0 or noise_power <= 0:
        return wave.clone()
    scale = torch.sqrt(signal_power / (noise_power * 10.0 ** (snr_db / 10.0)))
    return wave + scale * noise


class _SampleRandom:
    """Per-sample transforms' private ``torch.Generator``, seeded from ``seed``; each DataLoader worker (and each
    distributed rank) reseeds its copy on first use from ``seed``, the worker's seed and the rank, so workers draw
    different augmentations and a seeded run repeats them."""

    def __init__(self, seed: int) -> None:
        self.seed = seed
        self._generator: torch.Generator | None = None
        self._owner: tuple[int, int | None] | None = None  # (process id, worker seed) the generator was made for

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_generator"] = state["_owner"] = None  # made anew in the process that uses the copy
        return state

    def generator(self) -> torch.Generator:
        worker = get_worker_info()
        owner = (os.getpid(), worker.seed if worker is not None else None)
        if self._generator is None or self._owner != owner:
            seed = self.seed if worker is None and _rank() == 0 else _mix(self.seed, owner[1] or 0, _rank())
            self._generator = torch.Generator().manual_seed(seed)
            self._owner = owner
        return self._generator

    @staticmethod
    def _uniform(low: float, high: float, generator: torch.Generator) -> float:
        return low + (high - low) * float(torch.rand((), generator=generator))


class WaveformAugment(_SampleRandom):
    """Per-sample transform for the data loader: int16 (or float) ``(L,)`` -> float32 ``(L,)``.

    In this order: a uniform random time shift in ±``max_shift_s`` (zero fill); with probability ``noise_prob`` a
    random segment of a random clip from ``noise`` mixed at a uniform random SNR in ``snr_db`` (dB, relative to the
    clip's own mean power); a uniform random gain in ``gain_db`` (dB) on the mixture, as a recording level would be.

    Random numbers come from a private generator (see ``_SampleRandom``): seeded runs repeat, workers differ.
    """

    def __init__(self, noise: Sequence[torch.Tensor] = (), seed: int = 0, sample_rate: int = SAMPLE_RATE,
                 max_shift_s: float = 0.1, gain_db: tuple[float, float] = (-6.0, 6.0),
                 snr_db: tuple[float, float] = (0.0, 20.0), noise_prob: float = 0.8) -> None:
        super().__init__(seed)
        self.noise = [torch.as_tensor(n).reshape(-1) for n in noise]
        if any(len(n) == 0 for n in self.noise):
            raise FewlabelError("a background-noise clip is empty; drop it from the noise list")
        if gain_db[0] > gain_db[1] or snr_db[0] > snr_db[1]:
            raise FewlabelError(f"gain {gain_db} and SNR {snr_db} ranges must be (low, high)")
        if not 0.0 <= noise_prob <= 1.0 or max_shift_s < 0:
            raise FewlabelError(f"noise probability {noise_prob} must be in [0, 1], shift {max_shift_s} s >= 0")
        self.sample_rate = sample_rate
        self.max_shift = round(max_shift_s * sample_rate)
        self.gain_db = gain_db
        self.snr_db = snr_db
        self.noise_prob = noise_prob if self.noise else 0.0

    def __call__(self, wave: torch.Tensor) -> torch.Tensor:
        generator = self.generator()
        out = to_float_waveform(wave).float()
        if self.max_shift:
            shift = int(torch.randint(-self.max_shift, self.max_shift + 1, (), generator=generator))
            out = shift_waveform(out, shift)
        if self.noise_prob and float(torch.rand((), generator=generator)) < self.noise_prob:
            clip = self.noise[int(torch.randint(len(self.noise), (), generator=generator))]
            offset = int(torch.randint(max(1, len(clip)), (), generator=generator))
            snr = self._uniform(*self.snr_db, generator)
            out = mix_at_snr(out, noise_segment(clip, out.shape[-1], offset), snr)
        if self.gain_db != (0.0, 0.0):
            out = apply_gain(out, self._uniform(*self.gain_db, generator))
        return out

    def __repr__(self) -> str:
        return (f"WaveformAugment(shift=±{self.max_shift / self.sample_rate:g}s, gain_db={self.gain_db}, "
                f"noise={len(self.noise)} clips at SNR {self.snr_db} dB p={self.noise_prob:g})")


def band_stop(wave: torch.Tensor, bands: Sequence[tuple[float, float]], sample_rate: int) -> torch.Tensor:
    """The clip without the frequencies of ``bands`` ((low, high) Hz, high excluded): its real FFT with those bins
    zeroed, back in the time domain at the same length. The waveform counterpart of SpecAugment's frequency mask."""
    n = wave.shape[-1]
    spectrum = torch.fft.rfft(wave.float())
    freqs = torch.fft.rfftfreq(n, 1.0 / sample_rate)
    for low, high in bands:
        spectrum[..., (freqs >= low) & (freqs < high)] = 0
    return torch.fft.irfft(spectrum, n=n)


def hz_to_mel(hz: float) -> float:
    """HTK mel scale, as ``LogMel``'s filter bank."""
    return 2595.0 * math.log10(1.0 + hz / 700.0)


def mel_to_hz(mel: float) -> float:
    return 700.0 * (10.0 ** (mel / 2595.0) - 1.0)


class WaveformMasking(_SampleRandom):
    """Per-sample transform, SpecAugment's masks on the waveform: int16 (or float) ``(L,)`` -> float32 ``(L,)``.

    ``freq_masks`` bands, each 0..``max_band`` of the mel range (0 Hz to Nyquist) wide at a uniform random place on
    the mel scale, removed (:func:`band_stop`); ``time_masks`` spans of 0..``max_time_s`` silenced (zeroed); then,
    when ``white_snr_db`` is given, white noise at a uniform random SNR in that range (dB, relative to the clip's
    power before masking), which also gives the silenced spans a noise floor instead of digital silence.

    Written for the strong view of FixMatch / FlexMatch: it works on the waveform, so any audio model takes it
    (log-mel CNNs and speech encoders alike), and it keeps the weak and strong views the same kind of tensor, so
    the labelled batch and both views go through the network as one batch.
    """

    def __init__(self, seed: int = 0, sample_rate: int = SAMPLE_RATE, freq_masks: int = 2, max_band: float = 0.15,
                 time_masks: int = 2, max_time_s: float = 0.1,
                 white_snr_db: tuple[float, float] | None = (10.0, 30.0)) -> None:
        super().__init__(seed)
        if min(freq_masks, time_masks) < 0 or not 0.0 <= max_band <= 1.0 or max_time_s < 0:
            raise FewlabelError("waveform mask counts must be >= 0, the band width in [0, 1] of the mel range and "
                                "the span length >= 0 s")
        if white_snr_db is not None and white_snr_db[0] > white_snr_db[1]:
            raise FewlabelError(f"white-noise SNR range {white_snr_db} must be (low, high)")
        self.sample_rate = sample_rate
        self.freq_masks, self.max_band = freq_masks, max_band
        self.time_masks, self.max_time = time_masks, round(max_time_s * sample_rate)
        self.white_snr_db = white_snr_db

    def __call__(self, wave: torch.Tensor) -> torch.Tensor:
        generator = self.generator()
        out = to_float_waveform(wave).float().clone()
        n = out.shape[-1]
        power = out.square().mean()
        top = hz_to_mel(self.sample_rate / 2)
        bands = []
        for _ in range(self.freq_masks):
            width = self._uniform(0.0, self.max_band, generator) * top
            start = self._uniform(0.0, top - width, generator)
            bands.append((mel_to_hz(start), mel_to_hz(start + width)))
        if bands:
            out = band_stop(out, bands, self.sample_rate)
        for _ in range(self.time_masks):
            width = int(torch.randint(0, min(self.max_time, n) + 1, (), generator=generator))
            start = int(torch.randint(0, n - width + 1, (), generator=generator))
            out[..., start:start + width] = 0.0
        if self.white_snr_db is not None and power > 0:
            snr = self._uniform(*self.white_snr_db, generator)
            noise = torch.randn(out.shape, generator=generator)  # unit power
            out = out + torch.sqrt(power / 10.0 ** (snr / 10.0)) * noise
        return out

    def __repr__(self) -> str:
        noise = f", white noise at SNR {self.white_snr_db} dB" if self.white_snr_db else ""
        return (f"WaveformMasking({self.freq_masks} bands <= {self.max_band:g} of the mel range, {self.time_masks} "
                f"spans <= {self.max_time / self.sample_rate:g}s{noise})")


class SampleChain:
    """Per-sample transforms applied in order (picklable, for loader workers)."""

    def __init__(self, *transforms: Any) -> None:
        self.transforms = transforms

    def __call__(self, sample: torch.Tensor) -> torch.Tensor:
        for transform in self.transforms:
            sample = transform(sample)
        return sample

    def __repr__(self) -> str:
        return " -> ".join(repr(t) for t in self.transforms)


def strong_waveform_augment(noise: Sequence[torch.Tensor] = (), seed: int = 0,
                            sample_rate: int = SAMPLE_RATE) -> SampleChain:
    """The strong view of semi-supervised training on audio (the counterpart of images' RandAugment):
    :class:`WaveformMasking` (two band-stop masks up to 15% of the mel range, two silenced spans up to 0.1 s, white
    noise at 10-30 dB SNR), then the ``standard`` :class:`WaveformAugment` made stronger: shifts up to ±0.2 s,
    gains within ±10 dB, and the dataset's background noise (when it has any) always mixed, at 0-15 dB SNR."""
    return SampleChain(WaveformMasking(seed=_mix(seed, 3), sample_rate=sample_rate),
                       WaveformAugment(noise, seed=_mix(seed, 4), sample_rate=sample_rate, max_shift_s=0.2,
                                       gain_db=(-10.0, 10.0), snr_db=(0.0, 15.0), noise_prob=1.0))


class _BatchRandom(nn.Module):
    """Batch transforms draw their parameters on the CPU from a numpy generator (seed, rank): the same draws on
    every device, no device sync to read them, and no dependence on torch's global RNG."""

    def __init__(self, seed: int) -> None:
        super().__init__()
        self.seed = seed
        self._rng: np.random.Generator | None = None

    @property
    def rng(self) -> np.random.Generator:
        if self._rng is None:
            self._rng = np.random.default_rng([self.seed, _rank()])
        return self._rng


class SpecAugment(_BatchRandom):
    """Batch transform: log-mel features with random frequency and time masks (Park et al., 2019), per clip.

    ``(x, y) -> (features (B, 1, n_mels, frames), y)``; ``x`` is a waveform batch (int16 or float) or features.
    Each clip gets ``freq_masks`` bands of 0..``max_freq_width`` mel bins and ``time_masks`` spans of
    0..``max_time_width`` frames, filled with that clip's mean feature (0 under LogMel's per-utterance
    normalisation). ``log_mel`` must be the classifier's own front end (or one built alike): the features it
    returns pass through the model's LogMel unchanged.
    """

    def __init__(self, log_mel: LogMel | None = None, freq_masks: int = 2, max_freq_width: int = 8,
                 time_masks: int = 2, max_time_width: int = 10, seed: int = 0) -> None:
        super().__init__(seed)
        if min(freq_masks, max_freq_width, time_masks, max_time_width) < 0:
            raise FewlabelError("SpecAugment mask counts and widths must be >= 0")
        self.log_mel = log_mel if log_mel is not None else LogMel()
        self.freq_masks, self.max_freq_width = freq_masks, max_freq_width
        self.time_masks, self.max_time_width = time_masks, max_time_width

    def extra_repr(self) -> str:
        return (f"freq_masks={self.freq_masks}x<={self.max_freq_width}, "
                f"time_masks={self.time_masks}x<={self.max_time_width}")

    def _spans(self, batch: int, count: int, max_width: int, size: int, device: torch.device) -> torch.Tensor:
        """(batch, size) bool: True inside any of ``count`` random spans of width 0..max_width per row."""
        widths = self.rng.integers(0, min(max_width, size) + 1, size=(batch, count))
        starts = (self.rng.random((batch, count)) * (size - widths + 1)).astype(np.int64)
        starts_t = torch.as_tensor(starts, device=device)[:, :, None]
        ends_t = starts_t + torch.as_tensor(widths, device=device)[:, :, None]
        position = torch.arange(size, device=device)[None, None, :]
        return ((position >= starts_t) & (position < ends_t)).any(dim=1)

    def masks(self, batch: int, n_mels: int, frames: int, device: torch.device | str = "cpu"
              ) -> tuple[torch.Tensor, torch.Tensor]:
        """Draw the masks of one batch: (freq (B, n_mels), time (B, frames)) bool, True = masked."""
        device = torch.device(device)
        return (self._spans(batch, self.freq_masks, self.max_freq_width, n_mels, device),
                self._spans(batch, self.time_masks, self.max_time_width, frames, device))

    @staticmethod
    def apply_masks(features: torch.Tensor, freq: torch.Tensor, time: torch.Tensor) -> torch.Tensor:
        """Fill the masked bins and frames of ``features`` (B, 1, F, T) with each clip's mean (a new tensor)."""
        masked = (freq[:, None, :, None] | time[:, None, None, :])
        fill = features.mean(dim=(1, 2, 3), keepdim=True)
        return torch.where(masked, fill.expand_as(features), features)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.log_mel(x)
        freq, time = self.masks(features.shape[0], features.shape[2], features.shape[3], features.device)
        return self.apply_masks(features, freq, time), y


class MixUp(_BatchRandom):
    """Batch transform: mix each clip with the next one in the batch (``roll(1)``; the loader already shuffled),
    ``x_i' = lam_i x_i + (1 - lam_i) x_{i-1}``, ``lam_i ~ Beta(alpha, alpha)`` per clip, and the labels alike.

    Works on waveforms (int16 is converted to float first; mixing in time is mixing the sounds) or on features.
    Returns soft labels ``(B, num_classes)`` float32 that sum to 1 per row; ``y`` may already be soft.
    """

    def __init__(self, num_classes: int, alpha: float = 0.2, seed: int = 0) -> None:
        super().__init__(seed)
        if num_classes < 1 or alpha <= 0:
            raise FewlabelError(f"MixUp needs num_classes >= 1 and alpha > 0, got {num_classes} and {alpha}")
        self.num_classes = num_classes
        self.alpha = alpha
        self.last_lam: torch.Tensor | None = None

    def extra_repr(self) -> str:
        return f"alpha={self.alpha}, num_classes={self.num_classes}"

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = to_float_waveform(x)
        if y.ndim == 1:
            y = torch.nn.functional.one_hot(y.long(), self.num_classes).float()
        y = y.float()
        lam = torch.as_tensor(self.rng.beta(self.alpha, self.alpha, size=len(x)), dtype=torch.float32,
                              device=x.device)
        self.last_lam = lam
        lam_x = lam.to(x.dtype).reshape(-1, *([1] * (x.ndim - 1)))
        mixed = lam_x * x + (1 - lam_x) * x.roll(1, dims=0)
        labels = lam[:, None] * y + (1 - lam[:, None]) * y.roll(1, dims=0)
        return mixed, labels


def build_audio_policy(name: str, noise: Sequence[torch.Tensor] = (), seed: int = 0, sample_rate: int = SAMPLE_RATE,
                       *, num_classes: int | None = None, log_mel: LogMel | None = None) -> AugmentationPolicy:
    """One of ``AUDIO_POLICIES`` as an ``AugmentationPolicy``.

    ``none``: nothing (int16 reaches the model). ``standard``: ``WaveformAugment`` (shift, ``noise`` at a random
    SNR when any noise clips are given, gain). ``specaugment`` and ``mixup`` add their batch transform to
    ``standard``, as the image policies add MixUp to their crops. ``mixup`` needs ``num_classes``;
    ``specaugment`` should get the classifier's ``log_mel`` (default: a ``LogMel(sample_rate)``).
    """
    if name not in AUDIO_POLICIES:
        raise FewlabelError(f"unknown audio augmentation policy '{name}'; choose one of {', '.join(AUDIO_POLICIES)}")
    if name == "none":
        return AugmentationPolicy(name, None, None)
    base = WaveformAugment(noise, seed=seed, sample_rate=sample_rate)
    if name == "standard":
        return AugmentationPolicy(name, base, None)
    if name == "specaugment":
        front = log_mel if log_mel is not None else LogMel(sample_rate)
        return AugmentationPolicy(name, base, SpecAugment(front, seed=_mix(seed, 1)))
    if num_classes is None:
        raise FewlabelError("the mixup audio policy needs num_classes (its labels become class probabilities)")
    return AugmentationPolicy(name, base, MixUp(num_classes, seed=_mix(seed, 1)))
