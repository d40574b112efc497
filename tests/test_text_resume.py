"""``fewlabel pretrain --resume`` on text runs: the same folder, the checkpoint's weights and epochs, clear refusals."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import save_tiny_bert
from safetensors.torch import load_file

from fewlabel.cli import main
from fewlabel.engine.language_modeling import LanguageModelingModule

POSITIVE = ["a wonderful heartfelt film", "great acting and a lovely story", "brilliant funny and warm",
            "a joy to watch", "superb and moving", "delightful clever fun"]
NEGATIVE = ["a dull boring mess", "terrible acting and a weak plot", "tedious and flat", "a waste of time",
            "awful lifeless script", "clumsy dreary failure"]
TINY = ["--batch-size", "16", "--option", "hidden_size=32", "--option", "num_layers=2", "--option", "num_heads=2",
        "--option", "vocab_size=300"]


@pytest.fixture
def reviews_csv(tmp_path: Path) -> Path:
    rng = np.random.default_rng(0)
    path = tmp_path / "reviews.csv"
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=["review", "sentiment"])
        writer.writeheader()
        for i in range(120):
            words = rng.choice(POSITIVE if i % 2 == 0 else NEGATIVE, size=2)
            writer.writerow({"review": " and ".join(words), "sentiment": "pos" if i % 2 == 0 else "neg"})
    return path


@pytest.fixture
def fit_starts(monkeypatch: pytest.MonkeyPatch) -> list[dict]:
    """What each ``trainer.fit`` starts from: epoch, step and the body's weights."""
    starts: list[dict] = []

    def on_train_start(self: LanguageModelingModule) -> None:
        body = self.model.base_model.state_dict()
        starts.append({"epoch": self.current_epoch, "step": self.global_step,
                       "weights": {k: v.detach().clone() for k, v in body.items()}})

    monkeypatch.setattr(LanguageModelingModule, "on_train_start", on_train_start, raising=False)
    return starts


def _checkpoint_epochs(run: Path) -> int:
    state = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    return state["loops"]["fit_loop"]["epoch_progress"]["current"]["processed"]


@pytest.mark.parametrize("method", ["mlm", "clm"])
def test_text_run_resumes_in_its_own_folder_from_its_checkpoint(
    method: str, reviews_csv: Path, tmp_path: Path, fit_starts: list[dict], monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.chdir(tmp_path)  # a fresh run would land in ./runs
    run = tmp_path / "run"
    assert main(["-q", "pretrain", "--method", method, "--data", str(reviews_csv), "--epochs", "1", *TINY,
                 "--out", str(run)]) == 0
    first = json.loads((run / "metrics.json").read_text())
    exported = load_file(str(run / "export" / "model.safetensors"))
    assert (run / "tokenizer" / "tokenizer.json").is_file()
    assert (fit_starts[0]["epoch"], fit_starts[0]["step"]) == (0, 0) and first["epochs"] == 1

    assert main(["-q", "pretrain", "--resume", str(run), "--epochs", "2"]) == 0
    assert f"pretrained {method} for 2 epochs" in capsys.readouterr().out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["reviews.csv", "run"]  # no new run folder
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["epochs"] == 2 and metrics["resumed_after_epochs"] == 1 and _checkpoint_epochs(run) == 2
    resumed = fit_starts[1]
    assert resumed["epoch"] == 1 and resumed["step"] == first["pool_size"] // 16  # the loop state was restored...
    assert resumed["weights"].keys() == exported.keys()
    for name, value in exported.items():  # ...and the model: training resumed from the first run's weights
        assert torch.equal(resumed["weights"][name], value), name
    assert metrics["pool_size"] == first["pool_size"]
    # The first epoch's log rows are kept beside the new ones.
    csv_logs = run / "logs" / "csv"
    assert (csv_logs / "metrics-until-epoch-1.csv").is_file() and (csv_logs / "metrics.csv").is_file()
    after = load_file(str(run / "export" / "model.safetensors"))
    assert any(not torch.equal(after[k], exported[k]) for k in exported)  # the second epoch trained


def test_text_resume_refuses_clearly(reviews_csv: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = tmp_path / "run"
    assert main(["-q", "pretrain", "--method", "mlm", "--data", str(reviews_csv), "--epochs", "1", *TINY,
                 "--out", str(run)]) == 0
    capsys.readouterr()

    def error(args: list[str]) -> str:
        assert main(["-q", "pretrain", *args]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "Traceback" not in err
        return err

    assert "already trained 1 epoch(s); pass --epochs with more than 1" in error(["--resume", str(run)])
    train = tmp_path / "train"
    assert main(["-q", "train", "--data", str(reviews_csv), "--labels", "0.5", "--epochs", "1", "--workers", "0",
                 "--out", str(train)]) == 0
    assert "not a pretraining run folder" in error(["--resume", str(train), "--epochs", "2"])
    (run / "checkpoints" / "last.ckpt").rename(run / "checkpoints" / "kept.ckpt")
    assert "nothing to resume" in error(["--resume", str(run), "--epochs", "2"])
    (run / "checkpoints" / "last.ckpt").write_bytes(b"not a checkpoint")
    assert "cannot read the checkpoint" in error(["--resume", str(run), "--epochs", "2"])
    assert not (tmp_path / "runs").exists()


def test_text_pretraining_and_resuming_are_reproducible(reviews_csv: Path, tmp_path: Path) -> None:
    """Same seed, same numbers on CPU: two fresh runs (tokenizer, masks, weights), then both resumed alike."""

    def weights(run: str) -> dict[str, torch.Tensor]:
        return load_file(str(tmp_path / run / "export" / "model.safetensors"))

    for run in ("a", "b"):
        assert main(["-q", "pretrain", "--method", "mlm", "--data", str(reviews_csv), "--epochs", "1", *TINY,
                     "--out", str(tmp_path / run)]) == 0
    assert (tmp_path / "a" / "tokenizer" / "tokenizer.json").read_text() == (
        tmp_path / "b" / "tokenizer" / "tokenizer.json").read_text()
    a, b = weights("a"), weights("b")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    for run in ("a", "b"):
        assert main(["-q", "pretrain", "--resume", str(tmp_path / run), "--epochs", "2"]) == 0
    resumed_a, resumed_b = weights("a"), weights("b")
    assert all(torch.equal(resumed_a[k], resumed_b[k]) for k in a)
    assert not all(torch.equal(resumed_a[k], a[k]) for k in a)


def test_continued_pretraining_of_a_model_folder_resumes(reviews_csv: Path, tmp_path: Path) -> None:
    folder = save_tiny_bert(tmp_path / "tiny-bert", POSITIVE + NEGATIVE, masked_lm=True)
    run = tmp_path / "dapt"
    assert main(["-q", "pretrain", "--method", "mlm", "--backbone", str(folder), "--data", str(reviews_csv),
                 "--epochs", "1", "--batch-size", "16", "--out", str(run)]) == 0
    assert main(["-q", "pretrain", "--resume", str(run), "--epochs", "2"]) == 0
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["epochs"] == 2 and metrics["resumed_after_epochs"] == 1 and _checkpoint_epochs(run) == 2
