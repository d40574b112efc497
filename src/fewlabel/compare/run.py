"""``compare``: build the grid, run what is not finished yet, write the report."""

from __future__ import annotations

import logging
import multiprocessing
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml

from fewlabel.compare import executor
from fewlabel.compare.executor import ResultStore, run_grid
from fewlabel.compare.fingerprint import data_fingerprint
from fewlabel.compare.grid import APPROACHES, BUDGETS, build_grid
from fewlabel.compare.report import write_report
from fewlabel.data.registry import load_dataset, registered_datasets
from fewlabel.data.splits import LabelRequest
from fewlabel.engine.run import LOGGER_NAME, RunFolder, atomic_write, is_rank_zero, launch_rank, launch_world_size
from fewlabel.errors import FewlabelError
from fewlabel.modalities import modality_of

log = logging.getLogger(LOGGER_NAME)


@dataclass(frozen=True)
class CompareConfig:
    data: str = "digits"
    data_dir: str | None = None
    labels: tuple[str, ...] = ("0.01", "0.1", "1.0")
    seeds: int = 3
    approaches: tuple[str, ...] = APPROACHES
    budget: str = "small"
    backbones: tuple[str, ...] = ()  # default: EfficientNet-Lite0 for images, MiniLM for text
    out: str = "compare"
    max_jobs: int | None = None
    # Dataset options, as ``train`` takes them: table columns {"text", "label", "group", "image", "path"} and
    # ``clip_seconds`` (audio), and skip_bad (image folders / audio: leave unreadable files out).
    columns: dict[str, Any] = field(default_factory=dict)
    skip_bad: bool = False
    retry_failed: bool = False  # rerun the jobs that failed in an earlier run (besides those not run yet)
    # Local executor: processes running jobs at once on this machine, each on its share of the CPU threads; they
    # share the folder through the job leases, so each job runs once. None: from the cores and ``threads_per_job``
    # (see :func:`local_workers`).
    workers: int | None = None
    threads_per_job: int | None = None  # local: torch threads of each job (default: the cores / workers)
    # "module:function" running one job (default: the executor's own ``run_job``); imported in every worker.
    runner: str | None = None
    # "local" (this machine: ``workers`` processes) or "ray" (one Ray task per job: a local Ray instance, or the
    # cluster at ``ray_address``; see fewlabel.compare.ray_executor). The compare folder must be on a file system
    # every node mounts at the same path.
    executor: str = "local"
    ray_address: str | None = None  # None: start a local Ray instance; host:port (or ray://, auto): join a cluster
    cpus_per_job: float = 1.0  # Ray: CPUs each job's task asks for (its torch threads)
    gpus_per_job: float | None = None  # Ray: GPUs per job; None: 1 when the cluster has GPUs, else 0


EXECUTORS = ("local", "ray")


def _runner(spec: str | None):
    return executor.load_runner(spec)


def _check(config: CompareConfig) -> None:
    """Every option error before anything is loaded, connected or written."""
    if config.budget not in BUDGETS:
        raise FewlabelError(f"--budget {config.budget!r}: choose one of {', '.join(BUDGETS)}")
    if config.workers is not None and config.workers < 1:
        raise FewlabelError(f"--workers {config.workers} is impossible; give 1 or more")
    if config.threads_per_job is not None and config.threads_per_job < 1:
        raise FewlabelError(f"--threads-per-job {config.threads_per_job} is impossible; give 1 or more")
    if config.executor not in EXECUTORS:
        raise FewlabelError(f"--executor {config.executor!r}: choose {' or '.join(EXECUTORS)}")
    if config.executor != "ray":
        if config.ray_address:
            raise FewlabelError("--ray-address is for --executor ray; add --executor ray to run the jobs on that "
                                "Ray cluster")
        return
    if config.workers is not None or config.threads_per_job is not None:
        raise FewlabelError("--workers and --threads-per-job are the local executor's; with --executor ray, Ray "
                            "runs as many jobs at once as the cluster's CPUs allow (--cpus-per-job sets each job's "
                            "share)")
    if config.cpus_per_job <= 0:
        raise FewlabelError(f"--cpus-per-job {config.cpus_per_job:g} is impossible; give a positive number")
    if config.gpus_per_job is not None and config.gpus_per_job < 0:
        raise FewlabelError(f"--gpus-per-job {config.gpus_per_job:g} is impossible; give 0 or more")


def _work(config: CompareConfig, index: int, threads: int, fingerprint: str, registered: bool) -> None:
    """One extra local worker: the same grid, jobs taken under leases, until none is left."""
    from fewlabel.engine.trainer import quiet_lightning

    torch.set_num_threads(threads)
    out = Path(config.out)
    handler = logging.FileHandler(out / "logs" / f"worker-{index}.log", encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    console = logging.StreamHandler()  # the console shows this worker's warnings; its progress is in its log
    console.setLevel(logging.WARNING)
    logger = logging.getLogger(LOGGER_NAME)
    logger.handlers[:] = [handler, console]
    logger.setLevel(logging.INFO)
    logger.propagate = False
    quiet_lightning()
    _, jobs = _jobs(config)
    store = ResultStore(out, fingerprint=fingerprint, legacy_ok=registered)
    run_grid(jobs, store, _runner(config.runner), limit=config.max_jobs, retry_failed=config.retry_failed)


def _jobs(config: CompareConfig) -> tuple[Any, list]:
    columns = dict(config.columns or {})
    dataset = load_dataset(config.data, config.data_dir, columns, config.skip_bad)  # fail fast, before any job
    budget = BUDGETS[config.budget]
    modality = modality_of(dataset)
    default = modality.default_backbones.get("transfer")  # audio has none offline: transfer needs --backbones
    backbones = list(config.backbones) or ([default] if default else [])
    jobs = build_grid(config.data, [str(LabelRequest.parse(f)) for f in config.labels], config.seeds,
                      list(config.approaches), budget, backbones, config.data_dir, modality=dataset.modality,
                      columns=columns, skip_bad=config.skip_bad)
    return dataset, jobs


def compare(config: CompareConfig) -> dict[str, Any]:
    """Run (or resume) the comparison grid in ``config.out`` and (re)write its report."""
    _check(config)
    runner = _runner(config.runner)
    dataset, jobs = _jobs(config)
    budget = BUDGETS[config.budget]
    modality = modality_of(dataset)
    default = modality.default_backbones.get("transfer")  # audio has none offline: transfer needs --backbones
    backbones = list(config.backbones) or ([default] if default else [])
    if "transfer" in config.approaches and not backbones:
        log.warning("no pretrained %s backbone is available offline: the transfer approach is left out; pass "
                    "--backbones (a model folder or a hub id) to include it", modality.name)
    out = Path(config.out)
    if launch_world_size() > 1:
        raise FewlabelError("compare runs its jobs one after another, each on one device; start it as one process "
                            "(not under torchrun or srun with several tasks); on a multi-GPU host "
                            "CUDA_VISIBLE_DEVICES chooses the GPU")
    if not is_rank_zero():  # a DDP rank re-running a script that went on to compare: rank 0 does it alone
        log.info("rank %s: compare runs on rank 0 only", launch_rank())
        return {"jobs": len(jobs), "ran": 0, "skipped": 0, "report_html": str(out / "report.html"),
                "report_md": str(out / "report.md"), "complete": False}
    registered = config.data in {entry.name for entry in registered_datasets()}
    fingerprint = data_fingerprint(config.data, dataset, registered)
    session = None
    if config.executor == "ray":  # Ray missing or an unreachable address: one error line, nothing written
        from fewlabel.compare import ray_executor

        session = ray_executor.connect(config.ray_address)
    try:
        if session is not None:
            ray_executor.resources(session.ray, config.cpus_per_job, config.gpus_per_job)  # fits the cluster?
        return _run(config, dataset, jobs, budget, modality, backbones, out, registered, fingerprint, runner, session)
    finally:
        if session is not None:
            session.close()


def _run(config: CompareConfig, dataset, jobs: list, budget, modality, backbones: list[str], out: Path,
         registered: bool, fingerprint: str, runner, session) -> dict[str, Any]:
    out.mkdir(parents=True, exist_ok=True)
    run = RunFolder(out)
    (out / "logs").mkdir(exist_ok=True)
    handler = run.attach_log()
    try:
        keys = [job.key() for job in jobs]
        atomic_write(out / "compare.yaml", yaml.safe_dump({**asdict(config), "budget_preset": asdict(budget),
                                                           "data_fingerprint": fingerprint, "jobs": len(jobs),
                                                           "job_keys": keys}, sort_keys=False))
        # A result stored before fingerprints were recorded is reused for a registered dataset (a fixed,
        # checksummed release: the key already names it) but rerun for a path, which may have been edited since.
        store = ResultStore(out, fingerprint=fingerprint, legacy_ok=registered)
        if session is not None:
            from fewlabel.compare.ray_executor import run_grid_ray

            workers = []
            outcome = run_grid_ray(jobs, store, session, config.runner, limit=config.max_jobs,
                                   retry_failed=config.retry_failed, cpus_per_job=config.cpus_per_job,
                                   gpus_per_job=config.gpus_per_job)
        else:
            threads = torch.get_num_threads()
            workers = _start_workers(config, fingerprint, registered, len(jobs))
            try:
                outcome = run_grid(jobs, store, runner, limit=config.max_jobs, retry_failed=config.retry_failed)
            finally:
                torch.set_num_threads(threads)  # this process's own setting again (compare from Python)
        for worker in workers:
            worker.join()
            if worker.exitcode:
                log.warning("local worker %s exited with status %s; a job it held is taken over by the others once "
                            "its lease is stale", worker.name, worker.exitcode)
        results, notes = _grid_results(store, set(keys))
        full = [f for f in config.labels if LabelRequest.parse(f).fraction == 1.0]
        if "semisupervised" in config.approaches and full:
            notes.append(f"Semi-supervised learning is not run at {', '.join(full)} labels: no unlabelled pool is "
                         "left there.")
        failures = _grid_failures(store, set(keys))
        html = write_report(results, out, f"fewlabel compare: {dataset.name}",
                            setup=_setup(config, dataset, modality.compare_budget(budget), backbones),
                            extra_notes=notes, failures=failures)
    finally:
        run.detach_log(handler)
    finished = sum(store.done(job) for job in jobs)
    return {"jobs": len(jobs), "ran": outcome.ran, "skipped": outcome.skipped, "failed": len(failures),
            "by_others": outcome.by_others, "report_html": str(html), "report_md": str(out / "report.md"),
            "complete": finished == len(jobs)}


# A compare job's peak memory on the CPU (digits and Fashion-MNIST jobs measured 0.9-2.5 GB of RSS): automatic
# worker counts never plan more processes than the available memory holds at this much each.
MEMORY_PER_WORKER = 3 * 1024**3
WORKERS_ENV = "FEWLABEL_COMPARE_WORKERS"  # the default --workers, for scripts and test suites


def _available_memory() -> int | None:
    """Bytes of memory new processes can use: Linux's MemAvailable (free memory plus the page cache it can drop;
    free memory alone is small on any machine that has read a dataset), else the free pages, else None."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):  # neither: no memory cap
        return None


def local_workers(workers: int | None, threads_per_job: int | None, jobs: int,
                  cores: int | None = None, memory: int | None = None, gpu: bool | None = None) -> tuple[int, int, str]:
    """(workers, torch threads per job, why) for the local executor.

    Given ``workers``: that many (at most one per job), each on ``threads_per_job`` or its share of the cores.
    Automatic: ``$FEWLABEL_COMPARE_WORKERS`` when set; on a GPU one (the jobs share it badly); otherwise one per
    ``threads_per_job`` (default 1) of the cores, no more than the available memory holds at
    :data:`MEMORY_PER_WORKER` each. Why one thread per job: the compare grid's jobs are small, and one thread each in
    parallel processes beats several threads on one job (the demo's 24 jobs: about 200 job-seconds on 1 thread
    against 147 on 2, so two 1-thread workers finish first).
    """
    cores = cores or os.cpu_count() or 1
    jobs = max(1, jobs)
    if workers is None and os.environ.get(WORKERS_ENV):
        try:
            workers = int(os.environ[WORKERS_ENV])
        except ValueError:
            raise FewlabelError(f"{WORKERS_ENV}={os.environ[WORKERS_ENV]!r} is not a number of workers; unset it or "
                                "give a whole number") from None
        if workers < 1:
            raise FewlabelError(f"{WORKERS_ENV}={workers} is impossible; give 1 or more")
    if workers is not None:
        count = min(workers, jobs)
        return count, threads_per_job or max(1, cores // count), f"{count} as asked"
    if gpu if gpu is not None else torch.cuda.is_available():
        return 1, threads_per_job or cores, "1: the jobs would share one GPU (--workers N to share it anyway)"
    count = max(1, cores // (threads_per_job or 1))
    why = f"{count}: {cores} cores / {threads_per_job or 1} thread(s) per job"
    memory = memory if memory is not None else _available_memory()
    if memory is not None and memory // MEMORY_PER_WORKER < count:
        count = max(1, int(memory // MEMORY_PER_WORKER))
        why = f"{count}: {memory / 1024**3:.1f} GiB of memory available, about 3 GiB per job"
    if count > jobs:
        count, why = jobs, f"{jobs}: one per job"
    return count, threads_per_job or max(1, cores // count), why


def _start_workers(config: CompareConfig, fingerprint: str, registered: bool, jobs: int) -> list:
    """``workers - 1`` extra processes (spawned: a fresh interpreter each, so a crash or a leaked thread pool in
    one job cannot take the others down), each on its share of the CPU threads; this process is the first worker
    and pins its own threads the same way."""
    count, threads, why = local_workers(config.workers, config.threads_per_job, jobs)
    torch.set_num_threads(threads)
    if count <= 1:
        log.info("local executor: 1 worker of %d thread(s) (%s)", threads, why)
        return []
    context = multiprocessing.get_context("spawn")
    workers = []
    for index in range(1, count):
        worker = context.Process(target=_work, args=(config, index, threads, fingerprint, registered),
                                 name=f"compare-worker-{index}")
        worker.start()
        workers.append(worker)
    log.info("local executor: %d workers of %d thread(s) each (%s; logs/worker-N.log for the others)", count,
             threads, why)
    return workers


def report_only(folder: str | Path) -> Path:
    """Rewrite the report of a compare folder from its stored results, without training anything."""
    folder = Path(folder)
    store = ResultStore(folder)
    results = store.all_results()
    if not results:
        raise FewlabelError(f"{folder} holds no compare results (results/*.json); run `fewlabel compare` first")
    stored = folder / "compare.yaml"
    raw = yaml.safe_load(stored.read_text(encoding="utf-8")) if stored.is_file() else {}
    setup = {k: raw[k] for k in ("data", "labels", "seeds", "approaches", "budget") if k in raw}
    # The data as the folder's last compare saw it: results made from other data are left out.
    store.fingerprint = raw.get("data_fingerprint")
    keys = set(raw["job_keys"]) if raw.get("job_keys") else None
    results, notes = _grid_results(store, keys)
    return write_report(results, folder, f"fewlabel compare: {raw.get('data', folder.name)}", setup=setup,
                        extra_notes=notes, failures=_grid_failures(store, keys))


def _grid_results(store: ResultStore, keys: set[str] | None) -> tuple[list[dict[str, Any]], list[str]]:
    """The stored results of the folder's current grid, and a note on any left out.

    Why: a rerun with changed settings (a new default head, a longer budget) gives changed jobs new keys;
    their old results stay on disk, untouched, but averaging them with the new ones would report a mix of
    two set-ups. ``keys=None`` (a folder from before grids were recorded) keeps every result.
    """
    results = store.all_results()
    notes = []
    fresh = [r for r in results if store.current(r)]
    if len(fresh) < len(results):
        notes.append(f"{len(results) - len(fresh)} stored result(s) were made from data that has changed since "
                     "(or cannot be checked): they are not part of this report; `compare` runs their jobs again.")
    if keys is None:
        return fresh, notes
    current = [r for r in fresh if r.get("key") in keys]
    left_out = len(fresh) - len(current)
    if left_out:
        notes.append(f"{left_out} stored result(s) from earlier settings (results/ in this folder) are not part of "
                     "this report: their jobs are not in the current grid.")
    return current, notes


def _grid_failures(store: ResultStore, keys: set[str] | None) -> list[dict[str, Any]]:
    """Failure records of the current grid's jobs (made from the current data) that have no result."""
    return [r for r in store.all_failures()
            if store.current(r) and (keys is None or r.get("key") in keys) and not store.done_key(r["key"])]


def _setup(config: CompareConfig, dataset, budget, backbones: list[str]) -> dict[str, Any]:
    return {
        "data": f"{dataset.name} ({len(dataset)} samples, {dataset.num_classes} classes; {dataset.source})",
        "label fractions": ", ".join(config.labels),
        "seeds": config.seeds,
        "budget": (f"{budget.name}: supervised {budget.supervised_steps} steps (>= {budget.supervised_min_epochs} "
                   f"epochs, width {budget.width}), transfer {budget.transfer_epochs} epochs, pretraining "
                   f"{budget.pretrain_epochs} epochs, cap {budget.max_minutes} min/run; policies "
                   f"{', '.join(budget.policies)}; strategies {', '.join(budget.strategies)}; methods "
                   f"{', '.join(budget.methods)} + {', '.join(budget.probes)}; semi-supervised "
                   f"{', '.join(budget.semisup)} on "
                   + (f"at most {budget.semisup_pool:,} pool samples" if budget.semisup_pool else "the whole pool")),
        "approaches": ", ".join(config.approaches),
        "pretrained backbones": ", ".join(backbones),
        "splits": "the same nested, stratified split per seed for every approach; test split fixed across seeds",
    }
