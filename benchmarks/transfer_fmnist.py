"""Benchmark: EfficientNet-Lite0 (ImageNet) with each transfer strategy on Fashion-MNIST at 1/10/100% labels.

Compare against benchmarks/results/supervised_fmnist.json (training from scratch, same splits).
Resumable. Usage (the command recorded in BENCHMARKS.md):

    python benchmarks/transfer_fmnist.py --data-dir ../shared/data --fractions 0.01,0.1
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path

import torch
from _cells import CellStore

from fewlabel.approaches.transfer import TRANSFER_BUDGET, TransferConfig, finetune


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--fractions", default="0.01,0.1,1.0")
    parser.add_argument("--strategies", default="feature-extract,partial,finetune")
    parser.add_argument("--backbone", default="efficientnet_lite0")
    parser.add_argument("--image-size", type=int, default=None, help="default: 4x the 28 px images = 112 px")
    parser.add_argument("--epochs", type=int, default=None, help="epochs for partial/finetune (default: auto)")
    parser.add_argument("--head", default="logreg", help="feature-extract head: logreg (default) or linear")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--results", default="benchmarks/results/transfer_fmnist.json")
    parser.add_argument("--runs-dir", default="benchmarks/results/runs")
    parser.add_argument("--scratch", default="benchmarks/results/supervised_fmnist.json",
                        help="from-scratch results to compare with (benchmarks/supervised_fmnist.py)")
    args = parser.parse_args()
    store = CellStore(args.results)
    trainable = ("blocks.5", "blocks.6", "conv_head", "bn2")
    for fraction in args.fractions.split(","):
        for strategy in args.strategies.split(","):
            def work(fraction: str = fraction, strategy: str = strategy) -> dict:
                config = TransferConfig(backbone=args.backbone, strategy=strategy, data="fashion-mnist",
                                        data_dir=args.data_dir, labels=fraction, seed=args.seed,
                                        image_size=args.image_size, head=args.head,
                                        trainable=trainable if strategy == "partial" else (),
                                        budget=replace(TRANSFER_BUDGET, epochs=args.epochs, progress=False),
                                        runs_dir=args.runs_dir)
                started = time.perf_counter()
                m = finetune(config).metrics
                return {"test_accuracy": m["test_accuracy"], "macro_f1": m["macro_f1"],
                        "labelled": m["split"]["labelled"], "train_seconds": m["train_seconds"],
                        "wall_seconds": round(time.perf_counter() - started, 1), "image_size": m["image_size"],
                        "trainable_parameters": m["transfer"]["trainable_parameters"],
                        "epochs_run": m.get("epochs_run"), "batches_per_epoch": m.get("batches_per_epoch"),
                        "threads": torch.get_num_threads()}

            key = {"labels": fraction, "strategy": strategy, "seed": args.seed, "backbone": args.backbone}
            if strategy == "feature-extract":  # cells without "head" predate logreg: they used the linear head
                key["head"] = args.head
            store.run(key, work)
    print(table(store.data["cells"], args.scratch))


def table(cells: list[dict], scratch_path: str) -> str:
    """Markdown: each strategy per fraction (accuracy, seconds), then the best from-scratch cell and the gap."""
    scratch = (json.loads(Path(scratch_path).read_text(encoding="utf-8"))["cells"] if Path(scratch_path).is_file()
               else [])
    fractions = sorted({c["labels"] for c in cells}, key=float)
    lines = ["| strategy | " + " | ".join(f"{float(f):.0%} labels" for f in fractions) + " |",
             "|---|" + "---|" * len(fractions)]
    variants = [("feature-extract", "logreg"), ("feature-extract", "linear"), ("partial", None), ("finetune", None)]
    for strategy, head in variants:
        row = []
        for fraction in fractions:
            got = [c for c in cells if c["strategy"] == strategy and c["labels"] == fraction
                   and (head is None or c.get("head", "linear") == head)]
            row.append(f"{got[0]['test_accuracy']:.2%} ({got[0]['wall_seconds']:.0f} s)" if got else "-")
        name = f"{strategy} ({head} head)" if head else strategy
        lines.append(f"| {name} | " + " | ".join(row) + " |")
    best_row, gap_row = [], []
    for fraction in fractions:
        ours = [c["test_accuracy"] for c in cells if c["labels"] == fraction]
        theirs = [c for c in scratch if c["labels"] == fraction]
        if not theirs or not ours:
            best_row.append("-")
            gap_row.append("-")
            continue
        best = max(theirs, key=lambda c: c["test_accuracy"])
        best_row.append(f"{best['test_accuracy']:.2%} ({best['augment']})")
        gap_row.append(f"{(max(ours) - best['test_accuracy']) * 100:+.2f} points")
    lines.append("| best from scratch | " + " | ".join(best_row) + " |")
    lines.append("| best transfer - best scratch | " + " | ".join(gap_row) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
