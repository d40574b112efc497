"""``compare --executor ray``: every job as a Ray task on a local Ray instance, with the local executor's leases,
results, failure records and dependency order; and the one-line errors of a missing Ray or a bad address.

CI installs Ray (the ``distributed`` extra, see .ci/run); without it the Ray tests are reported as skipped.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from fewlabel.cli import main
from fewlabel.compare import BUDGETS, CompareConfig, build_grid, compare
from fewlabel.compare.executor import ResultStore
from fewlabel.compare.grid import Job
from fewlabel.errors import FewlabelError

FAKE_RUNNER = textwrap.dedent("""
    import os, time

    def fake(job, store):
        '''Records every call (key, pid) in <out>/calls.txt; fails the keys listed in <out>/fail.txt; a probe
        checks that its pretraining finished first.'''
        with open(store.root / "calls.txt", "a") as handle:  # O_APPEND: whole lines from every worker
            handle.write(f"{job.key()} {os.getpid()}\\n")
        fail = store.root / "fail.txt"
        if fail.is_file() and job.key() in fail.read_text().split():
            raise RuntimeError(f"boom in {job.key()}")
        if job.depends_on is not None and not store.done_key(job.depends_on):
            raise RuntimeError(f"{job.key()} started before the job it depends on finished")
        time.sleep(0.2)
        base = {"supervised": 0.8, "probe": 0.9, "pretrain": 0.0}[job.approach]
        return {"test_accuracy": None if job.approach == "pretrain" else base + 0.01 * job.seed,
                "seconds": 0.2, "labelled": 10, "warnings": []}
""")

GRID = {"data": "digits", "labels": ("0.5", "1.0"), "seeds": 2, "approaches": ("supervised", "selfsupervised")}


@pytest.fixture(scope="module")
def ray_instance(tmp_path_factory: pytest.TempPathFactory):
    """One local Ray instance (2 CPUs) for the module; the fake runner's folder on the workers' PYTHONPATH."""
    ray = pytest.importorskip("ray", reason="Ray is not installed: pip install -e '.[distributed]'")
    folder = tmp_path_factory.mktemp("runner")
    (folder / "fewlabel_fake_runner.py").write_text(FAKE_RUNNER)
    saved = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join([str(folder), *([saved] if saved else [])])
    sys.path.insert(0, str(folder))
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        yield ray
    finally:
        ray.shutdown()
        sys.path.remove(str(folder))
        if saved is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = saved


def calls(out: Path) -> list[tuple[str, str]]:
    path = out / "calls.txt"
    lines = path.read_text().split() if path.is_file() else []
    return list(zip(lines[0::2], lines[1::2], strict=True))


def test_ray_runs_every_job_once_in_dependency_order_and_reuses_results(ray_instance, tmp_path: Path) -> None:
    out = tmp_path / "cmp"
    config = CompareConfig(**GRID, out=str(out), executor="ray", runner="fewlabel_fake_runner:fake")
    result = compare(config)
    ran = calls(out)
    assert result["jobs"] == 10 and result["complete"] and result["ran"] == 10 and result["failed"] == 0
    assert len(ran) == 10 and len({key for key, _ in ran}) == 10  # every job exactly once
    assert all(pid != str(os.getpid()) for _, pid in ran)  # in Ray workers, not in the driver
    records = [json.loads(p.read_text()) for p in (out / "results").glob("*.json")]
    assert len(records) == 10
    assert all(r["ran_on"]["executor"] == "ray" and r["ran_on"]["node_id"] and r["ran_on"]["pid"] for r in records)
    assert not list((out / "leases").glob("*.lease")) and not (out / "results" / "failed").exists()
    assert "## Paired differences" in (out / "report.md").read_text()
    assert list((out / "logs").glob("ray-*.log"))  # each worker's log in the folder

    again = compare(config)  # finished jobs are never submitted again
    assert again["ran"] == 0 and again["skipped"] == 10 and again["complete"] and len(calls(out)) == 10


def test_a_failing_job_is_recorded_and_the_grid_goes_on_under_ray(ray_instance, tmp_path: Path) -> None:
    out = tmp_path / "cmp"
    jobs = build_grid("digits", ["0.5", "1.0"], 2, ["supervised", "selfsupervised"], BUDGETS["small"], [])
    supervised = next(j for j in jobs if j.approach == "supervised").key()
    pretrain = next(j for j in jobs if j.approach == "pretrain" and j.seed == 1)
    blocked = {j.key() for j in jobs if j.depends_on == pretrain.key()}
    out.mkdir()
    (out / "fail.txt").write_text(f"{supervised}\n{pretrain.key()}\n")
    config = CompareConfig(**GRID, out=str(out), executor="ray", runner="fewlabel_fake_runner:fake")
    result = compare(config)
    assert result["ran"] == 10 - 4 and result["failed"] == 4 and not result["complete"]
    assert {key for key, _ in calls(out)} == {j.key() for j in jobs} - blocked  # the 2 blocked probes never ran
    failed = {p.stem: json.loads(p.read_text()) for p in (out / "results" / "failed").glob("*.json")}
    assert set(failed) == {supervised, pretrain.key(), *blocked}
    assert failed[supervised]["error"] == f"RuntimeError: boom in {supervised}"
    assert Path(failed[supervised]["traceback_path"]).is_file()
    assert all(failed[k]["error"].startswith(f"not run: the job it depends on ({pretrain.key()}) failed")
               for k in blocked)
    assert "Failed runs" in (out / "report.md").read_text()

    quiet = compare(config)  # failures are not rerun without --retry-failed
    assert quiet["ran"] == 0 and len(calls(out)) == 8
    (out / "fail.txt").unlink()
    retried = compare(CompareConfig(**GRID, out=str(out), executor="ray", runner="fewlabel_fake_runner:fake",
                                    retry_failed=True))
    assert retried["ran"] == 4 and retried["complete"] and not list((out / "results" / "failed").glob("*.json"))


HOLDER = textwrap.dedent("""
    import json, sys, time
    from pathlib import Path
    from fewlabel.compare.lease import Leases

    out, key = Path(sys.argv[1]), sys.argv[2]
    leases = Leases(out / "leases")
    assert leases.acquire(key)
    (out / "holding").touch()
    time.sleep(4)  # "runs" the job in this other process, then stores its result
    (out / "results").mkdir(parents=True, exist_ok=True)
    (out / "results" / f"{key}.json").write_text(json.dumps({"key": key, "test_accuracy": 0.5, "seconds": 4.0}))
    leases.release(key)
""")


def test_a_job_leased_by_another_process_is_not_started_twice(ray_instance, tmp_path: Path) -> None:
    from fewlabel.compare.ray_executor import RaySession, run_grid_ray

    out = tmp_path / "cmp"
    out.mkdir()
    jobs = build_grid("digits", ["0.5", "1.0"], 1, ["supervised"], BUDGETS["small"], [])
    (tmp_path / "holder.py").write_text(HOLDER)
    other = subprocess.Popen([sys.executable, str(tmp_path / "holder.py"), str(out), jobs[0].key()])
    try:
        deadline = time.time() + 60
        while not (out / "holding").exists() and time.time() < deadline:
            time.sleep(0.05)
        outcome = run_grid_ray(jobs, ResultStore(out), RaySession(ray_instance, False, None),
                               runner="fewlabel_fake_runner:fake", poll_seconds=0.5)
        assert other.wait(timeout=60) == 0
    finally:
        other.kill()
    assert [key for key, _ in calls(out)] == [jobs[1].key()]  # the held job was never run here
    assert outcome.ran == 1 and outcome.by_others == 1 and outcome.failed == 0 and outcome.unfinished == 0


def test_a_task_that_dies_is_recorded_failed(ray_instance, tmp_path: Path) -> None:
    """A task that fails outside the job itself (here: its runner cannot be imported on the worker) is recorded
    as a failure of that job; --max-jobs bounds the jobs started."""
    from fewlabel.compare.ray_executor import RaySession, run_grid_ray

    jobs = build_grid("digits", ["0.5", "1.0"], 2, ["supervised"], BUDGETS["small"], [])
    store = ResultStore(tmp_path / "cmp")
    outcome = run_grid_ray(jobs, store, RaySession(ray_instance, False, None), runner="no_such_module:run", limit=2)
    assert outcome.failed == 2 and outcome.ran == 0 and outcome.unfinished == 2
    records = store.all_failures()
    assert len(records) == 2 and all("the Ray task failed" in r["error"] and "no_such_module" in r["error"]
                                     for r in records)


def test_one_real_tiny_job_under_ray(ray_instance, tmp_path: Path) -> None:
    """The default runner (the real training code) in a Ray worker: a 10-step supervised run on digits."""
    from fewlabel.compare.ray_executor import RaySession, run_grid_ray

    job = Job("supervised", "none", "digits", "0.5", 0,
              {"data_dir": None, "budget": "small", "modality": "image", "steps": 10, "width": 4, "min_epochs": 1,
               "max_minutes": 2.0})
    store = ResultStore(tmp_path / "cmp")
    outcome = run_grid_ray([job], store, RaySession(ray_instance, False, None))
    assert outcome.ran == 1, store.all_failures()
    record = store.load(job)
    assert 0.0 <= record["test_accuracy"] <= 1.0 and record["ran_on"]["executor"] == "ray"
    assert (Path(record["run_dir"]) / "metrics.json").is_file()


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_an_unreachable_ray_address_is_one_line_and_writes_nothing(ray_instance, tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "cmp"
    args = ["-q", "compare", "--labels", "0.5", "--seeds", "1", "--approaches", "supervised", "--out", str(out)]
    assert main([*args, "--executor", "ray", "--ray-address", f"127.0.0.1:{closed_port()}"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("fewlabel: error: --ray-address 127.0.0.1:")
    assert "no Ray cluster answers there" in err[0]
    assert main([*args, "--executor", "ray", "--ray-address", "not-an-address"]) == 2
    assert "give host:port of the head node" in capsys.readouterr().err
    assert main([*args, "--executor", "ray", "--cpus-per-job", "64"]) == 2
    assert "--cpus-per-job 64: the Ray cluster has 2 CPU(s) in all" in capsys.readouterr().err
    assert not out.exists()


# -- without Ray (these run everywhere) ------------------------------------------------------------------------------
def test_ray_options_without_the_ray_executor_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "cmp"
    args = ["-q", "compare", "--labels", "0.5", "--seeds", "1", "--approaches", "supervised", "--out", str(out)]
    assert main([*args, "--ray-address", "10.0.0.5:6379"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["fewlabel: error: --ray-address is for --executor ray; add --executor ray to run the jobs on that "
                   "Ray cluster"]
    assert main([*args, "--executor", "ray", "--workers", "2"]) == 2
    assert "--workers and --threads-per-job are the local executor's" in capsys.readouterr().err
    assert main([*args, "--executor", "ray", "--cpus-per-job", "0"]) == 2
    assert "--cpus-per-job 0 is impossible" in capsys.readouterr().err
    assert not out.exists()


def test_missing_ray_is_one_install_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError, as without the extra
    out = tmp_path / "cmp"
    assert main(["-q", "compare", "--labels", "0.5", "--seeds", "1", "--approaches", "supervised", "--executor", "ray",
                 "--out", str(out)]) == 2
    assert capsys.readouterr().err.strip() == ('fewlabel: error: --executor ray needs Ray: '
                                               'pip install -e ".[distributed]"')
    assert not out.exists()
    with pytest.raises(FewlabelError, match="needs Ray"):
        compare(CompareConfig(data="digits", out=str(out), executor="ray"))
