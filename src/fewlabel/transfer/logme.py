"""LogME (You et al., ICML 2021): transferability of features to labels without training a model.

For each class (one-vs-rest target), it maximises the evidence of Bayesian linear regression from the
features to the target over the prior precision ``alpha`` and noise precision ``beta`` by fixed-point
iteration, and reports the average log evidence per sample. Higher means the features suit the labels better.
"""

from __future__ import annotations

import numpy as np


def _evidence(singular_sq: np.ndarray, projected_sq: np.ndarray, residual: float, n: int, d: int,
              iterations: int = 100, tol: float = 1e-5) -> float:
    """Maximised log evidence for one target, given the SVD-projected target energies."""
    alpha, beta = 1.0, 1.0
    for _ in range(iterations):
        gamma = float((beta * singular_sq / (alpha + beta * singular_sq)).sum())
        m_sq = float((beta**2 * singular_sq * projected_sq / (alpha + beta * singular_sq) ** 2).sum())
        fit = float((alpha**2 * projected_sq / (alpha + beta * singular_sq) ** 2).sum()) + residual
        new_alpha = gamma / max(m_sq, 1e-12)
        new_beta = (n - gamma) / max(fit, 1e-12)
        done = abs(new_alpha - alpha) / alpha < tol and abs(new_beta - beta) / beta < tol
        alpha, beta = new_alpha, new_beta
        if done:
            break
    m_sq = float((beta**2 * singular_sq * projected_sq / (alpha + beta * singular_sq) ** 2).sum())
    fit = float((alpha**2 * projected_sq / (alpha + beta * singular_sq) ** 2).sum()) + residual
    full_sq = np.concatenate([singular_sq, np.zeros(max(0, d - len(singular_sq)))])
    evidence = (d / 2 * np.log(alpha) + n / 2 * np.log(beta) - n / 2 * np.log(2 * np.pi)
                - beta / 2 * fit - alpha / 2 * m_sq - 0.5 * np.log(alpha + beta * full_sq).sum())
    return float(evidence / n)


def logme_score(features: np.ndarray, labels: np.ndarray) -> float:
    """Average over classes of the per-sample maximum log evidence (classification LogME)."""
    f = np.asarray(features, dtype=np.float64)
    n, d = f.shape
    u, s, _ = np.linalg.svd(f, full_matrices=False)
    singular_sq = s**2
    scores = []
    for cls in np.unique(labels):
        y = (labels == cls).astype(np.float64)
        projected = u.T @ y
        residual = float(y @ y - projected @ projected)
        scores.append(_evidence(singular_sq, projected**2, max(residual, 0.0), n, d))
    return float(np.mean(scores))
