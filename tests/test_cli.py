"""End-to-end CLI tests on tiny data: real training, real run folders, real error paths."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from fewlabel.cli import main

FAST = ["--epochs", "2", "--workers", "0"]


def run_cli(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(args)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_train_writes_a_complete_run_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    code, stdout, _ = run_cli(["-q", "train", "--data", "digits", "--labels", "0.2", "--augment", "standard",
                               "--width", "8", *FAST, "--out", str(out)], capsys)
    assert code == 0
    assert "test accuracy" in stdout
    for name in ("config.yaml", "metrics.json", "split.npz", "model.safetensors", "model.json",
                 "logs/train.log", "logs/csv/metrics.csv"):
        assert (out / name).is_file(), name
    assert list((out / "checkpoints").glob("best-*.ckpt"))
    metrics = json.loads((out / "metrics.json").read_text())
    for key in ("test_accuracy", "macro_f1", "per_class_accuracy", "train_seconds", "samples_per_second",
                "parameters", "split"):
        assert key in metrics
    assert set(metrics["per_class_accuracy"]) == {str(d) for d in range(10)}
    assert metrics["split"]["seed"] == 0 and metrics["split"]["test"] == 360
    assert 0.0 <= metrics["test_accuracy"] <= 1.0
    config = yaml.safe_load((out / "config.yaml").read_text())
    assert config["augment"] == "standard" and config["dataset"]["name"] == "digits"
    assert "epoch 2/2" in (out / "logs" / "train.log").read_text()


def test_same_seed_same_numbers(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    results = []
    for name in ("a", "b"):
        code, _, _ = run_cli(["-q", "train", "--data", "digits", "--labels", "0.3", "--augment", "randaugment",
                              "--width", "8", *FAST, "--seed", "5", "--out", str(tmp_path / name)], capsys)
        assert code == 0
        results.append(json.loads((tmp_path / name / "metrics.json").read_text()))
    assert results[0]["test_accuracy"] == results[1]["test_accuracy"]
    assert results[0]["per_class_accuracy"] == results[1]["per_class_accuracy"]
    assert results[0]["best_val_accuracy"] == results[1]["best_val_accuracy"]


def test_split_is_reused_by_a_later_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    first, second = tmp_path / "first", tmp_path / "second"
    assert run_cli(["-q", "train", "--data", "digits", "--labels", "0.2", "--width", "8", "--augment", "mixup",
                    *FAST, "--seed", "1", "--out", str(first)], capsys)[0] == 0
    assert run_cli(["-q", "train", "--data", "digits", "--labels", "0.2", "--width", "8", "--augment", "cutmix",
                    *FAST, "--seed", "9", "--split", str(first), "--out", str(second)], capsys)[0] == 0
    a = np.load(first / "split.npz")
    b = np.load(second / "split.npz")
    for key in ("pool", "pool_rank", "val", "test"):
        np.testing.assert_array_equal(a[key], b[key])


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["train", "--data", "/nonexistent"], "neither a registered name"),
        (["train", "--labels", "0"], "label fraction must be in (0, 1]"),
        (["train", "--labels", "1.5"], "label fraction must be in (0, 1]"),
        (["train", "--labels", "0.001"], "fewer than the 10 classes"),
        (["train", "--backbone", "not_a_model"], "unknown backbone"),
        (["train", "--epochs", "0"], "--epochs 0 is impossible"),
        (["train", "--split", "/nonexistent/run"], "cannot read split"),
    ],
)
def test_bad_input_is_one_line_and_nonzero(
    args: list[str], fragment: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = run_cli([*args, "--runs-dir", str(tmp_path / "runs")], capsys)
    assert code == 2
    lines = [line for line in err.strip().splitlines() if line]
    assert len(lines) == 1 and fragment in lines[0], err
    assert "Traceback" not in err
    assert not (tmp_path / "runs").exists()  # nothing was written for a refused run


def test_existing_run_folder_is_never_overwritten(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "precious"
    out.mkdir()
    (out / "metrics.json").write_text('{"keep": true}')
    code, _, err = run_cli(["train", "--data", "digits", "--out", str(out)], capsys)
    assert code == 2 and "already exists" in err
    assert (out / "metrics.json").read_text() == '{"keep": true}'


def test_console_script_errors_without_traceback(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "fewlabel.cli", "train", "--data", "/nonexistent"],
                          capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "Traceback" not in proc.stderr


def test_datasets_command_lists_sources(fake_fashion_mnist: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_cli(["datasets", "--data-dir", str(fake_fashion_mnist)], capsys)
    assert code == 0
    assert "digits" in out and "1797" in out and "embedded" in out
    assert "fashion-mnist" in out and "80" in out and str(fake_fashion_mnist) in out


def test_help_for_every_command(capsys: pytest.CaptureFixture[str]) -> None:
    for command in ("demo", "datasets", "backbones", "train"):
        with pytest.raises(SystemExit) as info:
            main([command, "--help"])
        assert info.value.code == 0
        assert "usage: fewlabel" in capsys.readouterr().out


@pytest.mark.slow
def test_digits_full_labels_reach_95_percent(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, _ = run_cli(["-q", "train", "--data", "digits", "--labels", "1.0", "--augment", "standard",
                          "--out", str(tmp_path / "full")], capsys)
    assert code == 0
    assert json.loads((tmp_path / "full" / "metrics.json").read_text())["test_accuracy"] >= 0.95


def test_cli_names_match_the_registries() -> None:
    from fewlabel import names
    from fewlabel.augment.supervised import POLICIES
    from fewlabel.augment.text import POLICIES as TEXT
    from fewlabel.compare.grid import BUDGETS
    from fewlabel.methods.registry import METHODS
    from fewlabel.transfer.strategies import STRATEGIES

    assert tuple(METHODS) == names.IMAGE_METHODS
    assert POLICIES == names.IMAGE_POLICIES and TEXT == names.TEXT_POLICIES
    assert STRATEGIES == names.STRATEGIES and tuple(BUDGETS) == names.BUDGET_NAMES


def test_help_does_not_import_torch() -> None:
    code = "import sys\nfrom fewlabel.cli import build_parser\nbuild_parser()\nprint('torch' in sys.modules)"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.stdout.strip() == "False", proc.stderr
