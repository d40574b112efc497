"""Semi-supervised learning on frozen features: self-training and label spreading, the pseudo-label report,
the unlabelled pool (never validation or test), and the one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from fewlabel.approaches.semisupervised import final_epoch_choice, pseudo_label_report, self_train, spread_labels
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


def test_max_pool_draws_a_seeded_subset_of_the_pool(tmp_path: Path) -> None:
    from fewlabel.approaches.semisupervised import SemiSupervisedConfig, labels_and_pool

    full = labels_and_pool(SemiSupervisedConfig(data="digits", labels="0.1", seed=1))[3]
    some = labels_and_pool(SemiSupervisedConfig(data="digits", labels="0.1", seed=1, max_pool=100))[3]
    again = labels_and_pool(SemiSupervisedConfig(data="digits", labels="0.1", seed=1, max_pool=100))[3]
    assert len(full) > 100 and len(some) == 100 and set(some) <= set(full)
    assert np.array_equal(some, again) and np.all(np.diff(some) > 0)  # the same sorted subset for the same seed
    larger = labels_and_pool(SemiSupervisedConfig(data="digits", labels="0.1", seed=1, max_pool=10 * len(full)))[3]
    assert np.array_equal(larger, full)


@pytest.mark.parametrize(("args", "message"), [
    (["--threshold", "0"], "--threshold 0.0 is impossible"),
    (["--threshold", "1.5"], "--threshold 1.5 is impossible"),
    (["--labels", "1.0"], "no unlabelled data is left at --labels 1.0"),
    (["--method", "mixmatch"], "unknown semi-supervised method 'mixmatch'"),
    (["--method", "fixmatch", "--ratio", "0"], "--ratio 0 is impossible"),
    (["--method", "fixmatch", "--labels", "1.0"], "no unlabelled data is left"),
    (["--max-pool", "0"], "--max-pool 0 is impossible"),
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
    module.on_train_batch_end(None, None, 1)  # after 1 update the decay is min(0.9, 2/11): the EMA warms up
    d = 2 / 11
    assert torch.allclose(module.ema.module.weight, torch.full((2, 2), d * 1.0 + (1 - d) * 3.0))
    module.ema.n_averaged.fill_(1000)  # later on, the configured decay: 0.9 * old + 0.1 * new
    old = module.ema.module.weight.clone()
    module.on_train_batch_end(None, None, 2)
    assert torch.allclose(module.ema.module.weight, 0.9 * old + 0.1 * 3.0)


def test_fixmatch_pool_loader_never_holds_validation_or_test_samples() -> None:
    from fewlabel.approaches.fixmatch import semisup_loaders
    from fewlabel.data.splits import make_split

    dataset = load_dataset("digits")
    split = make_split(dataset, seed=0)
    request = LabelRequest.parse("0.1")
    pool = split.unlabelled(request, dataset.labels)
    loaders = semisup_loaders(dataset, split.labelled(request, dataset.labels), pool, None, lambda x: x, 16, 7,
                              workers=0)
    pool_indices = set(loaders.iterables["unlabelled"].dataset.inner.indices.tolist())
    assert pool_indices == set(pool.tolist())
    assert not pool_indices & (set(split.test) | set(split.validation(None, dataset.labels)))
    batch = next(iter(loaders))[0]
    x_l, _ = batch["labelled"]
    (weak, strong), hidden, positions = batch["unlabelled"]
    assert len(x_l) == 16 and len(weak) == len(strong) == len(hidden) == 112
    # Positions index the pool (FlexMatch follows each sample by them); the hidden labels are the pool's own.
    assert torch.equal(hidden, torch.as_tensor(dataset.labels[pool[positions.numpy()]]))


def test_fixmatch_cli_end_to_end(fake_fashion_mnist: Path, tmp_path: Path,
                                 capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "fm"
    assert main(["-q", "semisup", "--method", "fixmatch", "--data", "fashion-mnist", "--data-dir",
                 str(fake_fashion_mnist), "--labels", "0.5", "--epochs", "2", "--width", "8", "--ratio", "2",
                 "--batch-size", "4", "--threshold", "0.5", "--workers", "0", "--out", str(out)]) == 0
    assert "fixmatch; last epoch: mask rate" in capsys.readouterr().out
    metrics = json.loads((out / "metrics.json").read_text())
    assert len(metrics["epochs"]) == 2 and 0.0 <= metrics["mask_rate"] <= 1.0
    assert metrics["ratio"] == 2 and 0.0 <= metrics["test_accuracy"] <= 1.0
    assert metrics["optim"]["optimizer"] == "nesterov" and metrics["optim"]["lr"] == 0.03  # FixMatch's, for images
    assert json.loads((out / "model.json").read_text())["semisupervised"] == "fixmatch"
    assert (out / "model.safetensors").is_file()
    final = metrics["final_model"]
    assert final["kept"] in ("last epoch", "best validation epoch") and final["margin"] >= 0.0
    assert final["best_val_accuracy"] >= final["last_val_accuracy"]
    within = final["last_val_accuracy"] + final["margin"] >= final["best_val_accuracy"]
    assert (final["kept"] == "last epoch") == within


def test_final_epoch_choice_by_hand() -> None:
    """The last EMA model unless the best epoch beats it by one standard error: sqrt(p (1 - p) / n)."""
    # Fashion-MNIST 1%: 60 validation images, best 49/60 at epoch 6, last 47/60; SE sqrt(49/60 * 11/60 / 60) = 0.049954.
    choice = final_epoch_choice(49 / 60, 47 / 60, 60)
    assert choice["margin"] == pytest.approx(0.049954, abs=1e-6) and choice["kept"] == "last epoch"
    # 100 images, best 0.9 vs last 0.8: SE 0.03, the best epoch is 0.1 ahead: it is kept.
    assert final_epoch_choice(0.9, 0.8, 100) == {"kept": "best validation epoch", "best_val_accuracy": 0.9,
                                                  "last_val_accuracy": 0.8, "margin": 0.03}
    assert final_epoch_choice(0.9, 0.87, 100)["kept"] == "last epoch"  # 0.87 + 0.03 >= 0.9
    assert final_epoch_choice(0.5, None, 10)["kept"] == "best validation epoch"  # never validated: the best


# --- FlexMatch, Pseudo-Label, the views of each modality -------------------------------------------------------

def _confident(classes: list[int], num_classes: int = 3, confidence: float = 0.95) -> torch.Tensor:
    """Probabilities whose top class is ``classes[i]`` at ``confidence`` (-1: a flat, unconfident row)."""
    rows = []
    for c in classes:
        if c < 0:
            rows.append(torch.full((num_classes,), 1.0 / num_classes))
        else:
            row = torch.full((num_classes,), (1.0 - confidence) / (num_classes - 1))
            row[c] = confidence
            rows.append(row)
    return torch.stack(rows)


def test_flexmatch_thresholds_by_hand() -> None:
    from fewlabel.approaches.fixmatch import FlexMatchThresholds

    policy = FlexMatchThresholds(pool_size=10, num_classes=3, threshold=0.9)
    assert policy.thresholds().tolist() == [0.0, 0.0, 0.0]  # nothing learnt yet: every class at 0 (the paper's start)
    # Samples 0-5 confidently 0, 0, 0, 1, 1, 2; samples 6-9 unconfident ("unused").
    policy.update(torch.arange(10), _confident([0, 0, 0, 1, 1, 2, -1, -1, -1, -1]))
    assert policy.learning_status().tolist() == [3, 2, 1] and policy.unused() == 4
    # Warm-up: beta = sigma / max(max sigma, unused) = [3, 2, 1] / 4; T = 0.9 * beta / (2 - beta).
    assert policy.normalised_status().tolist() == pytest.approx([0.75, 0.5, 0.25])
    assert policy.thresholds().tolist() == pytest.approx([0.9 * 0.6, 0.9 / 3, 0.9 / 7])
    # Without warm-up: beta = sigma / max sigma = [1, 2/3, 1/3]; T = 0.9 * [1, 0.5, 0.2].
    plain = FlexMatchThresholds(pool_size=10, num_classes=3, threshold=0.9, warmup=False)
    plain.update(torch.arange(10), _confident([0, 0, 0, 1, 1, 2, -1, -1, -1, -1]))
    assert plain.thresholds().tolist() == pytest.approx([0.9, 0.45, 0.18])
    # An unconfident prediction keeps a sample's latest confident one; a confident one replaces it.
    policy.update(torch.tensor([0, 1]), _confident([-1, 2]))
    assert policy.learning_status().tolist() == [2, 2, 2]
    assert policy.record() == {"unused_share": 0.4}
    # The mask: each sample against the threshold of its own pseudo-class (now 0.9 * 0.5 / 1.5 = 0.3 for all).
    probs = torch.tensor([[0.31, 0.30, 0.39], [0.6, 0.2, 0.2], [0.35, 0.33, 0.32], [0.2, 0.29, 0.51]])
    keep, pseudo = policy.mask(probs)
    assert pseudo.tolist() == [2, 0, 0, 2] and keep.tolist() == [True, True, True, True]
    keep, _ = FlexMatchThresholds(4, 3, 0.9).mask(probs)
    assert keep.all()  # all at 0 while nothing is learnt


def test_flexmatch_thresholds_warm_up_while_most_samples_are_unused() -> None:
    from fewlabel.approaches.fixmatch import FlexMatchThresholds

    policy = FlexMatchThresholds(pool_size=100, num_classes=3, threshold=0.95)
    policy.update(torch.tensor([5, 6, 7]), _confident([0, 0, 1]))
    beta = [2 / 97, 1 / 97, 0.0]  # the 97 unused samples, not class 0's 2, normalise
    assert policy.normalised_status().tolist() == pytest.approx(beta)
    assert policy.thresholds().tolist() == pytest.approx([0.95 * b / (2 - b) for b in beta])
    # Class 2 (nothing learnt) lets every sample in; class 0 needs more than its small threshold.
    keep, pseudo = policy.mask(torch.tensor([[0.01, 0.01, 0.98], [0.015, 0.5, 0.485], [0.0195, 0.49, 0.4905]]))
    assert pseudo.tolist() == [2, 1, 2] and keep.tolist() == [True, True, True]
    keep, _ = policy.mask(torch.tensor([[0.009, 0.0, 0.0]]))
    assert keep.tolist() == [False]  # 0.009 < 0.95 * (2/97) / (2 - 2/97) = 0.0099
    # Once no sample is unused, the best-learnt class is at the full threshold.
    policy.update(torch.arange(100), _confident([0] * 60 + [1] * 30 + [2] * 10))
    assert policy.thresholds().tolist() == pytest.approx([0.95, 0.95 * 0.5 / 1.5, 0.95 * (1 / 6) / (2 - 1 / 6)])


def test_pseudolabel_weight_ramps_linearly_over_the_first_part_of_training() -> None:
    from fewlabel.approaches.fixmatch import PSEUDOLABEL_RAMP, FixMatchModule, linear_ramp
    from fewlabel.engine.classification import OptimConfig

    assert PSEUDOLABEL_RAMP == 0.4
    assert [linear_ramp(step, 100, 0.4) for step in (0, 10, 20, 40, 41, 99)] == pytest.approx(
        [0.0, 0.25, 0.5, 1.0, 1.0, 1.0])
    assert linear_ramp(0, 100, 0.0) == 1.0  # no ramp: full weight from the start
    module = FixMatchModule(torch.nn.Linear(2, 2), 2, OptimConfig(), 0.95, unlabelled_weight=2.0, ramp=0.4)
    module.total_steps = 50  # the ramp ends at step 20
    assert [module.unlabelled_weight_at(s) for s in (0, 5, 20, 49)] == pytest.approx([0.0, 0.5, 2.0, 2.0])


def test_one_view_trains_on_its_own_pseudo_labels() -> None:
    """Pseudo-Label's step: the weak view is both the pseudo-label source and the target (one view)."""
    from fewlabel.approaches.fixmatch import FixMatchModule
    from fewlabel.engine.classification import OptimConfig

    torch.manual_seed(0)
    model = torch.nn.Linear(2, 3)
    module = FixMatchModule(model, 3, OptimConfig(), threshold=1e-6)  # every sample counts
    x_l, y_l = torch.randn(4, 2), torch.tensor([0, 1, 2, 0])
    u = torch.randn(6, 2)
    loss = module.training_step({"labelled": (x_l, y_l), "unlabelled": ([u], torch.zeros(6, dtype=torch.long),
                                                                         torch.arange(6))}, 0)
    logits_u = model(u)
    expected = torch.nn.functional.cross_entropy(model(x_l), y_l) + torch.nn.functional.cross_entropy(
        logits_u, logits_u.argmax(dim=1))
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    assert module.accepted == 6 and module.pool_seen == 6


def _check_trained_run(out: Path, method: str, epochs: int) -> dict:
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["method"] == method and len(metrics["epochs"]) == epochs
    for record in metrics["epochs"]:
        assert 0.0 <= record["mask_rate"] <= 1.0
        assert 0.0 <= record["threshold_min"] <= record["threshold_mean"] <= record["threshold_max"] <= 1.0
    assert json.loads((out / "model.json").read_text())["semisupervised"] == method
    assert (out / "model.safetensors").is_file()
    return metrics


def test_flexmatch_cli_end_to_end_and_predict(fake_fashion_mnist: Path, tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "flex"
    assert main(["-q", "semisup", "--method", "flexmatch", "--data", "fashion-mnist", "--data-dir",
                 str(fake_fashion_mnist), "--labels", "0.5", "--epochs", "1", "--width", "8", "--ratio", "1",
                 "--batch-size", "4", "--threshold", "0.5", "--workers", "0", "--out", str(out)]) == 0
    assert "(flexmatch; last epoch: mask rate" in capsys.readouterr().out
    metrics = _check_trained_run(out, "flexmatch", 1)
    assert len(metrics["class_thresholds"]) == 10 and metrics["views"] == {"weak": "standard",
                                                                          "strong": "randaugment"}
    assert 0.0 <= metrics["epochs"][0]["unused_share"] <= 1.0
    pred = tmp_path / "pred"
    assert main(["-q", "predict", "--model", str(out), "--data", "fashion-mnist", "--data-dir",
                 str(fake_fashion_mnist), "--out", str(pred)]) == 0
    assert (pred / "predictions.csv").is_file()


def test_pseudolabel_cli_end_to_end_and_predict(fake_fashion_mnist: Path, tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "pl"
    # 30 pool images in batches of 4: 7 steps an epoch, 14 in all; the weight ramps over the first 7.
    assert main(["-q", "semisup", "--method", "pseudolabel", "--data", "fashion-mnist", "--data-dir",
                 str(fake_fashion_mnist), "--labels", "0.5", "--epochs", "2", "--width", "8", "--ratio", "1",
                 "--batch-size", "4", "--threshold", "0.5", "--ramp", "0.5", "--workers", "0", "--out",
                 str(out)]) == 0
    assert "(pseudolabel; last epoch: mask rate" in capsys.readouterr().out
    metrics = _check_trained_run(out, "pseudolabel", 2)
    assert metrics["views"] == {"weak": "standard"} and metrics["ramp"] == 0.5
    # The weight at the last step of each epoch: step 6 of a 7-step ramp, then full.
    assert [r["unlabelled_weight"] for r in metrics["epochs"]] == pytest.approx([6 / 7, 1.0], abs=1e-4)
    assert all(r["threshold_min"] == r["threshold_max"] == 0.5 for r in metrics["epochs"])
    assert main(["-q", "predict", "--model", str(out), "--data", "fashion-mnist", "--data-dir",
                 str(fake_fashion_mnist), "--out", str(tmp_path / "pred")]) == 0


@pytest.fixture(scope="module")
def word_clips(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three 'words' (tones of different pitch at random offsets, in noise), 8 speakers each (as test_audio_cli)."""
    import soundfile as sf

    root = tmp_path_factory.mktemp("audio") / "words"
    rng = np.random.default_rng(0)
    rate = 16000
    for word, freq in {"low": 300.0, "mid": 900.0, "high": 2500.0}.items():
        (root / word).mkdir(parents=True)
        for speaker in range(8):
            wave = 0.02 * rng.standard_normal(rate)
            start = int(rng.integers(0, rate // 2))
            t = np.arange(rate // 3) / rate
            wave[start : start + len(t)] += 0.4 * np.sin(2 * np.pi * freq * (1 + 0.03 * speaker) * t)
            sf.write(root / word / f"spk{speaker:02d}_nohash_0.wav", wave.astype(np.float32), rate, subtype="PCM_16")
    return root


@pytest.mark.parametrize("method", ["fixmatch", "pseudolabel"])
def test_trained_methods_on_audio_clips(method: str, word_clips: Path, tmp_path: Path) -> None:
    out = tmp_path / method
    assert main(["-q", "semisup", "--method", method, "--data", str(word_clips), "--labels", "0.5", "--epochs", "1",
                 "--width", "8", "--ratio", "1", "--batch-size", "4", "--threshold", "0.5", "--workers", "0",
                 "--accelerator", "cpu", "--out", str(out)]) == 0
    metrics = _check_trained_run(out, method, 1)
    assert metrics["optim"]["optimizer"] == "adamw"  # the modality's from-scratch optimiser
    assert json.loads((out / "model.json").read_text())["front_end"] == "log-mel"
    pred = tmp_path / "pred"
    assert main(["-q", "predict", "--model", str(out), "--data", str(word_clips), "--out", str(pred)]) == 0
    assert (pred / "predictions.csv").is_file()


def test_audio_strong_view_masks_and_stays_a_waveform() -> None:
    from fewlabel.augment.audio import WaveformMasking, band_stop, strong_waveform_augment

    rate = 16000
    t = torch.arange(rate) / rate
    low, high = torch.sin(2 * torch.pi * 300 * t), torch.sin(2 * torch.pi * 2500 * t)
    removed = band_stop(low + high, [(2000.0, 3000.0)], rate)
    assert torch.allclose(removed, low, atol=1e-3)  # the 2.5 kHz tone is gone, the 300 Hz one untouched
    clip = (0.3 * (low + high) * 32767 / 2).to(torch.int16)
    silence = WaveformMasking(seed=0, freq_masks=0, time_masks=1, max_time_s=1.0, white_snr_db=None)
    out = silence(clip)
    assert out.dtype == torch.float32 and out.shape == (rate,) and (out == 0).any()
    strong = strong_waveform_augment(seed=0)
    first = strong(clip)
    assert first.shape == (rate,) and first.dtype == torch.float32 and torch.isfinite(first).all()
    assert not torch.allclose(first, strong(clip))  # random per call
    import pickle

    assert torch.equal(pickle.loads(pickle.dumps(strong_waveform_augment(seed=1)))(clip),
                       strong_waveform_augment(seed=1)(clip))  # seeded, and it survives pickling (workers)


def test_modalities_declare_their_semisup_views() -> None:
    from fewlabel.modalities import get_modality

    digits = load_dataset("digits")
    image = get_modality("image").semisup_views(digits, 0)
    assert image.names == {"weak": "standard", "strong": "randaugment"} and image.strong is not None
    text = get_modality("text").semisup_views(digits, 0)
    assert text.weak is None and text.strong is None  # one view: pseudolabel only


@pytest.mark.parametrize(("args", "message"), [
    (["--method", "flexmatch", "--neighbours", "5"], "--neighbours applies to --method label-spreading, not flexmatch"),
    (["--method", "pseudolabel", "--rounds", "3"], "--rounds applies to --method self-training, not pseudolabel"),
    (["--method", "fixmatch", "--ramp", "0.5"], "--ramp applies to --method pseudolabel, not fixmatch"),
    (["--method", "label-spreading", "--ratio", "3"], "--ratio applies to --method fixmatch or flexmatch or"),
    (["--method", "pseudolabel", "--ramp", "1.5"], "--ramp 1.5 is impossible"),
    (["--method", "flexmatch", "--threshold", "0"], "--threshold 0.0 is impossible"),
    (["--method", "pseudolabel", "--threshold", "1.01"], "--threshold 1.01 is impossible"),
    (["--method", "flexmatch", "--ratio", "0"], "--ratio 0 is impossible"),
    (["--method", "pseudolabel", "--ema", "1"], "--ema in [0, 1)"),
    (["--method", "flexmatch", "--backbone", "efficientnet_lite0", "--width", "8"], "--width sizes a network"),
])
def test_trained_methods_bad_input_is_one_line(args: list[str], message: str, tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    assert main(["-q", "semisup", "--data", "digits", "--labels", "0.1", *args, "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
    assert not out.exists()


def test_fixmatch_on_text_is_one_line_and_suggests_pseudolabel(tmp_path: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    import csv

    path = tmp_path / "reviews.csv"
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["text", "label"])
        writer.writerows([("good fun film" if i % 2 else "dull boring film", "pos" if i % 2 else "neg")
                          for i in range(60)])
    out = tmp_path / "out"
    assert main(["-q", "semisup", "--method", "flexmatch", "--data", str(path), "--labels", "0.5", "--out",
                 str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert "flexmatch needs a strong augmentation of texts" in err and "--method pseudolabel" in err
    assert len(err.splitlines()) == 1 and not out.exists()
    # Pseudo-Label needs one view: it trains the text network (a BiLSTM from scratch here).
    out = tmp_path / "pl"
    assert main(["-q", "semisup", "--method", "pseudolabel", "--data", str(path), "--labels", "0.5", "--epochs", "1",
                 "--ratio", "1", "--workers", "0", "--out", str(out)]) == 0
    _check_trained_run(out, "pseudolabel", 1)
    assert (out / "tokenizer" / "tokenizer.json").is_file()
