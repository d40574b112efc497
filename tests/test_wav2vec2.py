from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from fewlabel.errors import FewlabelError
from fewlabel.methods.wav2vec2 import (
    OVERRIDE_KEYS,
    PRESETS,
    Wav2Vec2Pretraining,
    build_wav2vec2,
    collapse_warnings,
    gumbel_temperature,
    normalize_waveforms,
)

SR = 16000


@pytest.fixture(autouse=True)
def _one_thread():
    """One intra-op thread: on a shared 2-core machine two spinning OpenMP threads slow these steps down 10x
    whenever another process holds a core (the results are the same)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def method() -> Wav2Vec2Pretraining:
    torch.manual_seed(0)
    return Wav2Vec2Pretraining("tiny", seed=0)


def corpus(n: int = 32, seconds: float = 1.0, seed: int = 0) -> torch.Tensor:
    """Sines of different pitches, half of them gated into bursts, plus a little noise: structure to predict."""
    generator = torch.Generator().manual_seed(seed)
    t = torch.arange(round(seconds * SR)) / SR
    clips = []
    for i in range(n):
        wave = 0.5 * torch.sin(2 * math.pi * (200 + 150 * i) * t)
        if i % 2:
            wave = wave * ((t * 8).floor() % 2)
        clips.append(wave + 0.01 * torch.randn(len(t), generator=generator))
    return torch.stack(clips)


def test_one_second_gives_49_frames(method: Wav2Vec2Pretraining) -> None:
    assert method.num_frames(SR) == 49
    stride = math.prod(PRESETS["base"]["conv_stride"])
    assert stride == math.prod(PRESETS["tiny"]["conv_stride"]) == 320


def test_masks_and_negatives(method: Wav2Vec2Pretraining) -> None:
    outer = np.random.get_state()
    mask, negatives = method.draw_masks(64, 49)
    assert np.array_equal(np.random.get_state()[1], outer[1])  # numpy's global RNG is left as it was
    assert mask.shape == (64, 49) and mask.dtype == bool
    assert negatives.shape == (64, 49, method.config.num_negatives)
    share = mask.mean()
    assert 0.4 < share <= method.mask_prob + 0.01  # spans overlap, so the requested share is an upper bound
    assert (mask.sum(axis=1) >= 2 * method.mask_length).all()  # at least min_masks spans
    for row in range(64):
        masked = np.flatnonzero(mask[row])
        for frame in masked:
            drawn = negatives[row, frame]
            assert (drawn // 49 == row).all()  # from the same clip
            assert np.isin(drawn % 49, masked).all()  # only masked frames serve as negatives
            assert (drawn != row * 49 + frame).all()  # never the positive itself
    again = Wav2Vec2Pretraining(method.model, seed=0).draw_masks(64, 49)
    assert np.array_equal(again[0], mask) and np.array_equal(again[1], negatives)


def test_masking_that_cannot_fit_is_refused(method: Wav2Vec2Pretraining) -> None:
    with pytest.raises(FewlabelError, match="mask_length"):
        method.draw_masks(2, 3)
    with pytest.raises(FewlabelError, match="2 masked frames"):
        Wav2Vec2Pretraining(method.model, mask_length=1, min_masks=1)


def test_loss_falls_on_a_tiny_corpus() -> None:
    torch.manual_seed(0)
    method = Wav2Vec2Pretraining("tiny", seed=0)
    clips = corpus()
    optimizer = torch.optim.AdamW(method.optimizer_groups(), lr=1e-3, weight_decay=0.01)
    history = []
    steps, batch = 24, 8
    for step in range(steps):
        start = (step * batch) % len(clips)
        loss, logs = method.training_loss(clips[start:start + batch])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        method.on_train_step_end(step, steps)
        history.append({key: float(value) for key, value in logs.items()})
    losses = [entry["loss"] for entry in history]
    first, last = np.mean(losses[:5]), np.mean(losses[-5:])
    assert last < 0.9 * first, losses
    entry = history[-1]
    assert set(entry) == {"loss", "contrastive_loss", "diversity_loss", "codevector_perplexity",
                          "gumbel_temperature", "mask_share"}
    groups, entries = method.config.num_codevector_groups, method.config.num_codevectors_per_group
    assert groups <= entry["codevector_perplexity"] <= groups * entries
    assert 0.0 <= entry["diversity_loss"] <= 1.0 and 0.3 < entry["mask_share"] < 0.7
    assert math.isclose(entry["loss"], entry["contrastive_loss"] + 0.1 * entry["diversity_loss"], rel_tol=1e-5)
    assert method.collapse_warnings(history) == []


def test_int16_and_float_batches_give_the_same_inputs() -> None:
    clips = corpus(4).clamp(-1, 1)
    as_int = (clips * 32767).round().to(torch.int16)
    assert torch.allclose(normalize_waveforms(as_int), normalize_waveforms(as_int.float() / 32768), atol=1e-5)
    normalised = normalize_waveforms(clips)
    assert torch.allclose(normalised.mean(1), torch.zeros(4), atol=1e-5)
    assert torch.allclose(normalised.std(1, unbiased=False), torch.ones(4), atol=1e-4)
    assert torch.allclose(normalize_waveforms(normalised), normalised, atol=1e-5)


def test_gumbel_temperature_anneals(method: Wav2Vec2Pretraining) -> None:
    quick = Wav2Vec2Pretraining(method.model, gumbel_temperature_decay=0.9)
    assert method.model.quantizer.temperature == 2.0
    temperatures = []
    for step in range(20):
        quick.on_train_step_end(step, 20)
        temperatures.append(quick.gumbel_temperature)
        assert method.model.quantizer.temperature == quick.gumbel_temperature
    assert temperatures[0] == pytest.approx(1.8)
    assert all(a >= b for a, b in itertools.pairwise(temperatures))
    assert temperatures[-1] == 0.5
    assert gumbel_temperature(1000) == pytest.approx(2.0 * 0.999995**1000)
    to_the_floor = Wav2Vec2Pretraining(method.model, gumbel_temperature_decay=None)
    to_the_floor.on_train_step_end(49, 100)
    assert to_the_floor.gumbel_temperature == pytest.approx(1.0)  # halfway, geometrically, from 2.0 to 0.5
    to_the_floor.on_train_step_end(99, 100)
    assert to_the_floor.gumbel_temperature == pytest.approx(0.5)


def test_export_round_trip(method: Wav2Vec2Pretraining, tmp_path) -> None:
    from transformers import AutoFeatureExtractor, Wav2Vec2FeatureExtractor, Wav2Vec2Model

    folder = method.export(tmp_path / "export")
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "model.safetensors", "preprocessor_config.json"]
    assert method.model.config.architectures != ["Wav2Vec2Model"]  # the pretraining model's config is left alone
    loaded = Wav2Vec2Model.from_pretrained(folder).eval()
    extractor = AutoFeatureExtractor.from_pretrained(folder)
    assert isinstance(extractor, Wav2Vec2FeatureExtractor)
    assert extractor.do_normalize and extractor.sampling_rate == SR and not extractor.return_attention_mask
    clips = corpus(3, seconds=0.5)
    inputs = extractor([c.numpy() for c in clips], sampling_rate=SR, return_tensors="pt").input_values
    assert torch.allclose(inputs, normalize_waveforms(clips), atol=1e-4)
    body = method.pretrained_backbone()
    body.eval()
    with torch.no_grad():
        expected = body(inputs).last_hidden_state
        got = loaded(inputs).last_hidden_state
    body.train()
    assert got.shape == (3, method.num_frames(SR // 2), method.embed_dim)
    assert torch.allclose(got, expected, atol=1e-5)


def test_unknown_settings_are_refused() -> None:
    with pytest.raises(FewlabelError) as error:
        build_wav2vec2("tiny", hidden=64)
    message = str(error.value)
    assert "\n" not in message and "hidden" in message and all(key in message for key in OVERRIDE_KEYS)
    with pytest.raises(FewlabelError, match="tiny, base"):
        build_wav2vec2("huge")
    with pytest.raises(FewlabelError, match="attention heads"):
        build_wav2vec2("tiny", hidden_size=100, num_attention_heads=3, num_conv_pos_embedding_groups=1)
    with pytest.raises(FewlabelError, match="mask_time_prob"):
        build_wav2vec2("tiny", mask_time_prob=0.0)  # the body would have no mask embedding to pretrain with
    model = build_wav2vec2("tiny", num_hidden_layers=1, num_negatives=5)
    assert model.config.num_hidden_layers == 1 and model.config.num_negatives == 5


def test_collapse_warnings() -> None:
    healthy = [{"loss": 3.0 - 0.1 * i, "contrastive_loss": 2.9 - 0.1 * i, "codevector_perplexity": 60.0}
               for i in range(12)]
    assert collapse_warnings(healthy) == []
    collapsed = [{**entry, "codevector_perplexity": 2.3} for entry in healthy]
    assert any("codebook collapse" in w for w in collapse_warnings(collapsed, num_groups=2))
    flat = [{**entry, "contrastive_loss": 2.0} for entry in healthy]
    assert any("not falling" in w for w in collapse_warnings(flat))
    broken = [*healthy, {"loss": float("nan"), "contrastive_loss": float("nan"), "codevector_perplexity": 60.0}]
    assert any("NaN" in w for w in collapse_warnings(broken))
    assert collapse_warnings(healthy[:4]) == []  # too short to judge
