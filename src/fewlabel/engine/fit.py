"""Fit any classifier on a labelled subset and measure it on the test split: the shared training recipe."""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from lightning.fabric.utilities.apply_func import move_data_to_device
from safetensors.torch import save_file
from scipy.optimize import minimize_scalar
from torch import nn

from fewlabel.augment.supervised import AugmentationPolicy
from fewlabel.data.dataset import Dataset
from fewlabel.data.image_files import ImageFiles
from fewlabel.data.splits import LabelRequest, LabelSplit
from fewlabel.engine.classification import ClassificationModule, OptimConfig
from fewlabel.engine.data import IndexedSamples, auto_batch_size, default_workers, make_loader
from fewlabel.engine.run import LOGGER_NAME, RunFolder, atomic_path, atomic_write
from fewlabel.engine.trainer import EarlyStoppingAfterLearning, StopAfterEpochs, build_trainer
from fewlabel.modalities import modality_of
from fewlabel.models.backbones import to_channels_last

log = logging.getLogger(LOGGER_NAME)

CHANCE_MARGIN = 0.9  # early stopping is armed once the training loss falls below 0.9 ln(classes)


@dataclass(frozen=True)
class Budget:
    """How much training a run gets, and on what hardware. ``None`` means 'choose from the data size'."""

    epochs: int | None = None
    target_steps: int = 1500
    min_epochs: int = 15
    max_epochs: int = 300
    max_steps: int | None = None
    batch_size: int | None = None
    max_batch_size: int = 256
    patience: int | None = None
    max_minutes: float | None = None
    workers: int | None = None
    accelerator: str = "auto"
    devices: str | int = 1  # more than one (or "auto": every visible device) trains with DDP
    num_nodes: int = 1
    precision: str | None = None
    progress: bool | None = None

    def resolve_epochs(self, steps_per_epoch: int) -> int:
        """Explicit epochs, or enough epochs for ``target_steps`` optimiser steps within [min, max] epochs."""
        if self.epochs is not None:
            return self.epochs
        wanted = math.ceil(self.target_steps / max(1, steps_per_epoch))
        return int(min(self.max_epochs, max(self.min_epochs, wanted)))

    def batches_per_epoch(self, steps_per_epoch: int, epochs: int) -> int | None:
        """Cap each epoch so ``epochs`` epochs take about ``max_steps`` optimiser steps (``None``: no cap).

        A large labelled set then sees a fresh random subset each epoch, so every label fraction gets the same
        compute, and validation still runs ``epochs`` times to pick the best checkpoint.
        """
        if self.max_steps is None:
            return None
        cap = max(1, math.ceil(self.max_steps / epochs))
        return cap if cap < steps_per_epoch else None


@dataclass(frozen=True)
class StartingPoint:
    """What a run starts from and must not end below: LP-FT's linear probe (its name, validation accuracy on the
    run's validation split, the whole classifier's weights, and its own metrics for the record)."""

    name: str
    val_accuracy: float
    state: dict[str, torch.Tensor]
    metrics: dict[str, Any]
    # Fine-tune from the probe's head softened by :func:`scale_head_for_training` (``state`` stays the probe).
    scale_head: bool = True
    # The classifier's head before the probe replaced it (``head.*`` entries of the state dict): the learning-rate
    # sweep also tries plain fine-tuning from it, and the run goes on from whichever start validates best.
    random_head: dict[str, torch.Tensor] | None = None
    # Fine-tuning trains the head on these input columns only (the backbone's own pooling; the rest stay zero);
    # the model then starts from a probe fitted on them, while ``state`` is the probe on all columns.
    head_columns: slice | None = None


# LP-FT's head temperature is measured on up to this many training examples (whole batches of the run's size).
HEAD_SCALE_EXAMPLES = 512
# Fine-tuning replaces its probe only when it gets at least this many more validation examples right: the tuned
# score is the best of every sweep trial's and epoch's checkpoints on the same split, so on a dozen examples a
# two-example lead is what that selection alone produces (Rotten Tomatoes 1%, 11 validation sentences: three runs
# kept a fine-tuned model 2 examples ahead that tested 2.8, 4.0 and 5.4 points below the probe).
MIN_EXAMPLES_AHEAD = 3


def best_logit_scale(logits: torch.Tensor, targets: torch.Tensor, scaled: torch.Tensor | None = None) -> float:
    """The ``s`` in [0, 1] that minimises the mean cross-entropy of ``s * logits`` against ``targets`` (class
    indices, or probabilities as mixup / cutmix give them); ``scaled`` (a boolean per class) limits the scaling to
    those classes' logits (the others stay as they are: the probe's never-seen classes).

    The loss is convex in ``s`` (log-sum-exp of a linear function minus a linear function), so SciPy's bounded
    scalar search finds the minimum; ``s`` is never above 1: the head is only ever softened, never sharpened.
    """
    logits = logits.detach().double()
    targets = targets.detach()
    targets = targets.double() if targets.is_floating_point() else targets
    mask = torch.ones(logits.shape[1], dtype=torch.bool) if scaled is None else scaled.to(torch.bool).cpu()
    mask = mask.to(logits.device)

    def loss(s: float) -> float:
        return float(F.cross_entropy(torch.where(mask, logits * s, logits), targets))

    best = float(minimize_scalar(loss, bounds=(0.0, 1.0), method="bounded", options={"xatol": 1e-9}).x)
    # The ends of the interval are candidates too (a minimum at s = 1: the probe is already right as it is).
    return min((best, 0.0, 1.0), key=lambda s: (loss(s), -s))


@torch.no_grad()
def scale_head_for_training(model: nn.Module, loader: Any, batch_transform: Callable | None,
                            frozen_eval_modules: Sequence[nn.Module], max_examples: int = HEAD_SCALE_EXAMPLES,
                            floor: float = 1e-3) -> dict[str, Any]:
    """LP-FT's head temperature: multiply ``model.head`` (weight and bias of the classes the probe saw) by the
    scale ``s`` <= 1 that minimises the cross-entropy of the first training batches *as fine-tuning sees them*
    (augmented, BatchNorm layers that train in training mode with batch statistics, dropout on).

    Why (measured, BENCHMARKS.md issue 16): the logistic-regression probe is fitted on clean eval-mode features, with
    its standardisation folded in, so its weights are large (EfficientNet-Lite0 on 129 digits: ||W|| = 172). On
    those features it is right (training cross-entropy 0.006), but augmentation and BatchNorm batch statistics move
    the features, and the same head then gives logits of several hundred and a training loss of ~40 at the first
    step (accuracy ~10%): the first updates are huge and wreck the pretrained features, so fine-tuning ends below
    its own probe. Temperature scaling (Guo et al. 2017) on the training conditions keeps the probe's decisions
    (argmax unchanged for every input, as ``s`` > 0) and makes the starting loss the lowest any scale of the probe
    gives. The model's weights and BatchNorm statistics are restored after the measuring pass, then the head is
    scaled. ``floor`` keeps the head's directions when the best scale is ~0.

    Returns the record for ``metrics.json``: the scale, the loss before / after, the examples measured.
    """
    from fewlabel.evaluate.probes import UNSEEN_CLASS_LOGIT

    head = model.head
    device = head.weight.device
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    was_training = model.training
    model.train()
    for module in frozen_eval_modules:
        module.eval()
    logits, targets, seen = [], [], 0
    for x, y in loader:
        x, y = move_data_to_device(x, device), move_data_to_device(y, device)
        if batch_transform is not None:
            x = x.float().div_(255.0) if isinstance(x, torch.Tensor) and x.dtype == torch.uint8 else x
            x, y = batch_transform(x, y)
        logits.append(model(x).float())
        targets.append(y)
        seen += len(y)
        if seen >= max_examples:
            break
    model.load_state_dict(state)
    model.train(was_training)
    if not logits:
        return {"scale": 1.0, "examples": 0}
    z, t = torch.cat(logits), torch.cat(targets)
    scaled = head.bias.detach() > UNSEEN_CLASS_LOGIT / 2  # the probe's never-seen classes keep their -1e4
    scale = max(best_logit_scale(z, t, scaled), floor)

    def loss(s: float) -> float:
        return round(float(F.cross_entropy(torch.where(scaled, z * s, z).double(),
                                           t.double() if t.is_floating_point() else t)), 4)

    head.weight[scaled] *= scale
    head.bias[scaled] *= scale
    record = {"scale": round(scale, 6), "loss_before": loss(1.0), "loss_after": loss(scale),
              "accuracy": round(float((z.argmax(1) == (t.argmax(1) if t.is_floating_point() else t)).float().mean()),
                                4), "examples": int(seen)}
    log.info("LP-FT: the probe's head scaled by %.4g for fine-tuning (training loss of its first %d augmented "
             "examples in training mode %.3f -> %.3f; accuracy %.3f)", scale, seen, record["loss_before"],
             record["loss_after"], record["accuracy"])
    return record


def fallback_margin(start_val: float, val_size: int) -> float:
    """How far the best fine-tuned validation accuracy must exceed the starting point's ``start_val`` for the run
    to keep it: one binomial standard error of ``start_val`` on ``val_size`` examples, and at least
    :data:`MIN_EXAMPLES_AHEAD` examples (half an example less, so float scores exactly that far ahead pass)."""
    n = max(1, val_size)
    standard_error = math.sqrt(max(start_val * (1.0 - start_val), 0.0) / n)
    return max(standard_error, (MIN_EXAMPLES_AHEAD - 0.5) / n)


def restrict_head_columns(head: nn.Module, columns: slice) -> torch.utils.hooks.RemovableHandle:
    """Train only ``columns`` of a linear head's weight: the others get no gradient, so under (Adam)W they keep
    their value; zero there, the head acts on those features alone (the encoder's own pooling inside a wider
    concatenation). Returns the hook's handle."""
    def keep_columns(grad: torch.Tensor) -> torch.Tensor:
        masked = torch.zeros_like(grad)
        masked[:, columns] = grad[:, columns]
        return masked

    return head.weight.register_hook(keep_columns)


def sweep_rates(lr: float, count: int) -> tuple[float, ...]:
    """``count`` learning rates around ``lr`` on a factor-3 grid (3: lr/3, lr, 3 lr); one rate: no sweep."""
    if count <= 1:
        return ()
    low = -(count // 2) if count % 2 else -(count // 2) + 1
    return tuple(float(f"{lr * 3.0 ** (low + i):.3g}") for i in range(count))


def trial_epochs(epochs: int, val_every: int, fraction: float) -> int:
    """Epochs of one learning-rate trial: ``fraction`` of the run, a whole number of validation intervals."""
    intervals = max(1, round(fraction * epochs / val_every))
    return min(epochs, intervals * val_every)


def sweep_learning_rates(model: nn.Module, module_with: Callable[[float], ClassificationModule],
                         trainer_for: Callable[..., L.Trainer], rates: Sequence[float], default_lr: float,
                         epochs: int, run: RunFolder, train_loader: Any, val_loader: Any, seed: int,
                         start_name: str = "start", other_starts: Mapping[str, Mapping[str, torch.Tensor]] | None = None
                         ) -> dict[str, Any]:
    """Train the first ``epochs`` of the run at each rate from the same weights (``start_name``), and from each of
    ``other_starts`` (weights loaded over the start, e.g. a random head instead of the probe's) at ``default_lr``;
    pick the best validation score (ties: the first start, then the rate closest to ``default_lr``). Returns the
    record and the winner's last checkpoint; the losers' checkpoints are deleted, and ``model`` is back at its
    starting weights."""
    start = {k: v.detach().clone() for k, v in model.state_dict().items()}
    plan: list[tuple[str, float, Mapping[str, torch.Tensor] | None]] = [(start_name, rate, None) for rate in rates]
    plan += [(name, default_lr, weights) for name, weights in (other_starts or {}).items()]
    trials = []
    for name, rate, weights in plan:
        model.load_state_dict(start)
        if weights is not None:
            unknown = model.load_state_dict(dict(weights), strict=False).unexpected_keys
            if unknown:  # a partial start must name the model's own parameters, or it would silently do nothing
                raise ValueError(f"the {name} start holds weights the model does not have: {unknown}")
        L.seed_everything(seed, workers=True, verbose=False)
        slug = "" if weights is None else name.replace(" ", "-") + "-"
        folder = run.checkpoints / f"sweep-{slug}lr{rate:g}"
        began = time.perf_counter()
        trainer = trainer_for(folder, stop_after=epochs)
        trainer.fit(module_with(rate), train_loader, val_loader)
        score = trainer.checkpoint_callback.best_model_score if trainer.checkpoint_callback else None
        # Lightning's last.ckpt is a copy of the last *best* checkpoint; the trial continues from where it ended.
        end = folder / "trial-end.ckpt"
        trainer.save_checkpoint(end)
        trials.append({"start": name, "lr": rate,
                       "val_accuracy": float(score) if score is not None else float("-inf"),
                       "seconds": round(time.perf_counter() - began, 3), "checkpoint": str(end),
                       "first_start": weights is None})
        log.info("learning-rate trial %g from the %s: %.4f validation accuracy after %d epochs", rate, name,
                 trials[-1]["val_accuracy"], epochs)
    winner = max(trials, key=lambda t: (t["val_accuracy"], t["first_start"], -abs(math.log(t["lr"] / default_lr))))
    for trial in trials:
        if trial is not winner:
            shutil.rmtree(Path(trial["checkpoint"]).parent, ignore_errors=True)
    model.load_state_dict(start)
    log.info("learning rate %g from the %s chosen on validation (%s); it continues from its trial", winner["lr"],
             winner["start"], ", ".join(f"{t['lr']:g} ({t['start']}): {t['val_accuracy']:.4f}" for t in trials))
    return {"rates": [t["lr"] for t in trials if t["first_start"]], "trial_epochs": epochs,
            "chosen_lr": winner["lr"], "chosen_start": winner["start"],
            "trials": [{k: v for k, v in t.items() if k not in ("checkpoint", "first_start")}
                       for t in trials],
            "extra_seconds": round(sum(t["seconds"] for t in trials if t is not winner), 3),
            "checkpoint": winner["checkpoint"]}


def count_parameters(model: nn.Module) -> dict[str, int]:
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {"total": total, "trainable": trainable}


def fit_classifier(
    model: nn.Module,
    dataset: Dataset,
    split: LabelSplit,
    request: LabelRequest,
    policy: AugmentationPolicy,
    optim: OptimConfig,
    budget: Budget,
    run: RunFolder,
    seed: int,
    param_groups: list[dict[str, Any]] | None = None,
    frozen_eval_modules: list[nn.Module] | None = None,
    full_validation: bool = False,
    model_meta: dict[str, Any] | None = None,
    regularizer: nn.Module | None = None,
    extra_metrics: dict[str, Any] | None = None,
    train_collate: Callable | None = None,
    eval_collate: Callable | None = None,
    lr_sweep: Sequence[float] = (),
    sweep_fraction: float = 0.12,
    starting_point: StartingPoint | None = None,
) -> dict[str, Any]:
    """Train ``model`` on the labelled subset of ``split``, keep the best validation epoch, test it.

    ``lr_sweep`` (two or more learning rates): each trains the first ``sweep_fraction`` of the run from the same
    start, the best on validation continues from its checkpoint (the others' steps are the sweep's cost).
    ``starting_point``: a model the run must not return worse than on validation (LP-FT's linear probe); unless the
    best trained epoch beats it by :func:`fallback_margin` (one standard error of its validation accuracy, at least
    :data:`MIN_EXAMPLES_AHEAD` examples), the run keeps and tests the
    starting point instead. With its ``scale_head``, fine-tuning starts from the probe's head scaled down by
    :func:`scale_head_for_training` (recorded as ``lp_head_scale``); the fallback keeps the unscaled probe. With
    its ``random_head`` and a sweep, plain fine-tuning from that head is one more trial (at the default rate): the
    start that validates best goes on, still held to the probe.
    Returns the metrics (also written to ``run/metrics.json``) and saves ``model.safetensors``.
    """
    L.seed_everything(seed, workers=True, verbose=False)
    labels = dataset.labels
    train_idx = split.labelled(request, labels)
    val_idx = split.validation(None if full_validation else request, labels)
    test_idx = split.test
    batch_size = budget.batch_size or auto_batch_size(len(train_idx), maximum=budget.max_batch_size)
    # Files decoded on access (image folders) need loader workers even without augmentation.
    decoded = not isinstance(dataset.samples, torch.Tensor | list)
    workers = budget.workers if budget.workers is not None else default_workers(
        policy.sample_transform is not None or decoded)
    eval_workers = workers if decoded else 0
    steps_per_epoch = max(1, len(train_idx) // batch_size)
    epochs = budget.resolve_epochs(steps_per_epoch)
    batches_per_epoch = budget.batches_per_epoch(steps_per_epoch, epochs)
    patience = budget.patience if budget.patience is not None else max(5, epochs // 4)
    # Tiny labelled sets need many short epochs; validating after every one would cost more than training.
    val_every = max(1, epochs // 25)

    train_samples = dataset.samples
    if policy.crops_to_size and isinstance(train_samples, ImageFiles):
        train_samples = train_samples.whole_images()  # crops from the whole photo, not its centre square
    train_loader = make_loader(IndexedSamples(train_samples, train_idx, labels, policy.sample_transform),
                               batch_size, shuffle=True, workers=workers, drop_last=True, collate_fn=train_collate)
    modality = modality_of(dataset)
    eval_batch = modality.eval_batch_size(dataset, batch_size)
    val_loader = make_loader(IndexedSamples(dataset.samples, val_idx, labels), eval_batch, False, eval_workers,
                             collate_fn=eval_collate)
    test_loader = make_loader(IndexedSamples(dataset.samples, test_idx, labels), eval_batch, False, eval_workers,
                              collate_fn=eval_collate)

    if modality.channels_last:  # convolutions: channels-last kernels are faster on CPUs and GPUs
        model = to_channels_last(model)
    model.train()  # Hugging Face's from_pretrained returns eval mode (dropout off); Lightning keeps modes as found

    def module_with(lr: float) -> ClassificationModule:
        return ClassificationModule(model, dataset.num_classes, dataclasses.replace(optim, lr=lr),
                                    policy.batch_transform, param_groups, frozen_eval_modules, regularizer)

    def trainer_for(checkpoint_dir: Path | None = None, stop_after: int | None = None) -> L.Trainer:
        # Patience counts only once the training loss is clearly below chance, ln(classes): a network that has
        # not started learning yet (hard augmentation, few labels) is not stopped at chance.
        return build_trainer(run, max_epochs=epochs, monitor="val_acc", patience=max(2, patience // val_every),
                             stop_armed_below=CHANCE_MARGIN * math.log(max(2, dataset.num_classes)),
                             check_val_every_n_epoch=val_every, checkpoint_dir=checkpoint_dir,
                             extra_callbacks=[StopAfterEpochs(stop_after)] if stop_after else None,
                             accelerator=budget.accelerator, devices=budget.devices, num_nodes=budget.num_nodes,
                             precision=budget.precision, max_minutes=budget.max_minutes, progress=budget.progress,
                             **({"limit_train_batches": batches_per_epoch} if batches_per_epoch else {}))

    sizes = {"labelled": len(train_idx), "unlabelled": len(split.unlabelled(request, labels)),
             "val": len(val_idx), "test": len(test_idx)}
    log.info("training on %d labelled examples (%s), batch %d, up to %d epochs%s, %d workers",
             len(train_idx), request, batch_size, epochs,
             f" of {batches_per_epoch} random batches" if batches_per_epoch else "", workers)
    started = time.perf_counter()
    column_hook = restrict_head_columns(model.head, starting_point.head_columns) \
        if starting_point is not None and starting_point.head_columns is not None else None
    head_scale: dict[str, Any] | None = None
    if starting_point is not None and starting_point.scale_head:
        head_scale = scale_head_for_training(model, train_loader, policy.batch_transform,
                                             frozen_eval_modules or [],
                                             max_examples=max(batch_size, HEAD_SCALE_EXAMPLES))
        L.seed_everything(seed, workers=True, verbose=False)  # the run's randomness as without the measuring pass
        head_scale["seconds"] = round(time.perf_counter() - started, 3)
    sweep: dict[str, Any] | None = None
    resume_from, checkpoint_dir, lr = None, None, optim.lr
    if len(lr_sweep) > 1:
        others = {"random head": {f"head.{k}": v for k, v in starting_point.random_head.items()}} \
            if starting_point is not None and starting_point.random_head is not None else None
        sweep = sweep_learning_rates(model, module_with, trainer_for, lr_sweep, optim.lr,
                                     trial_epochs(epochs, val_every, sweep_fraction), run,
                                     train_loader, val_loader, seed,
                                     start_name=starting_point.name if starting_point is not None else "start",
                                     other_starts=others)
        lr, resume_from = sweep["chosen_lr"], sweep.pop("checkpoint")
        checkpoint_dir = Path(resume_from).parent
    module = module_with(lr)
    trainer = trainer_for(checkpoint_dir)
    trainer.fit(module, train_loader, val_loader, ckpt_path=resume_from)
    train_seconds = time.perf_counter() - started
    best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
    best_score = trainer.checkpoint_callback.best_model_score if trainer.checkpoint_callback else None
    trainer.test(module, test_loader, ckpt_path=best or None, verbose=False)
    results = module.test_results
    epochs_run = trainer.current_epoch
    stopper = next((c for c in trainer.callbacks if isinstance(c, EarlyStoppingAfterLearning)), None)
    kept: dict[str, Any] = {}
    if starting_point is not None:
        tuned_val = float(best_score) if best_score is not None else float("-inf")
        kept = {"kept": "fine-tuned", "start_val_accuracy": starting_point.val_accuracy,
                "tuned_val_accuracy": tuned_val if best_score is not None else None,
                "tuned_test_accuracy": results["test_accuracy"], "start": starting_point.metrics}
        # Fine-tuning must beat the probe by one binomial standard error of the validation score, and by a few
        # examples: on a small validation split (50 images at 10% of digits, 11 sentences at 1% of Rotten
        # Tomatoes) a one- or two-example lead is noise, and the probe is the simpler model.
        start_val = starting_point.val_accuracy
        margin = fallback_margin(start_val, len(val_idx))
        kept["required_margin"] = round(margin, 4)
        if tuned_val <= start_val + margin:
            # Never return a model worse (on validation) than the run's own starting point: keep the probe.
            model.load_state_dict(starting_point.state)
            trainer.test(module, test_loader, ckpt_path=None, verbose=False)
            results = module.test_results
            best_score = starting_point.val_accuracy
            kept["kept"] = starting_point.name
            log.info("fine-tuning reached %.4f validation accuracy, not above the %s's %.4f by its standard error "
                     "or %d examples (%.4f): the run keeps the %s (test %.4f; fine-tuned would have scored %.4f)",
                     tuned_val, starting_point.name, start_val, MIN_EXAMPLES_AHEAD, margin, starting_point.name,
                     results["test_accuracy"], kept["tuned_test_accuracy"])
        else:
            log.info("fine-tuning reached %.4f validation accuracy (the %s: %.4f): the run keeps the fine-tuned "
                     "model", tuned_val, starting_point.name, starting_point.val_accuracy)

    if column_hook is not None:
        column_hook.remove()
    metrics: dict[str, Any] = {
        "test_accuracy": results["test_accuracy"],
        "macro_f1": results["macro_f1"],
        "per_class_accuracy": dict(zip(dataset.classes, results["per_class_accuracy"], strict=True)),
        "best_val_accuracy": float(best_score) if best_score is not None else None,
        "train_seconds": round(train_seconds, 3),
        "samples_per_second": round(module.samples_seen / train_seconds, 1) if train_seconds > 0 else None,
        "epochs_run": epochs_run,
        "epochs_planned": epochs,
        "batches_per_epoch": batches_per_epoch or steps_per_epoch,
        "validate_every_epochs": val_every,
        "early_stopping_armed_at_epoch": stopper.armed_at_epoch if stopper else None,
        "batch_size": batch_size,
        "parameters": count_parameters(model),
        "split": {"seed": split.seed, "labels": str(request), **sizes},
        "optim": asdict(optim),
        "device": str(trainer.strategy.root_device),
        **({"lr_sweep": sweep} if sweep else {}),
        **({"lp_head_scale": head_scale} if head_scale else {}),
        **kept,
        **(extra_metrics or {}),
    }
    if trainer.is_global_zero:
        save_classifier(run, module.model, dataset.classes, {"modality": dataset.modality, **(model_meta or {})})
        run.write_metrics(metrics)
    return metrics


def save_classifier(run: RunFolder, model: nn.Module, classes: list[str], meta: dict[str, Any] | None = None) -> None:
    """``model.safetensors`` (the whole classifier: backbone and head) and ``model.json`` (classes, provenance)."""
    with atomic_path(run.path / "model.safetensors", suffix=".safetensors") as tmp:
        save_file({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}, str(tmp))
    atomic_write(run.path / "model.json", json.dumps({"classes": list(classes), **(meta or {})}, indent=2) + "\n")
