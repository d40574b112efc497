"""Self-supervised pretraining of a text model on the pool's text: masked LM (BERT) or next token (GPT).

The export (``<run>/export``) is a Hugging Face model folder with its tokenizer, so ``fewlabel finetune
--backbone <run>/export`` and ``AutoModel.from_pretrained`` outside fewlabel both load it.
"""

from __future__ import annotations

import logging
import time
import warnings
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING

import lightning as L

from fewlabel.data.dataset import Dataset
from fewlabel.data.splits import LabelSplit
from fewlabel.engine.classification import OptimConfig
from fewlabel.engine.data import make_loader
from fewlabel.engine.run import LOGGER_NAME, RunFolder, RunResult, atomic_folder, start_or_resume
from fewlabel.engine.trainer import build_trainer
from fewlabel.errors import FewlabelError

if TYPE_CHECKING:
    from fewlabel.approaches.selfsupervised import PretrainConfig, ResumePoint

log = logging.getLogger(LOGGER_NAME)


def pretrain_text(dataset: Dataset, split: LabelSplit, config: PretrainConfig,
                  resume: ResumePoint | str | None = None) -> RunResult:
    """Masked-LM (``mlm``, 80/10/10 dynamic masking) or next-token (``clm``) pretraining on the pool's text.

    ``config.backbone`` picks the model: ``small`` (default for text) builds a small BERT (mlm) or GPT-2 (clm)
    from a config with a WordPiece tokenizer trained on the pool's text; an existing model folder or ``minilm``
    continues pretraining that model on the user's text (domain-adaptive pretraining, mlm only). The export
    folder is a Hugging Face model + tokenizer that ``fewlabel finetune --backbone <run>/export`` accepts.

    ``resume`` (a run folder, or :func:`resume_point`'s answer) continues that run in its own folder from its last
    checkpoint: model, optimiser, schedule and epoch count come from the checkpoint, the tokenizer from the run
    (``tokenizer/``), so the vocabulary is the one the checkpoint was trained with.
    """
    from transformers import AutoModelForMaskedLM, AutoTokenizer

    from fewlabel.approaches.selfsupervised import resume_point
    from fewlabel.engine.language_modeling import LanguageModelingModule
    from fewlabel.methods.text_pretraining import (
        CausalLMCollator,
        MaskedLMCollator,
        build_small_decoder,
        build_small_encoder,
    )
    from fewlabel.modalities import get_modality
    from fewlabel.models.text_encoder import load_text_backbone, position_limit
    from fewlabel.models.tokenizers import train_wordpiece_tokenizer

    get_modality("text").check(dataset, f"--method {config.method}")
    point = resume_point(resume, config) if isinstance(resume, str | Path) else resume
    texts = [dataset.samples[i] for i in split.pool]  # the pool's text; its labels are never read
    L.seed_everything(config.seed, workers=True, verbose=False)
    options = dict(config.method_options)
    source = get_modality("text").default_backbone("pretrain", config.backbone)
    max_length = int(options.pop("max_length", 128))
    if source == "small":
        vocab_size = int(options.pop("vocab_size", 8000))
        tokenizer = _run_tokenizer(point.run) if point else train_wordpiece_tokenizer(texts, vocab_size=vocab_size)
        size = {k: int(options.pop(k)) for k in ("hidden_size", "num_layers", "num_heads") if k in options}
        builder = build_small_encoder if config.method == "mlm" else build_small_decoder
        model = builder(len(tokenizer), max_length=max(max_length, 64), **size)
    else:
        if config.method != "mlm":
            raise FewlabelError("continued pretraining of an existing model is supported for --method mlm")
        encoder, _ = load_text_backbone(source)
        folder = encoder.input_spec.tokenizer
        tokenizer = _run_tokenizer(point.run, default=folder) if point else AutoTokenizer.from_pretrained(folder)
        model = AutoModelForMaskedLM.from_pretrained(folder)
        max_length = min(max_length, position_limit(model.config) or max_length)
    if options:
        raise FewlabelError(f"unknown option(s) {', '.join(options)} for text pretraining; valid: max_length, "
                            "vocab_size, hidden_size, num_layers, num_heads")
    # The model's initial weights depend on the seed only; what is drawn after (shuffles, dropout, masks) comes
    # from the seed, or on resume from a seed derived from it and the finished epochs.
    seed = point.seed(config.seed) if point else config.seed
    if point:
        L.seed_everything(seed, workers=True, verbose=False)
    collate = (MaskedLMCollator(tokenizer, max_length=max_length, seed=seed) if config.method == "mlm"
               else CausalLMCollator(tokenizer, max_length=max_length))
    optim = config.optim or OptimConfig(optimizer="adamw", lr=5e-4 if source == "small" else 5e-5,
                                        weight_decay=0.01, warmup_fraction=0.06)
    name = f"pretrain-{config.method}-{dataset.name}-{Path(source).name}-s{config.seed}"
    run, handler = start_or_resume(point, config.out, name, config.runs_dir, split)
    try:
        if point:
            if run.primary:
                _keep_epoch_log(run, point.epochs_done)
        else:
            if run.primary:  # what a resumed run must tokenize with
                tokenizer.save_pretrained(str(run.path / "tokenizer"))
        run.write_config({"command": "pretrain", **asdict(config), "optim": asdict(optim), "source": source,
                          "dataset": dataset.summary(), "texts": len(texts)})
        batch_size = config.batch_size or 32
        loader = make_loader(texts, batch_size, shuffle=True, workers=0, drop_last=True, collate_fn=collate)
        module = LanguageModelingModule(model.train(), optim)  # from_pretrained returns eval mode
        trainer = build_trainer(run, max_epochs=config.epochs, monitor=None, accelerator=config.budget.accelerator,
                                devices=config.budget.devices, num_nodes=config.budget.num_nodes,
                                precision=config.budget.precision, max_minutes=config.budget.max_minutes,
                                progress=config.budget.progress)
        log.info("%s pretraining of %s on %d texts, batch %d, %d epochs", config.method, source, len(texts),
                 batch_size, config.epochs)
        started = time.perf_counter()
        with warnings.catch_warnings():
            if point:  # the run's own folders hold files, and may have been moved since the checkpoint
                warnings.filterwarnings("ignore", ".*(Experiment logs|Checkpoint) directory .* exists and is not empty")
                warnings.filterwarnings("ignore", ".*The dirpath has changed from")
            trainer.fit(module, loader, ckpt_path=str(point.checkpoint) if point else None)
        seconds = time.perf_counter() - started
        metrics = {"method": config.method, "pretrain_seconds": round(seconds, 3),
                   "samples_per_second": round(module.samples_seen / seconds, 1) if seconds > 0 else None,
                   "epochs": trainer.current_epoch, "batch_size": batch_size, "pool_size": len(texts),
                   "final_loss": float(trainer.callback_metrics.get("lm_loss_epoch", float("nan"))),
                   "monitor": [], "warnings": []}
        if point:
            metrics["resumed_after_epochs"] = point.epochs_done
        if trainer.is_global_zero:
            # The backbone downstream commands need is the encoder/decoder body; the LM head stays in the
            # checkpoints, so loading the export with AutoModel reports no unused or missing weights. Written
            # whole or not at all: a resumed run replaces its earlier export only once the new one is complete.
            with atomic_folder(run.path / "export") as export:
                model.base_model.save_pretrained(export)
                tokenizer.save_pretrained(export)
            run.write_metrics(metrics)
        log.info("text pretraining done in %.1f s; model exported to %s", seconds, run.path / "export")
    finally:
        run.detach_log(handler)
    return RunResult(str(run.path), metrics)


def _keep_epoch_log(run: RunFolder, epochs_done: int) -> None:
    """Lightning's CSV logger deletes ``logs/csv/metrics.csv`` when it starts: on resume, keep the rows of the
    epochs already trained as ``logs/csv/metrics-until-epoch-<n>.csv``."""
    current = run.logs / "csv" / "metrics.csv"
    if current.is_file():
        current.replace(current.with_name(f"metrics-until-epoch-{epochs_done}.csv"))


def _run_tokenizer(run: RunFolder, default: str | Path | None = None):
    """The tokenizer a text pretraining run started with: its ``tokenizer/``, else its ``export/``, else the
    model folder ``default`` it continues (a run trained from scratch has no other source of its vocabulary)."""
    from transformers import AutoTokenizer

    for folder in (run.path / "tokenizer", run.path / "export"):
        if (folder / "tokenizer.json").is_file():
            return AutoTokenizer.from_pretrained(str(folder))
    if default is not None:
        return AutoTokenizer.from_pretrained(str(default))
    raise FewlabelError(f"cannot resume {run.path}: it holds no tokenizer (tokenizer/ or export/), so its "
                        "checkpoint's vocabulary is unknown; start a new run")
