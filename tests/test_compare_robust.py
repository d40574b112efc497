"""compare at scale: failures that do not stop the grid, leases between processes, data fingerprints, dataset
options passed through, paired statistics, progress lines, report names."""

from __future__ import annotations

import json
import logging
import math
import os
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from fewlabel.cli import main
from fewlabel.compare import BUDGETS, build_grid, recommend
from fewlabel.compare import executor as executor_module
from fewlabel.compare.executor import ResultStore, execute, run_grid
from fewlabel.compare.lease import Leases
from fewlabel.compare.report import write_report
from fewlabel.compare.stats import paired_difference
from fewlabel.errors import FewlabelError

GRID = (["0.1", "1"], ["supervised", "transfer", "selfsupervised"], BUDGETS["small"], ["efficientnet_lite0"])


def grid(seeds: int = 2):
    return build_grid("digits", GRID[0], seeds, *GRID[1:])


def fake_result(job) -> dict:
    base = {"supervised": 0.8, "transfer": 0.85, "probe": 0.9, "pretrain": 0.0}[job.approach]
    return {"test_accuracy": None if job.approach == "pretrain" else base + 0.01 * job.seed, "seconds": 1.0,
            "labelled": 10, "warnings": []}


def runner(calls: list[str], fail: set[str] = frozenset()):
    def run(job, store):
        calls.append(job.key())
        if job.key() in fail:
            raise RuntimeError(f"boom in {job.key()}\nsecond line of the message")
        return fake_result(job)
    return run


# -- 1. failures ---------------------------------------------------------------------------------------------------
def test_a_failing_job_does_not_stop_the_grid_and_retry_failed_reruns_only_it(tmp_path: Path) -> None:
    jobs = grid()
    store = ResultStore(tmp_path)
    broken_supervised = next(j for j in jobs if j.approach == "supervised").key()
    broken_pretrain = next(j for j in jobs if j.approach == "pretrain" and j.seed == 1)
    blocked = {j.key() for j in jobs if j.depends_on == broken_pretrain.key()}
    assert len(blocked) == 2  # its linear probes at both label fractions

    calls: list[str] = []
    outcome = run_grid(jobs, store, runner(calls, {broken_supervised, broken_pretrain.key()}), limit=len(jobs) - 3)
    failing = {broken_supervised, broken_pretrain.key()} | blocked
    assert outcome.failed == 4 and outcome.ran == len(jobs) - 7 and outcome.unfinished == 3
    assert set(calls).isdisjoint(blocked)  # probes of a failed pretraining are recorded as failed, not run
    failed = {r["key"]: r for r in store.all_failures()}
    assert set(failed) == failing
    record = failed[broken_supervised]
    assert record["error"] == f"RuntimeError: boom in {broken_supervised}"  # the error's first line
    assert Path(record["traceback_path"]).read_text().endswith(
        f"RuntimeError: boom in {broken_supervised}\nsecond line of the message\n")  # the whole traceback
    assert all("not run: the job it depends on" in failed[k]["error"] for k in blocked)
    assert not store.done_key(broken_supervised)

    # a plain rerun runs what was not run yet (the last 3 jobs) and not the failed ones
    again: list[str] = []
    outcome = run_grid(jobs, store, runner(again))
    assert outcome.failed_before == 4 and outcome.failed == 0 and outcome.ran == 3
    assert len(again) == 3 and set(again).isdisjoint(failing)
    quiet: list[str] = []
    assert execute(jobs, store, runner=runner(quiet)) == (0, len(jobs) - 4) and not quiet

    # the report lists the failed cells
    results = store.all_results()
    write_report(results, tmp_path, "t", {}, failures=store.all_failures())
    md = (tmp_path / "report.md").read_text()
    assert "## Failed runs" in md and f"RuntimeError: boom in {broken_supervised}" in md
    assert "--retry-failed" in md and "(n=1, 1 failed)" in md and "failed (x1)" not in md

    # --retry-failed reruns exactly the 4 failed jobs (pretraining before its probes) and nothing else
    retried: list[str] = []
    outcome = run_grid(jobs, store, runner(retried), retry_failed=True)
    assert sorted(retried) == sorted(failing)
    assert retried.index(broken_pretrain.key()) < min(retried.index(k) for k in blocked)
    assert outcome.ran == 4 and outcome.failed == 0 and store.all_failures() == []
    assert all(store.done(j) for j in jobs)


def test_keyboard_interrupt_still_stops_the_grid(tmp_path: Path) -> None:
    jobs = build_grid("digits", ["0.1", "1"], 1, ["supervised"], BUDGETS["small"], [])
    store = ResultStore(tmp_path)

    def interrupted(job, store):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        execute(jobs, store, runner=interrupted)
    assert store.all_failures() == [] and store.all_results() == []
    assert list((tmp_path / "leases").glob("*.lease")) == []  # the lease was released on the way out


# -- 2. leases -----------------------------------------------------------------------------------------------------
def dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def write_lease(leases: Leases, key: str, pid: int, host: str, age: float = 0.0) -> None:
    leases.folder.mkdir(parents=True, exist_ok=True)
    path = leases.path(key)
    path.write_text(json.dumps({"pid": pid, "host": host, "started": time.time() - age, "token": "theirs"}))
    os.utime(path, (time.time() - age, time.time() - age))


def test_stale_lease_rule(tmp_path: Path) -> None:
    leases = Leases(tmp_path / "leases", heartbeat=0.05, stale_after=60)
    here = socket.gethostname()
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        write_lease(leases, "a", live.pid, here)  # a live process on this host: not stale
        assert not leases.acquire("a") and leases.holder("a")["pid"] == live.pid
        write_lease(leases, "b", dead_pid(), here)  # its owner died: stale at once
        assert leases.holder("b") is None and leases.acquire("b")
        write_lease(leases, "c", 1, "another-host")  # another host, fresh heartbeat: trusted
        assert not leases.acquire("c")
        write_lease(leases, "d", 1, "another-host", age=120)  # another host, no heartbeat for 120 s > 60 s
        assert leases.acquire("d")
        time.sleep(0.3)  # our heartbeat keeps the lease's modification time fresh
        assert time.time() - leases.path("d").stat().st_mtime < 0.3
        content = json.loads(leases.path("d").read_text())
        assert content["pid"] == os.getpid() and content["host"] == here and content["started"] <= time.time()
        leases.release("d")
        leases.release("b")
        assert not leases.path("d").exists() and not leases.path("b").exists()
        assert leases.path("a").exists()  # someone else's lease is never removed
    finally:
        live.kill()
        live.wait()


def test_a_job_leased_by_a_live_process_is_skipped_then_picked_up(tmp_path: Path) -> None:
    jobs = build_grid("digits", ["0.1", "1"], 1, ["supervised"], BUDGETS["small"], [])
    store = ResultStore(tmp_path)
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        write_lease(store.leases, jobs[0].key(), other.pid, socket.gethostname())
        calls: list[str] = []
        outcome = run_grid(jobs, store, runner(calls), wait_for_others=False)
        assert calls == [jobs[1].key()] and outcome.unfinished == 1
        # the other process finishes its job: a rerun picks up its result without running it
        store.save(jobs[0], fake_result(jobs[0]))
        store.leases.path(jobs[0].key()).unlink()
        assert execute(jobs, store, runner=runner(calls)) == (0, 2) and len(calls) == 1
    finally:
        other.kill()
        other.wait()


CONCURRENT = textwrap.dedent("""
    import json, os, sys, time
    from pathlib import Path
    from fewlabel.compare import CompareConfig, compare
    from fewlabel.compare import executor

    out, calls, me, peer = Path(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]

    def fake(job, store):
        with open(calls, "a") as handle:  # O_APPEND: whole lines from both processes
            handle.write(f"{job.key()} {os.getpid()}\\n")
        time.sleep(0.4)
        base = {"supervised": 0.8, "probe": 0.9, "pretrain": 0.0}[job.approach]
        return {"test_accuracy": None if job.approach == "pretrain" else base + 0.01 * job.seed,
                "seconds": 0.4, "labelled": 10, "warnings": []}

    executor.run_job = fake
    Path(me).touch()
    deadline = time.time() + 120
    while not Path(peer).exists() and time.time() < deadline:  # start both grids together
        time.sleep(0.05)
    result = compare(CompareConfig(data="digits", labels=("0.5", "1.0"), seeds=2,
                                   approaches=("supervised", "selfsupervised"), out=str(out)))
    print("RESULT " + json.dumps(result))
""")


def test_two_concurrent_compare_processes_run_each_job_once(tmp_path: Path) -> None:
    out, calls = tmp_path / "cmp", tmp_path / "calls.txt"
    script = tmp_path / "grid.py"
    script.write_text(CONCURRENT)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    a, b = tmp_path / "a.ready", tmp_path / "b.ready"
    procs = [subprocess.Popen([sys.executable, str(script), str(out), str(calls), str(me), str(peer)], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for me, peer in ((a, b), (b, a))]
    outputs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    results = [json.loads(next(line for line in o.splitlines() if line.startswith("RESULT "))[7:])
               for o, _ in outputs]
    lines = calls.read_text().split()
    keys, pids = lines[0::2], lines[1::2]
    jobs = results[0]["jobs"]
    assert jobs == 10  # per seed: a pretraining, its 2 probes and 2 supervised runs
    assert len(keys) == jobs and len(set(keys)) == jobs  # every job exactly once
    assert len(set(pids)) == 2  # both processes ran some
    assert sum(r["ran"] for r in results) == jobs
    assert all(r["complete"] for r in results)  # each waited for and picked up the other's results
    assert all(r["ran"] + r["by_others"] == jobs for r in results)
    assert list((out / "leases").glob("*.lease")) == []
    assert len(list((out / "results").glob("*.json"))) == jobs


# -- 3. data fingerprints ------------------------------------------------------------------------------------------
def text_table(path: Path, rows: int = 60, flip: bool = False) -> None:
    lines = ["quote,verdict,film"]
    for i in range(rows):
        good = (i % 2 == 0) != flip
        word = "wonderful moving brilliant" if good else "dull tedious awful"
        lines.append(f"\"{word} scene {i}\",{'fresh' if good else 'rotten'},film{i % 12}")
    path.write_text("\n".join(lines) + "\n")


COLUMNS = ["--text-column", "quote", "--label-column", "verdict", "--group-column", "film"]


def cli_args(table: Path, out: Path) -> list[str]:
    return ["-q", "compare", "--data", str(table), "--labels", "0.5,1.0", "--seeds", "1", "--approaches",
            "supervised", "--out", str(out), *COLUMNS]


def test_a_changed_data_file_reruns_its_jobs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []
    monkeypatch.setattr(executor_module, "run_job", runner(calls))
    table, out = tmp_path / "reviews.csv", tmp_path / "cmp"
    text_table(table)
    assert main(cli_args(table, out)) == 0
    first = list(calls)
    jobs = len(first)
    assert jobs >= 2
    assert main(cli_args(table, out)) == 0 and calls == first  # unchanged data: nothing reruns
    os.utime(table, (time.time() + 5, time.time() + 5))
    assert main(cli_args(table, out)) == 0 and calls == first  # touched, same content: still nothing
    text_table(table, flip=True)  # same size, other content
    assert main(cli_args(table, out)) == 0
    assert sorted(calls[jobs:]) == sorted(first)  # every job of that data reruns, once
    assert len(list((out / "results" / "stale").glob("*.json"))) == jobs  # the old results moved aside
    assert main(cli_args(table, out)) == 0 and len(calls) == 2 * jobs


def test_results_without_a_fingerprint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Legacy results (stored before fingerprints) are reused for a registered dataset (the stored benchmark
    grids), rerun for a path."""
    calls: list[str] = []
    monkeypatch.setattr(executor_module, "run_job", runner(calls))
    from fewlabel.compare import CompareConfig, compare

    for data, reruns in (("digits", False), ("path", True)):
        if data == "path":
            text_table(tmp_path / "t.csv")
            data = str(tmp_path / "t.csv")
        out = tmp_path / f"cmp-{reruns}"
        config = CompareConfig(data=data, labels=("1.0",), seeds=1, approaches=("supervised",), out=str(out),
                               columns={"text": "quote", "label": "verdict"})
        if data == "digits":
            config = CompareConfig(**{**config.__dict__, "columns": {}})
        compare(config)
        for path in (out / "results").glob("*.json"):  # strip the fingerprint: a result from older code
            record = json.loads(path.read_text())
            record.pop("data_fingerprint")
            path.write_text(json.dumps(record))
        before = len(calls)
        result = compare(config)
        assert (len(calls) > before) is reruns and result["complete"]


# -- 4. dataset options ------------------------------------------------------------------------------------------
def test_compare_passes_every_dataset_option(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    import fewlabel.approaches.supervised as supervised
    from fewlabel.data.registry import load_dataset

    seen = []

    def train(config):
        seen.append(config)
        dataset = load_dataset(config.data, config.data_dir, config.columns, skip_bad=config.skip_bad)
        assert dataset.classes == ["fresh", "rotten"]
        return SimpleNamespace(metrics={"test_accuracy": 0.75, "split": {"labelled": 30}})

    monkeypatch.setattr(supervised, "train_supervised", train)
    table, out = tmp_path / "reviews.csv", tmp_path / "cmp"
    text_table(table)
    # the table's columns are not the default names: without the flags, compare stops before any job
    assert main(["-q", "compare", "--data", str(table), "--labels", "1.0", "--seeds", "1", "--approaches",
                 "supervised", "--out", str(tmp_path / "plain")]) == 2
    assert "no text column found" in capsys.readouterr().err and not seen
    assert main([*cli_args(table, out), "--skip-bad"]) == 0
    assert len(seen) == 2
    assert all(c.columns == {"text": "quote", "label": "verdict", "group": "film"} and c.skip_bad for c in seen)
    stored = json.loads(next((out / "results").glob("*.json")).read_text())
    assert stored["job"]["settings"]["columns"] == {"group": "film", "label": "verdict", "text": "quote"}
    # the options reach the job's key: the same grid without them is other jobs
    plain = build_grid(str(table), ["0.5", "1.0"], 1, ["supervised"], BUDGETS["small"], [], modality="text")
    assert stored["key"] not in {j.key() for j in plain}


def test_clip_seconds_travels_in_the_columns() -> None:
    import argparse

    from fewlabel.cli import _columns

    args = argparse.Namespace(text_column=None, label_column=None, group_column=None, image_column=None,
                              audio_column="wav", clip_seconds="0.5")
    columns = _columns(args)
    assert columns == {"path": "wav", "clip_seconds": "0.5"}
    jobs = build_grid("x", ["1.0"], 1, ["supervised"], BUDGETS["small"], [], columns=columns)
    assert jobs[0].settings["columns"] == {"clip_seconds": "0.5", "path": "wav"}


# -- 5. paired statistics ------------------------------------------------------------------------------------------
def test_paired_t_test_by_hand() -> None:
    # a - b per seed = [1, 2, 3]: mean 2, sample sd 1, t = 2 / (1 / sqrt 3) = 3.4641 with 2 dof.
    # Student t with 2 dof has the closed form P(|T| > t) = 1 - t / sqrt(2 + t^2) = 1 - 3.4641 / sqrt(14)
    #   = 1 - 0.925820 = 0.074180.  95% CI: 2 +- t(0.975, 2) * 1 / sqrt 3 = 2 +- 4.302653 * 0.577350 = 2 +- 2.484138.
    diff = paired_difference([3.0, 5.0, 7.0], [2.0, 3.0, 4.0])
    assert diff.n == 3 and diff.mean == pytest.approx(2.0)
    assert diff.p_value == pytest.approx(1 - math.sqrt(12) / math.sqrt(14), rel=1e-6)
    assert diff.p_value == pytest.approx(0.074180, abs=1e-6)
    assert diff.half_width == pytest.approx(2.484138, rel=1e-6)
    assert diff.verdict == "not distinguishable"
    # [0.05, 0.06, 0.07]: mean 0.06, sd 0.01, t = 0.06 / (0.01 / sqrt 3) = 10.3923,
    #   p = 1 - 10.3923 / sqrt(2 + 108) = 1 - 0.990867 = 0.009133 < 0.05: better
    better = paired_difference({0: 0.85, 1: 0.86, 2: 0.87, 5: 0.5}, {0: 0.80, 1: 0.80, 2: 0.80})  # seed 5 unpaired
    assert better.n == 3 and better.p_value == pytest.approx(0.009133, abs=1e-5) and better.verdict == "better"
    assert paired_difference([0.8, 0.8, 0.8], [0.85, 0.86, 0.87]).verdict == "worse"
    # Unpaired intervals overlap here (the seeds move both approaches), the paired test separates them.
    # differences [0.02, 0.015, 0.025]: mean 0.02, sd 0.005, t = 6.928, p = 1 - 6.928 / sqrt(50) = 0.0202
    rec = recommend("0.1", {"a": {0: 0.70, 1: 0.80, 2: 0.90}, "b": {0: 0.68, 1: 0.785, 2: 0.875}})
    assert rec.best_summary.low <= rec.runner_up_summary.high
    assert rec.verdict == "better" and not rec.within_noise
    assert rec.sentence().startswith("a (80.0 ± 24.8%) is better than the runner-up b (78.0")
    assert "+2.0 points (95% CI +0.8 to +3.2, paired t-test p = 0.020, 3 seeds)" in rec.sentence()
    two = recommend("0.1", {"a": [0.9, 0.7], "b": [0.8, 0.75]})
    assert "not distinguishable with 2 seeds — run more seeds" in two.sentence()


def test_report_shows_paired_differences_and_seed_names(tmp_path: Path) -> None:
    jobs = grid(seeds=3)
    store = ResultStore(tmp_path)
    execute(jobs, store, runner=runner([]))
    write_report(store.all_results(), tmp_path, "t", {})
    md = (tmp_path / "report.md").read_text()
    assert "## Paired differences against the recommended approach" in md
    assert "| 0.1 | self-supervised: simclr+linear | data augmentation: standard | +10.0 points" in md
    assert "recommended is better" in md
    for name in ("data augmentation: standard", "transfer learning: feature-extract@efficientnet_lite0",
                 "self-supervised: simclr+linear"):
        assert f"| {name} |" in md
    assert {j.label for j in jobs} >= {"data augmentation: standard", "self-supervised pretraining: simclr"}


# -- 6. progress ---------------------------------------------------------------------------------------------------
def test_one_progress_line_per_finished_job(tmp_path: Path) -> None:
    jobs = build_grid("digits", ["0.1", "0.5", "1"], 1, ["supervised"], BUDGETS["small"], [])

    def slow(job, store):
        time.sleep(0.05)
        if job.labels == "0.5":
            raise ValueError("no")
        return fake_result(job)

    records: list[logging.LogRecord] = []
    handler = logging.Handler(logging.INFO)
    handler.emit = records.append  # the fewlabel logger may not propagate (the CLI's console set-up)
    logger = logging.getLogger("fewlabel")
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        execute(jobs, ResultStore(tmp_path), runner=slow)
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    lines = [r.getMessage() for r in records if r.getMessage().startswith("[")]
    assert len(lines) == 3
    assert lines[0].startswith("[1/3] done: data augmentation: standard labels=0.1 seed=0 in 0 s; elapsed")
    assert "about 0 s left (2 job(s))" in lines[0]
    assert lines[1].startswith("[2/3] FAILED: ") and lines[2].endswith("about 0 s left (0 job(s))")


FAKE_RUNNER = textwrap.dedent("""
    import os, time

    def fake(job, store):
        calls = os.environ["FEWLABEL_TEST_CALLS"]
        with open(calls, "a") as handle:
            handle.write(f"{job.key()} {os.getpid()}\\n")
        deadline = time.time() + 120  # hold each job until both processes have started one
        while len(set(open(calls).read().split()[1::2])) < 2 and time.time() < deadline:
            time.sleep(0.1)
        base = {"supervised": 0.8, "probe": 0.9, "pretrain": 0.0}[job.approach]
        return {"test_accuracy": None if job.approach == "pretrain" else base + 0.01 * job.seed,
                "seconds": 0.4, "labelled": 10, "warnings": []}
""")


def test_local_workers_share_the_grid_and_run_each_job_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``--workers 2``: a spawned worker process and this one take jobs under leases; every job runs once, both
    processes run some, and the report is complete."""
    from fewlabel.compare import CompareConfig, compare

    (tmp_path / "fakerunner.py").write_text(FAKE_RUNNER)
    calls = tmp_path / "calls.txt"
    monkeypatch.setenv("FEWLABEL_TEST_CALLS", str(calls))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")]))
    monkeypatch.syspath_prepend(str(tmp_path))
    result = compare(CompareConfig(data="digits", labels=("0.5", "1.0"), seeds=2,
                                   approaches=("supervised", "selfsupervised"), out=str(tmp_path / "cmp"),
                                   workers=2, runner="fakerunner:fake"))
    lines = calls.read_text().split()
    keys, pids = lines[0::2], lines[1::2]
    assert result["jobs"] == 10 and result["complete"]
    assert len(keys) == 10 and len(set(keys)) == 10
    assert len(set(pids)) == 2
    assert (tmp_path / "cmp" / "logs" / "worker-1.log").read_text().count("done:") >= 1
    assert not list((tmp_path / "cmp" / "leases").glob("*.lease"))


def test_workers_must_be_positive(tmp_path: Path) -> None:
    from fewlabel.compare import CompareConfig, compare

    with pytest.raises(FewlabelError, match="--workers 0 is impossible"):
        compare(CompareConfig(data="digits", out=str(tmp_path / "cmp"), workers=0))


def test_automatic_worker_count_from_cores_threads_memory_and_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    from fewlabel.compare.run import local_workers

    monkeypatch.delenv("FEWLABEL_COMPARE_WORKERS")
    gib = 1024**3
    # One 1-thread worker per core, as memory allows (3 GiB each), never more than the jobs.
    assert local_workers(None, None, 24, cores=2, memory=24 * gib, gpu=False)[:2] == (2, 1)
    assert local_workers(None, None, 24, cores=16, memory=24 * gib, gpu=False)[:2] == (8, 2)
    assert local_workers(None, 4, 24, cores=16, memory=64 * gib, gpu=False)[:2] == (4, 4)
    assert local_workers(None, None, 3, cores=16, memory=64 * gib, gpu=False)[:2] == (3, 5)
    assert local_workers(None, None, 24, cores=2, memory=2 * gib, gpu=False)[:2] == (1, 2)
    assert local_workers(None, None, 24, cores=16, memory=64 * gib, gpu=True)[:2] == (1, 16)
    # Given: as asked, each on its share of the cores; the environment sets the default.
    assert local_workers(3, None, 24, cores=12, memory=1, gpu=True)[:2] == (3, 4)
    monkeypatch.setenv("FEWLABEL_COMPARE_WORKERS", "2")
    assert local_workers(None, None, 24, cores=8, memory=64 * gib, gpu=False)[:2] == (2, 4)
    monkeypatch.setenv("FEWLABEL_COMPARE_WORKERS", "many")
    with pytest.raises(FewlabelError, match="FEWLABEL_COMPARE_WORKERS='many' is not a number"):
        local_workers(None, None, 24, cores=8)


def test_threads_per_job_must_be_positive(tmp_path: Path) -> None:
    from fewlabel.compare import CompareConfig, compare

    with pytest.raises(FewlabelError, match="--threads-per-job 0 is impossible"):
        compare(CompareConfig(data="digits", out=str(tmp_path / "cmp"), threads_per_job=0))
    assert not (tmp_path / "cmp").exists()


def test_semi_supervised_jobs_skip_the_full_label_budget() -> None:
    jobs = build_grid("digits", ["0.1", "1.0"], 2, ["semisupervised"], BUDGETS["medium"], ["efficientnet_lite0"])
    assert {(j.variant, j.labels) for j in jobs} == {("label-spreading@efficientnet_lite0", "0.1"),
                                                     ("self-training@efficientnet_lite0", "0.1")}
    assert all(j.approach == "semisupervised" and j.label.startswith("semi-supervised: ") for j in jobs)
    assert len(jobs) == 4  # 2 methods x 2 seeds, none at 100% labels
