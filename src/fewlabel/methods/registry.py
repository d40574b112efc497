"""Name -> method class. Adding a method is one file plus one line in ``METHODS``."""

from __future__ import annotations

import inspect
from typing import Any

from torch import nn

from fewlabel.errors import FewlabelError
from fewlabel.methods.base import SSLMethod
from fewlabel.methods.byol import BYOL
from fewlabel.methods.dino import DINO
from fewlabel.methods.moco import MoCo
from fewlabel.methods.simclr import SimCLR

METHODS: dict[str, type[SSLMethod]] = {
    SimCLR.name: SimCLR,
    MoCo.name: MoCo,
    BYOL.name: BYOL,
    DINO.name: DINO,
}


def method_hparams(name: str) -> dict[str, Any]:
    """Keyword hyper-parameters of method ``name`` with their defaults (for help texts and run records)."""
    signature = inspect.signature(_method_class(name).__init__)
    return {
        param.name: param.default
        for param in list(signature.parameters.values())[2:]
        if param.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD
    }


def create_method(name: str, backbone: nn.Module, **hparams: Any) -> SSLMethod:
    """Build the self-supervised method ``name`` around ``backbone``, overriding defaults by keyword."""
    valid = method_hparams(name)
    unknown = sorted(set(hparams) - set(valid))
    if unknown:
        raise FewlabelError(
            f"unknown hyper-parameter(s) {', '.join(unknown)} for method {name!r}; valid: {', '.join(valid)}"
        )
    return _method_class(name)(backbone, **hparams)


def _method_class(name: str) -> type[SSLMethod]:
    try:
        return METHODS[name]
    except KeyError:
        raise FewlabelError(f"unknown method {name!r}; choose one of: {', '.join(METHODS)}") from None
