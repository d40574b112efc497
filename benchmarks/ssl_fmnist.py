"""Benchmark: SimCLR, MoCo, BYOL, DINO on Fashion-MNIST with one backbone and one budget for all methods.

For each method: pretrain on the unlabelled pool, then kNN (k=200, T=0.1) and linear probe at 1% and 10%
labels; pretraining samples/s against the bare backbone's forward+backward samples/s on the same views, so
the overhead of the method and the data pipeline is visible. Resumable. Usage:

    python benchmarks/ssl_fmnist.py --data-dir ../shared/data --epochs 10
"""

from __future__ import annotations

import argparse
import time

import torch
from _cells import CellStore

from fewlabel.approaches.selfsupervised import EvaluateConfig, PretrainConfig, evaluate_backbone, pretrain
from fewlabel.augment.views import BatchedTwoViewAugment
from fewlabel.engine.fit import Budget
from fewlabel.models import create_backbone


def bare_backbone_throughput(width: int, batch: int, steps: int = 10) -> float:
    """Samples/s of backbone forward+backward alone on two batched views of 28 px grey images."""
    backbone = create_backbone("resnet_small", in_chans=1, width=width).to(memory_format=torch.channels_last)
    augment = BatchedTwoViewAugment(1, 28, (0.5,), (0.5,))
    images = torch.randint(0, 255, (batch, 1, 28, 28), dtype=torch.uint8)
    optimizer = torch.optim.SGD(backbone.parameters(), lr=0.01)
    views = [v.contiguous(memory_format=torch.channels_last) for v in augment(images)]
    for step in range(steps + 2):
        if step == 2:
            started = time.perf_counter()
        loss = sum(backbone(v).square().mean() for v in views)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return batch * steps / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--methods", default="simclr,moco,byol,dino")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--width", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--results", default="benchmarks/results/ssl_fmnist.json")
    parser.add_argument("--runs-dir", default="benchmarks/results/runs")
    args = parser.parse_args()
    store = CellStore(args.results)
    store.run({"method": "bare-backbone", "width": args.width, "batch_size": args.batch_size},
              lambda: {"samples_per_second": round(bare_backbone_throughput(args.width, args.batch_size), 1)})
    for method in args.methods.split(","):
        def work(method: str = method) -> dict:
            config = PretrainConfig(method=method, data="fashion-mnist", data_dir=args.data_dir, width=args.width,
                                    seed=args.seed, epochs=args.epochs, batch_size=args.batch_size,
                                    budget=Budget(progress=False), runs_dir=args.runs_dir)
            result = pretrain(config)
            cell = {"pretrain_seconds": result.metrics["pretrain_seconds"],
                    "samples_per_second": result.metrics["samples_per_second"],
                    "warnings": result.metrics["warnings"], "run_dir": result.run_dir}
            for labels in ("0.01", "0.1"):
                for protocol in ("knn", "linear"):
                    r = evaluate_backbone(EvaluateConfig(backbone=result.run_dir, protocol=protocol, labels=labels,
                                                         data_dir=args.data_dir))
                    cell[f"{protocol}@{labels}"] = r["test_accuracy"]
            return cell

        store.run({"method": method, "epochs": args.epochs, "width": args.width, "seed": args.seed}, work)


if __name__ == "__main__":
    main()
