"""Datasets of any modality, a registry of named ones, and nested label-fraction splits."""

from fewlabel.data.dataset import UNLABELLED, Dataset
from fewlabel.data.registry import load_dataset, register_dataset, registered_datasets
from fewlabel.data.splits import LabelRequest, LabelSplit, make_split

__all__ = [
    "UNLABELLED",
    "Dataset",
    "LabelRequest",
    "LabelSplit",
    "load_dataset",
    "make_split",
    "register_dataset",
    "registered_datasets",
]
