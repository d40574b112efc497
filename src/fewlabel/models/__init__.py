"""Backbones: one factory (``create_backbone``) and the metadata every backbone carries."""

from fewlabel.models.backbones import (
    Backbone,
    BackboneSpec,
    Classifier,
    InputAdapter,
    InputSpec,
    create_backbone,
    register_backbone,
    registered_backbones,
)

__all__ = [
    "Backbone",
    "BackboneSpec",
    "Classifier",
    "InputAdapter",
    "InputSpec",
    "create_backbone",
    "register_backbone",
    "registered_backbones",
]
