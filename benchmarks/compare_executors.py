"""`fewlabel compare` executors: the local one (one process, ``--workers 2``) against ``--executor ray`` on the
demo's grid, Ray's scheduling overhead per job, and a simulated 2-machine Ray cluster on this host.

    python benchmarks/compare_executors.py --phase startup --rounds 3
    python benchmarks/compare_executors.py --phase overhead --jobs 100
    python benchmarks/compare_executors.py --phase demo --modes local,workers2,ray   # then --modes ray,workers2,local
    python benchmarks/compare_executors.py --phase cluster

Phases (results merged into ``--json``, default benchmarks/results/compare_executors.json):

- ``startup``: ``ray.init(num_cpus=2)`` (a local instance) and ``ray.shutdown()``, wall seconds per round.
- ``overhead``: a grid of ``--jobs`` supervised jobs with a no-op runner (:func:`noop`: no training, so every
  second is the executor's), through ``run_grid`` (local, one process) and ``run_grid_ray`` on a local instance
  of 2 CPUs; ``(wall - startup) / jobs`` is the overhead per job (2 jobs in flight at once for Ray).
- ``demo``: the demo's grid (digits, labels 0.05 / 0.2 / 1.0, 2 seeds, small budget: 24 jobs) with each mode as
  a fresh ``fewlabel compare`` process into a fresh folder, wall seconds; the feature cache is shared (warm after
  the first run).
- ``cluster``: ``ray start --head --num-cpus 1`` plus a second ``ray start --address ... --num-cpus 1`` on this
  host (two Ray nodes), the demo's grid with ``--executor ray --ray-address``, then checks that every job ran
  exactly once (one result and one run folder per job, none moved aside, no lease left) and which node ran each
  (the results' ``ran_on``); ``ray stop --force`` afterwards. Both nodes and the driver share
  ``RAY_AUTH_MODE=token`` and this user's token file (on real machines: the same token on every node).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import yaml

HERE = Path(__file__).resolve().parent
DEMO = ["--data", "digits", "--labels", "0.05,0.2,1.0", "--seeds", "2", "--budget", "small"]


def noop(job, store) -> dict[str, Any]:
    """A job runner that trains nothing (the executor's own cost alone)."""
    return {"test_accuracy": 0.5, "seconds": 0.0, "labelled": 1, "warnings": []}


def load_average() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def phase_startup(rounds: int) -> dict[str, Any]:
    import ray

    runs = []
    for _ in range(rounds):
        started = time.perf_counter()
        ray.init(num_cpus=2, include_dashboard=False, logging_level="warning")
        ready = time.perf_counter()
        ray.shutdown()
        runs.append({"init_s": round(ready - started, 2), "shutdown_s": round(time.perf_counter() - ready, 2)})
        print(runs[-1], flush=True)
    return {"runs": runs, "load_average": load_average()}


def phase_overhead(jobs: int) -> dict[str, Any]:
    import ray

    from fewlabel.compare import BUDGETS, build_grid
    from fewlabel.compare.executor import ResultStore, run_grid
    from fewlabel.compare.ray_executor import RaySession, run_grid_ray

    seeds = max(1, jobs // 5)
    grid = build_grid("digits", ["0.05", "0.1", "0.2", "0.5", "1.0"], seeds, ["supervised"], BUDGETS["small"], [])
    result: dict[str, Any] = {"jobs": len(grid), "load_average_before": load_average()}
    with tempfile.TemporaryDirectory() as scratch:
        started = time.perf_counter()
        outcome = run_grid(grid, ResultStore(Path(scratch) / "local"), noop)
        local = time.perf_counter() - started
        assert outcome.ran == len(grid), outcome
        result["local"] = {"wall_s": round(local, 2), "per_job_s": round(local / len(grid), 4)}
        print("local", result["local"], flush=True)

        os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(HERE), os.environ.get("PYTHONPATH")]))
        started = time.perf_counter()
        ray.init(num_cpus=2, include_dashboard=False, logging_level="warning")
        startup = time.perf_counter() - started
        try:
            store = ResultStore(Path(scratch) / "ray")
            begun = time.perf_counter()
            outcome = run_grid_ray(grid, store, RaySession(ray, False, None), runner="compare_executors:noop",
                                   poll_seconds=0.5)
            grid_s = time.perf_counter() - begun
            assert outcome.ran == len(grid), outcome
            pids = Counter(r["ran_on"]["pid"] for r in store.all_results())
        finally:
            ray.shutdown()
        wall = startup + grid_s
        result["ray"] = {"startup_s": round(startup, 2), "grid_s": round(grid_s, 2), "wall_s": round(wall, 2),
                         "per_job_s": round((wall - startup) / len(grid), 4), "worker_processes": len(pids),
                         "jobs_per_worker": sorted(pids.values())}
        print("ray", result["ray"], flush=True)
    result["load_average_after"] = load_average()
    return result


def timed(command: list[str], log: Path, env: dict[str, str] | None = None) -> float:
    started = time.perf_counter()
    with open(log, "w") as handle:
        subprocess.run(command, check=True, stdout=handle, stderr=subprocess.STDOUT, env=env)
    return time.perf_counter() - started


def fewlabel(*args: str) -> list[str]:
    return [sys.executable, "-m", "fewlabel.cli", *args]


def phase_demo(modes: list[str], scratch: Path, earlier: dict[str, Any]) -> dict[str, Any]:
    """One run per mode, in the order given, each appended to the mode's earlier runs (``earlier``)."""
    # "local" is one process on all the cores (``--workers 1``; before automatic worker counts, the default).
    flags = {"local": ["--workers", "1"], "workers2": ["--workers", "2"], "auto": [], "ray": ["--executor", "ray"]}
    result: dict[str, Any] = json.loads(json.dumps(earlier))
    for mode in modes:
        out = scratch / f"demo-{mode}-{time.time_ns()}"
        load = load_average()
        wall = timed(fewlabel("compare", *DEMO, *flags[mode], "--out", str(out)), scratch / f"{out.name}.log")
        records = [json.loads(p.read_text()) for p in (out / "results").glob("*.json")]
        entry = result.setdefault(mode, {"command": "fewlabel compare " + " ".join([*DEMO, *flags[mode], "--out",
                                                                                       "OUT"]), "runs": []})
        entry["runs"].append({"wall_s": round(wall, 1), "jobs": len(records), "load_average_before": load,
                              "order": modes, "finished_at": time.strftime("%H:%M")})
        print(mode, entry["runs"][-1], flush=True)
    return result


def ray_cli(*args: str, env: dict[str, str]) -> None:
    subprocess.run(["ray", *args], check=True, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def phase_cluster(scratch: Path, port: int) -> dict[str, Any]:
    env = {**os.environ, "RAY_AUTH_MODE": "token"}
    address = f"127.0.0.1:{port}"
    result: dict[str, Any] = {"load_average_before": load_average()}
    try:
        started = time.perf_counter()
        ray_cli("start", "--head", "--num-cpus", "1", "--port", str(port), "--include-dashboard=false",
                "--disable-usage-stats", env=env)
        head = time.perf_counter()
        ray_cli("start", "--address", address, "--num-cpus", "1", "--disable-usage-stats", env=env)
        joined = time.perf_counter()
        result["head_start_s"], result["worker_start_s"] = round(head - started, 1), round(joined - head, 1)
        out = scratch / "cluster"
        command = fewlabel("compare", *DEMO, "--executor", "ray", "--ray-address", address, "--out", str(out))
        result["command"] = ("RAY_AUTH_MODE=token fewlabel compare " + " ".join(DEMO)
                             + f" --executor ray --ray-address {address} --out OUT")
        result["wall_s"] = round(timed(command, scratch / "cluster.log", env), 1)
        records = [json.loads(p.read_text()) for p in (out / "results").glob("*.json")]
        keys = [r["key"] for r in records]
        planned = yaml.safe_load((out / "compare.yaml").read_text())["job_keys"]
        runs = sorted(p.name for p in (out / "runs").iterdir())
        nodes = Counter(r["ran_on"]["node_id"][:8] for r in records)
        result.update({
            "jobs": len(planned), "results": len(records), "unique_results": len(set(keys)),
            "every_job_once": sorted(keys) == sorted(planned) and len(set(keys)) == len(keys),
            "run_folders": len(runs), "run_folders_moved_aside": sum(".interrupted-" in name for name in runs),
            "run_folders_match_jobs": sorted(runs) == sorted(planned),
            "leases_left": len(list((out / "leases").glob("*.lease"))),
            "failures": len(list((out / "results" / "failed").glob("*.json"))) if (out / "results" / "failed").is_dir()
            else 0,
            "jobs_per_node": dict(nodes), "nodes": len(nodes),
            "jobs_per_worker_pid": sorted(Counter((r["ran_on"]["node_id"][:8], r["ran_on"]["pid"])
                                                  for r in records).values()),
        })
    finally:
        subprocess.run(["ray", "stop", "--force"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    print(result, flush=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--phase", required=True, choices=["startup", "overhead", "demo", "cluster"])
    parser.add_argument("--rounds", type=int, default=3, help="startup: rounds")
    parser.add_argument("--jobs", type=int, default=100, help="overhead: no-op jobs (a multiple of 5)")
    parser.add_argument("--modes", default="local,workers2,ray",
                        help="demo: local (--workers 1), workers2, auto (default worker count), ray (in this order)")
    parser.add_argument("--port", type=int, default=6390, help="cluster: the head node's port")
    parser.add_argument("--keep", default=None, help="folder to keep the compare folders and logs in")
    parser.add_argument("--json", default=str(HERE / "results" / "compare_executors.json"))
    args = parser.parse_args()
    path = Path(args.json)
    results = json.loads(path.read_text()) if path.is_file() else {}
    results["machine"] = {"host": socket.gethostname(), "cpus": os.cpu_count(), "python": platform.python_version()}
    with tempfile.TemporaryDirectory() as tmp:
        scratch = Path(args.keep) if args.keep else Path(tmp)
        scratch.mkdir(parents=True, exist_ok=True)
        if args.phase == "startup":
            result = phase_startup(args.rounds)
        elif args.phase == "overhead":
            result = phase_overhead(args.jobs)
        elif args.phase == "demo":
            result = phase_demo(args.modes.split(","), scratch, results.get("demo", {}))
        else:
            result = phase_cluster(scratch, args.port)
    results[args.phase] = {**result, "measured_at": time.strftime("%Y-%m-%d %H:%M")}
    results.setdefault("commands", {})[args.phase] = "python benchmarks/compare_executors.py " + " ".join(sys.argv[1:])
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
