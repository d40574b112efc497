"""Transfer strategies as plain functions: they set ``requires_grad`` and build parameter groups, nothing else.

* ``feature-extract``: frozen backbone (BatchNorm in eval mode), new head.
* ``finetune``: every layer trains; layer-wise learning-rate decay scales the learning rate of stage ``i`` of
  ``n`` by ``decay ** (n - i)`` so early, generic layers move least; optional L2-SP pulls weights toward
  their pretrained values instead of toward zero.
* ``partial``: only the named stages (and the head) train; frozen BatchNorm keeps its statistics. Without
  named stages, the backbone's last stages train (:func:`default_trainable`).
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from fewlabel.errors import FewlabelError
from fewlabel.models.backbones import Backbone, Classifier
from fewlabel.names import STRATEGIES

_NORM_TYPES = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)
# ``partial`` without named stages trains the backbone's last N stages, about its last third: 4 for image
# backbones (EfficientNet-Lite0: blocks.5, blocks.6, conv_head, bn2); backbones whose stages are whole
# transformer layers say their own N as ``partial_stages`` (text and audio encoders: 2, MiniLM-L6's top two
# layers). The values `fewlabel compare` has always used.
DEFAULT_PARTIAL_STAGES = 4


@dataclass
class TransferPlan:
    """What a strategy decided: optimiser groups, modules to keep in eval mode, and a record for the run folder."""

    strategy: str
    param_groups: list[dict[str, Any]]
    frozen_eval_modules: list[nn.Module]
    record: dict[str, Any] = field(default_factory=dict)
    regularizer: nn.Module | None = None


class L2SP(nn.Module):
    """L2-SP (Li et al. 2018): ``alpha/2 * ||w - w_pretrained||^2`` over the backbone's trainable weights."""

    def __init__(self, backbone: nn.Module, alpha: float):
        super().__init__()
        self.alpha = alpha
        self.names = [n for n, p in backbone.named_parameters() if p.requires_grad]
        self.backbone = [backbone]  # a list keeps the module out of this module's parameters
        for index, name in enumerate(self.names):
            self.register_buffer(f"anchor_{index}", dict(backbone.named_parameters())[name].detach().clone())

    def forward(self) -> torch.Tensor:
        params = dict(self.backbone[0].named_parameters())
        total = sum(((params[n] - getattr(self, f"anchor_{i}")) ** 2).sum() for i, n in enumerate(self.names))
        return 0.5 * self.alpha * total


def _split_decay(named: list[tuple[str, nn.Parameter]]) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    decay = [p for n, p in named if p.ndim > 1]
    no_decay = [p for n, p in named if p.ndim <= 1]
    return decay, no_decay


def _groups(named: list[tuple[str, nn.Parameter]], lr_scale: float, tag: str) -> list[dict[str, Any]]:
    decay, no_decay = _split_decay(named)
    groups = []
    if decay:
        groups.append({"params": decay, "lr_scale": lr_scale, "name": f"{tag}"})
    if no_decay:
        groups.append({"params": no_decay, "lr_scale": lr_scale, "weight_decay": 0.0, "name": f"{tag}.no_decay"})
    return groups


def _freeze(module: nn.Module) -> None:
    for param in module.parameters():
        param.requires_grad_(False)


def _frozen_norms(model: Classifier) -> list[nn.Module]:
    return [m for m in model.backbone.modules() if isinstance(m, _NORM_TYPES)
            and not any(p.requires_grad for p in m.parameters(recurse=False))]


def match_stages(model: Classifier, patterns: list[str]) -> list[str]:
    """Backbone stages (or parameter-name prefixes / globs) named by ``patterns``; unmatched pattern = error.

    ``last:N`` names the backbone's last N stages, so one setting suits any architecture.
    """
    names = [n for n, _ in model.backbone.body.named_parameters()]
    matched: list[str] = []
    for pattern in patterns:
        pattern = pattern.strip()
        if pattern in ("head", "classifier_head"):
            continue
        if pattern.startswith("last:"):
            count = pattern.removeprefix("last:")
            stages = model.backbone.stages
            if not count.isdigit() or not 1 <= int(count) <= len(stages):
                raise FewlabelError(f"--trainable {pattern!r}: give last:N with N from 1 to {len(stages)} "
                                    f"(stages: {', '.join(stages)})")
            matched.extend(match_stages(model, stages[-int(count):]))
            continue
        hits = [n for n in names if n == pattern or n.startswith(pattern + ".") or fnmatch.fnmatch(n, pattern)]
        if not hits:
            raise FewlabelError(f"--trainable {pattern!r} matches no parameter of {model.backbone.name}; its "
                                f"stages are {', '.join(model.backbone.stages)}")
        matched.extend(hits)
    return matched


def default_trainable(backbone: Backbone) -> str:
    """``last:N`` for ``partial`` without named stages: the backbone's ``partial_stages`` (else
    :data:`DEFAULT_PARTIAL_STAGES`), never more than the backbone has stages."""
    wanted = getattr(backbone, "partial_stages", DEFAULT_PARTIAL_STAGES)
    return f"last:{max(1, min(wanted, len(backbone.stages)))}"


def apply_strategy(
    model: Classifier,
    strategy: str,
    trainable: list[str] | None = None,
    layer_decay: float = 1.0,
    l2sp: float = 0.0,
) -> TransferPlan:
    """Configure ``model`` for ``strategy`` and return its parameter groups (with timm's ``lr_scale``)."""
    if strategy not in STRATEGIES:
        raise FewlabelError(f"unknown strategy '{strategy}'; choose one of {', '.join(STRATEGIES)}")
    if not 0.0 < layer_decay <= 1.0:
        raise FewlabelError(f"--layer-decay {layer_decay} must be in (0, 1]")
    if trainable and strategy != "partial":
        raise FewlabelError("--trainable only applies to --strategy partial")
    backbone = model.backbone
    head_named = list(model.head.named_parameters())
    for param in model.parameters():
        param.requires_grad_(True)
    record: dict[str, Any] = {"strategy": strategy}

    if strategy == "feature-extract":
        _freeze(backbone)
        groups = _groups(head_named, 1.0, "head")
    elif strategy == "partial":
        if not trainable:
            trainable = [default_trainable(backbone)]
            record["trainable_default"] = trainable[0]
        keep = set(match_stages(model, trainable))
        for name, param in backbone.body.named_parameters():
            param.requires_grad_(name in keep)
        named = [(n, p) for n, p in backbone.body.named_parameters() if p.requires_grad]
        groups = _groups(named, 1.0, "backbone") + _groups(head_named, 1.0, "head")
        record["trainable_stages"] = sorted({backbone.stages[backbone.stage_of(n)] if backbone.stage_of(n) >= 0
                                             else n for n in keep})
    else:
        groups = []
        count = len(backbone.stages)
        by_stage: dict[int, list[tuple[str, nn.Parameter]]] = {}
        # Stages a backbone never fine-tunes (wav2vec 2.0's convolutional feature encoder, as its paper does).
        fixed = tuple(getattr(backbone, "finetune_frozen", ()))
        for name, param in backbone.body.named_parameters():
            if fixed and any(name == stage or name.startswith(stage + ".") for stage in fixed):
                param.requires_grad_(False)
                continue
            by_stage.setdefault(backbone.stage_of("body." + name), []).append((name, param))
        for index in sorted(by_stage):
            depth = index if index >= 0 else count - 1
            scale = layer_decay ** (count - depth)
            groups += _groups(by_stage[index], scale, f"stage{index}:{backbone.stages[index] if index >= 0 else '-'}")
        groups += _groups(head_named, 1.0, "head")
        record["layer_decay"] = layer_decay
        if fixed:
            record["frozen_stages"] = list(fixed)
    regularizer = L2SP(backbone, l2sp) if l2sp > 0 and strategy != "feature-extract" else None
    trainable_count = sum(p.numel() for p in model.parameters() if p.requires_grad)
    record.update({
        "trainable_parameters": trainable_count,
        "frozen_parameters": sum(p.numel() for p in model.parameters()) - trainable_count,
        "l2sp": l2sp if regularizer is not None else 0.0,
    })
    return TransferPlan(strategy, groups, _frozen_norms(model), record, regularizer)


BN_POLICIES = ("auto", "train", "frozen", "frozen-affine")
# ``--bn auto`` keeps BatchNorm frozen when a batch is smaller than this: the statistics of a handful of examples
# are noise. Measured (BENCHMARKS.md, issue 16): on digits at 10% labels (batch 16, 129 labelled) updating them
# kept fine-tuning at or above its probe on every seed, while frozen statistics let it lose 2.8 points on average.
BN_AUTO_MIN_BATCH = 16


def batchnorm_layers(model: Classifier) -> list[nn.Module]:
    return [m for m in model.backbone.modules() if isinstance(m, _NORM_TYPES)]


def resolve_bn_policy(policy: str, batch_size: int, labelled: int) -> tuple[str, str]:
    """(``train`` | ``frozen`` | ``frozen-affine``, why) for ``--bn``; ``auto`` decides from the batch size."""
    if policy not in BN_POLICIES:
        raise FewlabelError(f"--bn {policy!r}: choose one of {', '.join(BN_POLICIES)}")
    if policy != "auto":
        return policy, "chosen with --bn"
    if batch_size < BN_AUTO_MIN_BATCH:
        return "frozen", (f"auto: batches of {batch_size} < {BN_AUTO_MIN_BATCH} examples give noisy statistics, so "
                          "the pretrained ones are kept")
    return "train", (f"auto: batches of {batch_size} examples ({labelled} labelled) are enough to adapt the "
                     "statistics to this data")


def apply_bn_policy(model: Classifier, plan: TransferPlan, policy: str) -> int:
    """Keep every BatchNorm layer of the backbone in eval mode (``frozen``: running statistics unchanged, affine
    parameters train; ``frozen-affine``: those too are fixed); ``train`` leaves the strategy's choice. Returns
    the number of BatchNorm layers affected."""
    layers = batchnorm_layers(model)
    if policy == "train" or not layers:
        return 0
    for layer in layers:
        if layer not in plan.frozen_eval_modules:
            plan.frozen_eval_modules.append(layer)
        if policy == "frozen-affine":
            for param in layer.parameters(recurse=False):
                param.requires_grad_(False)
    plan.record["batchnorm"] = policy
    return len(layers)


def describe_groups(groups: list[dict[str, Any]], base_lr: float) -> list[dict[str, Any]]:
    """Per-group summary for the run folder: name, parameter count, learning rate."""
    return [{"name": g.get("name", str(i)), "parameters": sum(p.numel() for p in g["params"]),
             "lr": base_lr * g.get("lr_scale", 1.0), "weight_decay": g.get("weight_decay")}
            for i, g in enumerate(groups)]
