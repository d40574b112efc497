"""Issue 17's audio table on spoken-words: the log-mel CNN from scratch with every policy, and wav2vec 2.0 (`tiny`,
pretrained on the 2,400 training clips without labels) with the linear probe and with fine-tuning, at 1 / 10 / 100%
labels over seeds; plus probe accuracy against pretraining epochs. Every cell is a `fewlabel` command, run in this
process through `fewlabel.cli.main` and read back from its `metrics.json`; finished cells are never rerun.

    FEWLABEL_DATA=../shared/data python benchmarks/audio_grid.py --work /tmp/audio-grid \\
        --json benchmarks/results/audio_grid.json

Cells run most informative first (see ``main``), so a partial run still answers the main questions. The
pretraining is one run (seed 0) continued in stages (`--pretrain-epochs 10,30`: 10 epochs, probes, then resumed to
30), and every seed's probe and fine-tuning start from its final export: seeds vary the labelled subset and the
head/fine-tuning, not the pretraining.
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

FRACTIONS = ("0.01", "0.1", "1.0")
POLICIES = ("none", "standard", "specaugment", "mixup")


def run(args: list[str], out: Path) -> dict:
    """One fewlabel command into ``out`` (a fresh folder); its metrics.json (or the evaluate summary) back."""
    started = time.perf_counter()
    code = fewlabel(["-q", *args, "--out", str(out)])
    if code != 0:
        raise RuntimeError(f"fewlabel {' '.join(args)} exited {code}")
    metrics = json.loads((out / "metrics.json").read_text(encoding="utf-8"))
    return {"command": "fewlabel " + " ".join(args), "wall_seconds": round(time.perf_counter() - started, 1),
            "test_accuracy": metrics.get("test_accuracy"), "macro_f1": metrics.get("macro_f1"),
            "epochs_run": metrics.get("epochs_run"), "epochs_planned": metrics.get("epochs_planned"),
            "armed_at": metrics.get("early_stopping_armed_at_epoch"),
            "train_seconds": metrics.get("train_seconds")}


def pretrain_stages(store: CellStore, work: Path, stages: list[int], batch_size: int) -> Path:
    """The wav2vec 2.0 run, continued stage by stage; after each stage a linear probe at 10% labels (seed 0)."""
    folder = work / "wav2vec2"
    for epochs in stages:
        key = {"kind": "pretrain", "epochs": epochs}
        if not store.done(**key):
            args = ["pretrain", "--method", "wav2vec2", "--data", "spoken-words", "--epochs", str(epochs),
                    "--batch-size", str(batch_size), "--seed", "0"]
            if (folder / "checkpoints" / "last.ckpt").exists():
                args += ["--resume", str(folder)]
            started = time.perf_counter()
            code = fewlabel(["-q", *args] + ([] if "--resume" in args else ["--out", str(folder)]))
            if code != 0:
                raise RuntimeError(f"pretraining to {epochs} epochs failed ({code})")
            metrics = json.loads((folder / "metrics.json").read_text(encoding="utf-8"))
            store.run(key, lambda m=metrics, a=args, s=started: {
                "command": "fewlabel " + " ".join(a), "wall_seconds": round(time.perf_counter() - s, 1),
                **{k: v for k, v in m.items() if not isinstance(v, dict | list)}})
        probe = {"kind": "curve", "epochs": epochs, "protocol": "linear", "labels": "0.1", "seed": 0}
        store.run(probe, lambda e=epochs: run(["evaluate", "--backbone", str(folder), "--protocol", "linear",
                                               "--labels", "0.1", "--seed", "0"], work / f"curve-linear-{e}"))
    return folder


LABEL_COUNTS = {"0.01": "1% labels (20)", "0.1": "10% labels (240)", "1.0": "100% labels (2,400)"}


def summarise(store: CellStore) -> None:
    """The issue's table from the stored cells: test accuracy mean ± 95% CI (t), macro-F1, the seeds, mean
    training seconds; then every row's 10%/100% ratio per seed (the seed's 95% claim). Cells marked ``repeat``
    (a seed run again, e.g. on a re-pretrained export) are kept in the JSON but not counted twice."""
    from fewlabel.compare.stats import summarize

    rows = [("wav2vec 2.0 tiny + linear probe", {"kind": "wav2vec2", "protocol": "linear"}),
            ("wav2vec 2.0 tiny + fine-tuning", {"kind": "wav2vec2", "protocol": "finetune"})]
    rows += [(f"log-mel CNN, `{p}`", {"kind": "cnn", "policy": p}) for p in POLICIES]

    def cells(match: dict, fraction: str) -> list[dict]:
        found = [c for c in store.data["cells"] if c.get("labels") == fraction and "repeat" not in c
                 and all(c.get(k) == v for k, v in match.items())]
        return sorted(found, key=lambda c: c["seed"])

    print("| approach | " + " | ".join(LABEL_COUNTS.values()) + " |")
    print("| --- | --- | --- | --- |")
    for name, match in rows:
        out = []
        for fraction in LABEL_COUNTS:
            found = cells(match, fraction)
            if not found:
                out.append("not run")
                continue
            accuracy = summarize([c["test_accuracy"] for c in found])
            f1 = sum(c["macro_f1"] for c in found) / len(found)
            seconds = sum(c["train_seconds"] for c in found) / len(found)
            seeds = "/".join(f"{100 * c['test_accuracy']:.1f}" for c in found)
            out.append(f"{accuracy.format()} (F1 {100 * f1:.1f}; {seeds}; {seconds:.0f} s; n={len(found)})")
        print(f"| {name} | " + " | ".join(out) + " |")
    print("\n10% / 100% labels, per seed (the seed's 95% claim):")
    for name, match in rows:
        ten, full = (cells(match, f) for f in ("0.1", "1.0"))
        pairs = [(a, b) for a in ten for b in full if a["seed"] == b["seed"]]
        if pairs:
            ratio = summarize([a["test_accuracy"] / b["test_accuracy"] for a, b in pairs])
            print(f"- {name}: {ratio.format()}% (seeds {[a['seed'] for a, _ in pairs]})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", default="/tmp/audio-grid", help="run folders (large; outside the repository)")
    parser.add_argument("--json", default="benchmarks/results/audio_grid.json")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--first-seed", type=int, default=0,
                        help="CNN cells: seeds --first-seed .. --seeds-1 (split one row's seeds across processes)")
    parser.add_argument("--fractions", default=",".join(FRACTIONS))
    parser.add_argument("--policies", default=",".join(POLICIES))
    parser.add_argument("--pretrain-epochs", default="10,30")
    parser.add_argument("--pretrain-batch", type=int, default=32)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--finetune-flags", default="",
                        help="extra flags for the fine-tuning cells, e.g. '--no-lp-ft --lr-sweep 1' for the recipe "
                             "before issue 16 (the stored cells' recipe)")
    parser.add_argument("--skip-cnn", action="store_true", help="only the wav2vec 2.0 cells")
    parser.add_argument("--summary", action="store_true", help="print the table of the stored cells and exit")
    args = parser.parse_args()
    if args.summary:
        summarise(CellStore(args.json))
        return
    torch.set_num_threads(args.threads)
    os.environ.setdefault("FEWLABEL_OFFLINE", "1")
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    store = CellStore(args.json)
    store.data["command"] = " ".join(sys.argv)
    export = pretrain_stages(store, work, [int(e) for e in args.pretrain_epochs.split(",")], args.pretrain_batch)
    fractions = args.fractions.split(",")
    policies = args.policies.split(",")
    # Most informative first, so a run cut short still answers the questions: wav2vec 2.0 at every seed
    # (fine-tuning on 100% of the labels, the slowest cell, only for seed 0 at first), then the best policy's CNN,
    # then the other policies at 10%, then the rest.
    def wav2vec2_cell(protocol: str, fraction: str, seed: int) -> None:
        key = {"kind": "wav2vec2", "protocol": protocol, "labels": fraction, "seed": seed}
        out = work / f"w2v-{protocol}-{fraction}-s{seed}"
        if protocol == "linear":
            cmd = ["evaluate", "--backbone", str(export), "--protocol", "linear"]
        else:  # the transfer path: the convolutional feature encoder frozen, as the paper fine-tunes
            cmd = ["finetune", "--backbone", str(export), "--strategy", "finetune", "--data", "spoken-words",
                   *args.finetune_flags.split()]
        store.run(key, lambda: run([*cmd, "--labels", fraction, "--seed", str(seed)], out))

    late = [("finetune", "1.0", seed) for seed in range(1, args.seeds)]
    for seed in range(args.seeds):
        for fraction in fractions:
            for protocol in ("linear", "finetune"):
                if (protocol, fraction, seed) not in late:
                    wav2vec2_cell(protocol, fraction, seed)
    order = [(p, f) for p in policies[1:2] for f in fractions]
    order += [(p, "0.1") for p in policies if (p, "0.1") not in order and "0.1" in fractions]
    order += [(p, f) for p in policies for f in fractions if (p, f) not in order]
    if args.skip_cnn:
        order = []
    for index, (policy, fraction) in enumerate(order):
        if index == len(policies) + len(fractions) - 1:  # after the best policy and every policy at 10%
            for cell in late:
                wav2vec2_cell(*cell)
        for seed in range(args.first_seed, args.seeds):
            key = {"kind": "cnn", "policy": policy, "labels": fraction, "seed": seed}
            store.run(key, lambda p=policy, f=fraction, s=seed: run(
                ["train", "--data", "spoken-words", "--augment", p, "--width", "16", "--labels", f,
                 "--seed", str(s)], work / f"cnn-{p}-{f}-s{s}"))
    for cell in late:  # when the grid above was too short to reach them (finished cells are skipped)
        wav2vec2_cell(*cell)

if __name__ == "__main__":
    main()
