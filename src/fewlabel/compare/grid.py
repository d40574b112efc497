"""The comparison grid: one independent, hashable job per (approach variant x label fraction x seed).

Self-supervised pretraining is its own job (one per method and seed); its probes depend on it and reuse it
for every label fraction. A job's key hashes its full configuration, so a changed option reruns only the
jobs it affects, and any job can run on any machine that sees the output folder.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from typing import Any

from fewlabel.errors import FewlabelError
from fewlabel.modalities import get_modality
from fewlabel.names import APPROACHES


@dataclass(frozen=True)
class BudgetPreset:
    """Explicit per-job budgets; recorded with every job."""

    name: str
    supervised_steps: int
    supervised_min_epochs: int
    transfer_epochs: int
    pretrain_epochs: int
    policies: tuple[str, ...]
    strategies: tuple[str, ...]
    methods: tuple[str, ...]
    probes: tuple[str, ...]
    width: int
    max_minutes: float | None
    semisup: tuple[str, ...] = ("label-spreading",)  # semi-supervised methods on the transfer backbones' features
    semisup_pool: int | None = None  # at most this many unlabelled samples per semi-supervised job (None: all)


BUDGETS = {
    "small": BudgetPreset("small", 400, 10, 3, 15, ("standard",), ("feature-extract",), ("simclr",), ("linear",), 16,
                          5.0, semisup_pool=10_000),
    "medium": BudgetPreset("medium", 1000, 15, 8, 30, ("standard", "randaugment"), ("feature-extract", "finetune"),
                           ("simclr", "byol"), ("linear", "finetune"), 16, 30.0,
                           ("label-spreading", "self-training"), semisup_pool=50_000),
    "large": BudgetPreset("large", 3000, 30, 20, 200, ("standard", "randaugment", "mixup"),
                          ("feature-extract", "finetune", "partial"), ("simclr", "moco", "byol", "dino"),
                          ("linear", "finetune"), 32, None, ("label-spreading", "self-training")),
}


@dataclass(frozen=True)
class Job:
    approach: str  # supervised | transfer | pretrain | probe
    variant: str  # policy, strategy@backbone, method, or method:protocol
    data: str
    labels: str | None
    seed: int
    settings: dict[str, Any] = field(default_factory=dict)
    depends_on: str | None = None

    def key(self) -> str:
        payload = json.dumps(asdict(self), sort_keys=True, default=str)
        return f"{self.approach}-{hashlib.sha256(payload.encode()).hexdigest()[:12]}"

    @property
    def label(self) -> str:
        """The row name in tables, plots and progress lines (display only: the key does not use it)."""
        return row_name(self.approach, self.variant)


# The approach families as the comparison names them; job keys keep the short approach names.
ROW_NAMES = {"supervised": "data augmentation", "transfer": "transfer learning", "probe": "self-supervised",
             "pretrain": "self-supervised pretraining", "semisupervised": "semi-supervised"}


def row_name(approach: str, variant: str) -> str:
    """``data augmentation: standard``, ``transfer learning: feature-extract@efficientnet_lite0``,
    ``self-supervised: simclr+linear``, ``self-supervised pretraining: simclr``."""
    return f"{ROW_NAMES.get(approach, approach)}: {variant}"


def _all_labels(fraction: str) -> bool:
    from fewlabel.data.splits import LabelRequest

    return LabelRequest.parse(fraction).fraction == 1.0


def build_grid(data: str, labels: list[str], seeds: int, approaches: list[str], budget: BudgetPreset,
               backbones: list[str], data_dir: str | None = None, modality: str = "image",
               columns: dict[str, Any] | None = None, skip_bad: bool = False) -> list[Job]:
    """Every job of the grid, dependencies first. ``modality`` (the data's) translates the preset's variants and
    says what frozen-feature jobs depend on; both are part of the job keys. ``columns`` (table columns and
    ``clip_seconds``, as ``load_dataset`` takes them) and ``skip_bad`` join every job's settings, and so its key,
    only when given: grids without them keep the keys they always had."""
    unknown = sorted(set(approaches) - set(APPROACHES))
    if unknown:
        raise FewlabelError(f"unknown approach(es) {', '.join(unknown)}; choose from {', '.join(APPROACHES)}")
    if seeds < 1:
        raise FewlabelError(f"--seeds {seeds}: need at least one seed")
    kind = get_modality(modality)
    budget = kind.compare_budget(budget)
    feature_extract = {"head": "logreg-cv", **kind.feature_probe_settings}  # how a frozen backbone is probed
    common: dict[str, Any] = {"data_dir": data_dir, "budget": budget.name, "modality": modality}
    if columns:
        common["columns"] = {k: str(v) for k, v in sorted(columns.items())}
    if skip_bad:
        common["skip_bad"] = True
    jobs: list[Job] = []
    for seed in range(seeds):
        if "selfsupervised" in approaches:
            for method in budget.methods:
                pre = Job("pretrain", method, data, None, seed,
                          {**common, "epochs": budget.pretrain_epochs, "width": budget.width,
                           "max_minutes": budget.max_minutes})
                jobs.append(pre)
                for fraction in labels:
                    for probe in budget.probes:
                        jobs.append(Job("probe", f"{method}+{probe}", data, fraction, seed,
                                        {**common, "protocol": probe, "epochs": budget.transfer_epochs,
                                         **(kind.linear_probe_settings() if probe == "linear" else {})},
                                        depends_on=pre.key()))
        for fraction in labels:
            if "supervised" in approaches:
                for policy in budget.policies:
                    jobs.append(Job("supervised", policy, data, fraction, seed,
                                    {**common, "steps": budget.supervised_steps, "width": budget.width,
                                     "min_epochs": budget.supervised_min_epochs, "max_minutes": budget.max_minutes}))
            if "transfer" in approaches:
                for backbone in backbones:
                    for strategy in budget.strategies:
                        head = feature_extract if strategy == "feature-extract" else {}
                        jobs.append(Job("transfer", f"{strategy}@{backbone}", data, fraction, seed,
                                        {**common, "epochs": budget.transfer_epochs,
                                         "max_minutes": budget.max_minutes, **head}))
            # Semi-supervised needs an unlabelled pool: every label fraction but all of the labels.
            if "semisupervised" in approaches and not _all_labels(fraction):
                for backbone in backbones:
                    for method in budget.semisup:
                        pool = {"max_pool": budget.semisup_pool} if budget.semisup_pool else {}
                        jobs.append(Job("semisupervised", f"{method}@{backbone}", data, fraction, seed,
                                        {**common, **kind.feature_probe_settings, **pool}))
    return jobs
