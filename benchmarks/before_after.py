"""Time the same commands on two source trees of fewlabel, interleaved in one run (A B A B ...), so that a
refactor's effect on speed is measured under the same machine load.

    git worktree add /tmp/fewlabel-before <rev>
    python benchmarks/before_after.py --before /tmp/fewlabel-before/src --after src --rounds 2 \\
        --data-dir ../shared/data --json benchmarks/results/before_after.json

Commands: ``fewlabel demo`` (wall seconds) and one SimCLR epoch on Fashion-MNIST (wall seconds and the run's own
samples/s). Each runs in a fresh process with the tree first on ``sys.path``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RUNNER = "import sys; sys.path.insert(0, sys.argv[1]); from fewlabel.cli import main; sys.exit(main(sys.argv[2:]))"


def run(tree: str, args: list[str], env: dict[str, str]) -> float:
    started = time.perf_counter()
    subprocess.run([sys.executable, "-c", RUNNER, tree, *args], check=True, env=env,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", required=True, help="src/ folder of the earlier tree")
    parser.add_argument("--after", required=True, help="src/ folder of the later tree")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--data-dir", default="../shared/data")
    parser.add_argument("--json", default=None)
    parser.add_argument("--demo-only", action="store_true", help="time fewlabel demo alone")
    args = parser.parse_args()
    env = {**os.environ, "FEWLABEL_DATA": str(Path(args.data_dir).resolve())}
    trees = {"before": str(Path(args.before).resolve()), "after": str(Path(args.after).resolve())}
    results: dict[str, dict[str, list[float]]] = {name: {"demo_s": [], "simclr_epoch_s": [], "simclr_samples_per_s": []}
                                                  for name in trees}
    with tempfile.TemporaryDirectory() as scratch:
        for round_ in range(args.rounds):
            order = list(trees) if round_ % 2 == 0 else list(reversed(trees))
            for name in order:
                out = Path(scratch) / f"{name}-{round_}"
                results[name]["demo_s"].append(round(run(trees[name], ["-q", "demo", "--out", str(out / "demo")],
                                                         env), 1))
                if args.demo_only:
                    print(name, round_, results[name]["demo_s"][-1], flush=True)
                    continue
                pre = out / "simclr"
                seconds = run(trees[name], ["-q", "pretrain", "--method", "simclr", "--data", "fashion-mnist",
                                            "--epochs", "1", "--width", "16",
                                            "--out", str(pre)], env)
                metrics = json.loads((pre / "metrics.json").read_text())
                results[name]["simclr_epoch_s"].append(round(seconds, 1))
                results[name]["simclr_samples_per_s"].append(metrics["samples_per_second"])
                print(name, round_, {k: v[-1] for k, v in results[name].items()}, flush=True)
    summary = {name: {k: {"runs": v, "median": statistics.median(v)} for k, v in r.items() if v}
               for name, r in results.items()}
    print(json.dumps(summary, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps({"command": " ".join(sys.argv), **summary}, indent=2) + "\n")


if __name__ == "__main__":
    main()
