"""Transfer strategies, parameter groups, feature caching, LogME and loader errors."""

from __future__ import annotations

import copy
import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from scipy.stats import multivariate_normal

from fewlabel.approaches.transfer import STRATEGY_OPTIM
from fewlabel.cli import main
from fewlabel.data import load_dataset
from fewlabel.data.splits import LabelSplit
from fewlabel.errors import FewlabelError
from fewlabel.evaluate.feature_cache import log as cache_log
from fewlabel.evaluate.features import extract_features
from fewlabel.evaluate.frozen import train_linear_head
from fewlabel.evaluate.probes import PROBE_C_GRID
from fewlabel.modalities.image import prepare_backbone
from fewlabel.models import Classifier, create_backbone
from fewlabel.models.pretrained import load_pretrained
from fewlabel.transfer import apply_strategy, cached_features, logme_score
from fewlabel.transfer.strategies import L2SP


def tiny_model() -> Classifier:
    torch.manual_seed(0)
    return Classifier(create_backbone("resnet_small", in_chans=1, width=8), num_classes=3, data_channels=1)


def trainable_names(model: torch.nn.Module) -> set[str]:
    return {n for n, p in model.named_parameters() if p.requires_grad}


def test_feature_extract_trains_only_the_head() -> None:
    model = tiny_model()
    plan = apply_strategy(model, "feature-extract")
    assert trainable_names(model) == {"head.weight", "head.bias"}
    assert plan.record["trainable_parameters"] == 32 * 3 + 3
    batch_norms = [m for m in model.backbone.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert len(plan.frozen_eval_modules) == len(batch_norms) > 0


def test_partial_trains_exactly_the_named_stages() -> None:
    model = tiny_model()
    plan = apply_strategy(model, "partial", trainable=["layer3"])
    expected = {f"backbone.body.layer3.{n}" for n, _ in model.backbone.body.layer3.named_parameters()}
    assert trainable_names(model) == expected | {"head.weight", "head.bias"}
    assert plan.record["trainable_stages"] == ["layer3"]
    frozen_bn = {id(m) for m in plan.frozen_eval_modules}
    assert id(model.backbone.body.bn1) in frozen_bn  # frozen stem BatchNorm stays in eval mode
    assert id(model.backbone.body.layer3[0].bn1) not in frozen_bn


def test_partial_last_n_stages_matches_the_named_stages() -> None:
    by_name, by_count = tiny_model(), tiny_model()
    apply_strategy(by_name, "partial", trainable=["layer2", "layer3"])
    plan = apply_strategy(by_count, "partial", trainable=["last:2"])
    assert trainable_names(by_count) == trainable_names(by_name)
    assert plan.record["trainable_stages"] == ["layer2", "layer3"]
    for bad in ("last:0", "last:9", "last:x"):
        with pytest.raises(FewlabelError, match="last:N with N from 1 to 5"):
            apply_strategy(tiny_model(), "partial", trainable=[bad])


def test_partial_pattern_that_matches_nothing_is_an_error() -> None:
    with pytest.raises(FewlabelError, match="matches no parameter"):
        apply_strategy(tiny_model(), "partial", trainable=["layer9"])


def test_partial_without_stages_trains_the_last_four() -> None:
    by_default, by_count = tiny_model(), tiny_model()
    plan = apply_strategy(by_default, "partial")
    apply_strategy(by_count, "partial", trainable=["last:4"])
    assert trainable_names(by_default) == trainable_names(by_count)
    assert plan.record["trainable_default"] == "last:4"
    assert plan.record["trainable_stages"] == ["bn1", "layer1", "layer2", "layer3"]  # of conv1, bn1, layer1-3
    assert "trainable_default" not in apply_strategy(tiny_model(), "partial", trainable=["layer3"]).record


def test_finetune_layer_decay_groups() -> None:
    model = tiny_model()
    plan = apply_strategy(model, "finetune", layer_decay=0.5)
    assert trainable_names(model) == {n for n, _ in model.named_parameters()}
    stages = model.backbone.stages  # conv1, bn1, layer1, layer2, layer3
    scales = {g["name"]: g["lr_scale"] for g in plan.param_groups}
    n = len(stages)
    for index, stage in enumerate(stages):
        for name, scale in scales.items():
            if name.startswith(f"stage{index}:{stage}"):
                assert scale == pytest.approx(0.5 ** (n - index))
    assert scales["head"] == 1.0
    # Every trainable parameter sits in exactly one group; norms and biases get no weight decay.
    grouped = [p for g in plan.param_groups for p in g["params"]]
    assert len(grouped) == len({id(p) for p in grouped}) == len(list(model.parameters()))
    for group in plan.param_groups:
        if group["name"].endswith("no_decay"):
            assert group["weight_decay"] == 0.0 and all(p.ndim <= 1 for p in group["params"])


def test_l2sp_is_zero_at_start_and_grows_with_distance() -> None:
    model = tiny_model()
    reg = L2SP(model.backbone, alpha=0.1)
    assert float(reg().detach()) == 0.0
    with torch.no_grad():
        model.backbone.body.conv1.weight.add_(1.0)
    expected = 0.5 * 0.1 * model.backbone.body.conv1.weight.numel()
    assert float(reg().detach()) == pytest.approx(expected)


def test_feature_cache_hits_and_invalidates(tmp_path: Path) -> None:
    dataset = load_dataset("digits")
    backbone = create_backbone("resnet_small", in_chans=1, width=8).eval()
    idx = np.arange(50)
    first, hit = cached_features(backbone, dataset, idx, folder=tmp_path)
    again, hit_again = cached_features(backbone, dataset, idx, folder=tmp_path)
    assert not hit and hit_again and torch.equal(first, again)
    asked: list[np.ndarray] = []

    def counting(indices: np.ndarray) -> torch.Tensor:
        asked.append(indices)
        return extract_features(backbone, dataset.samples, indices)

    overlap, overlap_hit = cached_features(backbone, dataset, np.arange(40, 60), folder=tmp_path, extractor=counting)
    assert not overlap_hit and [a.tolist() for a in asked] == [list(range(50, 60))]  # only the missing rows
    assert torch.allclose(overlap[:10], first[40:], atol=1e-5)
    assert torch.allclose(overlap, extract_features(backbone, dataset.samples, np.arange(40, 60)), atol=1e-5)
    (next(tmp_path.glob("*/done.npy"))).write_bytes(b"garbage")  # a damaged cache is rebuilt, never trusted
    records: list[logging.LogRecord] = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = records.append  # type: ignore[method-assign]  # the CLI's logging setup may stop propagation
    level = cache_log.level  # an earlier `fewlabel -q` may have raised it
    cache_log.addHandler(handler)
    cache_log.setLevel(logging.WARNING)
    try:
        rebuilt, rebuilt_hit = cached_features(backbone, dataset, idx, folder=tmp_path)
    finally:
        cache_log.removeHandler(handler)
        cache_log.setLevel(level)
    assert not rebuilt_hit and torch.allclose(rebuilt, first, atol=1e-5)
    assert [r.getMessage() for r in records].count(  # one lookup, one warning
        f"feature cache mask {next(tmp_path.glob('*/done.npy'))} is unreadable; recomputing its rows") == 1
    with torch.no_grad():
        backbone.body.conv1.weight.mul_(2.0)
    changed, hit_changed = cached_features(backbone, dataset, idx, folder=tmp_path)
    assert not hit_changed and not torch.equal(changed, first)  # other weights, no stale features


def test_feature_cache_computes_shared_rows_once_across_concurrent_callers(tmp_path: Path) -> None:
    """Two callers needing the same rows at once (two compare workers): the second waits for the first's
    extraction and reads its rows instead of computing them again."""
    import threading
    import time

    dataset = load_dataset("digits")
    backbone = create_backbone("resnet_small", in_chans=1, width=8).eval()
    asked: list[list[int]] = []

    def slow(indices: np.ndarray) -> torch.Tensor:
        asked.append(indices.tolist())
        time.sleep(0.5)  # long enough for the other caller to arrive while this one extracts
        return extract_features(backbone, dataset.samples, indices)

    results: dict[str, tuple[torch.Tensor, bool]] = {}

    def call(name: str, indices: np.ndarray) -> None:
        results[name] = cached_features(backbone, dataset, indices, folder=tmp_path, extractor=slow)

    first = threading.Thread(target=call, args=("all", np.arange(60)))
    first.start()
    time.sleep(0.2)
    second = threading.Thread(target=call, args=("some", np.arange(10, 30)))
    second.start()
    first.join()
    second.join()
    assert asked == [list(range(60))]  # one extraction; the second caller found its rows done
    assert results["some"][1] and torch.equal(results["some"][0], results["all"][0][10:30])


def brute_force_evidence(features: np.ndarray, y: np.ndarray) -> float:
    """max over a log grid of alpha, beta of log N(y | 0, I/beta + F F^T/alpha), per sample."""
    n = len(y)
    best = -np.inf
    for alpha in np.logspace(-3, 3, 61):
        for beta in np.logspace(-3, 3, 61):
            cov = np.eye(n) / beta + features @ features.T / alpha
            best = max(best, multivariate_normal(mean=np.zeros(n), cov=cov).logpdf(y))
    return best / n


def test_logme_matches_brute_force_evidence() -> None:
    rng = np.random.default_rng(0)
    features = rng.normal(size=(24, 3))
    labels = (features[:, 0] + 0.3 * rng.normal(size=24) > 0).astype(int)
    score = logme_score(features, labels)
    reference = np.mean([brute_force_evidence(features, (labels == c).astype(float)) for c in (0, 1)])
    assert score == pytest.approx(reference, abs=2e-3)  # the grid is coarse; LogME finds the true maximum
    assert score >= reference - 1e-6


def test_logme_prefers_informative_features() -> None:
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 3, 90)
    informative = np.eye(3)[labels] * 3 + 0.1 * rng.normal(size=(90, 3))
    noise = rng.normal(size=(90, 3))
    assert logme_score(informative, labels) > logme_score(noise, labels)


def test_loader_errors(tmp_path: Path) -> None:
    with pytest.raises(FewlabelError, match="unknown backbone"):
        load_pretrained("efficientnet_lite9")
    other = create_backbone("resnet18", in_chans=3)
    weights = tmp_path / "resnet18.safetensors"
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in other.body.state_dict().items()}, str(weights))
    with pytest.raises(FewlabelError, match="does not fit"):
        load_pretrained(f"efficientnet_b0@{weights}")
    loaded = load_pretrained(f"resnet18@{weights}")  # the right architecture loads strictly
    assert loaded.embed_dim == 512
    with pytest.raises(FewlabelError):
        load_pretrained(f"resnet18@{tmp_path / 'missing.pth'}")




@pytest.mark.parametrize(
    ("strategy", "extra"),
    [("feature-extract", []), ("feature-extract", ["--head", "logreg"]), ("partial", ["--trainable", "layer3"]),
     ("finetune", ["--l2sp", "0.01"]), ("finetune", ["--weight-decay", "0.05"])],
)
def test_finetune_cli_strategies(strategy: str, extra: list[str], tiny_export: Path, tmp_path: Path,
                                 capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    code = main(["-q", "finetune", "--backbone", str(tiny_export), "--strategy", strategy, "--data", "digits",
                 "--labels", "0.2", "--image-size", "8", "--epochs", "1", "--workers", "0", *extra, "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    metrics = json.loads((out / "metrics.json").read_text())
    assert 0.0 <= metrics["test_accuracy"] <= 1.0
    record = metrics["transfer"]
    total = record["trainable_parameters"] + record["frozen_parameters"]
    if strategy == "feature-extract":
        assert record["trainable_parameters"] == 32 * 10 + 10
    elif strategy == "partial":
        assert 0 < record["frozen_parameters"] < total
    else:
        assert record["frozen_parameters"] == 0 and record["l2sp"] == (0.01 if "--l2sp" in extra else 0.0)
    assert all("lr" in g for g in metrics["param_groups"])
    if "--weight-decay" in extra:  # one override keeps the rest of the strategy's recipe
        assert metrics["optim"]["weight_decay"] == 0.05 and metrics["optim"]["lr"] == 3e-4
    assert "test accuracy" in capsys.readouterr().out


@pytest.mark.parametrize("head", ["logreg", "linear"])
def test_feature_extract_saves_a_classifier_that_reproduces_its_test_accuracy(
        head: str, tiny_export: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The fitted head is copied into ``model.safetensors`` and takes raw backbone features: reloading the
    classifier and running it on the test images gives the reported accuracy."""
    out = tmp_path / "fe"
    code = main(["-q", "finetune", "--backbone", str(tiny_export), "--strategy", "feature-extract", "--data",
                 "digits", "--labels", "0.2", "--image-size", "8", "--head", head, "--out", str(out)])
    assert code == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["head"] == head and (head == "linear" or metrics["probe_c"] in PROBE_C_GRID)
    assert ("logistic regression C=" in capsys.readouterr().out) == (head == "logreg")
    info = json.loads((out / "model.json").read_text())
    assert info["strategy"] == "feature-extract" and info["head"] == head and len(info["classes"]) == 10

    dataset = load_dataset("digits")
    backbone = prepare_backbone(str(tiny_export), dataset, 8)
    model = Classifier(backbone, dataset.num_classes, data_channels=1)
    model.load_state_dict(load_file(str(out / "model.safetensors")))
    model.eval()
    test = LabelSplit.load(out / "split.npz", dataset).test
    with torch.no_grad():
        predictions = model(dataset.samples[torch.as_tensor(test)]).argmax(dim=1).numpy()
    reloaded = float((predictions == dataset.labels[test]).mean())
    assert reloaded == pytest.approx(metrics["test_accuracy"], abs=1.5 / len(test))
    assert metrics["test_accuracy"] > 0.3  # random features of 10 classes, 20% of the labels: well above chance


def test_linear_head_folding_keeps_constant_features_harmless() -> None:
    """A feature constant in training must not get a 1/std ~ 1e6 weight once the scaling is folded in."""
    torch.manual_seed(0)
    x_train, x_val = torch.randn(60, 5), torch.randn(30, 5)
    x_train[:, 2] = x_val[:, 2] = 7.0
    y_train, y_val = (x_train[:, 0] > 0).long().numpy(), (x_val[:, 0] > 0).long().numpy()
    head = torch.nn.Linear(5, 2)
    train_linear_head(head, x_train, y_train, x_val, y_val, STRATEGY_OPTIM["feature-extract"], seed=0, epochs=30)
    # Clamping std at 1e-6 instead gave that column weights of ~1e5 and logits that cancel in float32.
    assert head.weight.abs().max() < 100.0


def test_efficientnet_lite0_feature_extract_offline(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["-q", "finetune", "--backbone", "efficientnet_lite0", "--strategy", "feature-extract",
                 "--data", "digits", "--labels", "5/class", "--out", str(tmp_path / "eff")])
    assert code == 0
    metrics = json.loads((tmp_path / "eff" / "metrics.json").read_text())
    assert metrics["image_size"] == 64 and metrics["test_accuracy"] > 0.3  # ImageNet features beat chance (0.1)


def test_rank_backbones_prints_a_table(tiny_export: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["rank-backbones", "--backbones", f"{tiny_export},efficientnet_lite0", "--data", "digits",
                 "--labels", "5/class"])
    assert code == 0
    out = capsys.readouterr().out
    assert "LogME" in out and "efficientnet_lite0" in out and str(tiny_export) in out


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["finetune", "--backbone", "not_a_net_xyz"], "unknown backbone"),
        (["finetune", "--strategy", "partial", "--trainable", "blocks.99"], "matches no parameter"),
    ],
)
def test_finetune_errors(args: list[str], fragment: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([*args, "--runs-dir", str(tmp_path / "runs")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and fragment in err
    assert not (tmp_path / "runs").exists()


def test_scheduled_learning_rates_follow_layer_decay() -> None:
    from fewlabel.engine.classification import OptimConfig, optimizer_with_schedule

    model = tiny_model()
    plan = apply_strategy(model, "finetune", layer_decay=0.5)
    optim = OptimConfig(optimizer="adamw", lr=1e-3, warmup_fraction=0.1)
    config = optimizer_with_schedule(plan.param_groups, optim, total_steps=100)
    optimizer, scheduler = config["optimizer"], config["lr_scheduler"]["scheduler"]
    scheduler.step_update(num_updates=50)
    lrs = {g["name"]: g["lr"] for g in optimizer.param_groups}
    head_lr = lrs["head"]
    assert 0 < head_lr < 1e-3  # past warm-up, partway down the cosine
    for group in optimizer.param_groups:
        assert group["lr"] == pytest.approx(head_lr * group["lr_scale"])
    assert lrs["stage0:conv1"] == pytest.approx(head_lr * 0.5**5)


def test_step_cap_draws_random_batches_per_epoch() -> None:
    from fewlabel.engine.fit import Budget

    capped = Budget(target_steps=300, min_epochs=5, max_steps=300)
    assert capped.batches_per_epoch(steps_per_epoch=16, epochs=capped.resolve_epochs(16)) is None  # 19 x 16 = 304
    assert capped.batches_per_epoch(steps_per_epoch=843, epochs=5) == 60
    assert capped.batches_per_epoch(steps_per_epoch=843, epochs=7) == 43  # ceil(300 / 7)
    assert Budget().batches_per_epoch(steps_per_epoch=843, epochs=5) is None


def test_finetune_records_the_capped_epoch_length(tiny_export: Path, tmp_path: Path) -> None:
    from fewlabel.approaches.transfer import TransferConfig, finetune
    from fewlabel.engine.fit import Budget

    budget = Budget(epochs=2, max_steps=4, max_batch_size=16, workers=0, progress=False)
    metrics = finetune(TransferConfig(backbone=str(tiny_export), strategy="finetune", data="digits", labels="0.5",
                                      image_size=8, budget=budget, out=str(tmp_path / "run"))).metrics
    assert metrics["batches_per_epoch"] == 2 and metrics["epochs_planned"] == 2 and metrics["batch_size"] == 16
    logged = (tmp_path / "run" / "logs" / "csv" / "metrics.csv").read_text().splitlines()
    steps = [row.split(",")[1] for row in logged[1:]]
    assert max(int(s) for s in steps if s) <= 4


def test_partial_without_trainable_trains_the_default_stages(tmp_path: Path) -> None:
    """``partial`` with no stages named trains EfficientNet-Lite0's last four stages, logs and records them."""
    import yaml

    from fewlabel.approaches.transfer import TransferConfig, finetune
    from fewlabel.engine.fit import Budget

    budget = Budget(epochs=1, max_steps=2, max_batch_size=16, workers=0, progress=False)
    result = finetune(TransferConfig(backbone="efficientnet_lite0", strategy="partial", trainable=(), data="digits",
                                     labels="0.2", image_size=32, budget=budget, out=str(tmp_path / "run")))
    expected = ["blocks.5", "blocks.6", "bn2", "conv_head"]
    record = result.metrics["transfer"]
    assert record["trainable_default"] == "last:4" and record["trainable_stages"] == expected
    config = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert config["backbone_stages"][-4:] == ["blocks.5", "blocks.6", "conv_head", "bn2"]
    assert config["transfer"]["trainable_stages"] == expected and config["trainable"] == []
    trained = {g["name"] for g in result.metrics["param_groups"]}
    assert trained == {"backbone", "backbone.no_decay", "head", "head.no_decay"}
    body = load_pretrained("efficientnet_lite0").body
    in_stages = sum(p.numel() for n, p in body.named_parameters() if n.split(".")[0] in ("conv_head", "bn2")
                    or n.startswith(("blocks.5.", "blocks.6.")))
    trained_backbone = sum(g["parameters"] for g in result.metrics["param_groups"] if g["name"].startswith("backbone"))
    assert trained_backbone == in_stages
    assert "the default last:4 trains blocks.5, blocks.6, bn2, conv_head" in (
        tmp_path / "run" / "logs" / "train.log").read_text()


def test_feature_cache_keeps_rows_from_concurrent_writers(tmp_path: Path) -> None:
    """Two commands filling the same cache at once: neither loses the other's rows or trusts missing ones."""
    import threading
    import time

    dataset = load_dataset("digits")
    backbone = create_backbone("resnet_small", in_chans=1, width=8).eval()

    def slow(indices: np.ndarray) -> torch.Tensor:
        time.sleep(0.2)  # both workers read the empty mask before either writes
        return extract_features(backbone, dataset.samples, indices)

    parts = [np.arange(0, 30), np.arange(30, 60)]
    threads = [threading.Thread(target=cached_features, args=(backbone, dataset, part, tmp_path),
                                kwargs={"extractor": slow}) for part in parts]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    both, hit = cached_features(backbone, dataset, np.arange(60), folder=tmp_path)
    assert hit and torch.allclose(both, extract_features(backbone, dataset.samples, np.arange(60)), atol=1e-5)


def test_feature_cache_recomputes_when_the_table_is_gone(tmp_path: Path) -> None:
    dataset = load_dataset("digits")
    backbone = create_backbone("resnet_small", in_chans=1, width=8).eval()
    first, _ = cached_features(backbone, dataset, np.arange(20), folder=tmp_path)
    next(tmp_path.glob("*/features.npy")).unlink()  # the mask still vouches for rows 0-19
    again, hit = cached_features(backbone, dataset, np.arange(20), folder=tmp_path)
    assert not hit and torch.allclose(again, first, atol=1e-5)


@pytest.mark.parametrize("name", ["adamw", "sgd"])
def test_optimizer_is_fused_and_steps_like_the_per_tensor_loop(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from fewlabel.engine import classification

    optim = classification.OptimConfig(optimizer=name, lr=0.1, weight_decay=1e-2, warmup_fraction=0.0)
    models = [tiny_model(), tiny_model()]
    fused = classification.optimizer_with_schedule(models[0].parameters(), optim, total_steps=10)["optimizer"]
    monkeypatch.setattr(classification, "_fused_capable", lambda params: False)
    plain = classification.optimizer_with_schedule(models[1].parameters(), optim, total_steps=10)["optimizer"]
    assert fused.defaults["fused"] is True and not plain.defaults.get("fused")

    def step_both() -> None:  # same weights, same gradients, one step each
        for model, optimizer in zip(models, (fused, plain), strict=True):
            torch.manual_seed(0)
            model(torch.rand(4, 1, 8, 8)).square().mean().backward()
            optimizer.step()
            optimizer.zero_grad()
        for a, b in zip(models[0].parameters(), models[1].parameters(), strict=True):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
            b.data.copy_(a.data)

    step_both()
    # A state saved by a non-fused optimiser (an older checkpoint) keeps the fused kernel on loading.
    fused.load_state_dict(copy.deepcopy(plain.state_dict()))  # a copy: loading shares the tensors
    assert all(group["fused"] is True for group in fused.param_groups)
    step_both()
    monkeypatch.undo()  # a model (timm then builds the weight-decay groups) is fused too
    assert classification.optimizer_with_schedule(tiny_model(), optim, total_steps=10)["optimizer"].defaults["fused"]
