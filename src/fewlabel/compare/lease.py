"""One lease file per running job, so two ``compare`` processes on one folder never run the same job twice.

``<out>/leases/<key>.lease`` is created with ``O_CREAT | O_EXCL`` (atomic, also on NFS v3+) and holds the owner's
pid, host, start time and a random token; while the job runs a thread touches the file every ``heartbeat``
seconds, so its modification time is the heartbeat. A lease is stale, and may be taken over, when

- its owner ran on this host and that pid is no longer alive (a killed ``compare``), or
- its heartbeat is older than ``stale_after`` seconds (an owner on another host that died, or hung).

Taking over is serialised by an ``flock`` on ``leases/.takeover``: the stale file is re-read under the lock and
removed only if it is still the same lease, then the new lease is created with ``O_EXCL`` again, so of two
processes that both judged a lease stale exactly one gets it.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import socket
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from fewlabel.engine.run import LOGGER_NAME

log = logging.getLogger(LOGGER_NAME)

HEARTBEAT_SECONDS = 30.0
STALE_AFTER_SECONDS = 300.0  # ten missed heartbeats


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    except OSError:
        return True
    return True


class Leases:
    def __init__(self, folder: str | Path, heartbeat: float = HEARTBEAT_SECONDS,
                 stale_after: float = STALE_AFTER_SECONDS):
        self.folder = Path(folder)
        self.heartbeat = heartbeat
        self.stale_after = stale_after
        self.host = socket.gethostname()
        self._held: dict[str, tuple[str, threading.Event, threading.Thread]] = {}

    def path(self, key: str) -> Path:
        return self.folder / f"{key}.lease"

    # -- reading -------------------------------------------------------------------------------------------------
    def _read(self, key: str) -> tuple[dict[str, Any] | None, float | None]:
        """(the lease's content or {} while it is being written, its heartbeat) or (None, None) when free."""
        path = self.path(key)
        try:
            mtime = path.stat().st_mtime
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return None, None
        try:
            info = json.loads(text)
        except json.JSONDecodeError:  # created, content not written yet (or a crash in between)
            info = {}
        return (info if isinstance(info, dict) else {}), mtime

    def _stale(self, info: dict[str, Any], mtime: float) -> bool:
        if info.get("host") == self.host and isinstance(info.get("pid"), int):
            pid = info["pid"]
            if pid == os.getpid():
                return info.get("token") not in {t for t, _, _ in self._held.values()}  # an earlier attempt of ours
            if not _pid_alive(pid):
                return True
        return time.time() - mtime > self.stale_after

    def holder(self, key: str) -> dict[str, Any] | None:
        """The live lease on ``key`` held by another process (its content), or None when free or stale."""
        if key in self._held:
            return None
        info, mtime = self._read(key)
        if info is None or self._stale(info, mtime):
            return None
        return info

    # -- acquiring and releasing ----------------------------------------------------------------------------------
    def _create(self, key: str) -> str | None:
        token = uuid.uuid4().hex
        try:
            fd = os.open(self.path(key), os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return None
        content = {"pid": os.getpid(), "host": self.host, "started": time.time(), "token": token,
                   "heartbeat_seconds": self.heartbeat}
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(json.dumps(content) + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        return token

    @contextlib.contextmanager
    def _takeover_lock(self):
        with open(self.folder / ".takeover", "a+") as handle:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle.fileno(), fcntl.LOCK_UN)

    def acquire(self, key: str) -> bool:
        """Take the lease on ``key``: True when this process now holds it, False when a live owner does."""
        self.folder.mkdir(parents=True, exist_ok=True)
        token = self._create(key)
        if token is None:
            info, mtime = self._read(key)
            if info is not None and not self._stale(info, mtime):
                return False
            with self._takeover_lock():
                again, mtime = self._read(key)
                if again is not None:
                    if not self._stale(again, mtime) or again.get("token") != (info or {}).get("token"):
                        return False
                    log.warning("taking over the stale lease of job %s (pid %s on %s, last heartbeat %.0f s ago)",
                                key, again.get("pid"), again.get("host"), time.time() - mtime)
                    with contextlib.suppress(FileNotFoundError):
                        self.path(key).unlink()
                token = self._create(key)
            if token is None:
                return False
        stop = threading.Event()
        thread = threading.Thread(target=self._beat, args=(key, token, stop), daemon=True,
                                  name=f"fewlabel-lease-{key}")
        self._held[key] = (token, stop, thread)
        thread.start()
        return True

    def _beat(self, key: str, token: str, stop: threading.Event) -> None:
        while not stop.wait(self.heartbeat):
            info, _ = self._read(key)
            if info is None or info.get("token") != token:
                log.warning("the lease of job %s was taken over while it ran (no heartbeat for %.0f s?)", key,
                            self.stale_after)
                return
            with contextlib.suppress(OSError):
                os.utime(self.path(key))

    def release(self, key: str) -> None:
        held = self._held.pop(key, None)
        if held is None:
            return
        token, stop, thread = held
        stop.set()
        thread.join(timeout=5)
        info, _ = self._read(key)
        if info is not None and info.get("token") == token:
            with contextlib.suppress(FileNotFoundError):
                self.path(key).unlink()

    @contextlib.contextmanager
    def held(self, key: str):
        """``with leases.held(key) as mine:`` -- ``mine`` says whether this process got the lease."""
        mine = self.acquire(key)
        try:
            yield mine
        finally:
            if mine:
                self.release(key)


__all__ = ["HEARTBEAT_SECONDS", "STALE_AFTER_SECONDS", "Leases"]
