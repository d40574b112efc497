"""Modalities: what differs between images, text (and later audio and image-text pairs) lives here, one module
per modality, each registered by name. The approaches ask ``modality_of(dataset)``; they never test a name.

How to add a modality (e.g. audio):

1. readers in ``fewlabel.data`` that return a :class:`~fewlabel.data.dataset.Dataset` with ``modality="audio"``;
2. ``fewlabel/modalities/audio.py``: a :class:`~fewlabel.modalities.base.Modality` subclass that fills in what
   its data supports (working data, policies, from-scratch model, pretrained loader, feature extractor,
   pretext tasks, compare variants, predict I/O; see :mod:`fewlabel.modalities.base`);
3. one ``register_modality(AudioModality())`` line below, and its pretext method names in ``fewlabel.names``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from fewlabel.errors import FewlabelError
from fewlabel.modalities.audio import AudioModality
from fewlabel.modalities.base import ClassifierSetup, LoadedBackbone, Modality
from fewlabel.modalities.image import ImageModality
from fewlabel.modalities.image_text import ImageTextModality
from fewlabel.modalities.text import TextModality

if TYPE_CHECKING:
    from fewlabel.data.dataset import Dataset

_MODALITIES: dict[str, Modality] = {}


def register_modality(modality: Modality) -> None:
    _MODALITIES[modality.name] = modality


def registered_modalities() -> list[Modality]:
    return list(_MODALITIES.values())


def get_modality(name: str) -> Modality:
    if name not in _MODALITIES:
        raise FewlabelError(f"no modality '{name}'; fewlabel knows {', '.join(_MODALITIES)}")
    return _MODALITIES[name]


def modality_of(dataset: Dataset) -> Modality:
    return get_modality(dataset.modality)


def modality_for_method(method: str) -> Modality:
    """The modality whose pretext tasks include ``method`` (one line listing every method when none does)."""
    for modality in _MODALITIES.values():
        if method in modality.pretext_methods:
            return modality
    known = [m for modality in _MODALITIES.values() for m in modality.pretext_methods]
    raise FewlabelError(f"unknown method '{method}'; choose one of {', '.join(known)}")


register_modality(ImageModality())
register_modality(TextModality())
register_modality(AudioModality())
register_modality(ImageTextModality())

__all__ = ["ClassifierSetup", "LoadedBackbone", "Modality", "get_modality", "modality_for_method", "modality_of",
           "register_modality", "registered_modalities"]
