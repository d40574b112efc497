"""Probes of frozen features: weighted kNN (the SSL standard), logistic regression, and representation health."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler


@torch.no_grad()
def knn_predict(
    train_features: torch.Tensor,
    train_labels: torch.Tensor,
    query_features: torch.Tensor,
    num_classes: int,
    k: int = 200,
    temperature: float = 0.1,
    chunk: int = 1024,
) -> torch.Tensor:
    """Weighted kNN on cosine similarity (Wu et al. 2018): each of the k nearest neighbours votes for its
    class with weight ``exp(similarity / temperature)``. Returns predicted labels for the queries."""
    train = F.normalize(train_features.float(), dim=1)
    k = min(k, len(train))
    predictions = []
    for start in range(0, len(query_features), chunk):
        query = F.normalize(query_features[start : start + chunk].float(), dim=1)
        similarity = query @ train.T
        top_sim, top_idx = similarity.topk(k, dim=1)
        weights = (top_sim / temperature).exp()
        votes = torch.zeros(len(query), num_classes)
        votes.scatter_add_(1, train_labels[top_idx], weights)
        predictions.append(votes.argmax(dim=1))
    return torch.cat(predictions) if predictions else torch.zeros(0, dtype=torch.long)


def linear_probe(
    train_features: np.ndarray, train_labels: np.ndarray, test_features: np.ndarray, seed: int = 0, c: float = 1.0
) -> np.ndarray:
    """Multinomial logistic regression on standardised frozen features; returns test predictions."""
    scaler = StandardScaler().fit(train_features)
    classifier = LogisticRegression(C=c, max_iter=2000, random_state=seed)
    classifier.fit(scaler.transform(train_features), train_labels)
    return classifier.predict(scaler.transform(test_features))


@torch.no_grad()
def representation_health(features: torch.Tensor) -> dict[str, float]:
    """Collapse indicators: per-dimension std of l2-normalised embeddings times sqrt(dim) (about 1 when spread
    out, 0 when collapsed) and the effective rank (exp of the entropy of the normalised singular values)."""
    normalised = F.normalize(features.float(), dim=1)
    std = float(normalised.std(dim=0).mean() * normalised.shape[1] ** 0.5) if len(features) > 1 else 0.0
    centred = normalised - normalised.mean(dim=0, keepdim=True)
    singular = torch.linalg.svdvals(centred)
    p = singular / singular.sum().clamp_min(1e-12)
    entropy = -(p * (p + 1e-12).log()).sum()
    return {"embedding_std": std, "effective_rank": float(entropy.exp())}


def collapse_warning(health: dict[str, float], embed_dim: int) -> str | None:
    """A human sentence when the embedding looks collapsed, else None."""
    if health["embedding_std"] < 0.1 or health["effective_rank"] < max(2.0, 0.01 * embed_dim):
        return (f"representation may be collapsing: embedding std {health['embedding_std']:.3f} (healthy ~1), "
                f"effective rank {health['effective_rank']:.1f} of {embed_dim}")
    return None


def accuracy(predictions: np.ndarray | torch.Tensor, labels: np.ndarray | torch.Tensor) -> float:
    predictions = np.asarray(predictions)
    labels = np.asarray(labels)
    return float((predictions == labels).mean()) if len(labels) else float("nan")
