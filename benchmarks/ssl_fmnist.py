"""Benchmark: SimCLR, MoCo, BYOL, DINO on Fashion-MNIST with one backbone and one budget for all methods.

For each method: pretrain on the unlabelled pool, then kNN (k=200, T=0.1) and linear probe at 1% and 10%
labels. Speed: pretraining samples/s (whole ``pretrain`` call: augmentation, heads, loss, EMA, Lightning loop,
monitor, checkpoints) against the bare backbone on the same views, so the overhead is visible:

- ``bare``: forward+backward of the backbone alone on the views the method trains on (SimCLR, BYOL: two
  views; MoCo v2: the query view; DINO: two global and the local crops), with SGD;
- ``bare+momentum``: the same plus the forward pass of a momentum copy on the views the method feeds its
  EMA encoder (MoCo v2: the key view; BYOL: both views; DINO: the two global views) -- compute the method
  needs by design, so the overhead over it is what the implementation adds.

The views come from the same batched augmentation pretraining uses, on real Fashion-MNIST images. Resumable.

    python benchmarks/ssl_fmnist.py --data-dir ../shared/data --epochs 10

Speed alone, robust to this VM's drifting speed (rounds of one pretraining epoch, each followed at once by
the bare references; see ``speed_rounds``):

    python benchmarks/ssl_fmnist.py --data-dir ../shared/data --speed-rounds 3 \
        --results benchmarks/results/ssl_fmnist_speed.json
"""

from __future__ import annotations

import argparse
import copy
import tempfile
import time

import numpy as np
import torch
from _cells import CellStore

from fewlabel.approaches.selfsupervised import EvaluateConfig, PretrainConfig, evaluate_backbone, pretrain
from fewlabel.augment.views import BatchedMultiCropAugment, BatchedTwoViewAugment
from fewlabel.data import load_dataset
from fewlabel.engine.fit import Budget
from fewlabel.methods.registry import method_hparams
from fewlabel.models import create_backbone

# Which views get gradients and which only pass the momentum encoder, per method (indices into
# [global_0, global_1, local_0, ...]); mirrors each method's training_loss.
GRADIENT_VIEWS = {"simclr": "0,1", "moco": "0", "byol": "0,1", "dino": "all"}
MOMENTUM_VIEWS = {"simclr": "", "moco": "1", "byol": "0,1", "dino": "0,1"}


def _pick(views: list[torch.Tensor], which: str) -> list[torch.Tensor]:
    if which == "all":
        return views
    return [views[int(i)] for i in which.split(",") if i]


def _by_size(views: list[torch.Tensor]) -> list[torch.Tensor]:
    """Views of equal size concatenated into one batch, as the methods do."""
    sizes = sorted({v.shape[-1] for v in views}, reverse=True)
    return [torch.cat([v for v in views if v.shape[-1] == s]) for s in sizes]


def bare_throughput(method: str, width: int, batch: int, local_crops: int, data_dir: str | None,
                    with_momentum: bool, steps: int = 20, seconds: float | None = None) -> float:
    """Samples/s of the backbone alone (plus, optionally, a momentum copy's forward) on ``method``'s views.

    Runs ``steps`` timed steps after two warm-up steps, or, with ``seconds``, as many as fit in that time
    (at most one pass over the images).
    """
    torch.manual_seed(0)
    backbone = create_backbone("resnet_small", in_chans=1, width=width).to(memory_format=torch.channels_last)
    momentum_copy = copy.deepcopy(backbone).requires_grad_(False)
    # The view generator pretraining builds for this method (selfsupervised._view_generator, batched mode).
    augment = (BatchedMultiCropAugment(1, 28, (0.5,), (0.5,), num_local_crops=local_crops) if method == "dino"
               else BatchedTwoViewAugment(1, 28, (0.5,), (0.5,)))
    images = load_dataset("fashion-mnist", data_dir).samples
    order = torch.as_tensor(np.random.default_rng(0).permutation(len(images)))
    optimizer = torch.optim.SGD(backbone.parameters(), lr=0.01)
    started, timed = 0.0, 0
    max_steps = len(images) // batch if seconds else steps + 2
    for step in range(max_steps):
        if step == 2:
            started = time.perf_counter()
        elif step > 2 and seconds and time.perf_counter() - started >= seconds:
            break
        views = augment(images[order[step * batch:(step + 1) * batch]])
        views = [v.contiguous(memory_format=torch.channels_last) for v in views]
        if with_momentum:
            with torch.no_grad():
                for group in _by_size(_pick(views, MOMENTUM_VIEWS[method])):
                    momentum_copy(group)
        loss = sum(backbone(group).square().mean() for group in _by_size(_pick(views, GRADIENT_VIEWS[method])))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        timed += step >= 2
    return batch * timed / (time.perf_counter() - started)


def speed_rounds(method: str, args: argparse.Namespace) -> dict:
    """Pipeline speed against the bare references, in rounds measured back to back.

    Each round: one epoch of ``pretrain`` over the whole pool (the whole call: Lightning start-up, batched
    views, heads, loss, EMA, the monitor and the checkpoint: ``trainer.fit``; into a temporary folder), then
    each bare reference for ``args.bare_seconds``. This VM's speed drifts by up to 20% between
    measurements minutes apart, so the overhead is the median over rounds of ratios taken within a round.
    """
    references = [("bare", False)] + ([("bare+momentum", True)] if MOMENTUM_VIEWS[method] else [])
    rounds: list[dict] = []
    for _ in range(args.speed_rounds):
        with tempfile.TemporaryDirectory() as runs_dir:
            config = PretrainConfig(method=method, data="fashion-mnist", data_dir=args.data_dir, width=args.width,
                                    seed=args.seed, epochs=1, batch_size=args.batch_size,
                                    local_crops=args.local_crops, budget=Budget(progress=False), runs_dir=runs_dir)
            record = {"pretrain": round(pretrain(config).metrics["samples_per_second"], 1)}
        for reference, momentum in references:
            record[reference] = round(bare_throughput(method, args.width, args.batch_size, args.local_crops,
                                                      args.data_dir, momentum, seconds=args.bare_seconds), 1)
        rounds.append(record)
    overhead = {reference: round(float(np.median([r[reference] / r["pretrain"] - 1 for r in rounds])), 4)
                for reference, _ in references}
    return {"rounds": rounds, "overhead": overhead}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--methods", default="simclr,moco,byol,dino")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--width", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--local-crops", type=int, default=6)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--results", default="benchmarks/results/ssl_fmnist.json")
    parser.add_argument("--runs-dir", default="benchmarks/results/runs")
    parser.add_argument("--speed-rounds", type=int, default=0,
                        help="measure only speed: this many rounds of one pretraining epoch + the bare references")
    parser.add_argument("--bare-seconds", type=float, default=40.0, help="length of each bare measurement")
    args = parser.parse_args()
    store = CellStore(args.results)
    threads = torch.get_num_threads()
    if args.speed_rounds:
        for method in args.methods.split(","):
            store.run({"method": method, "kind": "speed", "rounds_wanted": args.speed_rounds, "width": args.width,
                       "batch_size": args.batch_size, "local_crops": args.local_crops, "seed": args.seed,
                       "bare_seconds": args.bare_seconds, "threads": threads, "method_hparams": method_hparams(method)},
                      lambda method=method: speed_rounds(method, args))
        print_speed_table(store)
        return
    for method in args.methods.split(","):
        references = [("bare", False)] + ([("bare+momentum", True)] if MOMENTUM_VIEWS[method] else [])

        def measure_references(method: str = method, references: list = references) -> dict[str, float]:
            return {reference: round(bare_throughput(method, args.width, args.batch_size, args.local_crops,
                                                     args.data_dir, momentum), 1)
                    for reference, momentum in references}

        def work(method: str = method) -> dict:
            # The bare references are measured just before and just after the run: this VM's speed drifts
            # by up to 10% over minutes, so a reference taken at another time would swamp a 15% overhead.
            before = measure_references()
            config = PretrainConfig(method=method, data="fashion-mnist", data_dir=args.data_dir, width=args.width,
                                    seed=args.seed, epochs=args.epochs, batch_size=args.batch_size,
                                    local_crops=args.local_crops, budget=Budget(progress=False),
                                    runs_dir=args.runs_dir)
            result = pretrain(config)
            after = measure_references()
            cell = {"pretrain_seconds": result.metrics["pretrain_seconds"],
                    "samples_per_second": result.metrics["samples_per_second"],
                    "references": {name: [before[name], after[name]] for name in before},
                    "final_loss": result.metrics["final_loss"], "monitor": result.metrics["monitor"],
                    "warnings": result.metrics["warnings"], "run_dir": result.run_dir}
            for labels in ("0.01", "0.1"):
                for protocol in ("knn", "linear"):
                    r = evaluate_backbone(EvaluateConfig(backbone=result.run_dir, protocol=protocol, labels=labels,
                                                         data_dir=args.data_dir, probe_c=1.0))
                    cell[f"{protocol}@{labels}"] = r["test_accuracy"]
            return cell

        # The method's hyper-parameters are part of the key: a changed default reruns the method.
        key = {"method": method, "epochs": args.epochs, "width": args.width, "seed": args.seed, "threads": threads,
               "method_hparams": method_hparams(method)}
        store.run(key, work)

        def cross_validated_probe(run_dir: str = store.find(**key)["run_dir"]) -> dict:
            """Linear probe with C chosen by cross-validation on the labelled set (the evaluate default)."""
            cell = {}
            for labels in ("0.01", "0.1"):
                r = evaluate_backbone(EvaluateConfig(backbone=run_dir, protocol="linear", labels=labels,
                                                     data_dir=args.data_dir))
                cell[f"linear_cv@{labels}"], cell[f"c@{labels}"] = r["test_accuracy"], r["probe_c"]
            return cell

        store.run({**key, "evaluation": "linear-cv"}, cross_validated_probe)
    print_table(store)


def print_table(store: CellStore) -> None:
    """Markdown table: accuracy and the overhead of each method over its bare references."""
    print("| method | epochs | kNN 1% | linear 1% (C=1 / CV) | kNN 10% | linear 10% (C=1 / CV) | pretrain samples/s "
          "| bare | overhead | bare+momentum | overhead | seconds |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for cell in store.data["cells"]:
        if "pretrain_seconds" not in cell:
            continue
        key = {"method": cell["method"], "width": cell["width"], "threads": cell["threads"]}
        cv = store.find(**key, epochs=cell["epochs"], seed=cell["seed"], method_hparams=cell.get("method_hparams"),
                        evaluation="linear-cv") or {}
        speed = cell["samples_per_second"]
        row = [cell["method"], str(cell["epochs"])]
        for fraction in ("0.01", "0.1"):
            row.append(f"{100 * cell[f'knn@{fraction}']:.2f}%")
            tuned = f" / {100 * cv[f'linear_cv@{fraction}']:.2f}% (C={cv[f'c@{fraction}']:g})" if cv else ""
            row.append(f"{100 * cell[f'linear@{fraction}']:.2f}%{tuned}")
        row.append(f"{speed:.0f}")
        for reference in ("bare", "bare+momentum"):
            if "references" in cell:  # measured just before and after the run: mean of the two
                pair = cell["references"].get(reference)
                ref_speed = sum(pair) / 2 if pair else None
            else:  # older cells: one separate measurement per method
                ref = store.find(**key, reference=reference)
                ref_speed = ref["samples_per_second"] if ref else None
            if ref_speed is None or cell.get("cpu_shared"):  # a run that shared the CPU measured no speed
                row += ["-", "-"]
            else:
                row += [f"{ref_speed:.0f}", f"{100 * (ref_speed / speed - 1):+.0f}%"]
        row.append(f"{cell['pretrain_seconds']:.0f}")
        print("| " + " | ".join(row) + " |")


def print_speed_table(store: CellStore) -> None:
    """Markdown table of the speed rounds: samples/s per round and the median overheads."""
    print("| method | pretrain samples/s (rounds) | bare | bare+momentum | overhead vs bare | vs bare+momentum |")
    print("|---|---|---|---|---|---|")
    for cell in store.data["cells"]:
        if cell.get("kind") != "speed":
            continue
        rounds = cell["rounds"]
        row = [cell["method"]]
        for name in ("pretrain", "bare", "bare+momentum"):
            row.append(", ".join(f"{r[name]:.0f}" for r in rounds) if name in rounds[0] else "-")
        for name in ("bare", "bare+momentum"):
            row.append(f"{100 * cell['overhead'][name]:+.1f}%" if name in cell["overhead"] else "-")
        print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
