"""Probes of frozen features: weighted kNN (the SSL standard), logistic regression, and representation health."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold, StratifiedShuffleSplit, cross_val_score
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_limits


@torch.no_grad()
def knn_predict(
    train_features: torch.Tensor,
    train_labels: torch.Tensor,
    query_features: torch.Tensor,
    num_classes: int,
    k: int = 200,
    temperature: float = 0.1,
    chunk: int = 1024,
    leave_one_out: bool = False,
) -> torch.Tensor:
    """Weighted kNN on cosine similarity (Wu et al. 2018): each of the k nearest neighbours votes for its
    class with weight ``exp(similarity / temperature)``. Returns predicted labels for the queries.

    Queries are compared with the training set ``chunk`` rows at a time, so memory stays ``chunk x N`` and
    never ``N x N``. ``leave_one_out``: the queries are the training set itself and nobody votes for itself.
    """
    train = F.normalize(train_features.float(), dim=1)
    if leave_one_out and len(query_features) != len(train):
        raise ValueError("leave_one_out needs the training features as the queries")
    k = min(k, len(train) - int(leave_one_out))
    predictions = []
    for start in range(0, len(query_features), chunk):
        query = F.normalize(query_features[start : start + chunk].float(), dim=1)
        similarity = query @ train.T
        if leave_one_out:
            rows = torch.arange(len(query))
            similarity[rows, rows + start] = -float("inf")
        top_sim, top_idx = similarity.topk(k, dim=1)
        weights = (top_sim / temperature).exp()
        votes = torch.zeros(len(query), num_classes)
        votes.scatter_add_(1, train_labels[top_idx], weights)
        predictions.append(votes.argmax(dim=1))
    return torch.cat(predictions) if predictions else torch.zeros(0, dtype=torch.long)


# Inverse regularisation strengths the linear probe chooses from (by cross-validation on the labelled set).
PROBE_C_GRID = (0.01, 0.1, 1.0, 10.0)


# A feature whose spread on the labelled set is below this share of its magnitude (at least 1) is float32 noise
# around a constant: its standardised values are noise scaled up to unit variance.
NOISE_SPREAD = 1e-5


class NoiseSafeScaler(StandardScaler):
    """``StandardScaler`` that treats a feature as constant (scale 1, as scikit-learn does for an exactly constant
    one) when its spread is only float noise.

    Why: with 91 sentences, one MiniLM dimension had a standard deviation of 1e-32. Divided by it, the probe's
    weight on that feature became ``inf`` once folded into a torch head; the probe still predicted correctly on
    the frozen features (the dimension never moved), but the first fine-tuning step moved it and the logits of
    LP-FT jumped from a loss of 0.13 to 239. With scale 1 the feature standardises to ~0 and gets no weight."""

    def fit(self, X, y=None, sample_weight=None):  # scikit-learn's signature
        super().fit(X, y, sample_weight)
        if self.scale_ is not None:
            noise = self.scale_ < NOISE_SPREAD * np.maximum(np.abs(self.mean_), 1.0)
            self.scale_ = np.where(noise, 1.0, self.scale_)
        return self


def _probe_model(c: float, seed: int) -> Pipeline:
    return make_pipeline(NoiseSafeScaler(), LogisticRegression(C=c, max_iter=2000, random_state=seed))


@threadpool_limits.wrap(limits=1)
def choose_probe_c(features: np.ndarray, labels: np.ndarray, seed: int = 0,
                   grid: tuple[float, ...] = PROBE_C_GRID) -> float:
    """The ``C`` of ``grid`` with the best cross-validated accuracy on the labelled training set alone.

    Why: the right amount of regularisation differs by orders of magnitude between 1% and 100% of the
    labels, and SSL papers sweep it; choosing it on the test set would flatter the probe. Stratified
    k-fold (k = min(5, smallest class)) up to 5,000 examples, one held-out fifth above. Returns 1.0 when
    some class has a single example, so no fold can hold it out.

    The grid is scanned from strong to weak regularisation and the scan stops at the first C that scores
    below the best so far: held-out accuracy over C rises then falls, and the weakly regularised fits are
    the slow ones (on 54,000 x 1,280 features a C = 10 fit runs to its iteration cap for minutes).
    """
    _, counts = np.unique(labels, return_counts=True)
    folds = int(min(5, counts.min()))
    if len(counts) < 2 or folds < 2:
        return 1.0
    if len(labels) > 5000:
        splitter: StratifiedKFold | StratifiedShuffleSplit = StratifiedShuffleSplit(
            n_splits=1, test_size=0.2, random_state=seed)
    else:
        splitter = StratifiedKFold(folds, shuffle=True, random_state=seed)
    best_c, best_score = min(grid), -np.inf
    for c in sorted(grid):
        score = float(np.nan_to_num(cross_val_score(_probe_model(c, seed), features, labels, cv=splitter).mean(),
                                    nan=-np.inf))  # a failed fit (NaN score) never wins
        if score < best_score:
            break
        if score > best_score:  # ties keep the stronger regularisation
            best_c, best_score = c, score
    return float(best_c)


@threadpool_limits.wrap(limits=1)
def fit_linear_probe(features: np.ndarray, labels: np.ndarray, seed: int = 0, c: float | None = None) -> Pipeline:
    """Multinomial logistic regression on standardised frozen features; ``c=None`` chooses C by
    cross-validation (``choose_probe_c``). The fitted pipeline's ``[-1].C`` is the C used.

    Probe fits run with one BLAS/OpenMP thread: beside PyTorch's thread pool, multi-threaded BLAS made them
    2.5-13x slower on 2 cores (EfficientNet-Lite0 features: digits 5% 11.9 -> 0.9 s, Fashion-MNIST 10%
    11.5 -> 4.5 s, 100% 108 -> 73 s), with the same C chosen.
    """
    if c is None:
        c = choose_probe_c(features, labels, seed)
    return _probe_model(c, seed).fit(features, labels)


# Logit given to classes the probe never saw (absent from a tiny labelled set): never predicted.
UNSEEN_CLASS_LOGIT = -1e4


def probe_as_linear(probe: Pipeline, num_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(weight, bias)`` of one ``nn.Linear`` on raw features that gives ``probe``'s decisions.

    Why: a fitted probe should ship as an ordinary torch head on the backbone, not as a pickled scikit-learn
    object. The scaler folds into the weights (``W / s``, ``b - (W / s) . m``). Binary logistic regression
    keeps one logit ``z`` for the second class; ``[-z/2, z/2]`` has the same softmax (``sigmoid(z)``).
    """
    scaler, logreg = probe[0], probe[-1]
    coef = logreg.coef_ / scaler.scale_
    intercept = logreg.intercept_ - coef @ scaler.mean_
    if coef.shape[0] == 1:
        coef, intercept = np.vstack([-coef / 2, coef / 2]), np.concatenate([-intercept / 2, intercept / 2])
    weight = np.zeros((num_classes, coef.shape[1]))
    bias = np.full(num_classes, UNSEEN_CLASS_LOGIT)
    classes = logreg.classes_.astype(np.int64)
    weight[classes], bias[classes] = coef, intercept
    return torch.as_tensor(weight, dtype=torch.float32), torch.as_tensor(bias, dtype=torch.float32)


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
