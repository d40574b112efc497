"""Self-supervised methods, losses, heads and momentum utilities, usable without any training framework."""

from fewlabel.methods.base import SSLMethod
from fewlabel.methods.registry import METHODS, create_method, method_hparams

__all__ = ["METHODS", "SSLMethod", "create_method", "method_hparams"]
