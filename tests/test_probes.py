"""Frozen-feature probes: weighted kNN, representation health and the linear probe's choice of C."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from fewlabel.evaluate import probes
from fewlabel.evaluate.probes import (
    PROBE_C_GRID,
    choose_probe_c,
    collapse_warning,
    fit_linear_probe,
    knn_predict,
    probe_as_linear,
    representation_health,
)


def test_weighted_knn_votes_by_hand() -> None:
    # Query (1, 0); memory at angles 0, 60 and 90 degrees -> cosine similarities 1, 0.5, 0.
    memory = torch.tensor([[2.0, 0.0], [0.5, math.sqrt(3) / 2], [0.0, 3.0]])
    query = torch.tensor([[1.0, 0.0]])
    # k=3, T=1: votes class0 = e^1 = 2.72 (first), class1 = e^0.5 + e^0 = 2.65 -> class 0.
    assert knn_predict(memory, torch.tensor([0, 1, 1]), query, num_classes=2, k=3, temperature=1.0).item() == 0
    # T=10 flattens the weights: e^0.1 = 1.105 against e^0.05 + e^0 = 2.051 -> class 1.
    assert knn_predict(memory, torch.tensor([0, 1, 1]), query, num_classes=2, k=3, temperature=10.0).item() == 1
    # k=1 keeps only the nearest neighbour; k larger than the memory is clipped to it.
    assert knn_predict(memory, torch.tensor([1, 0, 0]), query, num_classes=2, k=1).item() == 1
    assert knn_predict(memory, torch.tensor([0, 1, 1]), query, num_classes=2, k=50, temperature=10.0).item() == 1


def test_representation_health_of_spread_and_collapsed_embeddings() -> None:
    # d orthonormal vectors: each dimension has std 1/sqrt(d), times sqrt(d) = 1; centring leaves d-1
    # equal singular values, so the effective rank is d-1.
    spread = representation_health(torch.eye(8) * 3.0)
    assert math.isclose(spread["embedding_std"], 1.0, rel_tol=1e-5)
    assert math.isclose(spread["effective_rank"], 7.0, rel_tol=1e-4)
    assert collapse_warning(spread, embed_dim=8) is None
    collapsed = representation_health(torch.ones(16, 8))
    assert collapsed["embedding_std"] == 0.0 and math.isclose(collapsed["effective_rank"], 1.0)
    assert "collapsing" in collapse_warning(collapsed, embed_dim=8)


def _needs_weak_regularisation(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The label is the sign of x2 - x1, two features that differ by 2% of their spread, so it takes large
    weights; x3 is weakly correlated with the label at small weights, which strong L2 prefers."""
    rng = np.random.default_rng(seed)
    z, noise = rng.normal(size=n), rng.normal(size=n)
    labels = (noise > 0).astype(int)
    features = np.stack([z, z + 0.02 * noise, 0.5 * labels + rng.normal(size=n)], axis=1)
    return features, labels


def test_choose_probe_c_picks_weak_regularisation_when_the_signal_needs_large_weights() -> None:
    features, labels = _needs_weak_regularisation(400, seed=0)
    test_features, test_labels = _needs_weak_regularisation(2000, seed=1)
    chosen = choose_probe_c(features, labels)
    assert chosen >= 1.0
    strong = fit_linear_probe(features, labels, c=PROBE_C_GRID[0])
    tuned = fit_linear_probe(features, labels)
    assert chosen == tuned[-1].C
    tuned_accuracy = (tuned.predict(test_features) == test_labels).mean()
    assert tuned_accuracy > (strong.predict(test_features) == test_labels).mean() + 0.1


def test_choose_probe_c_ties_and_tiny_classes() -> None:
    # Perfectly separated classes: every C scores 100%, and the tie goes to the strongest regularisation.
    rng = np.random.default_rng(0)
    labels = np.repeat([0, 1], 30)
    features = np.stack([labels * 10.0 + rng.normal(size=60), rng.normal(size=60)], axis=1)
    assert choose_probe_c(features, labels) == PROBE_C_GRID[0]
    # A class with one example cannot be held out: fall back to C = 1.
    assert choose_probe_c(features[:31], labels[:31]) == 1.0


def test_choose_probe_c_stops_when_held_out_accuracy_falls(monkeypatch: pytest.MonkeyPatch) -> None:
    # Scripted fold scores for C = 0.01, 0.1, 1, 10. A tie (0.1 and 1) keeps the stronger C and scans on;
    # the first drop ends the scan, so the slow weakly regularised fits after it never run.
    scripted = {0.01: 0.80, 0.1: 0.85, 1.0: 0.85, 10.0: 0.70}
    evaluated: list[float] = []

    def fake_scores(model, features, labels, cv):
        c = model[-1].C
        evaluated.append(c)
        return np.array([scripted[c]])

    monkeypatch.setattr(probes, "cross_val_score", fake_scores)
    features, labels = np.zeros((20, 2)), np.repeat([0, 1], 10)
    assert choose_probe_c(features, labels) == 0.1
    assert evaluated == [0.01, 0.1, 1.0, 10.0]
    evaluated.clear()
    scripted[1.0] = 0.60
    assert choose_probe_c(features, labels) == 0.1 and evaluated == [0.01, 0.1, 1.0]
    # Fits that all fail (NaN scores) fall back to the strongest regularisation instead of crashing.
    scripted.update(dict.fromkeys(scripted, float("nan")))
    assert choose_probe_c(features, labels) == min(PROBE_C_GRID)


def _logits(features: np.ndarray, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    return torch.as_tensor(features, dtype=torch.float32) @ weight.T + bias


def test_probe_as_linear_reproduces_the_scaled_logistic_regression() -> None:
    rng = np.random.default_rng(0)
    # Three classes on features with very different scales and offsets: the scaler matters.
    labels = np.repeat([0, 1, 2], 30)
    features = rng.normal(size=(90, 4)) * [1.0, 10.0, 0.1, 3.0] + [5.0, -20.0, 0.0, 1.0]
    features[:, 0] += 2.0 * labels
    probe = fit_linear_probe(features, labels, c=1.0)
    weight, bias = probe_as_linear(probe, num_classes=3)
    logits = _logits(features, weight, bias)
    probabilities = torch.softmax(logits.double(), dim=1).numpy()
    np.testing.assert_allclose(probabilities, probe.predict_proba(features), atol=1e-4)
    assert (logits.argmax(dim=1).numpy() == probe.predict(features)).all()


def test_probe_as_linear_binary_and_unseen_classes() -> None:
    # Binary: scikit-learn keeps one logit z; the head's two logits -z/2, z/2 give the same probabilities.
    # Labels 1 and 3 of 4 classes: classes 0 and 2 never occur, so they must never be predicted.
    rng = np.random.default_rng(1)
    labels = np.repeat([1, 3], 20)
    features = rng.normal(size=(40, 3)) + (labels == 3)[:, None] * 1.5
    probe = fit_linear_probe(features, labels, c=1.0)
    weight, bias = probe_as_linear(probe, num_classes=4)
    assert weight.shape == (4, 3) and bias.shape == (4,)
    logits = _logits(features, weight, bias)
    assert torch.equal(weight[[0, 2]], torch.zeros(2, 3))
    assert set(logits.argmax(dim=1).tolist()) <= {1, 3}
    seen = torch.softmax(logits[:, [1, 3]].double(), dim=1).numpy()
    np.testing.assert_allclose(seen, probe.predict_proba(features), atol=1e-4)
    np.testing.assert_allclose((logits[:, 3] - logits[:, 1]).numpy(), probe.decision_function(features), atol=1e-4)


def test_probe_folded_into_a_head_ignores_a_feature_that_is_float_noise() -> None:
    # Feature 1 is zero up to float noise (std ~1e-30), as one MiniLM dimension was on 91 sentences. A plain
    # StandardScaler (its constant-feature test is relative to the mean, here ~0) divides by that std: the folded
    # weight becomes inf and any later change of the feature (fine-tuning) explodes the logits. The probe must
    # treat it as constant: a finite head, and the same decisions whatever value the feature takes.
    rng = np.random.default_rng(2)
    labels = np.repeat([0, 1], 20)
    informative = rng.normal(size=40) + 2.0 * labels
    features = np.stack([informative, rng.normal(size=40) * 1e-30], axis=1)
    probe = fit_linear_probe(features, labels, c=1.0)
    assert probe[0].scale_[1] == 1.0
    weight, bias = probe_as_linear(probe, num_classes=2)
    assert torch.isfinite(weight).all() and weight[:, 1].abs().max() < 1e-6
    moved = features.copy()
    moved[:, 1] += 0.5  # the constant feature moves, as in the first step of fine-tuning
    np.testing.assert_allclose(_logits(moved, weight, bias), _logits(features, weight, bias), atol=1e-5)
    np.testing.assert_array_equal(_logits(features, weight, bias).argmax(1).numpy(), probe.predict(features))
