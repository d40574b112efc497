"""Issue 19's semi-supervised table: the frozen-feature methods (label spreading, self-training) on Fashion-MNIST
(EfficientNet-Lite0 features) and Rotten Tomatoes (MiniLM features) at 1% and 10% labels over seeds, and FixMatch-
family runs from scratch on Fashion-MNIST 1% with their accuracy against training time. Every cell is a `fewlabel`
command, run in this process through `fewlabel.cli.main` and read back from its `metrics.json`; finished cells are
never rerun.

    FEWLABEL_DATA=../shared/data python benchmarks/semisup_grid.py --part frozen --work /tmp/semisup-grid
    FEWLABEL_DATA=../shared/data python benchmarks/semisup_grid.py --part fixmatch --work /tmp/semisup-grid \\
        --fixmatch-epochs 30

The FixMatch curve: after every epoch this script (not fewlabel) scores the EMA model -- the one fewlabel
validates and saves -- on the 10,000 test images and records it with the wall time. That is a diagnostic curve
for the table; the run itself still keeps its best *validation* epoch and is scored once on the test set.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _cells import CellStore

from fewlabel.cli import main as fewlabel

FROZEN = {"fashion-mnist": ("0.01", "0.1"), "rotten-tomatoes": ("0.01", "0.1")}
FROZEN_METHODS = ("label-spreading", "self-training")


def run(args: list[str], out: Path, extra: dict | None = None) -> dict:
    """One fewlabel command into ``out`` (a fresh folder); its metrics back."""
    started = time.perf_counter()
    code = fewlabel(["-q", *args, "--out", str(out)])
    if code != 0:
        raise RuntimeError(f"fewlabel {' '.join(args)} exited {code}")
    metrics = json.loads((out / "metrics.json").read_text(encoding="utf-8"))
    keep = ("test_accuracy", "macro_f1", "labelled_only_test_accuracy", "mask_rate", "pseudo_label_accuracy",
            "pseudo_labelled", "pool", "train_seconds", "feature_seconds", "fit_seconds", "probe_c",
            "best_val_accuracy", "batch_size", "final_model")
    return {"command": "fewlabel " + " ".join(args), "wall_seconds": round(time.perf_counter() - started, 1),
            **{k: metrics.get(k) for k in keep if k in metrics},
            **({"epochs": metrics["epochs"]} if isinstance(metrics.get("epochs"), list) else {}),
            **(extra or {})}


def frozen_cells(store: CellStore, work: Path, seeds: int) -> None:
    # Label spreading first (cheap), every seed, then self-training (a logistic regression per round).
    for method in FROZEN_METHODS:
        for data, fractions in FROZEN.items():
            for fraction in fractions:
                for seed in range(seeds):
                    key = {"kind": "frozen", "method": method, "data": data, "labels": fraction, "seed": seed}
                    store.run(key, lambda m=method, d=data, f=fraction, s=seed: run(
                        ["semisup", "--method", m, "--data", d, "--labels", f, "--seed", str(s)],
                        work / f"{m}-{d}-{f}-s{s}"))


def test_curve_hook(started: list[float]) -> None:
    """Score the EMA model on the test images after every epoch (diagnostic only; see the module docstring)."""
    from fewlabel.approaches import fixmatch
    from fewlabel.data.registry import load_dataset
    from fewlabel.engine.data import IndexedSamples, make_loader
    from fewlabel.engine.run import prepare_split

    dataset = load_dataset("fashion-mnist", None, {}, False)
    test = prepare_split(dataset, 0, None).test  # the official test set: the same for every seed
    loader = make_loader(IndexedSamples(dataset.samples, test, dataset.labels), 500, False, 0)
    original = fixmatch.FixMatchModule.on_train_epoch_end

    def hooked(self) -> None:
        original(self)
        was_training = self.ema.training
        self.ema.eval()
        correct = 0
        with torch.no_grad():
            for x, y in loader:
                correct += int((self.ema(x.to(self.device)).argmax(1).cpu() == y).sum())
        self.ema.train(was_training)
        self.history[-1]["test_accuracy_diagnostic"] = round(correct / len(test), 4)
        self.history[-1]["wall_seconds"] = round(time.perf_counter() - started[0], 1)
        print(json.dumps({k: v for k, v in self.history[-1].items() if k != "pseudo_label_classes"}), flush=True)

    fixmatch.FixMatchModule.on_train_epoch_end = hooked


def fixmatch_cells(store: CellStore, work: Path, methods: list[str], epochs: int, width: int, seeds: list[int],
                   backbone: str | None, start: str | None, image_size: int | None, data: str = "fashion-mnist",
                   labels: str = "0.01") -> None:
    """From scratch (a width-``width`` network) or, with ``backbone``, fine-tuning that network (a timm name, a
    Hugging Face folder or a fewlabel export folder); ``start`` names the starting point in the cell's key. The
    per-epoch test curve is recorded for Fashion-MNIST only."""
    started = [0.0]
    if data == "fashion-mnist":
        test_curve_hook(started)
    for seed in seeds:
        for method in methods:
            key = {"kind": "trained", "method": method, "data": data, "labels": labels, "seed": seed,
                   "planned_epochs": epochs}
            key |= {"start": start or backbone} if backbone else {"width": width}
            network = ["--backbone", backbone] if backbone else ["--width", str(width)]
            network += ["--image-size", str(image_size)] if image_size else []
            folder = f"{method}-{data}-{labels}-{(start or 'bb') if backbone else f'w{width}'}-s{seed}"

            def work_cell(m: str = method, s: int = seed, network: list[str] = network, folder: str = folder) -> dict:
                started[0] = time.perf_counter()
                return run(["semisup", "--method", m, "--data", data, "--labels", labels, "--seed", str(s),
                            *network, "--epochs", str(epochs)], work / folder)

            store.run(key, work_cell)


def summarise_trained(store: CellStore) -> None:
    """One row per trained cell: the EMA model's test curve per epoch (diagnostic), the run's final test accuracy
    and its last epoch's mask rate and pseudo-label accuracy."""
    print("| data, labels | method | start | seed | epochs | test accuracy per epoch (diagnostic) | final test | "
          "mask rate | pseudo-labels correct | wall s |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    cells = [c for c in store.data["cells"] if c.get("kind") == "trained"]
    for c in sorted(cells, key=lambda c: (c["data"], c["labels"], c.get("start") or "", c["method"], c["seed"])):
        start = c.get("start") or f"scratch (width {c.get('width')})"
        curve = " / ".join(f"{100 * e['test_accuracy_diagnostic']:.1f}" for e in c.get("epochs", [])
                           if "test_accuracy_diagnostic" in e)
        last = (c.get("epochs") or [{}])[-1]
        pseudo = last.get("pseudo_label_accuracy")
        print(f"| {c['data']} {c['labels']} | {c['method']} | {start} | {c['seed']} | {c['planned_epochs']} | "
              f"{curve} | "
              f"{100 * c['test_accuracy']:.1f} | {100 * last.get('mask_rate', float('nan')):.1f}% | "
              f"{'n/a' if pseudo is None else f'{100 * pseudo:.1f}%'} | {c['wall_seconds']:.0f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", choices=("frozen", "fixmatch"), default=None)
    parser.add_argument("--summary", action="store_true", help="print the trained cells' table and exit")
    parser.add_argument("--work", default="/tmp/semisup-grid", help="run folders (outside the repository)")
    parser.add_argument("--json", default=None, help="default: benchmarks/results/semisup_<part>.json")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--first-seed", type=int, default=0)
    parser.add_argument("--data", default="fashion-mnist", help="--part fixmatch: the dataset")
    parser.add_argument("--labels", default="0.01", help="--part fixmatch: the label fraction")
    parser.add_argument("--methods", default="fixmatch", help="--part fixmatch: comma-separated methods")
    parser.add_argument("--fixmatch-epochs", type=int, default=30)
    parser.add_argument("--width", type=int, default=16)
    parser.add_argument("--backbone", default=None,
                        help="--part fixmatch: start from this network (a timm name or a fewlabel export folder) "
                        "instead of a width---width one from scratch")
    parser.add_argument("--start", default=None, help="the starting point's name in the cells' keys (default: "
                        "--backbone)")
    parser.add_argument("--image-size", type=int, default=None, help="with --backbone: the input resolution")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    if args.summary:
        summarise_trained(CellStore(args.json or "benchmarks/results/semisup_fixmatch.json"))
        return
    if args.part is None:
        parser.error("--part is required (frozen or fixmatch), or --summary")
    torch.set_num_threads(args.threads)
    os.environ.setdefault("FEWLABEL_OFFLINE", "1")
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    store = CellStore(args.json or f"benchmarks/results/semisup_{args.part}.json")
    store.data["command"] = " ".join(sys.argv)
    if args.part == "frozen":
        frozen_cells(store, work, args.seeds)
    else:
        seeds = list(range(args.first_seed, args.first_seed + args.seeds))
        fixmatch_cells(store, work, args.methods.split(","), args.fixmatch_epochs, args.width, seeds, args.backbone,
                       args.start, args.image_size, args.data, args.labels)


if __name__ == "__main__":
    main()
