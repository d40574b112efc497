"""Benchmark: supervised training from scratch on Fashion-MNIST, every augmentation policy x label fraction.

Resumable: finished (fraction, policy, seed) cells are read back from the results file and not rerun.
Usage (the command recorded in BENCHMARKS.md):

    python benchmarks/supervised_fmnist.py --data-dir ../shared/data
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from fewlabel.approaches.supervised import SupervisedConfig, train_supervised
from fewlabel.augment.supervised import POLICIES
from fewlabel.engine.classification import OptimConfig
from fewlabel.engine.fit import Budget


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--fractions", default="0.01,0.1,1.0")
    parser.add_argument("--policies", default=",".join(POLICIES))
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--backbone", default="resnet_small")
    parser.add_argument("--width", type=int, default=16)
    parser.add_argument("--full-epochs", type=int, default=10, help="epochs at 100%% labels (CPU budget)")
    parser.add_argument("--target-steps", type=int, default=1500, help="optimiser steps for fractions < 1")
    parser.add_argument("--lr", type=float, default=OptimConfig.lr, help="peak learning rate (SGD, cosine)")
    parser.add_argument("--patience", type=int, default=None,
                        help="early-stopping patience in epochs (default: chosen from the data size)")
    parser.add_argument("--results", default="benchmarks/results/supervised_fmnist.json")
    parser.add_argument("--runs-dir", default="benchmarks/results/runs")
    args = parser.parse_args()

    results_path = Path(args.results)
    results = json.loads(results_path.read_text(encoding="utf-8")) if results_path.exists() else {"cells": []}
    done = {(c["labels"], c["augment"], c["seed"]) for c in results["cells"]}
    results["machine"] = {"torch": str(torch.__version__), "threads": torch.get_num_threads(),
                          "cuda": torch.cuda.is_available()}
    for fraction in args.fractions.split(","):
        for policy in args.policies.split(","):
            for seed in (int(s) for s in args.seeds.split(",")):
                if (fraction, policy, seed) in done:
                    continue
                budget = Budget(epochs=args.full_epochs if float(fraction) >= 1.0 else None,
                                target_steps=args.target_steps, patience=args.patience, progress=False)
                config = SupervisedConfig(data="fashion-mnist", data_dir=args.data_dir, labels=fraction,
                                          augment=policy, backbone=args.backbone, width=args.width, seed=seed,
                                          budget=budget, optim=OptimConfig(lr=args.lr), runs_dir=args.runs_dir)
                started = time.perf_counter()
                run = train_supervised(config)
                m = run.metrics
                results["cells"].append({
                    "labels": fraction, "augment": policy, "seed": seed, "backbone": args.backbone,
                    "width": args.width, "lr": args.lr, "threads": torch.get_num_threads(),
                    "labelled": m["split"]["labelled"], "test_accuracy": m["test_accuracy"],
                    "macro_f1": m["macro_f1"], "best_val_accuracy": m["best_val_accuracy"],
                    "epochs_run": m["epochs_run"], "epochs_planned": m["epochs_planned"],
                    "batch_size": m["batch_size"], "train_seconds": m["train_seconds"],
                    "samples_per_second": m["samples_per_second"],
                    "wall_seconds": round(time.perf_counter() - started, 1), "run_dir": run.run_dir,
                })
                results_path.parent.mkdir(parents=True, exist_ok=True)
                results_path.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
                print(f"{fraction:>5} {policy:<12} seed {seed}: {m['test_accuracy']:.4f} "
                      f"({m['train_seconds']:.0f} s)", flush=True)
    print(table(results["cells"]))


def table(cells: list[dict]) -> str:
    fractions = sorted({c["labels"] for c in cells}, key=float)
    policies = [p for p in POLICIES if any(c["augment"] == p for c in cells)]
    lines = ["| policy | " + " | ".join(f"{float(f):.0%} labels" for f in fractions) + " |",
             "|---|" + "---|" * len(fractions)]
    for policy in policies:
        row = []
        for fraction in fractions:
            got = [c for c in cells if c["augment"] == policy and c["labels"] == fraction]
            if not got:
                row.append("-")
                continue
            acc = sum(c["test_accuracy"] for c in got) / len(got)
            secs = sum(c["train_seconds"] for c in got) / len(got)
            row.append(f"{acc:.2%} ({secs:.0f} s)")
        lines.append(f"| {policy} | " + " | ".join(row) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
