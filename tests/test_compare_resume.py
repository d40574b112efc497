"""compare continues an interrupted pretraining job from its last checkpoint instead of starting it again."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from fewlabel.compare.executor import ResultStore, pretrain_config, run_grid
from fewlabel.compare.grid import Job


def pretrain_job(epochs: int) -> Job:
    return Job("pretrain", "simclr", "digits", None, 0,
               {"data_dir": None, "budget": "small", "modality": "image", "epochs": epochs, "width": 4,
                "max_minutes": None})


def test_an_interrupted_pretraining_job_continues_from_its_checkpoint(tmp_path: Path) -> None:
    from fewlabel.approaches.selfsupervised import pretrain

    job = pretrain_job(epochs=2)
    store = ResultStore(tmp_path)
    folder = store.runs / job.key()
    # The job's first attempt got through one of its two epochs, then its process died (no result stored).
    pretrain(dataclasses.replace(pretrain_config(job, str(folder)), epochs=1))
    assert (folder / "checkpoints" / "last.ckpt").is_file() and not store.done(job)
    first_log = (folder / "logs" / "train.log").read_text()

    outcome = run_grid([job], store)
    assert outcome.ran == 1 and outcome.failed == 0
    record = store.load(job)
    assert record["metrics"]["resumed_after_epochs"] == 1 and record["metrics"]["epochs"] == 2
    assert record["run_dir"] == str(folder)
    log = (folder / "logs" / "train.log").read_text()
    assert log.startswith(first_log)  # the same run folder and log, continued
    second = log[len(first_log):]
    assert "epoch 2/2" in second and "epoch 1/" not in second  # it trained the missing epoch only
    assert not list(store.runs.glob("*.interrupted-*"))  # nothing moved aside
    metrics = json.loads((folder / "metrics.json").read_text())
    assert metrics["epochs"] == 2 and (folder / "export").is_dir()


def test_a_leftover_that_cannot_continue_is_moved_aside(tmp_path: Path) -> None:
    """No checkpoint (or an unreadable one, or a different job kind): the leftover is moved aside as before."""
    store = ResultStore(tmp_path)
    job = pretrain_job(epochs=2)
    folder = store.runs / job.key()
    (folder / "checkpoints").mkdir(parents=True)
    assert store.resume_point(job) is None  # no last.ckpt
    (folder / "checkpoints" / "last.ckpt").write_bytes(b"not a checkpoint")
    (folder / "config.yaml").write_text("command: pretrain\nmethod: simclr\n")
    assert store.resume_point(job) is None  # unreadable: a warning, then a fresh start
    calls: list[str] = []

    def fake(job, store):
        calls.append(str(store.fresh_run_dir(job)))
        return {"test_accuracy": None, "seconds": 0.0, "labelled": None, "warnings": []}

    assert run_grid([job], store, fake).ran == 1
    assert calls == [str(folder)] and (store.runs / f"{job.key()}.interrupted-1" / "config.yaml").is_file()
