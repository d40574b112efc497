"""Semi-supervised learning on frozen features: self-training and label spreading, the pseudo-label report,
the unlabelled pool (never validation or test), and the one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from fewlabel.approaches.semisupervised import pseudo_label_report, self_train, spread_labels
from fewlabel.cli import main
from fewlabel.data import load_dataset
from fewlabel.data.splits import LabelRequest, LabelSplit
from fewlabel.modalities.image import prepare_backbone
from fewlabel.models import Classifier


def _blobs(seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Two far-apart Gaussian blobs; two labelled points each, 40 unlabelled."""
    rng = np.random.default_rng(seed)
    centres = np.array([[5.0, 0.0], [-5.0, 0.0]])
    y_pool = np.repeat([0, 1], 20)
    x_pool = centres[y_pool] + rng.normal(0, 0.5, (40, 2))
    y_lab = np.array([0, 0, 1, 1])
    x_lab = centres[y_lab] + rng.normal(0, 0.5, (4, 2))
    return x_lab, y_lab, x_pool, y_pool


def test_label_spreading_labels_separated_clusters() -> None:
    x_lab, y_lab, x_pool, y_pool = _blobs()
    pseudo, confidence = spread_labels(x_lab, y_lab, x_pool, neighbours=10, alpha=0.2, threshold=0.9)
    assert (pseudo == y_pool).all() and (confidence >= 0.9).all()
    # An unreachable threshold accepts nothing.
    pseudo, _ = spread_labels(x_lab, y_lab, x_pool, neighbours=10, alpha=0.2, threshold=1.0 + 1e-9)
    assert (pseudo == -1).all()


def test_self_training_accepts_confident_pool_samples() -> None:
    x_lab, y_lab, x_pool, y_pool = _blobs(1)
    pseudo, rounds, final = self_train(x_lab, y_lab, x_pool, c=100.0, threshold=0.9, max_rounds=5, seed=0)
    accepted = pseudo >= 0
    assert accepted.mean() > 0.9 and (pseudo[accepted] == y_pool[accepted]).all()
    assert (rounds[accepted] >= 1).all()  # pool samples join in a round, not as given labels
    assert final.predict(x_pool).tolist() == y_pool.tolist()


def test_pseudo_label_report_by_hand(monkeypatch: pytest.MonkeyPatch) -> None:
    import logging

    warnings: list[str] = []
    # The fewlabel logger may not propagate to pytest's capture (the CLI's console set-up): listen on it directly.
    monkeypatch.setattr(logging.getLogger("fewlabel"), "warning", lambda msg, *args: warnings.append(msg % args))
    pseudo = np.array([0, 0, -1, 1, 0, 0])
    hidden = np.array([0, 1, 1, 1, 0, 2])
    report = pseudo_label_report(pseudo, hidden, ["a", "b", "c"])
    # 5 of 6 accepted; correct: 0->0, 3->1, 4->0 = 3 of 5; class a takes 4 of 5 (> half: a warning).
    assert report["mask_rate"] == pytest.approx(5 / 6, abs=1e-4) and report["pseudo_labelled"] == 5
    assert report["pseudo_label_accuracy"] == pytest.approx(3 / 5)
    assert report["pseudo_label_classes"] == {"a": 4, "b": 1, "c": 0}
    assert any("takes 80% of the pseudo-labels" in w for w in warnings)
    empty = pseudo_label_report(np.full(4, -1), np.zeros(4, dtype=np.int64), ["a", "b", "c"])
    assert empty["mask_rate"] == 0.0 and empty["pseudo_label_accuracy"] is None
    assert any("nothing was pseudo-labelled" in w for w in warnings)


@pytest.mark.parametrize("method", ["self-training", "label-spreading"])
def test_semisup_cli_end_to_end(method: str, tiny_export: Path, tmp_path: Path,
                                capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / method
    assert main(["-q", "semisup", "--method", method, "--backbone", str(tiny_export), "--data", "digits",
                 "--labels", "0.1", "--image-size", "8", "--out", str(out)]) == 0
    assert "pool samples pseudo-labelled" in capsys.readouterr().out
    metrics = json.loads((out / "metrics.json").read_text())
    dataset = load_dataset("digits")
    split = LabelSplit.load(out / "split.npz", dataset)
    request = LabelRequest.parse("0.1")
    pool = split.unlabelled(request, dataset.labels)
    # The pool is the rest of the training pool: never a validation or test sample, never a labelled one.
    assert not set(pool) & (set(split.test) | set(split.validation(None, dataset.labels)))
    assert not set(pool) & set(split.labelled(request, dataset.labels))
    assert metrics["pool"] == len(pool) and 0 <= metrics["pseudo_labelled"] <= len(pool)
    assert sum(metrics["pseudo_label_classes"].values()) == metrics["pseudo_labelled"]
    # The saved classifier (frozen backbone + the final linear head) reproduces the reported test accuracy.
    model = Classifier(prepare_backbone(str(tiny_export), dataset, 8), dataset.num_classes, data_channels=1)
    model.load_state_dict(load_file(str(out / "model.safetensors")))
    model.eval()
    with torch.no_grad():
        predictions = model(dataset.samples[torch.as_tensor(split.test)]).argmax(dim=1).numpy()
    assert float((predictions == dataset.labels[split.test]).mean()) == pytest.approx(
        metrics["test_accuracy"], abs=1.5 / len(split.test))


@pytest.mark.parametrize(("args", "message"), [
    (["--threshold", "0"], "--threshold 0.0 is impossible"),
    (["--threshold", "1.5"], "--threshold 1.5 is impossible"),
    (["--labels", "1.0"], "no unlabelled data is left at --labels 1.0"),
    (["--method", "mixmatch"], "unknown semi-supervised method 'mixmatch'"),
    (["--method", "fixmatch", "--ratio", "0"], "--ratio 0 is impossible"),
    (["--method", "fixmatch", "--labels", "1.0"], "no unlabelled data is left"),
])
def test_semisup_bad_input_is_one_line(args: list[str], message: str, tmp_path: Path,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    assert main(["-q", "semisup", "--data", "digits", *args, "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
    assert not out.exists()


def test_masked_consistency_loss_by_hand() -> None:
    from fewlabel.approaches.fixmatch import masked_consistency_loss

    weak = torch.tensor([[2.0, 0.0], [0.0, 0.0]])  # softmax: [0.881, 0.119] (confident) and [0.5, 0.5] (not)
    strong = torch.tensor([[0.0, 0.0], [1.0, 0.0]])
    loss, mask, pseudo = masked_consistency_loss(weak, strong, threshold=0.8)
    assert mask.tolist() == [1.0, 0.0] and pseudo.tolist() == [0, 0]
    # Only the first sample counts: CE([0, 0], class 0) = ln 2; averaged over both pool samples: ln 2 / 2.
    assert loss.item() == pytest.approx(np.log(2) / 2, abs=1e-6)
    assert masked_consistency_loss(weak, strong, threshold=0.95)[0].item() == 0.0


def test_fixmatch_ema_follows_the_weights() -> None:
    from fewlabel.approaches.fixmatch import FixMatchModule
    from fewlabel.engine.classification import OptimConfig

    model = torch.nn.Linear(2, 2)
    module = FixMatchModule(model, 2, OptimConfig(), ema_decay=0.9)
    with torch.no_grad():
        model.weight.fill_(1.0)
    module.on_train_batch_end(None, None, 0)  # the first update copies the weights
    assert torch.allclose(module.ema.module.weight, torch.ones(2, 2))
    with torch.no_grad():
        model.weight.fill_(3.0)
    module.on_train_batch_end(None, None, 1)  # then 0.9 * old + 0.1 * new
    assert torch.allclose(module.ema.module.weight, torch.full((2, 2), 0.9 * 1.0 + 0.1 * 3.0))


def test_fixmatch_pool_loader_never_holds_validation_or_test_samples() -> None:
    from fewlabel.approaches.fixmatch import fixmatch_loaders
    from fewlabel.data.splits import make_split

    dataset = load_dataset("digits")
    split = make_split(dataset, seed=0)
    request = LabelRequest.parse("0.1")
    pool = split.unlabelled(request, dataset.labels)
    loaders = fixmatch_loaders(dataset, split.labelled(request, dataset.labels), pool, None, lambda x: x, 16, 7,
                               workers=0)
    pool_indices = set(loaders.iterables["unlabelled"].dataset.indices.tolist())
    assert pool_indices == set(pool.tolist())
    assert not pool_indices & (set(split.test) | set(split.validation(None, dataset.labels)))
    batch = next(iter(loaders))[0]
    x_l, _ = batch["labelled"]
    (weak, strong), hidden = batch["unlabelled"]
    assert len(x_l) == 16 and len(weak) == len(strong) == len(hidden) == 112


def test_fixmatch_cli_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "fm"
    assert main(["-q", "semisup", "--method", "fixmatch", "--data", "digits", "--labels", "0.2", "--epochs", "2",
                 "--width", "8", "--ratio", "2", "--threshold", "0.5", "--workers", "0", "--out", str(out)]) == 0
    assert "fixmatch; last epoch: mask rate" in capsys.readouterr().out
    metrics = json.loads((out / "metrics.json").read_text())
    assert len(metrics["epochs"]) == 2 and 0.0 <= metrics["mask_rate"] <= 1.0
    assert metrics["ratio"] == 2 and 0.0 <= metrics["test_accuracy"] <= 1.0
    assert json.loads((out / "model.json").read_text())["semisupervised"] == "fixmatch"
    assert (out / "model.safetensors").is_file()
