"""Run the grid's jobs sequentially, skipping finished ones; each result is one JSON file keyed by the job."""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from fewlabel.compare.grid import Job
from fewlabel.engine.fit import Budget
from fewlabel.engine.run import LOGGER_NAME, atomic_write, is_rank_zero

log = logging.getLogger(LOGGER_NAME)


class ResultStore:
    """``<out>/results/<key>.json`` per finished job and ``<out>/runs/<key>/`` for its run folder."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.results = self.root / "results"
        self.runs = self.root / "runs"

    def done(self, job: Job) -> bool:
        return (self.results / f"{job.key()}.json").is_file()

    def load(self, job: Job) -> dict[str, Any]:
        return json.loads((self.results / f"{job.key()}.json").read_text(encoding="utf-8"))

    def save(self, job: Job, result: dict[str, Any]) -> None:
        atomic_write(self.results / f"{job.key()}.json",
                      json.dumps({"job": asdict(job), "key": job.key(), **result}, indent=2) + "\n")

    def all_results(self) -> list[dict[str, Any]]:
        if not self.results.is_dir():
            return []
        return [json.loads(p.read_text(encoding="utf-8")) for p in sorted(self.results.glob("*.json"))]

    def fresh_run_dir(self, job: Job) -> Path:
        """The job's run folder; a leftover from an interrupted attempt is moved aside, never deleted.

        Only rank 0 moves anything: the other ranks of a multi-device job share the folder rank 0 is using.
        """
        path = self.runs / job.key()
        if path.exists() and is_rank_zero():
            attempt = 1
            while (aside := path.with_name(f"{path.name}.interrupted-{attempt}")).exists():
                attempt += 1
            os.replace(path, aside)
        return path


def run_job(job: Job, store: ResultStore) -> dict[str, Any]:
    """Execute one job through the public Python API and return its result record."""
    from fewlabel.approaches.selfsupervised import EvaluateConfig, PretrainConfig, evaluate_backbone, pretrain
    from fewlabel.approaches.supervised import SupervisedConfig, train_supervised
    from fewlabel.approaches.transfer import TRANSFER_BUDGET, TransferConfig, finetune

    s = job.settings
    out = str(store.fresh_run_dir(job))
    started = time.perf_counter()
    if job.approach == "supervised":
        budget = Budget(target_steps=s["steps"], min_epochs=s["min_epochs"], max_minutes=s["max_minutes"],
                        progress=False)
        result = train_supervised(SupervisedConfig(data=job.data, data_dir=s["data_dir"], labels=job.labels,
                                                   augment=job.variant, width=s["width"], seed=job.seed,
                                                   budget=budget, out=out))
        metrics = result.metrics
    elif job.approach == "transfer":
        strategy, _, backbone = job.variant.partition("@")
        budget = replace(TRANSFER_BUDGET, epochs=s["epochs"], max_minutes=s["max_minutes"], progress=False)
        # partial trains the strategy's default stages (transfer.strategies.default_trainable: the last 4 of an
        # image backbone, the last 2 layers of a text encoder), the stages compare has always trained.
        metrics = finetune(TransferConfig(backbone=backbone, strategy=strategy, data=job.data, data_dir=s["data_dir"],
                                          labels=job.labels, seed=job.seed, budget=budget, out=out)).metrics
    elif job.approach == "pretrain":
        config = PretrainConfig(method=job.variant, data=job.data, data_dir=s["data_dir"], width=s["width"],
                                seed=job.seed, epochs=s["epochs"],
                                budget=Budget(progress=False, max_minutes=s.get("max_minutes")), out=out)
        metrics = pretrain(config).metrics
        metrics["test_accuracy"] = None
    elif job.approach == "probe":
        # Every modality's pretraining run folder is a backbone source: frozen probes through evaluate (the one
        # frozen-feature path), fine-tuning through transfer; both on the pretraining run's split.
        pre_dir = str(store.runs / job.depends_on)
        protocol = s["protocol"]
        if protocol == "finetune":
            budget = replace(TRANSFER_BUDGET, epochs=s["epochs"], progress=False)
            metrics = finetune(TransferConfig(backbone=pre_dir, strategy="finetune", data=job.data,
                                              data_dir=s["data_dir"], labels=job.labels, seed=job.seed,
                                              split=pre_dir, budget=budget, out=out)).metrics
        else:
            metrics = evaluate_backbone(EvaluateConfig(backbone=pre_dir, protocol=protocol, labels=job.labels,
                                                       data=job.data, data_dir=s["data_dir"], out=out))
    else:
        raise ValueError(f"unknown job approach {job.approach}")
    seconds = time.perf_counter() - started
    return {"test_accuracy": metrics.get("test_accuracy"), "seconds": round(seconds, 2),
            "labelled": (metrics.get("split") or {}).get("labelled", metrics.get("labelled")),
            "warnings": metrics.get("warnings", []), "run_dir": out,
            "metrics": {k: v for k, v in metrics.items() if k not in ("per_class_accuracy", "monitor")}}


def execute(jobs: list[Job], store: ResultStore, runner: Callable[[Job, ResultStore], dict[str, Any]] = run_job,
            limit: int | None = None) -> tuple[int, int]:
    """Run every unfinished job in order (dependencies come first in the grid). Returns (ran, skipped)."""
    ran = skipped = 0
    pending = [j for j in jobs if not store.done(j)]
    skipped = len(jobs) - len(pending)
    log.info("%d jobs: %d finished earlier, %d to run", len(jobs), skipped, len(pending))
    for number, job in enumerate(pending, 1):
        if limit is not None and ran >= limit:
            break
        log.info("[%d/%d] %s labels=%s seed=%d (%s)", number, len(pending), job.label, job.labels, job.seed,
                 job.key())
        store.save(job, runner(job, store))
        ran += 1
    return ran, skipped
