"""The ``fewlabel`` command. Thin: every subcommand parses flags into a typed config and calls the Python API."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from fewlabel.errors import FewlabelError, one_line


def _add_data_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", default="digits", help="registered dataset name or a path (image folder, .npz)")
    parser.add_argument("--data-dir", default=None,
                        help="folder holding named datasets (default: $FEWLABEL_DATA, then known local copies)")
    parser.add_argument("--labels", default="1.0",
                        help="labelled share of the training pool: 0.01, 0.1, 1.0, 10%% or 10/class (default 1.0)")
    parser.add_argument("--seed", type=int, default=0, help="seed for the split, initialisation and augmentation")
    parser.add_argument("--split", default=None, help="reuse the exact split of an earlier run (its folder)")
    parser.add_argument("--text-column", default=None, help="text tables: column holding the text")
    parser.add_argument("--label-column", default=None, help="text tables: column holding the label")
    parser.add_argument("--group-column", default=None,
                        help="text tables: column whose groups never straddle train and test (e.g. movie)")
    _add_image_column(parser)
    parser.add_argument("--audio-column", default=None,
                        help="audio manifests (CSV/TSV/JSONL): column holding the audio file paths, relative to the "
                             "table (default: path, file, filename, audio, wav ...)")
    parser.add_argument("--clip-seconds", default=None,
                        help="audio: length every clip is centre-cropped or zero-padded to, in seconds (default 1)")
    parser.add_argument("--full-validation", action="store_true",
                        help="validate on the whole validation split instead of one scaled to the label budget")
    _add_image_flags(parser)


def _add_image_column(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--image-column", default=None,
                        help="image-text tables (CSV/TSV/JSONL): column holding image paths, relative to the table; "
                             "it makes the table a set of image-text pairs (captions from --text-column)")


def _add_image_flags(parser: argparse.ArgumentParser, image_size: bool = False) -> None:
    """Options of image folders, which are indexed and decoded on access at the run's working size."""
    if image_size:
        parser.add_argument("--image-size", type=int, default=None,
                            help="image folders: side images are decoded and trained at (default: the files' "
                                 "shorter side, at most 96 px from scratch; the pretrained size for transfer)")
    parser.add_argument("--cache-images", action="store_true",
                        help="image folders: decode every file once into a uint8 cache at the working size "
                             "(~/.cache/fewlabel/images), which later runs read without decoding")
    parser.add_argument("--skip-bad", action="store_true",
                        help="image folders: leave unreadable images out (counted in config.yaml) instead of "
                             "stopping at the first")


def _add_budget_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--epochs", type=int, default=None, help="epochs (default: from data size, >= 1500 steps)")
    parser.add_argument("--batch-size", type=int, default=None, help="batch size (default: from data size, <= 256)")
    parser.add_argument("--patience", type=int, default=None, help="early-stopping patience in epochs")
    parser.add_argument("--max-minutes", type=float, default=None, help="wall-clock cap for training")
    parser.add_argument("--workers", type=int, default=None, help="data-loader worker processes")
    parser.add_argument("--accelerator", default="auto", help="cpu, gpu or auto (Lightning)")
    parser.add_argument("--devices", default="1",
                        help="devices per machine (default 1); more than 1, or auto (every visible one), trains with "
                        "DDP, one process per device")
    parser.add_argument("--num-nodes", type=int, default=1,
                        help="machines for multi-node DDP (start the command on each; see README)")
    parser.add_argument("--precision", default=None,
                        help="Lightning precision, e.g. 16-mixed (default: bf16-mixed on GPUs, 32-true on the CPU)")
    parser.add_argument("--out", default=None, help="run folder (default: runs/<descriptive name>)")
    parser.add_argument("--runs-dir", default="runs", help="parent of automatically named run folders")


def _add_optim_flags(parser: argparse.ArgumentParser, lr: float, optimizer: str, weight_decay: float) -> None:
    parser.add_argument("--optimizer", default=optimizer, help=f"timm optimiser name (default {optimizer})")
    parser.add_argument("--lr", type=float, default=lr, help=f"peak learning rate (default {lr})")
    parser.add_argument("--weight-decay", type=float, default=weight_decay, help="weight decay")
    parser.add_argument("--label-smoothing", type=float, default=0.0, help="label smoothing for the loss")


def _budget(args: argparse.Namespace):
    from fewlabel.engine.fit import Budget

    for flag, value in (("--epochs", args.epochs), ("--batch-size", args.batch_size), ("--workers", args.workers)):
        if value is not None and value < (0 if flag == "--workers" else 1):
            raise FewlabelError(f"{flag} {value} is impossible; give a positive number")
    devices = args.devices if args.devices == "auto" else _positive_int(args.devices, "--devices")
    return Budget(epochs=args.epochs, batch_size=args.batch_size, patience=args.patience,
                  max_minutes=args.max_minutes, workers=args.workers, accelerator=args.accelerator,
                  devices=devices, num_nodes=args.num_nodes, precision=args.precision)


def _columns(args: argparse.Namespace) -> dict[str, str]:
    named = {"text": args.text_column, "label": args.label_column, "group": getattr(args, "group_column", None),
             "image": getattr(args, "image_column", None), "path": getattr(args, "audio_column", None),
             "clip_seconds": getattr(args, "clip_seconds", None)}
    return {k: v for k, v in named.items() if v}


def _positive_int(text: str, flag: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise FewlabelError(f"{flag} {text!r} is not a whole number") from None
    if value < 1:
        raise FewlabelError(f"{flag} {value} is impossible; give a positive number")
    return value


def cmd_train(args: argparse.Namespace) -> int:
    from fewlabel.approaches.supervised import SupervisedConfig, train_supervised
    from fewlabel.engine.classification import OptimConfig

    if args.lr <= 0:
        raise FewlabelError(f"--lr {args.lr} is impossible; give a positive learning rate")
    config = SupervisedConfig(
        data=args.data, data_dir=args.data_dir, columns=_columns(args), labels=args.labels, augment=args.augment,
        backbone=args.backbone,
        width=args.width, seed=args.seed, split=args.split, full_validation=args.full_validation,
        image_size=args.image_size, cache_images=args.cache_images, skip_bad=args.skip_bad,
        optim=OptimConfig(optimizer=args.optimizer, lr=args.lr, weight_decay=args.weight_decay,
                          label_smoothing=args.label_smoothing),
        budget=_budget(args), out=args.out, runs_dir=args.runs_dir,
    )
    result = train_supervised(config)
    m = result.metrics
    print(f"test accuracy {m['test_accuracy']:.4f}  macro-F1 {m['macro_f1']:.4f}  "
          f"({m['split']['labelled']} labelled, {m['train_seconds']:.1f} s)  run: {result.run_dir}")
    return 0


def _hide_epoch_lines() -> None:
    """Compare runs many trainings: the console shows one line per job; epoch lines stay in each run's log."""
    for handler in logging.getLogger("fewlabel").handlers:
        if isinstance(handler, logging.StreamHandler) and not isinstance(handler, logging.FileHandler):
            handler.addFilter(lambda record: not record.name.startswith("fewlabel.epochs"))


def cmd_demo(args: argparse.Namespace) -> int:
    """`compare` on the embedded digits with the small budget: every approach, three label budgets, two seeds."""
    from fewlabel.compare import CompareConfig, compare

    print("fewlabel demo: augmentation vs transfer vs self-supervised vs semi-supervised on the embedded digits "
          "(small budget)")
    _hide_epoch_lines()
    config = CompareConfig(data="digits", labels=("0.05", "0.2", "1.0"), seeds=2, budget="small", out=args.out)
    result = compare(config)
    others = f", {result['by_others']} in the other worker process(es)" if result["by_others"] else ""
    print(f"{result['ran'] + result['by_others']} runs done ({result['ran']} in this process{others}; "
          f"{result['skipped']} reused). Report: {result['report_html']} "
          f"(markdown: {result['report_md']})")
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from fewlabel.compare import CompareConfig, compare

    config = CompareConfig(data=args.data, data_dir=args.data_dir,
                           labels=tuple(x.strip() for x in args.labels.split(",") if x.strip()), seeds=args.seeds,
                           approaches=tuple(x.strip() for x in args.approaches.split(",") if x.strip()),
                           budget=args.budget,
                           backbones=tuple(x.strip() for x in (args.backbones or "").split(",") if x.strip()),
                           out=args.out, max_jobs=args.max_jobs, columns=_columns(args), skip_bad=args.skip_bad,
                           retry_failed=args.retry_failed, workers=args.workers,
                           threads_per_job=args.threads_per_job, executor=args.executor,
                           ray_address=args.ray_address, cpus_per_job=args.cpus_per_job,
                           gpus_per_job=args.gpus_per_job)
    _hide_epoch_lines()
    result = compare(config)
    if result["complete"]:
        state = "complete"
    elif result["failed"]:
        state = f"partial: {result['failed']} failed (listed in the report; --retry-failed reruns them)"
    else:
        state = "partial (rerun the same command to continue)"
    others = f", {result['by_others']} by another process" if result["by_others"] else ""
    print(f"{result['ran']} runs done, {result['skipped']} reused{others}, {state}. Report: {result['report_html']}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from fewlabel.compare import report_only

    print(f"report: {report_only(args.folder)}")
    return 0


def cmd_datasets(args: argparse.Namespace) -> int:
    from fewlabel.data.registry import load_dataset, registered_datasets

    rows = []
    # Listing looks only at local copies (Speech Commands alone is a 2.4 GB download); --download fetches.
    offline = os.environ.get("FEWLABEL_OFFLINE")
    if not args.download:
        os.environ["FEWLABEL_OFFLINE"] = "1"
    try:
        for entry in registered_datasets():
            try:
                ds = load_dataset(entry.name, args.data_dir)
                rows.append((entry.name, f"{len(ds)}", f"{ds.num_classes}", ds.source))
            except FewlabelError as exc:
                rows.append((entry.name, "-", "-", f"not found: {exc}"))
    finally:
        if offline is None:
            os.environ.pop("FEWLABEL_OFFLINE", None)
        else:
            os.environ["FEWLABEL_OFFLINE"] = offline
    widths = [max(len(r[i]) for r in [*rows, ("name", "samples", "classes", "")]) for i in range(3)]
    print(f"{'name':<{widths[0]}}  {'samples':>{widths[1]}}  {'classes':>{widths[2]}}  found at")
    for name, size, classes, where in rows:
        print(f"{name:<{widths[0]}}  {size:>{widths[1]}}  {classes:>{widths[2]}}  {where}")
    return 0


def cmd_backbones(args: argparse.Namespace) -> int:
    from fewlabel.models.backbones import registered_backbones

    for name, description in registered_backbones().items():
        print(f"{name:<16} {description}")
    print("any timm model name (e.g. resnet18, efficientnet_b0) also works, trained from scratch")
    return 0


def cmd_pretrain(args: argparse.Namespace) -> int:
    from fewlabel.approaches.selfsupervised import PretrainConfig, load_pretrain_config, pretrain

    if args.resume:
        config = load_pretrain_config(args.resume)
        if args.epochs is not None:
            config = dataclasses.replace(config, epochs=args.epochs)
        result = pretrain(config, resume=args.resume)
    else:
        options = _parse_options(args.option)
        config = PretrainConfig(method=args.method, data=args.data, data_dir=args.data_dir, backbone=args.backbone,
                                width=args.width, seed=args.seed, split=args.split, epochs=args.epochs or 10,
                                batch_size=args.batch_size, views=args.views, local_crops=args.local_crops,
                                method_options=options, image_size=args.image_size, columns=_columns(args),
                                cache_images=args.cache_images, skip_bad=args.skip_bad,
                                budget=_budget(args), out=args.out, runs_dir=args.runs_dir)
        result = pretrain(config)
    m = result.metrics
    knn = f", monitor kNN {m['monitor'][-1]['knn_accuracy']:.4f}" if m["monitor"] else ""
    print(f"pretrained {m['method']} for {m['epochs']} epochs in {m['pretrain_seconds']:.1f} s "
          f"({m['samples_per_second']:.0f} samples/s{knn}); backbone: {result.run_dir}/export")
    if m.get("retrieval"):  # image-text: held-out retrieval and zero-shot
        r = m["retrieval"]
        zero_shot = f"; zero-shot accuracy {m['zero_shot_accuracy']:.4f}" if m.get("zero_shot_accuracy") is not None \
            else ""
        print(f"test retrieval R@1/5/10: image->text {r['image_to_text_R@1']:.3f}/{r['image_to_text_R@5']:.3f}/"
              f"{r['image_to_text_R@10']:.3f}, text->image {r['text_to_image_R@1']:.3f}/{r['text_to_image_R@5']:.3f}/"
              f"{r['text_to_image_R@10']:.3f}{zero_shot}")
    for warning in m["warnings"]:
        print(f"warning: {warning}")
    return 0


def _parse_options(pairs: list[str]) -> dict[str, object]:
    """``--option key=value`` pairs, values parsed as YAML scalars (numbers, booleans, strings)."""
    import yaml

    options: dict[str, object] = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise FewlabelError(f"--option {pair!r}: write it as key=value, e.g. --option temperature=0.2")
        options[key.strip().replace("-", "_")] = yaml.safe_load(value)
    return options


def cmd_evaluate(args: argparse.Namespace) -> int:
    from fewlabel.approaches.selfsupervised import EvaluateConfig, evaluate_backbone

    class_names = tuple(n.strip() for n in (args.class_names or "").split(",") if n.strip())
    config = EvaluateConfig(backbone=args.backbone, protocol=args.protocol, labels=args.labels, data=args.data,
                            data_dir=args.data_dir, seed=args.seed, k=args.k, temperature=args.temperature,
                            probe_c=args.probe_c, budget=_budget(args), out=args.out, runs_dir=args.runs_dir,
                            columns=_columns(args), prompts=tuple(args.prompts or ()), class_names=class_names,
                            skip_bad=getattr(args, "skip_bad", False))
    result = evaluate_backbone(config)
    chosen = f", C={result['probe_c']:g}" if "probe_c" in result else ""
    print(f"{result['protocol']} test accuracy {result['test_accuracy']:.4f} "
          f"({result['labelled']} labelled, {result['test']} test{chosen}, {result['seconds']:.1f} s)")
    if result.get("run_dir"):
        print(f"model: {result['run_dir']}")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    return 0


def cmd_finetune(args: argparse.Namespace) -> int:
    from fewlabel.approaches.transfer import STRATEGY_OPTIM, TRANSFER_BUDGET, TransferConfig, finetune

    budget = _budget(args)
    budget = dataclasses.replace(budget, target_steps=TRANSFER_BUDGET.target_steps,
                                 min_epochs=TRANSFER_BUDGET.min_epochs, max_epochs=TRANSFER_BUDGET.max_epochs,
                                 max_steps=TRANSFER_BUDGET.max_steps, max_batch_size=TRANSFER_BUDGET.max_batch_size)
    trainable = tuple(t for t in (args.trainable or "").split(",") if t.strip())
    # The strategy's recipe, with whichever of its settings the user overrode.
    overrides = {name: value for name, value in (("optimizer", args.optimizer), ("lr", args.lr),
                                                 ("weight_decay", args.weight_decay),
                                                 ("warmup_fraction", args.warmup)) if value is not None}
    if args.lr is not None and args.lr <= 0:
        raise FewlabelError(f"--lr {args.lr} is impossible; give a positive learning rate")
    if args.warmup is not None and not 0.0 <= args.warmup < 1.0:
        raise FewlabelError(f"--warmup {args.warmup} is impossible; give a share of the steps in [0, 1)")
    optim = dataclasses.replace(STRATEGY_OPTIM[args.strategy], **overrides) if overrides else None
    config = TransferConfig(backbone=args.backbone, strategy=args.strategy, data=args.data, data_dir=args.data_dir,
                            columns=_columns(args),
                            labels=args.labels, seed=args.seed, split=args.split,
                            full_validation=args.full_validation, image_size=args.image_size,
                            cache_images=args.cache_images, skip_bad=args.skip_bad, trainable=trainable,
                            layer_decay=args.layer_decay, l2sp=args.l2sp, head=args.head,
                            lp_ft=not args.no_lp_ft, lp_head_scale=not args.no_lp_head_scale,
                            random_head_trial=not args.no_random_head_trial, own_pooling=not args.no_own_pooling,
                            bn=args.bn,
                            lr_sweep=args.lr_sweep if args.lr_sweep is not None else (1 if args.lr is not None else 3),
                            text_pooling=args.text_pooling, audio_layer=args.audio_layer, augment=args.augment,
                            optim=optim, budget=budget,
                            out=args.out, runs_dir=args.runs_dir)
    result = finetune(config)
    m = result.metrics
    head = f", logistic regression C={m['probe_c']:g}" if "probe_c" in m else ""
    pooling = f", {m['text_pooling']} pooling" if "text_pooling" in m else ""
    if "lr_sweep" in m:
        pooling += f", lr {m['lr_sweep']['chosen_lr']:g} chosen on validation"
    if m.get("kept") == "linear probe":
        pooling += ", kept the linear probe: fine-tuning did not beat it on validation"
    print(f"test accuracy {m['test_accuracy']:.4f}  macro-F1 {m['macro_f1']:.4f}  ({args.strategy}{head}{pooling}, "
          f"{m['split']['labelled']} labelled, {m['train_seconds']:.1f} s)  run: {result.run_dir}")
    return 0


def cmd_semisup(args: argparse.Namespace) -> int:
    from fewlabel.approaches.semisupervised import (
        TRAINED_METHODS,
        SemiSupervisedConfig,
        check_method_options,
        semisupervised,
    )

    # The method-specific options default to None here, so that one given to a method that ignores it is an error.
    fields = {"--neighbours": "neighbours", "--alpha": "alpha", "--rounds": "max_rounds", "--ratio": "ratio",
              "--unlabelled-weight": "unlabelled_weight", "--ema": "ema", "--width": "width", "--lr": "lr",
              "--ramp": "ramp"}
    given = {flag: getattr(args, field if field != "max_rounds" else "rounds") for flag, field in fields.items()}
    given = {flag: value for flag, value in given.items() if value is not None}
    check_method_options(args.method, given, args.backbone)
    config = SemiSupervisedConfig(method=args.method, backbone=args.backbone, data=args.data, data_dir=args.data_dir,
                                  columns=_columns(args), labels=args.labels, seed=args.seed, split=args.split,
                                  image_size=args.image_size, skip_bad=args.skip_bad, threshold=args.threshold,
                                  max_pool=args.max_pool,
                                  **{fields[flag]: value for flag, value in given.items()},
                                  budget=_budget(args), out=args.out, runs_dir=args.runs_dir)
    result = semisupervised(config)
    m = result.metrics
    pseudo = "n/a" if m["pseudo_label_accuracy"] is None else f"{m['pseudo_label_accuracy']:.3f}"
    if m["method"] in TRAINED_METHODS:
        last = m["epochs"][-1] if m["epochs"] else {}
        thresholds = (f", class thresholds {last['threshold_min']:.2f}-{last['threshold_max']:.2f}"
                      if m["method"] == "flexmatch" and last else "")
        print(f"test accuracy {m['test_accuracy']:.4f}  macro-F1 {m['macro_f1']:.4f}  ({m['method']}; last epoch: "
              f"mask rate {m['mask_rate']}, pseudo-label accuracy {pseudo}{thresholds})  run: {result.run_dir}")
        return 0
    print(f"test accuracy {m['test_accuracy']:.4f}  macro-F1 {m['macro_f1']:.4f}  (labelled only "
          f"{m['labelled_only_test_accuracy']:.4f}; {m['pseudo_labelled']}/{m['pool']} pool samples pseudo-labelled, "
          f"accuracy {pseudo})  run: {result.run_dir}")
    return 0


def cmd_rank_backbones(args: argparse.Namespace) -> int:
    from fewlabel.approaches.transfer import rank_backbones

    rows = rank_backbones([b.strip() for b in args.backbones.split(",") if b.strip()], args.data, args.labels,
                          args.data_dir, args.seed, args.image_size, skip_bad=args.skip_bad)
    width = max(len("backbone"), *(len(r["backbone"]) for r in rows))
    print(f"{'backbone':<{width}}  {'LogME':>8}  {'kNN acc':>8}  {'dim':>5}  {'input':>10}  {'s':>6}")
    for r in rows:
        # what shapes the features besides the weights: the input side (images), the pooling (text)
        inputs = str(r.get("image_size", r.get("text_pooling", "")))
        print(f"{r['backbone']:<{width}}  {r['logme']:>8.4f}  {r['knn_accuracy']:>8.4f}  {r['embed_dim']:>5}  "
              f"{inputs:>10}  {r['seconds']:>6.1f}")
    print(f"({rows[0]['labelled']} labelled examples; higher LogME = features fit the labels better)")
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    """Predict new data with a run's model (CSV + metrics when labelled), or export it to ONNX."""
    if args.format == "onnx":
        from fewlabel.export_onnx import export_onnx

        exported = export_onnx(args.model, args.data, args.out, text_column=args.text_column,
                               label_column=args.label_column, image_column=args.image_column,
                               data_dir=args.data_dir)
        print(f"ONNX model: {exported.path} ({exported.exporter} exporter, opset {exported.opset}); onnxruntime "
              f"matches PyTorch on {exported.checked_inputs} inputs (max |logit difference| "
              f"{exported.max_abs_diff:.2g}); inputs and classes: {exported.sidecar}")
        return 0
    from fewlabel.predict import describe, predict

    if not args.data:
        raise FewlabelError("--data is required: image files, a folder, a table or a dataset name to predict")
    result = predict(args.model, args.data, args.out, text_column=args.text_column, label_column=args.label_column,
                     image_column=args.image_column, data_dir=args.data_dir, batch_size=args.batch_size,
                     workers=args.workers, device=args.device, skip_bad=args.skip_bad,
                     progress=False if args.quiet else None)
    for line in describe(result):
        print(line)
    return 0


def build_parser() -> argparse.ArgumentParser:
    from fewlabel import __version__
    from fewlabel.names import (
        APPROACHES,
        AUDIO_METHODS,
        AUDIO_POLICIES,
        BUDGET_NAMES,
        IMAGE_METHODS,
        IMAGE_POLICIES,
        IMAGE_TEXT_METHODS,
        STRATEGIES,
        TEXT_METHODS,
        TEXT_POLICIES,
    )

    POLICIES = IMAGE_POLICIES

    parser = argparse.ArgumentParser(prog="fewlabel", description="Learn well when labels are scarce.")
    parser.add_argument("--version", action="version", version=f"fewlabel {__version__}")
    parser.add_argument("-q", "--quiet", action="store_true", help="only warnings and the final result")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    demo = sub.add_parser("demo", help="compare every approach on the embedded digits (~2 min on 2 cores)")
    demo.add_argument("--out", default="fewlabel-demo", help="folder for runs, results and the report")
    demo.set_defaults(func=cmd_demo)

    cmp_ = sub.add_parser("compare", help="all approaches x label fractions x seeds, with a report")
    cmp_.add_argument("--data", default="digits", help="registered dataset name or a path")
    cmp_.add_argument("--data-dir", default=None, help="where named datasets live (default: $FEWLABEL_DATA)")
    cmp_.add_argument("--labels", default="0.01,0.1,1.0", help="comma-separated label budgets")
    cmp_.add_argument("--seeds", type=int, default=3, help="seeds 0..N-1; each gives its own split and runs")
    cmp_.add_argument("--approaches", default=",".join(APPROACHES), help="comma-separated subset of " +
                      ", ".join(APPROACHES))
    cmp_.add_argument("--budget", default="small", choices=list(BUDGET_NAMES),
                      help="per-run budget preset (steps, epochs, variants, time cap), recorded in the report")
    cmp_.add_argument("--backbones", default=None,
                      help="pretrained backbones for transfer (default: efficientnet_lite0; minilm for text)")
    cmp_.add_argument("--out", default="compare", help="folder; rerunning resumes and reuses finished runs")
    cmp_.add_argument("--max-jobs", type=int, default=None, help="stop after this many new runs")
    cmp_.add_argument("--workers", type=int, default=None,
                      help="jobs at once on this machine, each worker process on its share of the CPU threads; "
                      "they share the folder through job leases (default: the cores / --threads-per-job, as "
                      "memory allows; 1 on a GPU; $FEWLABEL_COMPARE_WORKERS when set)")
    cmp_.add_argument("--threads-per-job", type=int, default=None,
                      help="local executor: torch threads of each job (default: the cores / workers, so 1 when "
                      "--workers is automatic)")
    cmp_.add_argument("--executor", default="local", choices=["local", "ray"],
                      help="local: this machine (--workers processes); ray: one Ray task per job, on a local Ray "
                      "instance or the cluster at --ray-address (pip install -e \".[distributed]\")")
    cmp_.add_argument("--ray-address", default=None,
                      help="with --executor ray: the head node's host:port (as `ray start --head` prints) to run the "
                      "jobs on that cluster; --out must then be on a file system every node mounts at the same path "
                      "(default: start a local Ray instance)")
    cmp_.add_argument("--cpus-per-job", type=float, default=1.0,
                      help="with --executor ray: CPUs each job asks Ray for, and its torch threads (default 1)")
    cmp_.add_argument("--gpus-per-job", type=float, default=None,
                      help="with --executor ray: GPUs each job asks for (default: 1 when the cluster has GPUs, else 0)")
    cmp_.add_argument("--retry-failed", action="store_true",
                      help="rerun the jobs that failed in an earlier run (by default they are listed, not rerun)")
    cmp_.add_argument("--text-column", default=None, help="text tables: column holding the text")
    cmp_.add_argument("--label-column", default=None, help="tables: column holding the label")
    cmp_.add_argument("--group-column", default=None,
                      help="text tables: column whose groups never straddle train and test (e.g. movie)")
    _add_image_column(cmp_)
    cmp_.add_argument("--audio-column", default=None,
                      help="audio manifests (CSV/TSV/JSONL): column holding the audio file paths")
    cmp_.add_argument("--clip-seconds", default=None,
                      help="audio: length every clip is centre-cropped or zero-padded to, in seconds (default 1)")
    cmp_.add_argument("--skip-bad", action="store_true",
                      help="image folders and audio: leave unreadable files out instead of stopping at the first")
    cmp_.set_defaults(func=cmd_compare)

    rep = sub.add_parser("report", help="rewrite a compare folder's report from stored results (no training)")
    rep.add_argument("folder")
    rep.set_defaults(func=cmd_report)

    datasets = sub.add_parser("datasets", help="list registered datasets, where each was found, sizes")
    datasets.add_argument("--data-dir", default=None, help="folder holding named datasets")
    datasets.add_argument("--download", action="store_true",
                          help="download the registered datasets that have no local copy (default: list local ones)")
    datasets.set_defaults(func=cmd_datasets)

    backbones = sub.add_parser("backbones", help="list registered backbones")
    backbones.set_defaults(func=cmd_backbones)

    train = sub.add_parser("train", help="supervised training from scratch with an augmentation policy")
    _add_data_flags(train)
    train.add_argument("--augment", default=None, choices=sorted(set(POLICIES) | set(TEXT_POLICIES) |
                                                                 set(AUDIO_POLICIES)),
                       help="augmentation policy: images " + ", ".join(POLICIES) + "; text " +
                       ", ".join(TEXT_POLICIES) + "; audio " + ", ".join(AUDIO_POLICIES) +
                       " (default: standard for images and audio, none for text)")
    train.add_argument("--backbone", default=None,
                       help="backbone name (see `fewlabel backbones`; default resnet_small); text: bilstm (default) "
                       "or bigru")
    train.add_argument("--width", type=int, default=None, help="width of small-image backbones")
    train.add_argument("--image-size", type=int, default=None,
                       help="image folders: side images are decoded and trained at (default: the files' shorter "
                            "side, at most 96 px)")
    _add_optim_flags(train, lr=0.05, optimizer="sgd", weight_decay=5e-4)
    _add_budget_flags(train)
    train.set_defaults(func=cmd_train)

    pre = sub.add_parser("pretrain", help="self-supervised pretraining on the unlabelled pool, then export")
    pre.add_argument("--method", default="simclr",
                     choices=[*IMAGE_METHODS, *TEXT_METHODS, *AUDIO_METHODS, *IMAGE_TEXT_METHODS],
                     help="self-supervised method: images simclr/moco/byol/dino, text mlm/clm, audio wav2vec2, "
                     "image-text pairs clip (contrastive image-text; LiT by default: the image tower locked)")
    pre.add_argument("--data", default="digits", help="registered dataset name or a path")
    pre.add_argument("--data-dir", default=None, help="folder holding named datasets")
    pre.add_argument("--seed", type=int, default=0)
    pre.add_argument("--split", default=None, help="reuse the split of an earlier run")
    pre.add_argument("--backbone", default=None,
                     help="images: a backbone name (default resnet_small); text: small (default: a new model) or "
                     "minilm / a HF folder (continue its pretraining); audio (wav2vec2): the preset tiny (default, "
                     "CPU-sized) or base (the paper's BASE); image-text (clip): the image tower (default "
                     "efficientnet_lite0, locked; --option text_backbone names the text tower, default minilm)")
    pre.add_argument("--text-column", default=None, help="text tables: column holding the text")
    pre.add_argument("--label-column", default=None, help="text tables: column holding the label (monitor only)")
    pre.add_argument("--group-column", default=None,
                     help="text tables: column whose groups never straddle train and test (e.g. movie)")
    _add_image_column(pre)
    pre.add_argument("--width", type=int, default=None)
    pre.add_argument("--views", default="auto", choices=["auto", "batched", "per-sample"],
                     help="batched tensor views on the device (auto: fast, no blur) or per-sample torchvision views "
                          "(the full recipe with blur and solarisation, in loader workers)")
    pre.add_argument("--local-crops", type=int, default=6, help="multi-crop (dino): local crops per image")
    pre.add_argument("--option", action="append", metavar="KEY=VALUE",
                     help="method hyper-parameter, e.g. --option temperature=0.2 (repeatable); clip: lock_image, "
                     "lock_text, loss=clip|siglip, embed_dim, image_backbone, text_backbone, image_size, max_length, "
                     "projection_hidden_dim, tower_lr_scale, init_temperature, prompts")
    pre.add_argument("--resume", default=None, help="continue a pretraining run folder from its last checkpoint")
    _add_image_flags(pre, image_size=True)
    _add_budget_flags(pre)
    pre.set_defaults(func=cmd_pretrain)

    ft = sub.add_parser("finetune", help="transfer learning from a pretrained backbone with one of three strategies")
    _add_data_flags(ft)
    ft.add_argument("--backbone", default=None,
                    help="images: efficientnet_lite0 (default; offline ImageNet weights), a pretrain run folder, "
                    "NAME@weights.pth, or a timm name (hub); text: minilm (default), a Hugging Face folder or a "
                    "text pretrain run folder")
    ft.add_argument("--strategy", default="feature-extract", choices=STRATEGIES)
    ft.add_argument("--trainable", default=None,
                    help="partial: stages that train, e.g. layer4, blocks.5,blocks.6 or last:2 (default: the "
                    "backbone's last 4 stages, the last 2 layers of a text encoder; recorded in config.yaml)")
    ft.add_argument("--layer-decay", type=float, default=0.75, help="finetune: layer-wise learning-rate decay")
    ft.add_argument("--l2sp", type=float, default=0.0, help="finetune/partial: L2-SP strength toward pretrained")
    ft.add_argument("--head", default="logreg", choices=["logreg", "linear"],
                    help="feature-extract: logistic regression with C chosen by cross-validation (default), or a "
                    "linear head trained with AdamW on the best validation epoch")
    ft.add_argument("--no-lp-ft", action="store_true",
                    help="finetune/partial: start from a random head instead of LP-FT (the logistic-regression probe "
                    "first, then fine-tuning from it; the run keeps the probe unless fine-tuning beats it on "
                    "validation)")
    ft.add_argument("--no-lp-head-scale", action="store_true",
                    help="finetune/partial with LP-FT: fine-tune from the probe's head as fitted, instead of scaled "
                    "down by the temperature that minimises the loss of the first augmented training batches")
    ft.add_argument("--no-random-head-trial", action="store_true",
                    help="finetune/partial with LP-FT and a sweep: leave out the sweep's extra trial that fine-tunes "
                    "from a random head at the default rate (the start is then always the probe)")
    ft.add_argument("--no-own-pooling", action="store_true",
                    help="finetune/partial with LP-FT on a text encoder pooling its last four layers (mean-last4): "
                    "fine-tune the head on all four layers' means instead of on the last layer's mean alone (the "
                    "pooling the encoder was trained with; the fallback probe uses all four either way)")
    ft.add_argument("--bn", default="auto", choices=["auto", "train", "frozen", "frozen-affine"],
                    help="finetune/partial: BatchNorm layers of the backbone: frozen keeps their running statistics "
                    "(eval mode), frozen-affine their weights too, train updates them; auto (default): frozen "
                    "when a batch holds fewer than 16 examples")
    ft.add_argument("--lr-sweep", type=int, default=None,
                    help="finetune/partial: learning rates tried on the first 12%% of the run (lr/3, lr, 3 lr for "
                    "3); the best on validation continues (default 3, or 1 = no sweep when --lr is given)")
    ft.add_argument("--text-pooling", default="auto", choices=["auto", "mean", "cls", "pooler", "mean-last4"],
                    help="text: one embedding per text from the token states: mask-aware mean, [CLS], BERT's pooler, "
                    "or the means of the last four layers concatenated; auto (default): mean-last4 on models "
                    "with 4+ layers for feature-extract and for LP-FT (its probe is then feature-extract's), mean "
                    "otherwise")
    ft.add_argument("--image-size", type=int, default=None, help="input resolution (default: pretrained, <= 4x data)")
    ft.add_argument("--audio-layer", default="last",
                    help="audio encoders: the hidden layer pooled per clip: last, an index, or weighted (a learned "
                    "softmax-weighted sum of all layers)")
    ft.add_argument("--augment", default=None, choices=sorted(set(POLICIES) | set(TEXT_POLICIES) |
                                                              set(AUDIO_POLICIES)),
                    help="augmentation for finetune/partial (default: standard for images, none for text)")
    ft.add_argument("--optimizer", default=None, help="timm optimiser name (default per strategy: adamw)")
    ft.add_argument("--lr", type=float, default=None, help="peak learning rate (default per strategy)")
    ft.add_argument("--weight-decay", type=float, default=None, help="weight decay (default per strategy)")
    ft.add_argument("--warmup", type=float, default=None, help="warm-up share of the steps (default per strategy)")
    _add_budget_flags(ft)
    ft.set_defaults(func=cmd_finetune)

    semi = sub.add_parser("semisup", help="semi-supervised: labels and the unlabelled pool together (network: "
                          "fixmatch, flexmatch, pseudolabel; frozen features: self-training, label spreading)")
    _add_data_flags(semi)
    semi.add_argument("--method", default="self-training",
                      help="self-training (default) or label-spreading fit a head on frozen features; fixmatch, "
                           "flexmatch (class-wise thresholds) and pseudolabel (one view, ramped weight) train the "
                           "network")
    semi.add_argument("--backbone", default=None,
                      help="frozen feature source, as for finetune (default: efficientnet_lite0 / minilm); for the "
                           "trained methods a pretrained network to fine-tune (default: from scratch)")
    semi.add_argument("--image-size", type=int, default=None, help="input resolution (default: pretrained)")
    semi.add_argument("--threshold", type=float, default=0.95,
                      help="confidence a pool sample needs to be pseudo-labelled, in (0, 1] (default 0.95; "
                           "flexmatch: the best-learnt class's threshold)")
    semi.add_argument("--neighbours", type=int, default=None, help="label spreading: neighbours in the kNN graph (10)")
    semi.add_argument("--alpha", type=float, default=None, help="label spreading: share taken from neighbours (0.2)")
    semi.add_argument("--rounds", type=int, default=None, help="self-training: most pseudo-labelling rounds (10)")
    semi.add_argument("--ratio", type=int, default=None,
                      help="fixmatch/flexmatch/pseudolabel: unlabelled samples per labelled one (default 7)")
    semi.add_argument("--unlabelled-weight", type=float, default=None,
                      help="fixmatch/flexmatch/pseudolabel: weight of the unlabelled loss (default 1)")
    semi.add_argument("--ema", type=float, default=None,
                      help="fixmatch/flexmatch/pseudolabel: EMA decay of the evaluated weights (default 0.999)")
    semi.add_argument("--width", type=int, default=None,
                      help="fixmatch/flexmatch/pseudolabel from scratch: network width")
    semi.add_argument("--lr", type=float, default=None,
                      help="fixmatch/flexmatch/pseudolabel: peak learning rate (default: images SGD-Nesterov 0.03, "
                           "text/audio the modality's AdamW; with --backbone AdamW 3e-4)")
    semi.add_argument("--max-pool", type=int, default=None,
                      help="use at most this many unlabelled pool samples, a seeded random subset (default: all; "
                           "caps feature extraction and the kNN graph on large pools)")
    semi.add_argument("--ramp", type=float, default=None,
                      help="pseudolabel: share of the steps over which the unlabelled weight rises linearly from 0 "
                           "(default 0.4)")
    _add_budget_flags(semi)
    semi.set_defaults(func=cmd_semisup)

    rank = sub.add_parser("rank-backbones", help="score candidate backbones (LogME, kNN) before fine-tuning")
    rank.add_argument("--backbones", required=True, help="comma-separated backbones (as for finetune)")
    rank.add_argument("--data", default="digits")
    rank.add_argument("--data-dir", default=None, help="where named datasets live (default: $FEWLABEL_DATA)")
    rank.add_argument("--labels", default="0.1")
    rank.add_argument("--seed", type=int, default=0)
    rank.add_argument("--image-size", type=int, default=None)
    rank.add_argument("--skip-bad", action="store_true", help="image folders: leave unreadable images out")
    rank.set_defaults(func=cmd_rank_backbones)

    ev = sub.add_parser("evaluate", help="kNN / linear probe / fine-tune of an exported backbone")
    ev.add_argument("--backbone", required=True,
                    help="a pretraining run folder (or its export/); text: also any Hugging Face model folder")
    ev.add_argument("--protocol", default="knn", choices=["knn", "linear", "finetune", "zero-shot"],
                    help="knn, linear (probe), finetune, or zero-shot (CLIP runs: a classifier from the class names "
                    "alone, no labels; the other protocols use a CLIP run's image tower)")
    ev.add_argument("--prompts", action="append", metavar="TEMPLATE",
                    help="zero-shot: prompt template(s) with {} for the class name, e.g. \"a drawing of {}\" "
                    "(repeatable or |-separated; default: a small set of picture templates)")
    ev.add_argument("--class-names", default=None,
                    help="zero-shot: comma-separated class names in the dataset's class order (default: its own)")
    ev.add_argument("--image-column", default=None,
                    help="image-text tables: column holding image paths (makes the table image-text pairs)")
    ev.add_argument("--text-column", default=None, help="tables: column holding the text (captions)")
    ev.add_argument("--label-column", default=None, help="tables: column holding the label")
    ev.add_argument("--labels", default="1.0", help="labelled share: 0.01, 0.1, 1.0 or N/class")
    ev.add_argument("--data", default=None, help="dataset (default: the one the backbone was pretrained on)")
    ev.add_argument("--data-dir", default=None, help="where named datasets live (default: $FEWLABEL_DATA)")
    ev.add_argument("--seed", type=int, default=None, help="split seed (default: the pretraining run's split)")
    ev.add_argument("--k", type=int, default=200, help="neighbours for kNN")
    ev.add_argument("--temperature", type=float, default=0.1, help="kNN temperature")
    ev.add_argument("--probe-c", type=float, default=None,
                    help="linear: inverse L2 strength (default: chosen from 0.01/0.1/1/10 by cross-validation "
                         "on the labelled set)")
    ev.add_argument("--json", default=None, help="also write the result to this JSON file")
    _add_budget_flags(ev)
    ev.set_defaults(func=cmd_evaluate)

    pr = sub.add_parser("predict", help="predict new data with a run's model (CSV, metrics when labelled), or "
                        "export the model to ONNX")
    pr.add_argument("--model", required=True, help="run folder holding model.safetensors + model.json "
                    "(train, finetune, evaluate --protocol finetune)")
    pr.add_argument("--data", nargs="+", default=None,
                    help="image files, a folder (<class>/ sub-folders give labels), a table (images: a column of "
                    "file paths; text: a text column), a .txt file (one text per line), .npz or a dataset name")
    pr.add_argument("--out", default=None,
                    help="output folder (default: <run>/predictions/<data name>, or <run>/onnx; a new -2, -3 ... "
                    "folder when it already holds results; an explicit --out is never overwritten)")
    pr.add_argument("--format", default="csv", choices=["csv", "onnx"],
                    help="csv: predictions.csv + summary.json (+ confusion matrix with labels); onnx: export the "
                    "classifier to ONNX, checked with onnxruntime on a few inputs of --data (default: the run's "
                    "own test samples)")
    pr.add_argument("--text-column", default=None, help="text tables: column holding the text")
    pr.add_argument("--label-column", default=None, help="tables: column holding the label (optional)")
    pr.add_argument("--image-column", default=None,
                    help="image tables: column holding file paths, relative to the table (default: path, file, ...)")
    pr.add_argument("--data-dir", default=None, help="where named datasets live (default: $FEWLABEL_DATA)")
    pr.add_argument("--batch-size", type=int, default=None, help="inputs per batch (default 64 images, 128 texts)")
    pr.add_argument("--workers", type=int, default=None, help="image-decoding worker processes (default: auto)")
    pr.add_argument("--device", default="auto", help="auto (a GPU when there is one), cpu or cuda")
    pr.add_argument("--skip-bad", action="store_true",
                    help="leave unreadable images out (listed in summary.json) instead of stopping at the first")
    pr.set_defaults(func=cmd_predict)
    return parser


def _configure_logging(quiet: bool, quiet_lightning: bool = True) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger = logging.getLogger("fewlabel")
    handler.setLevel(logging.WARNING if quiet else logging.INFO)
    logger.handlers[:] = [handler]
    logger.setLevel(logging.INFO)  # run folders always get the full log; -q only quiets the console
    logger.propagate = False
    if not quiet_lightning:
        return
    from fewlabel.engine.trainer import quiet_lightning

    quiet_lightning()


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    _configure_logging(args.quiet, quiet_lightning=args.command != "backbones")
    from fewlabel.engine.run import is_rank_zero

    with contextlib.ExitStack() as stack:
        if not is_rank_zero():  # the other processes of a multi-device run: rank 0 prints results and errors once
            stack.enter_context(contextlib.redirect_stdout(stack.enter_context(open(os.devnull, "w"))))
        return _run(args)


def _run(args: argparse.Namespace) -> int:
    from fewlabel.engine.run import is_rank_zero

    try:
        return args.func(args)
    except FewlabelError as exc:
        if is_rank_zero():
            print(f"fewlabel: error: {one_line(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:
        # One line, from one process: the other ranks of a multi-device run are interrupted too.
        run = sys.modules.get("fewlabel.engine.run")
        if run is None or run.is_rank_zero():
            print(f"fewlabel: interrupted{f'; {exc}' if str(exc) else ''}", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
