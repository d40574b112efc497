"""Fine-tuning that never loses to its own linear probe: LP-FT's probe stage, the BatchNorm policy, the
learning-rate sweep that continues its winner, and the fallback to the probe."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from fewlabel.cli import main
from fewlabel.data import load_dataset
from fewlabel.data.splits import LabelRequest, LabelSplit, make_split
from fewlabel.engine.classification import ClassificationModule, OptimConfig
from fewlabel.engine.fit import (
    best_logit_scale,
    fallback_margin,
    scale_head_for_training,
    sweep_rates,
    trial_epochs,
)
from fewlabel.evaluate.frozen import frozen_features, linear_probe_start
from fewlabel.evaluate.probes import UNSEEN_CLASS_LOGIT, fit_linear_probe, probe_as_linear
from fewlabel.modalities import modality_of
from fewlabel.modalities.image import prepare_backbone
from fewlabel.models import Classifier, create_backbone
from fewlabel.transfer import apply_strategy
from fewlabel.transfer.strategies import apply_bn_policy, batchnorm_layers, resolve_bn_policy


def test_head_after_the_probe_stage_is_the_probe(tiny_export: Path) -> None:
    """The head LP-FT starts from is the logistic-regression probe with its scaler folded in: the same
    weights as fitting the probe by hand on the same frozen features."""
    dataset = load_dataset("digits")
    modality = modality_of(dataset)
    loaded = modality.load_backbone(str(tiny_export), dataset, {"image_size": 8, "frozen": False})
    model = modality.classifier(loaded.backbone, loaded.dataset)
    split = make_split(loaded.dataset, seed=0)
    request = LabelRequest.parse("0.2")
    start = linear_probe_start(model, loaded, split, request, seed=0)

    train_idx = split.labelled(request, loaded.dataset.labels)
    features, _ = frozen_features(loaded, train_idx)
    probe = fit_linear_probe(features.numpy(), loaded.dataset.labels[train_idx], seed=0)
    weight, bias = probe_as_linear(probe, dataset.num_classes)
    assert torch.allclose(model.head.weight, weight.to(model.head.weight.dtype), atol=1e-6)
    assert torch.allclose(model.head.bias, bias.to(model.head.bias.dtype), atol=1e-6)
    assert start.metrics["probe_c"] == probe[-1].C
    assert torch.equal(start.state["head.weight"], model.head.weight.detach())
    # Its validation score is measured on the run's validation split (what fine-tuning is held to).
    assert 0.0 < start.val_accuracy <= 1.0


def test_best_logit_scale_by_hand() -> None:
    """Three examples with logits [0, 1], labels 1, 1, 0: the loss 3 ln(1 + e^s) - 2 s is least where
    3 sigmoid(s) = 2, at s = ln 2."""
    logits = torch.tensor([[0.0, 1.0]] * 3)
    assert best_logit_scale(logits, torch.tensor([1, 1, 0])) == pytest.approx(math.log(2.0), abs=1e-6)
    # Soft targets (mixup) give the same answer as the hard labels they average.
    soft = torch.tensor([[1 / 3, 2 / 3]] * 3)
    assert best_logit_scale(logits, soft) == pytest.approx(math.log(2.0), abs=1e-6)
    # Never sharpened: a head that is right on every example keeps s = 1 ...
    assert best_logit_scale(logits, torch.tensor([1, 1, 1])) == 1.0
    # ... and one that is wrong more often than right goes to 0 (scale_head_for_training floors it).
    assert best_logit_scale(logits, torch.tensor([0, 0, 1])) == 0.0
    # Classes left out of the scaling keep their logits: with logits [0, 10 s, 1] (the third class fixed at 1)
    # and labels 1, 1, 0, the loss 3 ln(1 + e^u + e) - 2 u (u = 10 s) is least where 3 e^u = 2 (1 + e^u + e),
    # at u = ln(2 (1 + e)) = 2.006.
    expected = math.log(2.0 * (1.0 + math.e))
    got = best_logit_scale(torch.tensor([[0.0, 10.0, 1.0]] * 3), torch.tensor([1, 1, 0]),
                           scaled=torch.tensor([True, True, False]))
    assert got * 10 == pytest.approx(expected, abs=1e-5)


def test_head_scaled_for_fine_tuning_is_the_probe_times_its_scale(tiny_export: Path) -> None:
    """The head fine-tuning starts from is the probe times the recorded scale (classes the probe never saw keep
    their -1e4 bias), so it predicts the same classes; the measuring pass leaves the BatchNorm statistics as they
    were; the starting point (the fallback's reference) keeps the unscaled probe."""
    dataset = load_dataset("digits")
    modality = modality_of(dataset)
    loaded = modality.load_backbone(str(tiny_export), dataset, {"image_size": 8, "frozen": False})
    model = modality.classifier(loaded.backbone, loaded.dataset)
    split = make_split(loaded.dataset, seed=0)
    request = LabelRequest.parse("0.1")
    start = linear_probe_start(model, loaded, split, request, seed=0)
    assert start.scale_head
    probe_w, probe_b = model.head.weight.detach().clone(), model.head.bias.detach().clone()
    probe_b[3] = UNSEEN_CLASS_LOGIT  # as if class 3 had no labelled example
    with torch.no_grad():
        model.head.bias[3] = UNSEEN_CLASS_LOGIT
        model.head.weight[3] = 0.0
    probe_w[3] = 0.0
    bn = batchnorm_layers(model)[0]
    stats = bn.running_mean.clone()

    train_idx = split.labelled(request, loaded.dataset.labels)
    x = loaded.dataset.samples[torch.as_tensor(train_idx)]
    # Noise stands in for augmentation: the probe's logits on these inputs are far off, so it is softened.
    noisy = x.float() + 4 * torch.randn(x.shape)
    y = torch.as_tensor(loaded.dataset.labels[train_idx])
    loader = [(noisy[i:i + 16], y[i:i + 16]) for i in range(0, len(y), 16)]
    record = scale_head_for_training(model, loader, None, [], max_examples=64)
    assert record["examples"] == 64 and 0.0 < record["scale"] <= 1.0
    assert record["loss_after"] <= record["loss_before"]
    seen = torch.arange(dataset.num_classes) != 3
    assert torch.allclose(model.head.weight[seen], probe_w[seen] * record["scale"], rtol=1e-5, atol=1e-7)
    assert torch.allclose(model.head.bias[seen], probe_b[seen] * record["scale"], rtol=1e-5, atol=1e-7)
    assert model.head.bias[3] == UNSEEN_CLASS_LOGIT and not model.head.weight[3].any()
    assert torch.equal(bn.running_mean, stats)
    features = frozen_features(loaded, split.test)[0]
    with torch.no_grad():
        scaled = model.head(features).argmax(dim=1)
        raw = (features @ probe_w.T + probe_b).argmax(dim=1)
    assert torch.equal(scaled, raw)
    assert not torch.equal(start.state["head.weight"], model.head.weight.detach()) or record["scale"] == 1.0


def _bn_model() -> Classifier:
    torch.manual_seed(0)
    return Classifier(create_backbone("resnet_small", in_chans=1, width=8), num_classes=3, data_channels=1)


def _one_step(model: Classifier, frozen: list[torch.nn.Module]) -> None:
    module = ClassificationModule(model, 3, OptimConfig(optimizer="sgd", lr=0.5), frozen_eval_modules=frozen)
    model.train()
    module.on_train_epoch_start()
    x, y = torch.randn(8, 1, 8, 8) * 3 + 1, torch.randint(0, 3, (8,))
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
    torch.nn.functional.cross_entropy(model(x), y).backward()
    optimizer.step()


@pytest.mark.parametrize("policy", ["frozen", "frozen-affine", "train"])
def test_batchnorm_policy(policy: str) -> None:
    model = _bn_model()
    plan = apply_strategy(model, "finetune", layer_decay=1.0)
    assert apply_bn_policy(model, plan, policy) == (0 if policy == "train" else len(batchnorm_layers(model)))
    layer = batchnorm_layers(model)[0]
    stats = layer.running_mean.clone(), layer.running_var.clone()
    affine = layer.weight.detach().clone()
    _one_step(model, plan.frozen_eval_modules)
    unchanged_stats = torch.equal(layer.running_mean, stats[0]) and torch.equal(layer.running_var, stats[1])
    assert unchanged_stats == (policy != "train")
    assert torch.equal(layer.weight.detach(), affine) == (policy == "frozen-affine")


def test_auto_batchnorm_policy_decides_from_the_batch() -> None:
    assert resolve_bn_policy("auto", 8, 5000)[0] == "frozen"
    assert resolve_bn_policy("auto", 16, 129)[0] == "train"
    assert resolve_bn_policy("auto", 64, 5400)[0] == "train"
    assert resolve_bn_policy("train", 8, 10) == ("train", "chosen with --bn")


def test_sweep_rates_and_trial_length() -> None:
    assert sweep_rates(3e-4, 3) == (1e-4, 3e-4, 9e-4)
    assert sweep_rates(1e-3, 1) == ()
    assert trial_epochs(38, 1, 0.12) == 5
    assert trial_epochs(100, 4, 0.12) == 12  # whole validation intervals
    assert trial_epochs(3, 1, 0.12) == 1


def test_fallback_margin_is_a_standard_error_and_at_least_three_examples() -> None:
    # 50 validation images, probe at 80%: one standard error sqrt(0.8 * 0.2 / 50) = 0.05657 > 2.5 / 50.
    assert fallback_margin(0.8, 50) == pytest.approx(0.0565685, abs=1e-6)
    # 104 sentences, probe at 76/104: sqrt(0.73077 * 0.26923 / 104) = 0.04350 > 2.5 / 104 = 0.02404.
    assert fallback_margin(76 / 104, 104) == pytest.approx(0.043495, abs=1e-5)
    # 11 sentences, probe at 8/11: the standard error 0.13428 is under two examples; three are needed.
    margin = fallback_margin(8 / 11, 11)
    assert margin == pytest.approx(2.5 / 11)
    assert 10 / 11 - 8 / 11 < margin < 11 / 11 - 8 / 11
    # A perfect probe has no spread; the example floor still holds.
    assert fallback_margin(1.0, 200) == pytest.approx(0.0125)


def test_finetune_falls_back_to_the_probe_when_fine_tuning_is_worse(tiny_export: Path, tmp_path: Path,
                                                                     capsys: pytest.CaptureFixture[str]) -> None:
    """A learning rate that wrecks the network: the run keeps the probe it started from, says so, and saves
    it (the saved classifier reproduces the probe's test accuracy)."""
    out = tmp_path / "ft"
    assert main(["-q", "finetune", "--backbone", str(tiny_export), "--strategy", "finetune", "--data", "digits",
                 "--labels", "0.2", "--image-size", "8", "--epochs", "2", "--workers", "0", "--lr", "300",
                 "--out", str(out)]) == 0
    assert "kept the linear probe" in capsys.readouterr().out
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["kept"] == "linear probe" and "lr_sweep" not in metrics  # --lr given: no sweep
    assert metrics["tuned_val_accuracy"] <= metrics["start_val_accuracy"] + metrics["required_margin"]
    assert metrics["start_val_accuracy"] == metrics["best_val_accuracy"]
    assert metrics["test_accuracy"] == pytest.approx(metrics["start"]["test_accuracy"], abs=1e-6)
    assert "keeps the linear probe" in (out / "logs" / "train.log").read_text()

    dataset = load_dataset("digits")
    model = Classifier(prepare_backbone(str(tiny_export), dataset, 8), dataset.num_classes, data_channels=1)
    model.load_state_dict(load_file(str(out / "model.safetensors")))
    model.eval()
    split = LabelSplit.load(out / "split.npz", dataset)
    val_size = len(split.validation(LabelRequest.parse("0.2"), dataset.labels))
    assert metrics["required_margin"] == pytest.approx(fallback_margin(metrics["start_val_accuracy"], val_size),
                                                       abs=1e-4)
    assert metrics["required_margin"] >= 2.5 / val_size - 1e-4
    test = split.test
    with torch.no_grad():
        predictions = model(dataset.samples[torch.as_tensor(test)]).argmax(dim=1).numpy()
    assert float((predictions == dataset.labels[test]).mean()) == pytest.approx(metrics["test_accuracy"],
                                                                                abs=1.5 / len(test))


def test_learning_rate_sweep_continues_its_winner(tiny_export: Path, tmp_path: Path) -> None:
    out = tmp_path / "sweep"
    assert main(["-q", "finetune", "--backbone", str(tiny_export), "--strategy", "partial", "--data", "digits",
                 "--labels", "0.2", "--image-size", "8", "--epochs", "4", "--patience", "10", "--workers", "0",
                 "--trainable", "layer3", "--out", str(out)]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    sweep = metrics["lr_sweep"]
    assert sweep["rates"] == [3.33e-4, 1e-3, 3e-3] and sweep["chosen_lr"] in sweep["rates"]
    # Three rates from the probe, and plain fine-tuning from the random head at the default rate.
    assert sweep["trial_epochs"] == 1 and len(sweep["trials"]) == 4
    assert [(t["start"], t["lr"]) for t in sweep["trials"]] == [
        ("linear probe", 3.33e-4), ("linear probe", 1e-3), ("linear probe", 3e-3), ("random head", 1e-3)]
    winner = max(sweep["trials"], key=lambda t: t["val_accuracy"])
    assert winner["val_accuracy"] <= metrics["tuned_val_accuracy"] or metrics["kept"] == "linear probe"
    # The winner went on from the end of its trial to the planned epochs; the losers' checkpoints are gone.
    assert metrics["epochs_run"] == 4
    folders = sorted(p.name for p in (out / "checkpoints").iterdir())
    slug = "" if sweep["chosen_start"] == "linear probe" else "random-head-"
    assert folders == [f"sweep-{slug}lr{sweep['chosen_lr']:g}"]
    assert metrics["transfer"]["batchnorm"] == "train"  # batches of 64: auto updates the statistics


class _ScriptedTrainer:
    """Stands in for Lightning in :func:`sweep_learning_rates`: "training" scores the head's bias as the
    validation accuracy (so a start is told apart by its weights) and writes a checkpoint file."""

    def __init__(self, folder: Path, model: torch.nn.Module, seen: list[tuple[float, float]]) -> None:
        self.folder, self.model, self.seen = folder, model, seen
        self.checkpoint_callback = self

    def fit(self, module: float, train_loader: object, val_loader: object) -> None:
        self.best_model_score = torch.tensor(float(self.model.head.bias[0]) + module)
        self.seen.append((module, float(self.model.head.bias[0])))

    def save_checkpoint(self, path: Path) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        Path(path).write_text("checkpoint")


@pytest.mark.parametrize(("random_bias", "winner"), [(0.5, "random head"), (-0.5, "linear probe")])
def test_sweep_tries_the_random_head_and_continues_the_best_start(tmp_path: Path, random_bias: float,
                                                                  winner: str) -> None:
    """Each probe trial starts from the probe's weights, the extra trial from the random head at the default
    rate; the best validation score wins, the others' checkpoints go, and the model is back at the probe."""
    from fewlabel.engine.fit import sweep_learning_rates
    from fewlabel.engine.run import RunFolder

    model = torch.nn.Module()
    model.head = torch.nn.Linear(2, 2)
    with torch.no_grad():
        model.head.bias.fill_(0.0)  # the probe's head
    run = RunFolder.create(str(tmp_path / "run"), "sweep")
    seen: list[tuple[float, float]] = []
    random_head = {"head.weight": torch.zeros(2, 2), "head.bias": torch.full((2,), random_bias)}
    # "module_with(rate)" is the rate itself: the scripted score is bias + rate (a small bonus for larger rates).
    record = sweep_learning_rates(model, lambda rate: rate / 1000, lambda folder, stop_after: _ScriptedTrainer(
        folder, model, seen), (1e-4, 3e-4, 9e-4), 3e-4, 2, run, None, None, seed=0, start_name="linear probe",
        other_starts={"random head": random_head})
    assert [rate for rate, _ in seen] == pytest.approx([1e-7, 3e-7, 9e-7, 3e-7])
    assert [bias for _, bias in seen] == [0.0, 0.0, 0.0, random_bias]
    assert record["chosen_start"] == winner
    assert record["chosen_lr"] == (3e-4 if winner == "random head" else 9e-4)
    assert record["rates"] == [1e-4, 3e-4, 9e-4] and len(record["trials"]) == 4
    assert [t["start"] for t in record["trials"]] == ["linear probe"] * 3 + ["random head"]
    kept = sorted(p.name for p in run.checkpoints.iterdir())
    assert kept == (["sweep-random-head-lr0.0003"] if winner == "random head" else ["sweep-lr0.0009"])
    assert record["checkpoint"].startswith(str(run.checkpoints / kept[0]))
    assert float(model.head.bias.abs().max()) == 0.0  # back at the probe's weights


def test_sweep_refuses_a_start_for_weights_the_model_lacks(tmp_path: Path) -> None:
    from fewlabel.engine.fit import sweep_learning_rates
    from fewlabel.engine.run import RunFolder

    model = torch.nn.Module()
    model.head = torch.nn.Linear(2, 2)
    run = RunFolder.create(str(tmp_path / "run"), "sweep")
    with pytest.raises(ValueError, match=r"classifier\.weight"):
        sweep_learning_rates(model, lambda rate: rate, lambda folder, stop_after: _ScriptedTrainer(folder, model, []),
                             (1e-4, 3e-4), 3e-4, 1, run, None, None, seed=0,
                             other_starts={"random head": {"classifier.weight": torch.zeros(2, 2)}})


def test_restricted_head_trains_only_its_columns() -> None:
    """The hook hands the optimiser zero gradient outside the columns, so AdamW (weight decay included) leaves
    those weights exactly at zero while the others and the bias train as without it."""
    from fewlabel.engine.fit import restrict_head_columns

    torch.manual_seed(0)
    head = torch.nn.Linear(6, 3)
    with torch.no_grad():
        head.weight[:, :4] = 0.0
    x, y = torch.randn(8, 6), torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])
    free = torch.autograd.grad(torch.nn.functional.cross_entropy(head(x), y), head.weight)[0]
    handle = restrict_head_columns(head, slice(4, 6))
    masked = torch.autograd.grad(torch.nn.functional.cross_entropy(head(x), y), head.weight)[0]
    assert torch.equal(masked[:, 4:], free[:, 4:]) and torch.count_nonzero(masked[:, :4]) == 0
    before = head.weight.detach().clone()
    optimiser = torch.optim.AdamW(head.parameters(), lr=0.1, weight_decay=0.1)
    for _ in range(5):
        optimiser.zero_grad()
        torch.nn.functional.cross_entropy(head(x), y).backward()
        optimiser.step()
    assert torch.count_nonzero(head.weight[:, :4]) == 0
    assert not torch.allclose(head.weight[:, 4:], before[:, 4:])
    handle.remove()  # without the hook every column trains again
    torch.nn.functional.cross_entropy(head(x), y).backward()
    assert torch.count_nonzero(head.weight.grad[:, :4]) > 0


def test_lp_ft_on_the_backbones_own_pooling(tiny_export: Path, tmp_path: Path) -> None:
    """A backbone whose own pooling fills only some of its output columns (text mean-last4: the last layer's
    mean): the fallback is the probe on all features, fine-tuning starts from a probe fitted by hand on those
    columns (zero elsewhere) or a fresh head on them, and the fine-tuned head never leaves them."""
    from fewlabel.engine.fit import Budget, fit_classifier
    from fewlabel.engine.run import RunFolder

    dataset = load_dataset("digits")
    modality = modality_of(dataset)
    loaded = modality.load_backbone(str(tiny_export), dataset, {"image_size": 8, "frozen": False})
    width = loaded.backbone.embed_dim
    columns = slice(width // 2, width)
    loaded.backbone.own_pooling_columns = columns
    model = modality.classifier(loaded.backbone, loaded.dataset)
    split = make_split(loaded.dataset, seed=0)
    request = LabelRequest.parse("0.2")
    start = linear_probe_start(model, loaded, split, request, seed=0, random_head_trial=True)

    train_idx = split.labelled(request, loaded.dataset.labels)
    features, _ = frozen_features(loaded, train_idx)
    labels = loaded.dataset.labels[train_idx]
    whole = probe_as_linear(fit_linear_probe(features.numpy(), labels, seed=0), dataset.num_classes)[0]
    own = fit_linear_probe(features[:, columns].numpy(), labels, seed=0)
    own_weight, own_bias = probe_as_linear(own, dataset.num_classes)
    assert torch.allclose(start.state["head.weight"], whole.to(torch.float32), atol=1e-6)  # the fallback
    assert torch.count_nonzero(model.head.weight[:, :width // 2]) == 0
    assert torch.allclose(model.head.weight[:, columns], own_weight.to(torch.float32), atol=1e-6)
    assert torch.allclose(model.head.bias, own_bias.to(torch.float32), atol=1e-6)
    assert start.head_columns == columns
    assert start.metrics["own_pooling_probe"]["columns"] == [width // 2, width]
    assert start.metrics["own_pooling_probe"]["probe_c"] == own[-1].C
    fresh = start.random_head["weight"]
    assert torch.count_nonzero(fresh[:, :width // 2]) == 0
    assert 0 < fresh[:, columns].abs().max() <= (width - width // 2) ** -0.5

    # Fine-tuning held to a probe it always beats (validation accuracy -1): the kept model is the fine-tuned one.
    from dataclasses import replace

    policy = modality.augmentation("none", loaded.dataset, 0)
    run = RunFolder.create(str(tmp_path / "run"), "own-pooling")
    metrics = fit_classifier(model, loaded.dataset, split, request, policy, OptimConfig(lr=1e-2),
                             Budget(epochs=2, workers=0, progress=False), run, seed=0,
                             starting_point=replace(start, val_accuracy=-1.0, scale_head=False))
    assert metrics["kept"] == "fine-tuned"
    head = load_file(run.path / "model.safetensors")["head.weight"]
    assert torch.count_nonzero(head[:, :width // 2]) == 0
    assert not torch.allclose(head[:, columns], own_weight.to(torch.float32), atol=1e-4)
