"""Supervised log-mel CNN on spoken-words: each augmentation policy at one label fraction, over seeds (the default
`fewlabel train` budget, ResNet-small width 16).

    FEWLABEL_DATA=../shared/data python benchmarks/audio_policies.py --labels 0.1 --seeds 3 \\
        --policies none,standard,specaugment --json benchmarks/results/audio_policies.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

from fewlabel.approaches.supervised import SupervisedConfig, train_supervised
from fewlabel.engine.fit import Budget


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--labels", default="0.1")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--policies", default="none,standard,specaugment,mixup")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for policy in args.policies.split(","):
            for seed in range(args.seeds):
                result = train_supervised(SupervisedConfig(
                    data="spoken-words", labels=args.labels, augment=policy, width=16, seed=seed,
                    budget=Budget(progress=False), out=f"{tmp}/{policy}-{seed}"))
                m = result.metrics
                rows.append({"policy": policy, "seed": seed, "test_accuracy": round(m["test_accuracy"], 4),
                             "macro_f1": round(m["macro_f1"], 4), "seconds": m["train_seconds"],
                             "epochs_run": m["epochs_run"], "epochs_planned": m["epochs_planned"]})
                print(rows[-1], flush=True)
    summary = {}
    for policy in args.policies.split(","):
        accs = [r["test_accuracy"] for r in rows if r["policy"] == policy]
        summary[policy] = {"mean": round(statistics.mean(accs), 4),
                           "stdev": round(statistics.stdev(accs), 4) if len(accs) > 1 else None}
    print(json.dumps(summary, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps({"command": " ".join(sys.argv), "runs": rows, "summary": summary},
                                              indent=2) + "\n")


if __name__ == "__main__":
    main()
