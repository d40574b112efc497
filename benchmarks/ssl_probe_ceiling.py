"""Benchmark: how far can a linear probe go on a pretrained export, from 1% of the labels to all of them?

Answers whether a linear-probe target at 1% labels is within reach of a representation at all: the probe
with every label of the pool is the ceiling that few labels approach from below. Feature variants of the
same frozen backbone: ``last`` (global average of the last stage, what ``evaluate`` and ``finetune`` use),
``stages`` (global averages of every stage, concatenated) and ``last2x2`` (the last stage pooled to 2x2).
Logistic regression with C by cross-validation (``fit_linear_probe``), the export's own split, test set of
10,000 images.

    python benchmarks/ssl_probe_ceiling.py --data-dir ../shared/data \\
        --run benchmarks/results/runs/pretrain-simclr-fashion-mnist-resnet_small-s0-2
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from _cells import CellStore

from fewlabel.data import load_dataset
from fewlabel.data.splits import LabelRequest, LabelSplit
from fewlabel.evaluate.probes import fit_linear_probe
from fewlabel.models.backbones import InputAdapter
from fewlabel.models.export import load_backbone

VARIANTS = ("last", "stages", "last2x2")


@torch.no_grad()
def stage_features(run: str, samples: torch.Tensor, indices: np.ndarray) -> dict[str, np.ndarray]:
    """The three feature variants of an export with a timm ResNet body, for ``samples[indices]``.

    The stage outputs come from timm's ``forward_intermediates`` (index 0 is the stem, 1-4 the layers);
    stages the small ResNets replace by ``Identity`` are skipped.
    """
    backbone, _ = load_backbone(run)
    backbone.eval()
    body, adapter = backbone.body, InputAdapter(samples.shape[1], backbone.input_spec)
    stages = [index for index, name in enumerate(("layer1", "layer2", "layer3", "layer4"), start=1)
              if any(True for _ in getattr(body, name).parameters())]
    out: dict[str, list[torch.Tensor]] = {name: [] for name in VARIANTS}
    for start in range(0, len(indices), 1000):
        x = adapter(samples[torch.as_tensor(indices[start:start + 1000])])
        maps = body.forward_intermediates(x, indices=stages, intermediates_only=True)
        out["last"].append(maps[-1].mean((2, 3)))
        out["stages"].append(torch.cat([m.mean((2, 3)) for m in maps], 1))
        out["last2x2"].append(F.adaptive_avg_pool2d(maps[-1], 2).flatten(1))
    return {name: torch.cat(chunks).numpy() for name, chunks in out.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", required=True, help="a `fewlabel pretrain` run folder")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--labels", default="0.01,0.1,1.0")
    parser.add_argument("--results", default="benchmarks/results/ssl_probe_ceiling.json")
    args = parser.parse_args()
    store = CellStore(args.results)
    dataset = load_dataset("fashion-mnist", args.data_dir)
    split = LabelSplit.load(Path(args.run) / "split.npz", dataset)
    test = stage_features(args.run, dataset.samples, split.test)
    for labels in args.labels.split(","):
        train_idx = split.labelled(LabelRequest.parse(labels), dataset.labels)
        labels_y = dataset.labels[train_idx]
        train = stage_features(args.run, dataset.samples, train_idx)  # seconds, even for the whole pool
        for variant in VARIANTS:
            def work(variant: str = variant, train: dict = train, labels_y: np.ndarray = labels_y) -> dict:
                started = time.perf_counter()
                probe = fit_linear_probe(train[variant], labels_y, seed=0)
                predictions = probe.predict(test[variant])
                return {"test_accuracy": float((predictions == dataset.labels[split.test]).mean()),
                        "features": int(train[variant].shape[1]), "labelled": len(labels_y),
                        "probe_c": float(probe[-1].C), "seconds": round(time.perf_counter() - started, 1)}

            store.run({"run": args.run, "labels": labels, "variant": variant}, work)
    print("| labels | " + " | ".join(VARIANTS) + " |")
    print("|---|" + "---|" * len(VARIANTS))
    for labels in args.labels.split(","):
        cells = [store.find(run=args.run, labels=labels, variant=v) for v in VARIANTS]
        print(f"| {labels} ({cells[0]['labelled']}) | "
              + " | ".join(f"{100 * c['test_accuracy']:.2f}% ({c['features']}-d, C={c['probe_c']:g})" for c in cells)
              + " |")


if __name__ == "__main__":
    main()
