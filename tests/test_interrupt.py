"""Ctrl-C during training: the tool's own one-line message, exit status 130, and a note in the run folder."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest
import yaml

from fewlabel.cli import main
from fewlabel.engine.classification import ClassificationModule
from fewlabel.engine.pretraining import PretrainModule
from fewlabel.engine.trainer import INTERRUPTED

TINY = ["--width", "8", "--batch-size", "64", "--workers", "0", "--accelerator", "cpu"]


def interrupt_at(module_class: type, epoch: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """Make the first training batch of ``epoch`` (0-based) raise KeyboardInterrupt, as Ctrl-C would."""
    original = module_class.training_step

    def training_step(self, batch, batch_idx):
        if self.current_epoch == epoch:
            raise KeyboardInterrupt
        return original(self, batch, batch_idx)

    monkeypatch.setattr(module_class, "training_step", training_step)


def interrupted_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if "fewlabel: interrupted" in line]


def test_interrupted_pretraining_is_marked_resumable_and_resumes(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "run"
    handler = signal.getsignal(signal.SIGINT)
    with monkeypatch.context() as patch:
        interrupt_at(PretrainModule, 1, patch)
        code = main(["-q", "pretrain", "--method", "simclr", *TINY, "--epochs", "2", "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 130
    lines = interrupted_lines(err)
    assert len(lines) == 1 and lines[0].startswith("fewlabel: interrupted;"), err
    assert f"fewlabel pretrain --resume {out}" in lines[0]
    assert signal.getsignal(signal.SIGINT) == handler  # Lightning's SIG_IGN is undone
    note = yaml.safe_load((out / INTERRUPTED).read_text(encoding="utf-8"))
    assert note["status"] == "interrupted" and note["resumable"] is True
    assert note["epoch"] == 2 and note["checkpoint"] == "checkpoints/last.ckpt" and note["checkpoint_epochs_done"] == 1
    assert not (out / "metrics.json").exists()

    assert main(["-q", "pretrain", "--resume", str(out)]) == 0
    assert not (out / INTERRUPTED).exists()  # finished: the note is gone
    assert json.loads((out / "metrics.json").read_text(encoding="utf-8"))["epochs"] == 2
    assert (out / "logs" / "csv" / "metrics-1.csv").is_file()  # the first attempt's log is kept


def test_interrupted_training_is_marked_not_resumable(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "run"
    interrupt_at(ClassificationModule, 0, monkeypatch)
    code = main(["train", "--data", "digits", "--labels", "0.2", "--epochs", "2", *TINY, "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 130
    lines = interrupted_lines(err)
    assert len(lines) == 1 and "rerun the command" in lines[0], err
    assert "Traceback" not in err
    note = yaml.safe_load((out / INTERRUPTED).read_text(encoding="utf-8"))
    assert note["command"] == "train" and note["resumable"] is False and note["checkpoint"] is None
    assert note["epoch"] == 1 and note["global_step"] == 0
    assert not (out / "metrics.json").exists() and not (out / "model.safetensors").exists()


def test_an_error_in_training_is_not_an_interrupt(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(self, batch, batch_idx):
        raise RuntimeError("boom")

    monkeypatch.setattr(ClassificationModule, "training_step", broken)
    with pytest.raises(RuntimeError, match="boom"):
        main(["-q", "train", "--data", "digits", "--labels", "0.2", "--epochs", "1", *TINY,
              "--out", str(tmp_path / "run")])
    assert not (tmp_path / "run" / INTERRUPTED).exists()
