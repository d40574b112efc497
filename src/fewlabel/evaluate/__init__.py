"""Evaluation of any backbone: frozen features, kNN and linear probes, representation health."""

from fewlabel.evaluate.features import extract_features
from fewlabel.evaluate.probes import (
    accuracy,
    choose_probe_c,
    fit_linear_probe,
    knn_predict,
    probe_as_linear,
    representation_health,
)

__all__ = [
    "accuracy",
    "choose_probe_c",
    "extract_features",
    "fit_linear_probe",
    "knn_predict",
    "probe_as_linear",
    "representation_health",
]
