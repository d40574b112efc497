"""Issue 16's table: transfer strategies before and after LP-FT / BatchNorm policy / learning-rate sweep, over seeds.

    FEWLABEL_DATA=../shared/data python benchmarks/lp_ft.py --data digits --fractions 0.05,0.1,0.2,1.0 --seeds 3 \\
        --json benchmarks/results/lp_ft.json

    python benchmarks/lp_ft.py --json benchmarks/results/lp_ft_v2.json --table   # the issue's table

Every cell is a `fewlabel finetune` command run in this process (`fewlabel.cli.main`), read back from its
`metrics.json`; finished cells are never rerun. "before" is the recipe as it was before issue 16, reproduced with
flags of the current code (`--no-lp-ft --bn train --lr-sweep 1`: a random head, BatchNorm statistics updated
except in `partial`'s frozen stages, the strategy's default learning rate); "after-start-trial" is the default and
"after" the default before its sweep tried a random-head start (`--no-random-head-trial`). All use the
current early stopping (patience counts once the training loss leaves chance). `feature-extract` is the reference
each fine-tuned cell must not fall below.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _cells import CellStore

from fewlabel.cli import main as fewlabel

BACKBONE = {"digits": "efficientnet_lite0", "fashion-mnist": "efficientnet_lite0", "rotten-tomatoes": "minilm"}
# "after-start-trial" is the default since session 15 (LP-FT with the head scaled for fine-tuning, BatchNorm by --bn
# auto, and a sweep that also tries fine-tuning from a random head); "after" is the default as it was before that
# trial; "after-own-pooling" is the default since session 16 (text mean-last4: fine-tuning trains the head on the
# last layer's mean; images: the same as "after-start-trial", which now names the text runs on all four layers);
# "after-unscaled" is LP-FT from the raw probe head, as measured first (lp_ft.json's "after-bn-train": --bn
# auto gives train there).
VARIANTS = {"before": ["--no-lp-ft", "--bn", "train", "--lr-sweep", "1"],
            "after": ["--no-random-head-trial", "--no-own-pooling"],
            "after-start-trial": ["--no-own-pooling"], "after-own-pooling": [],
            "after-bn-train": ["--bn", "train"], "after-unscaled": ["--no-lp-head-scale"],
            "after-bn-frozen": ["--bn", "frozen"]}
T95 = {2: 12.706, 3: 4.303, 4: 3.182, 5: 2.776}


def cell(data: str, fraction: str, seed: int, strategy: str, variant: str, work: Path,
         image_size: int | None = None) -> dict:
    out = work / f"{data}-{fraction}-{strategy}-{variant}-s{seed}"
    args = ["finetune", "--backbone", BACKBONE[data], "--strategy", strategy, "--data", data, "--labels", fraction,
            "--seed", str(seed), *(["--image-size", str(image_size)] if image_size else []),
            *VARIANTS.get(variant, [])]
    started = time.perf_counter()
    if fewlabel(["-q", *args, "--out", str(out)]) != 0:
        raise RuntimeError(f"fewlabel {' '.join(args)} failed")
    m = json.loads((out / "metrics.json").read_text(encoding="utf-8"))
    sweep = m.get("lr_sweep") or {}
    return {"command": "fewlabel " + " ".join(args), "wall_seconds": round(time.perf_counter() - started, 1),
            "test_accuracy": m["test_accuracy"], "macro_f1": m["macro_f1"], "kept": m.get("kept"),
            "best_val_accuracy": m.get("best_val_accuracy"), "tuned_test_accuracy": m.get("tuned_test_accuracy"),
            "train_seconds": m["train_seconds"], "lp_seconds": m.get("lp_seconds"),
            "sweep_extra_seconds": sweep.get("extra_seconds"), "chosen_lr": sweep.get("chosen_lr"),
            "chosen_start": sweep.get("chosen_start"), "sweep_trials": sweep.get("trials"),
            "start_val_accuracy": m.get("start_val_accuracy"), "tuned_val_accuracy": m.get("tuned_val_accuracy"),
            "batchnorm": (m.get("transfer") or {}).get("batchnorm"), "epochs_run": m.get("epochs_run"),
            "lp_head_scale": m.get("lp_head_scale")}


def summarise(store: CellStore) -> None:
    rows: dict[tuple, list[float]] = {}
    for c in store.data["cells"]:
        data = c["data"] + (f" @{c['image_size']} px" if c.get("image_size") else "")
        rows.setdefault((data, c["labels"], c["strategy"], c["variant"]), []).append(100 * c["test_accuracy"])
    print("| data | labels | strategy | variant | mean ± 95% CI | seeds |")
    print("| --- | --- | --- | --- | --- | --- |")
    for (data, labels, strategy, variant), accs in sorted(rows.items()):
        ci = T95.get(len(accs), 2.0) * statistics.stdev(accs) / math.sqrt(len(accs)) if len(accs) > 1 else float("nan")
        print(f"| {data} | {labels} | {strategy} | {variant} | {statistics.mean(accs):.2f} ± {ci:.2f} | "
              f"{' / '.join(f'{a:.1f}' for a in accs)} |")


# The variant that is the current default ("after" in the issue's table): images take the same code path under
# either name; text fine-tunes on its own pooling since session 16.
DEFAULT_AFTER = {"rotten-tomatoes": "after-own-pooling"}
TABLE_COLUMNS = [("feature-extract", "reference"), ("finetune", "before"), ("finetune", None),
                 ("partial", "before"), ("partial", None)]


def mean_ci(accs: list[float]) -> str:
    if len(accs) < 2:
        return f"{accs[0]:.1f} (n=1)" if accs else "not run"
    ci = T95.get(len(accs), 2.0) * statistics.stdev(accs) / math.sqrt(len(accs))
    return f"{statistics.mean(accs):.1f} ± {ci:.1f}" + ("" if len(accs) == 3 else f" (n={len(accs)})")


def issue_table(store: CellStore) -> None:
    """The issue's one table: feature-extract, and finetune / partial before and after (the current default), per
    data set and fraction; the seeds, how many runs kept the probe, per-seed shortfalls against feature-extract,
    and the cost of the probe stage and the losing sweep trials against the rest of the fine-tuning."""
    groups: dict[tuple, dict[tuple, dict[int, dict]]] = {}
    for c in store.data["cells"]:
        after = DEFAULT_AFTER.get(c["data"], "after-start-trial")
        variant = None if c["variant"] == after else c["variant"]
        if (c["strategy"], variant) not in TABLE_COLUMNS:
            continue
        data = c["data"] + (f" @{c['image_size']} px" if c.get("image_size") else "")
        groups.setdefault((data, float(c["labels"])), {}).setdefault((c["strategy"], variant), {})[c["seed"]] = c
    print("| data | labels | feature-extract | finetune before | finetune after | partial before | partial after |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for (data, labels), columns in sorted(groups.items()):
        reference = {s: 100 * c["test_accuracy"] for s, c in columns.get(("feature-extract", "reference"), {}).items()}
        cells = []
        for column in TABLE_COLUMNS:
            runs = dict(sorted(columns.get(column, {}).items()))
            accs = [100 * c["test_accuracy"] for c in runs.values()]
            text = mean_ci(accs) + (f" ({' / '.join(f'{a:.1f}' for a in accs)})" if accs else "")
            if column[1] is None and runs:
                probe = sum(c.get("kept") not in (None, "fine-tuned") for c in runs.values())
                short = [f"s{s} {100 * c['test_accuracy'] - reference[s]:+.1f}" for s, c in runs.items()
                         if s in reference and 100 * c["test_accuracy"] < reference[s] - 0.5]
                extra = sum((c.get("lp_seconds") or 0) + (c.get("sweep_extra_seconds") or 0) for c in runs.values())
                tuning = sum(c["train_seconds"] - (c.get("sweep_extra_seconds") or 0) for c in runs.values())
                text += f"; probe kept {probe}/{len(runs)}; cost +{100 * extra / tuning:.0f}%"
                text += f"; below FE by > 0.5: {', '.join(short)}" if short else ""
            cells.append(text)
        print(f"| {data} | {labels:g} | " + " | ".join(cells) + " |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="digits")
    parser.add_argument("--fractions", default="0.05,0.1,0.2,1.0")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--seed-list", default=None, metavar="S,S",
                        help="run exactly these seeds instead of 0 .. --seeds - 1 (to split one table over processes)")
    parser.add_argument("--strategies", default="finetune,partial")
    parser.add_argument("--variants", default="before,after",
                        help=f"comma-separated, of {', '.join(VARIANTS)} (the feature-extract reference always runs)")
    parser.add_argument("--import-from", default=None, metavar="JSON",
                        help="copy these variants' finished cells from an earlier store (marked imported_from) "
                        "instead of rerunning them: for variants whose code path did not change")
    parser.add_argument("--import-variants", default="before,reference",
                        help="with --import-from: the variants to copy; OLD=NEW renames one "
                        "(after-bn-train=after-unscaled)")
    parser.add_argument("--json", default="benchmarks/results/lp_ft.json")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--image-size", type=int, default=None,
                        help="images: the input resolution (default: the backbone's, 224 px); part of the cells' key")
    parser.add_argument("--summary", action="store_true", help="print the table of the stored cells and exit")
    parser.add_argument("--table", action="store_true",
                        help="print the issue's before/after table (the current default as 'after') and exit")
    args = parser.parse_args()
    store = CellStore(args.json)
    if args.summary or args.table:
        (issue_table if args.table else summarise)(store)
        return
    if args.import_from:
        old = CellStore(args.import_from).data["cells"]
        renames = dict(v.split("=") if "=" in v else (v, v) for v in args.import_variants.split(","))
        for c in old:
            if c["data"] == args.data and c["variant"] in renames:
                key = {k: c[k] for k in ("data", "labels", "seed", "strategy")} | {"variant": renames[c["variant"]]}
                store.run(key, lambda c=c, key=key: {k: v for k, v in c.items() if k not in key}
                          | {"imported_from": args.import_from})
    unknown = set(args.variants.split(",")) - set(VARIANTS)
    if unknown:
        parser.error(f"unknown variants {sorted(unknown)}; choose from {', '.join(VARIANTS)}")
    torch.set_num_threads(args.threads)
    seeds = [int(s) for s in args.seed_list.split(",")] if args.seed_list else list(range(args.seeds))
    with tempfile.TemporaryDirectory() as tmp:
        for fraction in args.fractions.split(","):
            for seed in seeds:
                key = {"data": args.data, "labels": fraction, "seed": seed}
                key |= {"image_size": args.image_size} if args.image_size else {}
                store.run({**key, "strategy": "feature-extract", "variant": "reference"},
                          lambda f=fraction, s=seed: cell(args.data, f, s, "feature-extract", "reference", Path(tmp),
                                                          args.image_size))
                for strategy in args.strategies.split(","):
                    for variant in args.variants.split(","):
                        store.run({**key, "strategy": strategy, "variant": variant},
                                  lambda f=fraction, s=seed, st=strategy, v=variant: cell(
                                      args.data, f, s, st, v, Path(tmp), args.image_size))
    summarise(store)


if __name__ == "__main__":
    main()
