"""``compare --executor ray``: every job of the grid as one Ray task, on a local instance or a running cluster.

The driver (the ``compare`` process) decides what runs; each task runs one job through the same step the local
executor uses (:func:`fewlabel.compare.executor.run_one`: the job's lease, its runner, its result or failure
record), so resuming, caching and failure records are the local executor's:

- finished jobs are never submitted; a job another process holds the lease of is not started twice (the task
  finds the lease taken and returns; the driver waits for that process and submits it again only if its lease
  goes stale without a result);
- a job is submitted once the job it depends on has finished (``ray.wait`` on the running tasks); when that one
  failed, the dependants are recorded as failed without running, as ``run_grid`` does;
- a job that raises is recorded as failed and the grid goes on; a task lost with its worker or node (after Ray's
  one retry) is recorded as failed too.

Every task writes into the compare folder, so on a cluster the folder must be on a file system every node mounts at
the same path (with ``O_EXCL`` and ``flock``, as the leases need), and every node needs fewlabel installed.

Resources: each task asks for ``cpus_per_job`` CPUs (its torch threads) and, when the cluster has GPUs,
``gpus_per_job`` GPUs (default 1: every job kind trains or extracts features on its device; Ray sets the task's
``CUDA_VISIBLE_DEVICES``). Ray is imported only here, and only when this executor is chosen.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fewlabel.compare.executor import (
    GridOutcome,
    Progress,
    ResultStore,
    _finish,
    _first_line,
    dependency_state,
    failed_since,
    load_runner,
    run_one,
    sort_out,
)
from fewlabel.compare.grid import Job
from fewlabel.engine.run import LOGGER_NAME
from fewlabel.errors import FewlabelError

log = logging.getLogger(LOGGER_NAME)

INSTALL_HINT = '--executor ray needs Ray: pip install -e ".[distributed]"'
CONNECT_SECONDS = 5.0  # TCP check of --ray-address before Ray itself tries (ray.init waits forever on a dead one)


def import_ray():
    try:
        import ray
    except ImportError:
        raise FewlabelError(INSTALL_HINT) from None
    return ray


# -- connecting -------------------------------------------------------------------------------------------------
@dataclass
class RaySession:
    """A connection made by :func:`connect`; ``close`` shuts Ray down only if ``connect`` started it."""

    ray: Any
    started_here: bool
    address: str | None

    def close(self) -> None:
        if self.started_here:
            with contextlib.suppress(Exception):
                self.ray.shutdown()


def _host_port(address: str) -> tuple[str, int] | None:
    target = address.removeprefix("ray://")
    host, sep, port = target.rpartition(":")
    if not sep or not port.isdigit():
        return None
    return host.strip("[]"), int(port)


def check_address(address: str) -> None:
    """A clear error, quickly, for an address nothing answers at (``ray.init`` would wait for it forever)."""
    if address in ("auto", "local"):
        return
    target = _host_port(address)
    if target is None:
        raise FewlabelError(f"--ray-address {address!r}: give host:port of the head node (e.g. 10.0.0.5:6379, as "
                            "`ray start --head` prints), ray://host:10001, or auto")
    try:
        with socket.create_connection(target, timeout=CONNECT_SECONDS):
            pass
    except OSError as exc:
        raise FewlabelError(f"--ray-address {address}: no Ray cluster answers there ({exc.strerror or exc}); start "
                            "one with `ray start --head` on that machine, or leave --ray-address out to start a "
                            "local instance") from None
    if address.startswith("ray://"):
        return
    try:  # the head's GCS itself: an open port of something else fails here, in under a minute
        from ray._raylet import GcsClient
    except ImportError:
        return
    try:
        GcsClient(address=f"{target[0]}:{target[1]}")
    except Exception as exc:
        raise FewlabelError(f"--ray-address {address}: not a reachable Ray cluster ({_first_line(exc)})") from None


def connect(address: str | None, num_cpus: int | None = None) -> RaySession:
    """Join the cluster at ``address`` or, with None, start a local Ray instance (stopped again by ``close``).
    Nothing is written to the compare folder here: a bad address is one error line before anything exists."""
    ray = import_ray()
    if address:
        check_address(address)
    if ray.is_initialized():  # the caller's own connection (a script or a test): use it, leave it open
        return RaySession(ray, False, address)
    # Workers on this machine inherit the environment (PYTHONPATH for a runner module, FEWLABEL_* settings).
    options: dict[str, Any] = {"include_dashboard": False, "log_to_driver": True, "logging_level": logging.WARNING}
    if not address:
        options["num_cpus"] = num_cpus
    try:
        ray.init(address=address or None, **options)
    except ConnectionError as exc:
        raise FewlabelError(f"--ray-address {address}: cannot join the Ray cluster ({_first_line(exc)})") from None
    except Exception as exc:
        if type(exc).__name__ in ("AuthenticationError", "RpcError", "RaySystemError"):
            raise FewlabelError(f"--ray-address {address}: cannot join the Ray cluster ({_first_line(exc)}); "
                                "every node and this process need the same RAY_AUTH_MODE and token") from None
        raise
    return RaySession(ray, not address, address)


# -- the task -----------------------------------------------------------------------------------------------------
_worker_log: logging.Handler | None = None


def _worker_logging(out: Path) -> None:
    """A Ray worker process: fewlabel's log to ``logs/ray-<host>-<pid>.log`` (INFO) and warnings to its stderr,
    which Ray forwards to the driver; Lightning's start-up banners quieted, as on the command line."""
    global _worker_log
    if _worker_log is not None:
        return
    (out / "logs").mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(out / "logs" / f"ray-{socket.gethostname()}-{os.getpid()}.log", encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    console = logging.StreamHandler()
    console.setLevel(logging.WARNING)
    logger = logging.getLogger(LOGGER_NAME)
    logger.handlers[:] = [handler, console]
    logger.setLevel(logging.INFO)
    logger.propagate = False
    from fewlabel.engine.trainer import quiet_lightning

    quiet_lightning()  # as on the command line
    _worker_log = handler


def run_task(out: str, job: Job, fingerprint: str | None, legacy_ok: bool, runner: str | None,
             failed_at: float | None, threads: int) -> dict[str, Any]:
    """The body of one Ray task: the job through :func:`run_one` in the shared folder ``out``."""
    import torch

    folder = Path(out)
    _worker_logging(folder)
    torch.set_num_threads(max(1, threads))
    ran_on: dict[str, Any] = {"executor": "ray"}
    with contextlib.suppress(Exception):
        import ray

        context = ray.get_runtime_context()
        ran_on["node_id"] = context.get_node_id()
        ran_on["node_ip"] = ray.util.get_node_ip_address()
    store = ResultStore(folder, fingerprint=fingerprint, legacy_ok=legacy_ok)
    run = run_one(job, store, load_runner(runner), failed_at=failed_at, ran_on=ran_on)
    return {"status": run.status, "seconds": run.seconds, "failure": run.failure,
            "ran_on": {"host": socket.gethostname(), "pid": os.getpid(), **ran_on}}


# -- the driver ---------------------------------------------------------------------------------------------------
def resources(ray, cpus_per_job: float, gpus_per_job: float | None) -> tuple[float, float]:
    """(CPUs, GPUs) each task asks for: ``gpus_per_job`` None gives 1 GPU per job when the cluster has any."""
    if cpus_per_job <= 0:
        raise FewlabelError(f"--cpus-per-job {cpus_per_job:g} is impossible; give a positive number")
    cluster = ray.cluster_resources()
    total_cpus, total_gpus = cluster.get("CPU", 0.0), cluster.get("GPU", 0.0)
    gpus = (1.0 if total_gpus >= 1 else 0.0) if gpus_per_job is None else float(gpus_per_job)
    if gpus < 0:
        raise FewlabelError(f"--gpus-per-job {gpus:g} is impossible; give 0 or more")
    if cpus_per_job > total_cpus:
        raise FewlabelError(f"--cpus-per-job {cpus_per_job:g}: the Ray cluster has {total_cpus:g} CPU(s) in all")
    if gpus > total_gpus:
        raise FewlabelError(f"--gpus-per-job {gpus:g}: the Ray cluster has {total_gpus:g} GPU(s) in all")
    return float(cpus_per_job), gpus


def _slots(ray, cpus: float, gpus: float) -> int:
    """Jobs the cluster runs at once (at least 1). The driver keeps no more tasks than that in flight, so a job
    whose dependency just finished is next in grid order instead of behind every job already queued in Ray (and
    nodes that join later add slots)."""
    total = ray.cluster_resources()
    slots = int(total.get("CPU", 0.0) // cpus + 1e-9)
    if gpus > 0:
        slots = min(slots, int(total.get("GPU", 0.0) // gpus + 1e-9))
    return max(1, slots)


def run_grid_ray(jobs: list[Job], store: ResultStore, session: RaySession, runner: str | None = None,
                 limit: int | None = None, retry_failed: bool = False, cpus_per_job: float = 1.0,
                 gpus_per_job: float | None = None, poll_seconds: float = 2.0) -> GridOutcome:
    """Run every unfinished job of the grid as Ray tasks; the same outcome and records as :func:`run_grid`."""
    ray = session.ray
    cpus, gpus = resources(ray, cpus_per_job, gpus_per_job)
    # Ray retries a task once when its worker or node is lost (the job's lease is then stale: taken over).
    task = ray.remote(run_task).options(num_cpus=cpus, num_gpus=gpus, max_retries=1)
    outcome = GridOutcome()
    pending, failed_at_start = sort_out(jobs, store, retry_failed, outcome)
    progress = Progress(pending)
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    log.info("ray executor: %d node(s), %g CPU(s), %g GPU(s); each job asks for %g CPU(s) and %g GPU(s)",
             len(nodes), ray.cluster_resources().get("CPU", 0.0), ray.cluster_resources().get("GPU", 0.0), cpus, gpus)
    waiting = list(pending)  # not submitted yet, in grid order
    mine = {job.key() for job in pending}  # unresolved jobs this driver will submit (their dependants wait)
    leased: dict[str, Job] = {}  # held by another process: watched, submitted again if its lease goes stale
    running: dict[Any, Job] = {}
    attempts = 0  # jobs run or recorded here (or in flight), for --max-jobs
    out = str(store.root)
    threads = max(1, int(cpus))

    def resolved(job: Job) -> None:
        mine.discard(job.key())

    def submit(job: Job) -> None:
        running[task.remote(out, job, store.fingerprint, store.legacy_ok, runner,
                            failed_at_start.get(job.key()), threads)] = job

    try:
        while waiting or running or leased:
            progressed = False
            slots = _slots(ray, cpus, gpus)
            # 1. jobs another process held: finished there, failed there, or free again
            for key, job in list(leased.items()):
                if store.done_key(key) or failed_since(store, key, failed_at_start.get(key)) is not None:
                    del leased[key]
                    outcome.by_others += 1
                    progress.done(job, None, "finished by another process")
                    resolved(job)
                    progressed = True
                elif store.leases.holder(key) is None:
                    del leased[key]
                    waiting.insert(0, job)
            # 2. submit what is ready, in grid order, while a slot is free (the scan stops at a full cluster, so
            #    a pass over a long grid reads the files of the jobs it submits, not of every job left)
            still: list[Job] = []
            for index, job in enumerate(waiting):
                if len(running) >= slots or (limit is not None and attempts >= limit):
                    still.extend(waiting[index:])
                    break
                key = job.key()
                if job.depends_on is not None and job.depends_on in mine:
                    still.append(job)  # its dependency is still to run here
                    continue
                if store.done_key(key) or failed_since(store, key, failed_at_start.get(key)) is not None:
                    outcome.by_others += 1
                    progress.done(job, None, "finished by another process")
                    resolved(job)
                    progressed = True
                    continue
                state, blocker = dependency_state(job, store, retry_failed, failed_at_start)
                if state == "wait":
                    still.append(job)
                    continue
                attempts += 1
                progressed = True
                if state == "blocked":  # recorded here, under its lease, without a task
                    run = run_one(job, store, blocker=blocker, failed_at=failed_at_start.get(key))
                    if run.status == "blocked":
                        outcome.failed += 1
                        outcome.failures.append(run.failure)
                        progress.done(job, None, "FAILED (dependency failed)")
                    elif run.status == "leased":
                        attempts -= 1
                        leased[key] = job
                        continue
                    else:
                        attempts -= 1
                        outcome.by_others += 1
                        progress.done(job, None, "finished by another process")
                    resolved(job)
                    continue
                submit(job)
            waiting = still
            # 3. collect finished tasks
            if running:
                done, _ = ray.wait(list(running), num_returns=1, timeout=poll_seconds)
                for ref in done:
                    job = running.pop(ref)
                    status = _collect(ray, ref, job, store, outcome, progress)
                    if status in ("by_others", "leased"):
                        attempts -= 1
                    if status == "leased":
                        leased[job.key()] = job
                    else:
                        resolved(job)
                continue
            if progressed:
                continue
            # 4. nothing running and nothing submittable
            if waiting and limit is not None and attempts >= limit and not leased:
                break
            busy = [j for j in waiting if j.depends_on is not None and store.leases.holder(j.depends_on) is not None]
            if leased or busy:
                example = next(iter(leased), None) or busy[0].depends_on
                holder = store.leases.holder(example) or {}
                log.info("waiting for %d job(s) running in another process (e.g. %s: pid %s on %s)",
                         len(leased) + len(busy), example, holder.get("pid"), holder.get("host"))
                time.sleep(poll_seconds)
                continue
            if waiting:
                log.warning("%d job(s) could not run: their dependencies are missing", len(waiting))
            break
    except BaseException:  # Ctrl-C (or anything else) on the driver: stop the tasks it started
        for ref in running:
            with contextlib.suppress(Exception):
                ray.cancel(ref, force=True)
        raise
    for job in waiting:
        progress.forget(job)
    outcome.unfinished += len(waiting)
    return _finish(outcome, store)


def _collect(ray, ref, job: Job, store: ResultStore, outcome: GridOutcome, progress: Progress) -> str:
    """Count one finished task into ``outcome``, print its progress line and return its status."""
    key = job.key()
    try:
        result = ray.get(ref)
    except Exception as exc:  # the task itself died (worker or node lost, runner not importable there, ...)
        if store.done_key(key):
            outcome.by_others += 1
            progress.done(job, None, "finished by another process")
            return "by_others"
        error = f"the Ray task failed: {_first_line(getattr(exc, 'cause', None) or exc)}"
        record = store.save_failure(job, error, 0.0, None, None)
        log.error("job %s (%s labels=%s seed=%d) failed: %s", key, job.label, job.labels, job.seed, error)
        outcome.failed += 1
        outcome.failures.append(record)
        progress.done(job, None, "FAILED")
        return "failed"
    status = result["status"]
    where = result.get("ran_on") or {}
    node = f" on {where.get('host')} (node {str(where.get('node_id') or '?')[:8]}, pid {where.get('pid')})"
    if status == "done":
        outcome.ran += 1
        progress.done(job, result["seconds"], "done" + node)
    elif status == "failed":
        outcome.failed += 1
        outcome.failures.append(result["failure"])
        log.error("job %s (%s labels=%s seed=%d) failed%s: %s", key, job.label, job.labels, job.seed, node,
                  (result["failure"] or {}).get("error"))
        progress.done(job, result["seconds"], "FAILED" + node)
    elif status == "by_others":
        outcome.by_others += 1
        progress.done(job, None, "finished by another process")
    # "leased": another process holds it; the driver watches its lease
    return status


__all__ = ["INSTALL_HINT", "RaySession", "check_address", "connect", "import_ray", "run_grid_ray", "run_task"]
