"""Run folders: every run writes its config, metrics and logs next to its checkpoints.

Layout::

    <run>/config.yaml    the full, resolved configuration (+ versions)
    <run>/split.npz      the exact split, reusable by any later run (``--split <run>``)
    <run>/metrics.json   headline and detailed metrics (written atomically, last)
    <run>/logs/          train.log (human) and csv/metrics.csv (per step/epoch, Lightning CSVLogger)
    <run>/checkpoints/   Lightning checkpoints (best by validation accuracy)
    <run>/model.safetensors + model.json   the trained weights and what is needed to rebuild them
    <run>/INTERRUPTED    only after Ctrl-C: where training stopped and how to resume (see engine.trainer)

Every approach returns a :class:`RunResult` (the folder and its metrics) and draws its labelled subset through
:func:`prepare_split` (the seed's split, or the one an earlier run saved).

Several processes, one run (multi-GPU): Lightning's DDP launcher re-runs the whole command once per extra
device, and torchrun / srun start every rank the same way. Only global rank 0 creates the folder and writes
config and metrics; the other ranks adopt the folder rank 0 made. Rank 0 hands its path to the ranks it is about
to launch through an environment variable (``FEWLABEL_RUN_<key>``); ranks started by an external launcher find
the folder by the ``.fewlabel-launch.json`` note rank 0 leaves in it (a shared file system is needed then).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import platform
import shutil
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from fewlabel.errors import FewlabelError

if TYPE_CHECKING:
    from fewlabel.data.dataset import Dataset
    from fewlabel.data.splits import LabelSplit

LOGGER_NAME = "fewlabel"
LAUNCH_NOTE = ".fewlabel-launch.json"
# Ranks of one launch start within this many seconds of each other (FEWLABEL_RANK_SLACK overrides): a launch note
# older than that, relative to this process's start, belongs to an earlier launch of the same command.
RANK_SLACK_SECONDS = 120.0
PROCESS_STARTED = time.time()
RANK_WAIT_SECONDS = 600.0  # how long a rank > 0 waits for rank 0's folder ($FEWLABEL_RANK_WAIT overrides)


@contextlib.contextmanager
def atomic_path(path: Path, suffix: str = ".tmp") -> Iterator[Path]:
    """A temporary path next to ``path`` for a writer that needs a file name (safetensors, numpy): renamed over
    ``path`` when the block succeeds, removed when it fails, so ``path`` is either the old or the new file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=suffix)
    os.close(handle)
    tmp = Path(name)
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def atomic_folder(path: Path) -> Iterator[Path]:
    """A temporary folder next to ``path`` for writers that fill a folder (Hugging Face ``save_pretrained``):
    it replaces ``path`` when the block succeeds (an earlier folder is moved aside first, then deleted) and is
    removed when it fails, so ``path`` always holds one complete version."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"))
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = path.with_name(f".{path.name}.old-{os.getpid()}")
    if path.exists():
        os.replace(path, old)
    os.replace(tmp, path)
    shutil.rmtree(old, ignore_errors=True)


def atomic_write(path: Path, text: str) -> None:
    """Write UTF-8 text through a temporary file + rename so an interrupted write never leaves half a file."""
    with atomic_path(Path(path)) as tmp, open(tmp, "w", encoding="utf-8") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())


def launch_rank() -> int | None:
    """This process's global rank when a launcher runs one command as several processes, else ``None``.

    Recognised launchers: torchrun (``RANK``), srun with several tasks (``SLURM_PROCID``) and Lightning's own
    DDP launcher, which re-runs the command with ``LOCAL_RANK``/``NODE_RANK`` set (and sets them in the first
    process too once it has launched the others). ``0`` is the process that creates run folders; other ranks
    are numbered as the launcher numbers them (a later node of Lightning's launcher without
    ``LOCAL_WORLD_SIZE`` reports its node rank, which is enough to know it is not rank 0).
    """
    env = os.environ
    if "RANK" in env:
        return int(env["RANK"])
    if _slurm_tasks() > 1:
        return int(env["SLURM_PROCID"])
    if "LOCAL_RANK" in env or "NODE_RANK" in env:
        local = int(env.get("LOCAL_RANK", 0))
        node = int(env.get("NODE_RANK", env.get("GROUP_RANK", 0)))
        if node == 0:
            return local
        per_node = int(env.get("LOCAL_WORLD_SIZE", 0))
        return node * per_node + local if per_node else node
    return None


def launch_world_size() -> int:
    """How many processes an external launcher (torchrun, srun) or a running DDP fit started (1: just this one)."""
    if "WORLD_SIZE" in os.environ:
        return int(os.environ["WORLD_SIZE"])
    return max(1, _slurm_tasks())


def is_rank_zero() -> bool:
    """True in the process that writes run folders: a plain process or global rank 0."""
    return (launch_rank() or 0) == 0


def _slurm_tasks() -> int:
    """srun's task count when it started this process as one of several (as Lightning's SLURM detection)."""
    env = os.environ
    if "SLURM_PROCID" not in env or env.get("SLURM_JOB_NAME") in ("bash", "interactive"):
        return 0
    try:
        return int(env.get("SLURM_NTASKS", 0))
    except ValueError:
        return 0


def _launch_id() -> str | None:
    """What every rank of one launch shares and another launch does not (None outside a launch)."""
    env = os.environ
    if "RANK" in env:
        return ":".join(["torchrun", *(env.get(k, "") for k in ("TORCHELASTIC_RUN_ID", "MASTER_ADDR", "MASTER_PORT"))])
    if _slurm_tasks() > 1:
        return f"slurm:{env.get('SLURM_JOB_ID', '')}.{env.get('SLURM_STEP_ID', '')}"
    if "LOCAL_RANK" in env or "NODE_RANK" in env:
        return f"lightning:{env.get('MASTER_ADDR', '')}:{env.get('MASTER_PORT', '')}"
    return None


_created: dict[str, int] = {}  # run folders requested so far in this process, by request (ranks count alike)


def _request_key(out: str | os.PathLike | None, default_name: str, base: str | os.PathLike) -> str:
    target = Path(out) if out is not None else Path(base) / default_name
    return f"{'out' if out is not None else 'auto'}:{target.absolute()}"


def _handoff_variable(key: str, occurrence: int) -> str:
    return "FEWLABEL_RUN_" + hashlib.sha1(f"{key}#{occurrence}".encode()).hexdigest()[:12].upper()


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "item") and callable(value.item):
        return value.item()
    return value


@dataclass
class RunResult:
    """What every approach returns: its run folder and the metrics written to ``metrics.json``."""

    run_dir: str
    metrics: dict[str, Any]


def prepare_split(dataset: Dataset, seed: int, split_path: str | None) -> LabelSplit:
    """The seed's split, or a split saved by an earlier run (so both runs use the same labelled subset)."""
    from fewlabel.data.splits import LabelSplit, make_split

    if split_path:
        return LabelSplit.load(split_path, dataset)
    return make_split(dataset, seed=seed)


@dataclass
class RunFolder:
    path: Path

    @classmethod
    def create(cls, out: str | os.PathLike | None, default_name: str, base: str | os.PathLike = "runs") -> RunFolder:
        """A new, empty run folder: ``out`` exactly (must not hold files), or a unique ``base/default_name``.

        In a multi-process launch only rank 0 creates it; every other rank gets the same folder back.
        """
        key = _request_key(out, default_name, base)
        _created[key] = occurrence = _created.get(key, 0) + 1
        rank = launch_rank()
        if rank:
            _quiet_console()
            return cls(_adopt(key, occurrence, out, default_name, base, rank))
        if out is not None:
            path = Path(out)
            if path.exists() and (not path.is_dir() or any(path.iterdir())):
                raise FewlabelError(f"run folder {path} already exists and is not empty; choose another --out")
        else:
            path = Path(base) / default_name
            suffix = 2
            while path.exists():
                path = Path(base) / f"{default_name}-{suffix}"
                suffix += 1
        try:
            (path / "logs").mkdir(parents=True, exist_ok=True)
            (path / "checkpoints").mkdir(exist_ok=True)
        except OSError as exc:
            raise FewlabelError(f"cannot create run folder {path}: {exc.strerror}; choose another --out") from None
        # Ranks launched from here on (Lightning's DDP launcher copies this environment) take the same folder.
        # The value names this process: only its own children (Lightning's launcher) take it, never the ranks of
        # a later torchrun that merely inherited this environment.
        os.environ[_handoff_variable(key, occurrence)] = f"{os.getpid()}|{path.absolute()}"
        launch = _launch_id()
        if launch is not None:  # ranks started by an external launcher look for this note
            atomic_write(path / LAUNCH_NOTE, json.dumps({"launch": launch, "request": key, "occurrence": occurrence,
                                                         "created": time.time()}) + "\n")
        return cls(path)

    @property
    def primary(self) -> bool:
        """Whether this process writes the folder's files (a single process, or global rank 0)."""
        return is_rank_zero()

    @property
    def checkpoints(self) -> Path:
        return self.path / "checkpoints"

    @property
    def logs(self) -> Path:
        return self.path / "logs"

    def write_config(self, config: dict[str, Any]) -> None:
        if not self.primary:
            return
        import torch

        from fewlabel import __version__

        versions = {"fewlabel": __version__, "torch": str(torch.__version__), "python": platform.python_version()}
        atomic_write(self.path / "config.yaml", yaml.safe_dump({**_jsonable(config), "versions": versions},
                                                                 sort_keys=False))

    def write_metrics(self, metrics: dict[str, Any]) -> None:
        if self.primary:
            atomic_write(self.path / "metrics.json", json.dumps(_jsonable(metrics), indent=2) + "\n")

    def read_metrics(self) -> dict[str, Any]:
        return json.loads((self.path / "metrics.json").read_text(encoding="utf-8"))

    def save_split(self, split: Any) -> None:
        """``split.npz`` (a ``LabelSplit``), written once by rank 0 and atomically."""
        if self.primary:
            with atomic_path(self.path / "split.npz", suffix=".npz") as tmp:
                split.save(tmp)

    def attach_log(self) -> logging.Handler:
        """Send fewlabel's log records to ``logs/train.log`` for the lifetime of this run (rank 0 only: the
        other ranks of a multi-device run would repeat every line)."""
        if not self.primary:
            handler: logging.Handler = logging.NullHandler()
        else:
            handler = logging.FileHandler(self.logs / "train.log", encoding="utf-8")
            handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        logger = logging.getLogger(LOGGER_NAME)
        if logger.getEffectiveLevel() > logging.INFO:
            logger.setLevel(logging.INFO)
        logger.addHandler(handler)
        return handler

    def detach_log(self, handler: logging.Handler) -> None:
        logging.getLogger(LOGGER_NAME).removeHandler(handler)
        handler.close()


def _only_warnings(record: logging.LogRecord) -> bool:
    return record.levelno >= logging.WARNING


def _quiet_console() -> None:
    """Ranks > 0 would repeat rank 0's progress lines on the same terminal: their console shows warnings only."""
    for handler in logging.getLogger(LOGGER_NAME).handlers:
        console = isinstance(handler, logging.StreamHandler) and not isinstance(handler, logging.FileHandler)
        if console and _only_warnings not in handler.filters:
            handler.addFilter(_only_warnings)


def _adopt(key: str, occurrence: int, out: str | os.PathLike | None, default_name: str, base: str | os.PathLike,
           rank: int) -> Path:
    """The folder rank 0 created for the same request: handed over in the environment when rank 0 launched this
    process, else found by rank 0's launch note (waiting for it, as every rank starts at once)."""
    launcher, _, handed = os.environ.get(_handoff_variable(key, occurrence), "").partition("|")
    if handed and launcher == str(os.getppid()):
        return Path(handed)
    launch = _launch_id()
    # A launch id can repeat (torchrun without --rdzv-id, a fixed MASTER_ADDR:MASTER_PORT): only a note written
    # since shortly before this process started belongs to this launch, and the newest one wins.
    oldest = PROCESS_STARTED - float(os.environ.get("FEWLABEL_RANK_SLACK", RANK_SLACK_SECONDS))
    wait = float(os.environ.get("FEWLABEL_RANK_WAIT", RANK_WAIT_SECONDS))
    deadline = time.monotonic() + wait
    while True:
        if out is not None:
            candidates = [Path(out)]
        else:
            parent = Path(base)
            candidates = sorted(p for p in parent.glob(f"{default_name}*")
                                if p.name == default_name or p.name[len(default_name):].lstrip("-").isdigit())
        matching = []
        for candidate in candidates:
            try:
                note = json.loads((candidate / LAUNCH_NOTE).read_text(encoding="utf-8"))
                created = float(note.get("created", 0.0))
            except (OSError, ValueError, TypeError, AttributeError):
                continue
            same = (note.get("launch"), note.get("request"), note.get("occurrence")) == (launch, key, occurrence)
            if same and created >= oldest:
                matching.append((created, str(candidate)))
        if matching:
            return Path(max(matching)[1])
        if time.monotonic() > deadline:
            where = out if out is not None else Path(base) / f"{default_name}*"
            raise FewlabelError(f"rank {rank}: rank 0 did not create run folder {where} within {wait:.0f} s; "
                                "every rank must see the same file system (set FEWLABEL_RANK_WAIT to wait longer)")
        time.sleep(0.2)


def start_or_resume(resume: Any, out: str | None, name: str, base: str,
                    split: Any) -> tuple[RunFolder, logging.Handler]:
    """A pretraining run's folder with its log attached: a resumed run's own folder (``resume``: its resume point;
    the resumption is logged), else a new folder that first saves the run's split."""
    run = resume.run if resume else RunFolder.create(out, name, base=base)
    handler = run.attach_log()
    if resume:
        logging.getLogger(LOGGER_NAME).info("resuming %s after %d epoch(s) from %s", run.path, resume.epochs_done,
                                            resume.checkpoint)
        return run, handler
    try:
        run.save_split(split)
    except BaseException:
        run.detach_log(handler)
        raise
    return run, handler
