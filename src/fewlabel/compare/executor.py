"""Run the grid's jobs sequentially, skipping finished ones; each result is one JSON file keyed by the job."""

from __future__ import annotations

import contextlib
import importlib
import json
import logging
import os
import socket
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from fewlabel.compare.grid import Job
from fewlabel.compare.lease import Leases
from fewlabel.engine.fit import Budget
from fewlabel.engine.run import LOGGER_NAME, atomic_write, is_rank_zero
from fewlabel.errors import FewlabelError

log = logging.getLogger(LOGGER_NAME)


class ResultStore:
    """``<out>/results/<key>.json`` per finished job, ``<out>/results/failed/<key>.json`` per failed one,
    ``<out>/runs/<key>/`` for its run folder and ``<out>/leases/<key>.lease`` while a process runs it.

    ``fingerprint`` (the data's, :mod:`fewlabel.compare.fingerprint`) is stored with every record; a stored result
    whose fingerprint differs is stale (its job reruns; the old record is moved to ``results/stale/``). A record
    from before fingerprints were stored counts as finished only when ``legacy_ok`` (compare sets it for
    registered datasets, whose files are fixed, checksummed releases; a path may have been edited since).
    ``fingerprint=None`` checks nothing (every stored result counts).
    """

    def __init__(self, root: str | Path, fingerprint: str | None = None, legacy_ok: bool = True,
                 leases: Leases | None = None):
        self.root = Path(root)
        self.results = self.root / "results"
        self.failed_dir = self.results / "failed"
        self.stale_dir = self.results / "stale"
        self.runs = self.root / "runs"
        self.logs = self.root / "logs"
        self.fingerprint = fingerprint
        self.legacy_ok = legacy_ok
        self.leases = leases or Leases(self.root / "leases")

    def _path(self, key: str) -> Path:
        return self.results / f"{key}.json"

    def _read(self, path: Path) -> dict[str, Any] | None:
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except (json.JSONDecodeError, UnicodeDecodeError):
            log.warning("%s is corrupt; its job counts as not run", path)
            return None

    def current(self, record: dict[str, Any] | None) -> bool:
        """Whether a stored record was made from the data as it is now."""
        if record is None:
            return False
        if self.fingerprint is None:
            return True
        recorded = record.get("data_fingerprint")
        return recorded == self.fingerprint if recorded is not None else self.legacy_ok

    def done_key(self, key: str) -> bool:
        return self.current(self._read(self._path(key)))

    def done(self, job: Job) -> bool:
        return self.done_key(job.key())

    def stale(self, job: Job) -> bool:
        """A result is stored but was made from other data (or is an unverifiable legacy result)."""
        record = self._read(self._path(job.key()))
        return record is not None and not self.current(record)

    def failure(self, key: str) -> dict[str, Any] | None:
        """The failure record of ``key`` made from the current data, or None."""
        record = self._read(self.failed_dir / f"{key}.json")
        return record if self.current(record) else None

    def load(self, job: Job) -> dict[str, Any]:
        return json.loads(self._path(job.key()).read_text(encoding="utf-8"))

    def _stamp(self) -> dict[str, Any]:
        return {} if self.fingerprint is None else {"data_fingerprint": self.fingerprint}

    def save(self, job: Job, result: dict[str, Any]) -> None:
        atomic_write(self._path(job.key()),
                     json.dumps({"job": asdict(job), "key": job.key(), **result, **self._stamp()}, indent=2) + "\n")
        with contextlib.suppress(FileNotFoundError):
            (self.failed_dir / f"{job.key()}.json").unlink()  # an earlier failure of this job is superseded

    def save_failure(self, job: Job, error: str, seconds: float, log_path: str | None,
                     traceback_path: str | None) -> dict[str, Any]:
        record = {"job": asdict(job), "key": job.key(), "status": "failed", "error": error,
                  "log_path": log_path, "traceback_path": traceback_path, "seconds": round(seconds, 2),
                  "failed_at": time.time(), "host": socket.gethostname(), "pid": os.getpid(), **self._stamp()}
        atomic_write(self.failed_dir / f"{job.key()}.json", json.dumps(record, indent=2) + "\n")
        return record

    def move_stale(self, job: Job) -> None:
        """Move a stale result aside (never deleted) before its job reruns."""
        path = self._path(job.key())
        record = self._read(path)
        if record is None:
            return
        self.stale_dir.mkdir(parents=True, exist_ok=True)
        tag = record.get("data_fingerprint") or "unfingerprinted"
        attempt = 1
        while (aside := self.stale_dir / f"{job.key()}.{tag}.{attempt}.json").exists():
            attempt += 1
        with contextlib.suppress(FileNotFoundError):
            os.replace(path, aside)

    def all_results(self) -> list[dict[str, Any]]:
        if not self.results.is_dir():
            return []
        return [json.loads(p.read_text(encoding="utf-8")) for p in sorted(self.results.glob("*.json"))]

    def all_failures(self) -> list[dict[str, Any]]:
        if not self.failed_dir.is_dir():
            return []
        return [json.loads(p.read_text(encoding="utf-8")) for p in sorted(self.failed_dir.glob("*.json"))]

    def resume_point(self, job: Job):
        """The point an interrupted ``pretrain`` job continues from: its leftover run folder, when that holds a
        readable ``checkpoints/last.ckpt`` with epochs still to train (a :class:`ResumePoint`), else None (the
        leftover, if any, is then moved aside as for every other job)."""
        from fewlabel.approaches.selfsupervised import resume_point

        path = self.runs / job.key()
        if job.approach != "pretrain" or not (path / "checkpoints" / "last.ckpt").is_file():
            return None
        try:
            point = resume_point(path, pretrain_config(job, str(path)))
        except FewlabelError as exc:
            log.warning("job %s: its interrupted run cannot be continued (%s); it starts again", job.key(), exc)
            return None
        log.info("job %s: continuing its interrupted pretraining after %d epoch(s) from %s", job.key(),
                 point.epochs_done, point.checkpoint)
        return point

    def fresh_run_dir(self, job: Job) -> Path:
        """The job's run folder; a leftover from an interrupted attempt is moved aside, never deleted.

        Only rank 0 moves anything: the other ranks of a multi-device job share the folder rank 0 is using.
        """
        path = self.runs / job.key()
        if path.exists() and is_rank_zero():
            attempt = 1
            while (aside := path.with_name(f"{path.name}.interrupted-{attempt}")).exists():
                attempt += 1
            os.replace(path, aside)
        return path


def pretrain_config(job: Job, out: str):
    """The :class:`PretrainConfig` of a ``pretrain`` job writing to ``out``."""
    from fewlabel.approaches.selfsupervised import PretrainConfig

    s = job.settings
    return PretrainConfig(method=job.variant, data=job.data, data_dir=s["data_dir"], width=s["width"], seed=job.seed,
                          epochs=s["epochs"], budget=Budget(progress=False, max_minutes=s.get("max_minutes")),
                          out=out, columns=dict(s.get("columns") or {}), skip_bad=bool(s.get("skip_bad", False)))


def load_runner(spec: str | None) -> Callable[[Job, ResultStore], dict[str, Any]]:
    """The job runner ``module:function`` names (None: :func:`run_job`); imported wherever a job runs."""
    if not spec:
        return run_job
    module, _, name = spec.partition(":")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError) as exc:
        raise FewlabelError(f"job runner {spec!r} cannot be imported ({exc}); give module:function") from None


def run_job(job: Job, store: ResultStore) -> dict[str, Any]:
    """Execute one job through the public Python API and return its result record."""
    from fewlabel.approaches.selfsupervised import EvaluateConfig, evaluate_backbone, pretrain
    from fewlabel.approaches.supervised import SupervisedConfig, train_supervised
    from fewlabel.approaches.transfer import TRANSFER_BUDGET, TransferConfig, finetune

    s = job.settings
    # Dataset options (table columns, clip length, skip_bad) are in the settings only when given, so the keys of
    # grids without them are unchanged.
    data_options = {"columns": dict(s.get("columns") or {}), "skip_bad": bool(s.get("skip_bad", False))}
    # An interrupted pretraining job continues from its last checkpoint; any other leftover is moved aside.
    resume = store.resume_point(job) if job.approach == "pretrain" else None
    out = str(store.runs / job.key()) if resume is not None else str(store.fresh_run_dir(job))
    started = time.perf_counter()
    if job.approach == "supervised":
        budget = Budget(target_steps=s["steps"], min_epochs=s["min_epochs"], max_minutes=s["max_minutes"],
                        progress=False)
        result = train_supervised(SupervisedConfig(data=job.data, data_dir=s["data_dir"], labels=job.labels,
                                                   augment=job.variant, width=s["width"], seed=job.seed,
                                                   budget=budget, out=out, **data_options))
        metrics = result.metrics
    elif job.approach == "transfer":
        strategy, _, backbone = job.variant.partition("@")
        budget = replace(TRANSFER_BUDGET, epochs=s["epochs"], max_minutes=s["max_minutes"], progress=False)
        # partial trains the strategy's default stages (transfer.strategies.default_trainable: the last 4 of an
        # image backbone, the last 2 layers of a text encoder), the stages compare has always trained.
        metrics = finetune(TransferConfig(backbone=backbone, strategy=strategy, data=job.data, data_dir=s["data_dir"],
                                          labels=job.labels, seed=job.seed, budget=budget, out=out,
                                          **data_options)).metrics
    elif job.approach == "pretrain":
        metrics = None
        if resume is not None:
            try:
                metrics = pretrain(pretrain_config(job, out), resume=out).metrics
                metrics["resumed_after_epochs"] = resume.epochs_done
            except FewlabelError as exc:  # e.g. its split no longer matches the data: start again instead
                log.warning("job %s: continuing its interrupted run failed (%s); it starts again", job.key(), exc)
                out = str(store.fresh_run_dir(job))
        if metrics is None:
            metrics = pretrain(pretrain_config(job, out)).metrics
        metrics["test_accuracy"] = None
    elif job.approach == "probe":
        # Every modality's pretraining run folder is a backbone source: frozen probes through evaluate (the one
        # frozen-feature path), fine-tuning through transfer; both on the pretraining run's split.
        pre_dir = str(store.runs / job.depends_on)
        protocol = s["protocol"]
        if protocol == "finetune":
            budget = replace(TRANSFER_BUDGET, epochs=s["epochs"], progress=False)
            metrics = finetune(TransferConfig(backbone=pre_dir, strategy="finetune", data=job.data,
                                              data_dir=s["data_dir"], labels=job.labels, seed=job.seed,
                                              split=pre_dir, budget=budget, out=out, **data_options)).metrics
        else:
            metrics = evaluate_backbone(EvaluateConfig(backbone=pre_dir, protocol=protocol, labels=job.labels,
                                                       data=job.data, data_dir=s["data_dir"], out=out,
                                                       **data_options))
    elif job.approach == "semisupervised":
        from fewlabel.approaches.semisupervised import SemiSupervisedConfig, semisupervised

        method, _, backbone = job.variant.partition("@")
        metrics = semisupervised(SemiSupervisedConfig(method=method, backbone=backbone, data=job.data,
                                                      data_dir=s["data_dir"], labels=job.labels, seed=job.seed,
                                                      max_pool=s.get("max_pool"), budget=Budget(progress=False),
                                                      out=out,
                                                      **data_options)).metrics
    else:
        raise ValueError(f"unknown job approach {job.approach}")
    seconds = time.perf_counter() - started
    return {"test_accuracy": metrics.get("test_accuracy"), "seconds": round(seconds, 2),
            "labelled": (metrics.get("split") or {}).get("labelled", metrics.get("labelled")),
            "warnings": metrics.get("warnings", []), "run_dir": out,
            "metrics": {k: v for k, v in metrics.items() if k not in ("per_class_accuracy", "monitor")}}


def _duration(seconds: float) -> str:
    seconds = max(0.0, seconds)
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


class Progress:
    """One line per finished job: its time, the grid's elapsed time and an estimate of what is left.

    The estimate is the mean time of the jobs of the same kind (approach) this process has run, times the jobs of
    that kind left, falling back to the mean over every kind for kinds not timed yet.
    """

    def __init__(self, pending: list[Job], clock: Callable[[], float] = time.monotonic):
        self.clock = clock
        self.started = clock()
        self.left = {j.key(): j.approach for j in pending}
        self.total = len(pending)
        self.finished = 0
        self.times: dict[str, list[float]] = {}

    def remaining(self) -> float | None:
        every = [t for times in self.times.values() for t in times]
        if not every:
            return None
        overall = sum(every) / len(every)
        return sum(sum(self.times[a]) / len(self.times[a]) if self.times.get(a) else overall
                   for a in self.left.values())

    def done(self, job: Job, seconds: float | None, outcome: str) -> str:
        """Record a job that left the to-do list (``seconds`` None: not run here) and return its log line."""
        self.left.pop(job.key(), None)
        self.finished += 1
        if seconds is not None:
            self.times.setdefault(job.approach, []).append(seconds)
        remaining = self.remaining()
        eta = ("about " + _duration(remaining) + " left") if remaining is not None else "time left unknown yet"
        took = f" in {_duration(seconds)}" if seconds is not None else ""
        line = (f"[{self.finished}/{self.total}] {outcome}: {job.label} labels={job.labels} seed={job.seed}{took}; "
                f"elapsed {_duration(self.clock() - self.started)}, {eta} ({len(self.left)} job(s))")
        log.info(line)
        return line

    def forget(self, job: Job) -> None:
        """A job this process will not see through (stopped by --max-jobs): out of the estimate."""
        self.left.pop(job.key(), None)


@dataclass
class GridOutcome:
    ran: int = 0  # finished here
    skipped: int = 0  # finished before this run started
    failed: int = 0  # failed here (or blocked by a failed dependency)
    failed_before: int = 0  # failed earlier and not retried (no --retry-failed)
    by_others: int = 0  # finished (or failed) by another process while this one ran
    unfinished: int = 0  # not run: --max-jobs reached, or left to another process still running it
    failures: list[dict[str, Any]] = field(default_factory=list)

    def as_tuple(self) -> tuple[int, int]:
        return self.ran, self.skipped


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def sort_out(jobs: list[Job], store: ResultStore, retry_failed: bool,
             outcome: GridOutcome) -> tuple[list[Job], dict[str, float]]:
    """The grid's jobs still to run, in grid order, and the time of each earlier failure (by key); counts the
    finished (``skipped``) and not-retried failed (``failed_before``) ones into ``outcome`` and logs the tally."""
    failed_at_start: dict[str, float] = {}
    pending: list[Job] = []
    for job in jobs:
        key = job.key()
        if store.done_key(key):
            outcome.skipped += 1
            continue
        failure = store.failure(key)
        if failure is not None:
            failed_at_start[key] = failure.get("failed_at", 0.0)
            if not retry_failed:
                outcome.failed_before += 1
                continue
        pending.append(job)
    stale = sum(store.stale(j) for j in pending)
    log.info("%d jobs: %d finished earlier, %d failed earlier (%s), %d to run%s", len(jobs), outcome.skipped,
             len(failed_at_start), "rerun: --retry-failed" if retry_failed else "not rerun; --retry-failed reruns them",
             len(pending), f" ({stale} of them stale: made from other data)" if stale else "")
    return pending, failed_at_start


def failed_since(store: ResultStore, key: str, failed_at: float | None) -> dict[str, Any] | None:
    """A failure of ``key`` recorded after the grid started (``failed_at``: the time of the failure it set out to
    retry, if any), by another process or by this one, or None."""
    failure = store.failure(key)
    if failure is None or (failed_at is not None and failure.get("failed_at") == failed_at):
        return None
    return failure


def dependency_state(job: Job, store: ResultStore, retry_failed: bool,
                     failed_at_start: dict[str, float]) -> tuple[str, dict[str, Any] | None]:
    """``("ready", None)``: no dependency, or it is finished; ``("blocked", failure)``: it failed for good (the
    job is recorded as failed without running); ``("wait", None)``: it is still to run, here or elsewhere."""
    dependency = job.depends_on
    if dependency is None or store.done_key(dependency):
        return "ready", None
    blocker = store.failure(dependency)
    if blocker is not None and retry_failed and dependency in failed_at_start \
            and blocker.get("failed_at") == failed_at_start[dependency]:
        blocker = None  # the old failure of a dependency being retried (here or elsewhere): not final
    return ("wait", None) if blocker is None else ("blocked", blocker)


@dataclass
class JobRun:
    """What :func:`run_one` did with a job: ``done`` (result saved), ``failed`` (failure saved), ``blocked`` (its
    dependency failed: failure saved without running), ``by_others`` (finished or failed by another process
    before this one got its lease) or ``leased`` (another live process holds it: nothing done)."""

    status: str
    seconds: float | None = None
    failure: dict[str, Any] | None = None


def run_one(job: Job, store: ResultStore, runner: Callable[[Job, ResultStore], dict[str, Any]] | None = None,
            blocker: dict[str, Any] | None = None, failed_at: float | None = None,
            ran_on: dict[str, Any] | None = None) -> JobRun:
    """Run one job under its lease and record its result or failure: the one step every executor shares.

    ``blocker``: the failure record of the job's dependency (the job is recorded as failed without running);
    ``failed_at``: the time of the job's earlier failure this run retries (a newer failure is another process's);
    ``ran_on``: extra facts stored in the result's ``ran_on`` (host and pid are always there).
    A job that raises is recorded as failed (``results/failed/<key>.json``, traceback under ``logs/``);
    ``KeyboardInterrupt`` and ``SystemExit`` propagate.
    """
    runner = runner or run_job
    key = job.key()
    if not store.leases.acquire(key):
        return JobRun("leased")
    try:
        if store.done_key(key) or failed_since(store, key, failed_at) is not None:  # before we got the lease
            return JobRun("by_others")
        if blocker is not None:
            error = f"not run: the job it depends on ({job.depends_on}) failed: {blocker.get('error')}"
            return JobRun("blocked", 0.0, store.save_failure(job, error, 0.0, blocker.get("log_path"),
                                                             blocker.get("traceback_path")))
        if store.stale(job):
            store.move_stale(job)
        started = time.perf_counter()
        try:
            result = runner(job, store)
        except Exception as exc:  # every job failure is recorded; the grid goes on
            seconds = time.perf_counter() - started
            store.logs.mkdir(parents=True, exist_ok=True)
            trace = store.logs / f"{key}.traceback.txt"
            atomic_write(trace, "".join(traceback.format_exception(exc)))
            run_log = store.runs / key / "logs" / "train.log"
            record = store.save_failure(job, _first_line(exc), seconds,
                                        str(run_log) if run_log.is_file() else None, str(trace))
            log.error("job %s (%s labels=%s seed=%d) failed: %s; traceback: %s", key, job.label, job.labels,
                      job.seed, record["error"], trace)
            return JobRun("failed", seconds, record)
        seconds = time.perf_counter() - started
        where = {"host": socket.gethostname(), "pid": os.getpid(), **(ran_on or {})}
        store.save(job, {**result, "ran_on": {**where, **(result.get("ran_on") or {})}})
        return JobRun("done", seconds)
    finally:
        store.leases.release(key)


WAIT_LOG_SECONDS = 60.0  # a process waiting for others' jobs says so when the wait changes, else once a minute


def run_grid(jobs: list[Job], store: ResultStore,
             runner: Callable[[Job, ResultStore], dict[str, Any]] | None = None, limit: int | None = None,
             retry_failed: bool = False, wait_for_others: bool = True, poll_seconds: float = 2.0) -> GridOutcome:
    """Run every unfinished job of the grid (dependencies come first in it).

    - A job that raises is recorded as failed (``results/failed/<key>.json``: error line, log and traceback
      paths) and the grid goes on; the jobs that depend on it are recorded as failed too, without running.
      ``KeyboardInterrupt`` (and ``SystemExit``) still stop the grid.
    - A failed job is not rerun by a later call unless ``retry_failed`` (then the failed ones run again, with
      every job not run yet).
    - A job is run under a lease (:mod:`fewlabel.compare.lease`): one leased by another live process is skipped
      and, when ``wait_for_others``, waited for once everything else is done, so this process picks up its result;
      a stale lease is taken over.
    """
    runner = runner or run_job  # looked up at call time, so tests can patch ``executor.run_job``
    outcome = GridOutcome()
    pending, failed_at_start = sort_out(jobs, store, retry_failed, outcome)
    progress = Progress(pending)
    attempts = 0

    def failed_elsewhere(key: str) -> dict[str, Any] | None:
        return failed_since(store, key, failed_at_start.get(key))

    rechecked = False
    last_wait: tuple[int, str] | None = None
    last_wait_logged = 0.0
    while pending:
        deferred: list[Job] = []
        progressed = False
        for index, job in enumerate(pending):
            key = job.key()
            if store.done_key(key):  # another process finished it
                outcome.by_others += 1
                progress.done(job, None, "finished by another process")
                progressed = True
                continue
            if failed_elsewhere(key) is not None:
                outcome.by_others += 1
                progress.done(job, None, "failed in another process")
                progressed = True
                continue
            state, blocker = dependency_state(job, store, retry_failed, failed_at_start)
            if state == "wait":  # still to run (by us, later in this pass, or elsewhere): wait for it
                deferred.append(job)
                continue
            if limit is not None and attempts >= limit:
                for rest in pending[index:]:
                    progress.forget(rest)
                outcome.unfinished += len(pending) - index + len(deferred)
                return _finish(outcome, store)
            run = run_one(job, store, runner, blocker=blocker, failed_at=failed_at_start.get(key))
            if run.status == "leased":
                deferred.append(job)
                continue
            progressed = True
            if run.status == "by_others":
                outcome.by_others += 1
                progress.done(job, None, "finished by another process")
                continue
            attempts += 1
            if run.status == "done":
                outcome.ran += 1
                progress.done(job, run.seconds, "done")
            else:
                outcome.failed += 1
                outcome.failures.append(run.failure)
                progress.done(job, run.seconds if run.status == "failed" else None,
                              "FAILED" if run.status == "failed" else "FAILED (dependency failed)")
        pending = deferred
        if not pending or progressed:
            rechecked = False
            continue
        # Nothing could move: every job left is leased elsewhere, or waits for a job that is.
        busy = [j for j in pending if store.leases.holder(j.key()) is not None
                or (j.depends_on is not None and store.leases.holder(j.depends_on) is not None)]
        if not busy and not rechecked:  # a holder may have died since this pass tried its lease: once more
            rechecked = True
            continue
        if not busy or not wait_for_others:
            for job in pending:
                progress.forget(job)
            outcome.unfinished += len(pending)
            if busy:
                log.info("%d job(s) are running in another process; their results join the report when done",
                         len(busy))
            else:
                log.warning("%d job(s) could not run: their dependencies are missing", len(pending))
            break
        holder = store.leases.holder(busy[0].key()) or store.leases.holder(busy[0].depends_on or "") or {}
        waiting = (len(busy), busy[0].key())
        if waiting != last_wait or time.monotonic() - last_wait_logged >= WAIT_LOG_SECONDS:  # not every poll
            log.info("waiting for %d job(s) running in another process (e.g. %s: pid %s on %s)", len(busy),
                     busy[0].key(), holder.get("pid"), holder.get("host"))
            last_wait, last_wait_logged = waiting, time.monotonic()
        time.sleep(poll_seconds)
    return _finish(outcome, store)


def _finish(outcome: GridOutcome, store: ResultStore) -> GridOutcome:
    if outcome.failed or outcome.failed_before:
        log.warning("%d job(s) failed (%d in this run); the report lists them; rerun with --retry-failed to run "
                    "them again (records: %s)", outcome.failed + outcome.failed_before, outcome.failed,
                    store.failed_dir)
    return outcome


def execute(jobs: list[Job], store: ResultStore, runner: Callable[[Job, ResultStore], dict[str, Any]] | None = None,
            limit: int | None = None, retry_failed: bool = False) -> tuple[int, int]:
    """Run every unfinished job in order (see :func:`run_grid`). Returns (ran, skipped)."""
    return run_grid(jobs, store, runner, limit=limit, retry_failed=retry_failed).as_tuple()
