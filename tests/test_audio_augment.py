from __future__ import annotations

import math
import pickle

import pytest
import torch
import torch.nn.functional as F

from fewlabel.augment.audio import (
    AUDIO_POLICIES,
    LogMel,
    MixUp,
    SpecAugment,
    WaveformAugment,
    apply_gain,
    build_audio_policy,
    mix_at_snr,
    noise_segment,
    shift_waveform,
)
from fewlabel.augment.supervised import AugmentationPolicy
from fewlabel.errors import FewlabelError

SR = 16000


def sine(freq: float, seconds: float = 1.0, amplitude: float = 0.5) -> torch.Tensor:
    t = torch.arange(round(seconds * SR), dtype=torch.float64) / SR
    return (amplitude * torch.sin(2 * math.pi * freq * t)).float()


def to_int16(wave: torch.Tensor) -> torch.Tensor:
    return (wave * 32767).round().clamp(-32768, 32767).to(torch.int16)


def test_log_mel_shape_for_one_second() -> None:
    # Centred STFT with hop 160: 1 + 16000 // 160 = 101 frames; 64 mel bands by default.
    log_mel = LogMel()
    assert (log_mel.n_fft, log_mel.hop_length) == (400, 160)
    out = log_mel(torch.zeros(3, SR, dtype=torch.int16))
    assert out.shape == (3, 1, 64, 101) and out.dtype == torch.float32
    assert log_mel.num_frames(SR) == 101
    assert torch.isfinite(out).all()  # a silent clip must not divide by a zero std


def test_log_mel_int16_matches_scaled_float_and_normalises_per_utterance() -> None:
    wave = sine(440.0)[None] + 0.01 * torch.randn(1, SR, generator=torch.Generator().manual_seed(0))
    wave = wave.clamp(-1, 1)
    as_int = to_int16(wave)
    log_mel = LogMel()
    assert torch.allclose(log_mel(as_int), log_mel(as_int.float() / 32768), atol=1e-4)
    feats = log_mel(wave)
    assert feats.mean().abs() < 1e-4 and abs(float(feats.std()) - 1.0) < 1e-3
    # Per-utterance normalisation: the level of the recording hardly changes the features (only bins near the
    # 1e-6 floor of the log move).
    assert (log_mel(wave * 0.25) - feats).abs().mean() < 5e-3


def test_log_mel_passes_features_through() -> None:
    log_mel = LogMel()
    feats = torch.randn(2, 1, 64, 101)
    assert log_mel(feats) is feats
    with pytest.raises(ValueError):
        log_mel(torch.randn(2, 1, 40, 101))


@pytest.mark.parametrize("freq", [1000.0, 2000.0, 4000.0])
def test_sine_energy_lands_in_its_mel_band(freq: float) -> None:
    # HTK mel scale by hand: 64 triangles with centres evenly spaced in mel between 0 Hz and 8 kHz; the triangles
    # are linear in Hz, so a pure tone peaks in the band whose centre is nearest in Hz.
    def mel(f: float) -> float:
        return 2595.0 * math.log10(1.0 + f / 700.0)

    def hz(m: float) -> float:
        return 700.0 * (10 ** (m / 2595.0) - 1.0)

    top = mel(8000.0)
    centres = [hz(top * (i + 1) / 65) for i in range(64)]
    expected = min(range(64), key=lambda i: abs(centres[i] - freq))
    feats = LogMel(normalize=False)(sine(freq)[None])
    assert int(feats[0, 0].mean(dim=1).argmax()) == expected


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_log_mel_follows_the_batch_to_the_gpu() -> None:
    log_mel = LogMel()
    wave = sine(1000.0)[None].repeat(2, 1)
    out = log_mel(wave.cuda())
    assert out.device.type == "cuda"
    assert torch.allclose(out.cpu(), LogMel()(wave), atol=1e-3)


def test_shift_moves_the_clip_and_fills_with_silence() -> None:
    wave = torch.arange(1, 11, dtype=torch.float32)
    assert torch.equal(shift_waveform(wave, 3), torch.tensor([0, 0, 0, 1, 2, 3, 4, 5, 6, 7], dtype=torch.float32))
    assert torch.equal(shift_waveform(wave, -2), torch.tensor([3, 4, 5, 6, 7, 8, 9, 10, 0, 0], dtype=torch.float32))
    assert torch.equal(shift_waveform(wave, 0), wave) and not shift_waveform(wave, 20).any()


def test_random_shift_stays_within_its_range() -> None:
    wave = torch.zeros(SR, dtype=torch.int16)
    wave[SR // 2] = 16384  # one click in the middle
    augment = WaveformAugment(max_shift_s=0.1, gain_db=(0.0, 0.0), seed=3)
    shifts = set()
    for _ in range(20):
        out = augment(wave)
        assert out.dtype == torch.float32 and out.shape == (SR,)
        (where,) = torch.nonzero(out, as_tuple=True)
        assert len(where) == 1 and float(out[where]) == 0.5
        shifts.add(int(where) - SR // 2)
    assert all(abs(s) <= 1600 for s in shifts) and len(shifts) > 10


def test_gain_scales_by_decibels() -> None:
    wave = sine(300.0)
    assert torch.allclose(apply_gain(wave, 6.0), wave * 10 ** (6 / 20))
    augment = WaveformAugment(max_shift_s=0.0, gain_db=(-6.0, -6.0))
    assert torch.allclose(augment(to_int16(wave)), to_int16(wave).float() / 32768 * 10 ** (-6 / 20))
    spread = WaveformAugment(max_shift_s=0.0, gain_db=(-6.0, 6.0), seed=1)
    ratios = [float(spread(wave).abs().max() / wave.abs().max()) for _ in range(30)]
    decibels = [20 * math.log10(r) for r in ratios]
    assert min(decibels) >= -6.0 - 1e-4 and max(decibels) <= 6.0 + 1e-4 and max(decibels) - min(decibels) > 6


def _snr(clean: torch.Tensor, mixed: torch.Tensor) -> float:
    residual = mixed - clean
    return 10 * math.log10(float(clean.square().mean() / residual.square().mean()))


def test_mix_at_snr_reaches_the_requested_ratio() -> None:
    wave = sine(500.0)
    noise = torch.randn(SR, generator=torch.Generator().manual_seed(0)) * 0.3
    for snr in (0.0, 10.0, 20.0):
        assert abs(_snr(wave, mix_at_snr(wave, noise, snr)) - snr) < 1e-3
    silent = torch.zeros(SR)
    assert torch.equal(mix_at_snr(silent, noise, 10.0), silent)


def test_background_noise_is_mixed_at_a_random_snr_in_range() -> None:
    clean = to_int16(sine(700.0))
    noise = to_int16(torch.randn(3 * SR, generator=torch.Generator().manual_seed(1)).mul(0.1).clamp(-1, 1))
    fixed = WaveformAugment([noise], max_shift_s=0.0, gain_db=(0.0, 0.0), snr_db=(10.0, 10.0), noise_prob=1.0)
    out = fixed(clean)
    assert abs(_snr(clean.float() / 32768, out) - 10.0) < 0.01
    ranged = WaveformAugment([noise], max_shift_s=0.0, gain_db=(0.0, 0.0), snr_db=(5.0, 15.0), noise_prob=1.0,
                             seed=2)
    snrs = [_snr(clean.float() / 32768, ranged(clean)) for _ in range(30)]
    assert min(snrs) >= 5.0 - 0.01 and max(snrs) <= 15.0 + 0.01 and max(snrs) - min(snrs) > 5


def test_short_noise_is_tiled_and_no_noise_means_none() -> None:
    short = torch.tensor([1000, -1000, 500], dtype=torch.int16)
    segment = noise_segment(short, 10, offset=1)
    assert segment.shape == (10,) and segment.dtype == torch.float32
    clean = to_int16(sine(700.0))
    quiet = WaveformAugment([], max_shift_s=0.0, gain_db=(0.0, 0.0), noise_prob=1.0)
    assert torch.equal(quiet(clean), clean.float() / 32768)


def test_waveform_augment_is_seeded_and_survives_pickling() -> None:
    clean = to_int16(sine(700.0))
    noise = to_int16(torch.randn(SR, generator=torch.Generator().manual_seed(1)).mul(0.1))
    first = WaveformAugment([noise], seed=5)
    outs = [first(clean) for _ in range(3)]
    copy = pickle.loads(pickle.dumps(WaveformAugment([noise], seed=5)))
    assert all(torch.equal(a, copy(clean)) for a in outs)
    assert not torch.equal(outs[0], outs[1])


def test_specaugment_masks_exactly_the_drawn_bands() -> None:
    waves = torch.stack([sine(440.0 * (i + 1)) for i in range(4)])
    augment = SpecAugment(freq_masks=2, max_freq_width=8, time_masks=2, max_time_width=10, seed=0)
    clean = augment.log_mel(waves)
    freq, time = augment.masks(4, 64, 101)
    masked = SpecAugment.apply_masks(clean, freq, time)
    region = freq[:, None, :, None] | time[:, None, None, :]
    fill = clean.mean(dim=(1, 2, 3), keepdim=True).expand_as(clean)
    assert torch.equal(masked[region], fill[region])
    assert torch.equal(masked[~region], clean[~region])
    assert region.any() and (freq.sum(1) <= 16).all() and (time.sum(1) <= 20).all()
    # The batch transform: waveforms in, masked features out, labels untouched, features pass the model's LogMel.
    y = torch.arange(4)
    feats, labels = augment(to_int16(waves), y)
    assert feats.shape == (4, 1, 64, 101) and labels is y
    assert augment.log_mel(feats) is feats
    assert (feats.abs() < 1e-5).float().mean() > 0.01  # normalised features: the clip mean is 0


def test_mixup_soft_labels_sum_to_one_and_match_the_mix() -> None:
    mix = MixUp(num_classes=5, alpha=0.4, seed=0)
    x = torch.randn(6, SR)
    y = torch.tensor([0, 1, 2, 3, 4, 0])
    mixed, soft = mix(x, y)
    lam = mix.last_lam
    assert soft.shape == (6, 5) and torch.allclose(soft.sum(1), torch.ones(6))
    assert torch.allclose(mixed, lam[:, None] * x + (1 - lam[:, None]) * x.roll(1, 0), atol=1e-6)
    assert torch.allclose(soft[torch.arange(6), y] + soft[torch.arange(6), y.roll(1)] * (y != y.roll(1)), torch.ones(6))
    assert torch.allclose(soft[1, 1], lam[1]) and torch.allclose(soft[1, 0], 1 - lam[1])
    loss = F.cross_entropy(torch.randn(6, 5), soft)  # what ClassificationModule does with them
    assert torch.isfinite(loss)
    int_mixed, _ = mix(to_int16(x.clamp(-1, 1) * 0.5), y)
    assert int_mixed.dtype == torch.float32


@pytest.mark.parametrize("name", AUDIO_POLICIES)
def test_every_policy_builds(name: str) -> None:
    noise = [to_int16(torch.randn(SR, generator=torch.Generator().manual_seed(0)).mul(0.1))]
    policy = build_audio_policy(name, noise, seed=0, num_classes=3)
    assert isinstance(policy, AugmentationPolicy) and policy.name == name
    clip = to_int16(sine(440.0))
    x = torch.stack([clip, clip])
    if name == "none":
        assert policy.sample_transform is None and policy.batch_transform is None
        return
    out = policy.sample_transform(clip)
    assert out.shape == clip.shape and out.dtype == torch.float32
    assert isinstance(policy.describe(), str)
    if policy.batch_transform is not None:
        xb, yb = policy.batch_transform(torch.stack([out, out]), torch.tensor([0, 2]))
        assert xb.shape[0] == 2 and len(yb) == 2
        assert LogMel()(xb).shape == LogMel()(x).shape


def test_unknown_policy_and_mixup_without_classes() -> None:
    with pytest.raises(FewlabelError) as error:
        build_audio_policy("reverb")
    message = str(error.value)
    assert "\n" not in message and all(name in message for name in AUDIO_POLICIES)
    with pytest.raises(FewlabelError, match="num_classes"):
        build_audio_policy("mixup")


@pytest.mark.filterwarnings("ignore:You are trying to `self.log")
@pytest.mark.parametrize("name", AUDIO_POLICIES)
def test_policies_fit_the_classification_module_unchanged(name: str) -> None:
    # Train batches go through the sample transform (loader) and the batch transform (training_step); validation
    # batches reach the model as int16. A classifier that starts with LogMel takes all of them.
    from fewlabel.engine.classification import ClassificationModule, OptimConfig

    torch.manual_seed(0)
    front = LogMel()
    model = torch.nn.Sequential(front, torch.nn.Conv2d(1, 4, 3), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
                                torch.nn.Linear(4, 3))
    clips = to_int16(torch.randn(4, SR, generator=torch.Generator().manual_seed(0)).mul(0.1))
    labels = torch.tensor([0, 1, 2, 0])
    policy = build_audio_policy(name, seed=0, num_classes=3, log_mel=front)
    batch = torch.stack([policy.sample_transform(c) for c in clips]) if policy.sample_transform else clips
    module = ClassificationModule(model, 3, OptimConfig(), policy.batch_transform)
    loss = module.training_step((batch, labels), 0)
    loss.backward()
    assert torch.isfinite(loss) and model[-1].weight.grad is not None
    assert model(clips).shape == (4, 3)
