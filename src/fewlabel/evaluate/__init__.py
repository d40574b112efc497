"""Evaluation of any backbone: frozen features, kNN and linear probes, representation health."""

from fewlabel.evaluate.features import extract_features
from fewlabel.evaluate.probes import accuracy, knn_predict, linear_probe, representation_health

__all__ = ["accuracy", "extract_features", "knn_predict", "linear_probe", "representation_health"]
