"""Benchmark: EfficientNet-Lite0 (ImageNet) with each transfer strategy on Fashion-MNIST at 1/10/100% labels.

Compare against benchmarks/results/supervised_fmnist.json (training from scratch, same splits).
Resumable. Usage (the command recorded in BENCHMARKS.md):

    python benchmarks/transfer_fmnist.py --data-dir ../shared/data --fractions 0.01,0.1
"""

from __future__ import annotations

import argparse
import time
from dataclasses import replace

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
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--results", default="benchmarks/results/transfer_fmnist.json")
    parser.add_argument("--runs-dir", default="benchmarks/results/runs")
    args = parser.parse_args()
    store = CellStore(args.results)
    trainable = ("blocks.5", "blocks.6", "conv_head", "bn2")
    for fraction in args.fractions.split(","):
        for strategy in args.strategies.split(","):
            def work(fraction: str = fraction, strategy: str = strategy) -> dict:
                config = TransferConfig(backbone=args.backbone, strategy=strategy, data="fashion-mnist",
                                        data_dir=args.data_dir, labels=fraction, seed=args.seed,
                                        image_size=args.image_size,
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

            store.run({"labels": fraction, "strategy": strategy, "seed": args.seed, "backbone": args.backbone}, work)


if __name__ == "__main__":
    main()
