"""End-to-end self-supervised pretraining: every method runs, labels are never read, runs resume."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from fewlabel.approaches.selfsupervised import EvaluateConfig, PretrainConfig, evaluate_backbone, pretrain_on
from fewlabel.cli import main
from fewlabel.data import load_dataset, make_split
from fewlabel.engine.fit import Budget
from fewlabel.evaluate.probes import PROBE_C_GRID
from fewlabel.models.export import load_backbone, same_weights

TINY = ["--width", "8", "--batch-size", "64", "--workers", "0"]


def small_digits():
    """Digits cut to 400 images, so a pretraining epoch takes a second."""
    full = load_dataset("digits")
    keep = np.random.default_rng(0).permutation(len(full))[:400]
    return replace(full, samples=full.samples[keep], labels=full.labels[keep], name="digits400")


@pytest.mark.parametrize(("method", "views"), [("simclr", "auto"), ("moco", "auto"), ("byol", "auto"),
                                              ("dino", "auto"), ("dino", "per-sample"), ("simclr", "per-sample")])
def test_every_method_pretrains_and_exports(method: str, views: str, tmp_path: Path) -> None:
    dataset = small_digits()
    split = make_split(dataset, seed=0)
    options = {"output_dim": 256} if method == "dino" else {"queue_size": 128} if method == "moco" else {}
    config = PretrainConfig(method=method, width=8, epochs=1, batch_size=64, method_options=options, local_crops=2,
                            views=views, budget=Budget(workers=0, progress=False), out=str(tmp_path / method))
    result = pretrain_on(dataset, split, config)
    expected_mode = "batched" if views == "auto" else views  # auto: batched tensor views, multi-crop included
    assert f"views_mode: {expected_mode}" in (tmp_path / method / "config.yaml").read_text()
    metrics = result.metrics
    assert np.isfinite(metrics["final_loss"])
    assert metrics["monitor"] and 0.0 <= metrics["monitor"][0]["knn_accuracy"] <= 1.0
    backbone, info = load_backbone(tmp_path / method)
    assert info["method"] == method and backbone.embed_dim == 32
    assert (tmp_path / method / "checkpoints" / "last.ckpt").is_file()


def test_pretraining_never_reads_pool_labels(tmp_path: Path) -> None:
    dataset = small_digits()
    split = make_split(dataset, seed=0)
    scrambled_labels = dataset.labels.copy()
    scrambled_labels[split.pool] = np.random.default_rng(1).integers(0, 10, len(split.pool))
    scrambled = replace(dataset, labels=scrambled_labels)
    config = PretrainConfig(method="simclr", width=8, epochs=1, batch_size=64,
                            budget=Budget(workers=0, progress=False))
    pretrain_on(dataset, split, replace(config, out=str(tmp_path / "a")))
    pretrain_on(scrambled, split, replace(config, out=str(tmp_path / "b")))
    a, _ = load_backbone(tmp_path / "a")
    b, _ = load_backbone(tmp_path / "b")
    assert same_weights(a, b)  # scrambling every pool label changed nothing


def test_resume_continues_from_the_last_checkpoint(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    assert main(["-q", "pretrain", "--method", "byol", *TINY, "--epochs", "1", "--out", str(out)]) == 0
    first, _ = load_backbone(out)
    assert main(["-q", "pretrain", "--resume", str(out), "--epochs", "2"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["epochs"] == 2
    second, _ = load_backbone(out)
    assert not same_weights(first, second)
    assert "pretrained byol for 2 epochs" in capsys.readouterr().out


def test_cli_pretrain_then_evaluate(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "simclr"
    assert main(["-q", "pretrain", "--method", "simclr", *TINY, "--epochs", "1", "--out", str(out)]) == 0
    for protocol in ("knn", "linear"):
        assert main(["-q", "evaluate", "--backbone", str(out), "--protocol", protocol, "--labels", "0.1",
                     "--json", str(tmp_path / f"{protocol}.json")]) == 0
        result = json.loads((tmp_path / f"{protocol}.json").read_text())
        # Even one tiny epoch leaves conv features on which probes beat chance (0.1) on digits by far.
        assert result["test"] == 360 and 0.3 < result["test_accuracy"] <= 1.0
        if protocol == "linear":  # C chosen by cross-validation on the 129 labelled images, and recorded
            assert result["probe_c_chosen"] and result["probe_c"] in PROBE_C_GRID
    printed = capsys.readouterr().out
    assert "knn test accuracy" in printed and "linear test accuracy" in printed and ", C=" in printed
    assert main(["-q", "evaluate", "--backbone", str(out), "--protocol", "linear", "--probe-c", "0"]) == 2
    err = capsys.readouterr().err.strip()
    assert "--probe-c 0.0 is impossible" in err and len(err.splitlines()) == 1


def test_evaluate_uses_the_pretraining_split(tmp_path: Path) -> None:
    out = tmp_path / "run"
    assert main(["-q", "pretrain", "--method", "simclr", *TINY, "--epochs", "1", "--seed", "3",
                 "--out", str(out)]) == 0
    result = evaluate_backbone(EvaluateConfig(backbone=str(out), protocol="knn", labels="10/class"))
    assert result["labelled"] == 100


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["pretrain", "--method", "simclr", "--data", "/nonexistent"], "neither a registered name"),
        (["pretrain", "--method", "simclr", "--option", "nonsense=1", "--epochs", "1"], "unknown hyper-parameter"),
        (["pretrain", "--resume", "/nonexistent"], "not a pretraining run folder"),
        (["evaluate", "--backbone", "/nonexistent"], "no exported backbone"),
    ],
)
def test_pretrain_errors(args: list[str], fragment: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([*args, "--runs-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and fragment in err and "Traceback" not in err


def test_knn_on_exported_backbone_matches_direct_features(tmp_path: Path) -> None:
    out = tmp_path / "run"
    assert main(["-q", "pretrain", "--method", "simclr", *TINY, "--epochs", "1", "--out", str(out)]) == 0
    backbone, _ = load_backbone(out)
    x = torch.randint(0, 255, (4, 1, 8, 8), dtype=torch.uint8)
    from fewlabel.evaluate import extract_features

    feats = extract_features(backbone, x, np.arange(4), device="cpu")
    from fewlabel.models import InputAdapter

    backbone.eval()
    with torch.no_grad():
        direct = backbone(InputAdapter(1, backbone.input_spec)(x))
    assert feats.shape == (4, 32)
    torch.testing.assert_close(feats, direct)  # batched extraction = the backbone on adapted inputs


def test_resume_rebuilds_the_method_with_its_recorded_hyper_parameters(tmp_path: Path) -> None:
    """A default changed since the run started (DINO's prototypes) must not change the resumed network."""
    import yaml

    from fewlabel.approaches.selfsupervised import load_pretrain_config

    raw = {"command": "pretrain", "method": "dino", "data": "digits", "epochs": 2, "budget": {},
           "method_options": {"student_temp": 0.2},
           "method_hparams": {"output_dim": 4096, "hidden_dim": 512, "student_temp": 0.1, "not_an_option": 1}}
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(raw))
    config = load_pretrain_config(tmp_path)
    # recorded values win over today's defaults, options the user gave win over recorded ones
    assert config.method_options == {"output_dim": 4096, "hidden_dim": 512, "student_temp": 0.2}
