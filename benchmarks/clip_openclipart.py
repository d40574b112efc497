"""Image-text benchmark on openclipart: LiT vs both towers trained vs the towers before training (issue 18).

    export FEWLABEL_DATA=../shared/data OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
    python benchmarks/clip_openclipart.py --seeds 0,1,2 --json benchmarks/results/clip_openclipart.json

Every cell is stored in the JSON (``benchmarks/_cells.py``) and never rerun; a pretraining run folder under
``--runs`` that already holds ``metrics.json`` is reused. Cells:

* ``pretrain`` (kind ``lit``, ``both``, ``floor224``, ``floor<side>``): ``fewlabel pretrain --method clip`` on
  ``openclipart`` (LiT: the default; both: ``--option lock_image=false --option image_size=<side>``); retrieval
  recall@1/5/10 both ways on the 713 held-out test pairs and zero-shot accuracy over the 22 categories, from its
  ``metrics.json``. The floors are the same code with 0 epochs (``pretrain_clip`` called directly: the CLI asks for
  at least one epoch): ImageNet EfficientNet-Lite0 + MiniLM joined by untrained projections.
* ``zero-shot``: ``fewlabel evaluate --backbone <run> --protocol zero-shot --data openclipart-subcategories``
  (20 subcategories, the subcategory-labelled images among openclipart's own test images).
* ``linear`` (``1/class``, ``10/class``): ``fewlabel evaluate --backbone <run> --protocol linear --data
  openclipart-subcategories --labels N/class``: logistic regression on the run's image tower (C by
  cross-validation). The floors' image towers are the ImageNet tower, at 224 px (LiT's side) and at the both-towers
  side.
* ``speed`` (``--speed-rounds``): in one process, rounds alternating the order, LiT's training throughput through
  ``pretrain_clip`` (Lightning loop, validation monitor, checkpoint) against a bare loop on the same cached
  features, batches and steps: MiniLM forward, the two projections, the CLIP loss, backward, AdamW step.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from _cells import CellStore

SUBCATEGORIES = "openclipart-subcategories"


def _cli(args: list[str]) -> tuple[float, float]:
    """Run ``fewlabel <args>``; (wall seconds, peak RSS in GB of the child)."""
    import resource

    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "fewlabel.cli", "-q", *args], check=True)
    peak_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss  # the largest child so far
    return time.perf_counter() - started, peak_kb / 1e6


def _pretrain_summary(run: Path) -> dict[str, Any]:
    m = json.loads((run / "metrics.json").read_text())
    r = m["retrieval"]
    return {"run": str(run), "epochs": m["epochs"], "batch_size": m["batch_size"], "pool": m["pool_size"],
            "pretrain_seconds": m["pretrain_seconds"], "feature_seconds": m["feature_seconds"],
            "samples_per_second": m["samples_per_second"], "final_loss": m["final_loss"],
            "logit_scale": m["logit_scale"], "test_images": m["test_images"],
            **{k: round(100 * v, 2) for k, v in r.items()},
            "zero_shot_categories": (None if m["zero_shot_accuracy"] is None
                                     else round(100 * m["zero_shot_accuracy"], 2)),
            "val_retrieval": m["val_retrieval"]}


def pretrain_cell(kind: str, seed: int, args: argparse.Namespace) -> dict[str, Any]:
    run = Path(args.runs) / f"{kind}-s{seed}"
    started = time.perf_counter()
    peak = None
    command: list[str]
    if not (run / "metrics.json").is_file():
        shutil.rmtree(run, ignore_errors=True)
        if kind.startswith("floor"):
            side = None if kind == "floor224" else int(kind.removeprefix("floor"))
            _floor(run, seed, side)
        else:
            command = ["pretrain", "--method", "clip", "--data", "openclipart", "--seed", str(seed), "--accelerator",
                       "cpu", "--out", str(run)]
            if kind == "lit":
                command += ["--epochs", str(args.lit_epochs)]
            else:
                command += ["--epochs", str(args.both_epochs), "--option", "lock_image=false", "--option",
                            f"image_size={args.both_size}", "--workers", "0"]
            _, peak = _cli(command)
    return {**_pretrain_summary(run), "wall_seconds": round(time.perf_counter() - started, 1),
            "peak_rss_gb": None if peak is None else round(peak, 2)}


def _floor(run: Path, seed: int, side: int | None) -> None:
    """The towers before training through the same code as a run: ``pretrain_clip`` with 0 epochs."""
    from fewlabel.approaches.pretrain_clip import pretrain_clip
    from fewlabel.approaches.selfsupervised import PretrainConfig
    from fewlabel.data.registry import load_dataset
    from fewlabel.engine.fit import Budget
    from fewlabel.modalities import get_modality

    options: dict[str, Any] = {} if side is None else {"lock_image": False, "image_size": side}
    config = PretrainConfig(method="clip", data="openclipart", seed=seed, epochs=0, method_options=options,
                            budget=Budget(workers=0, accelerator="cpu"), out=str(run))
    dataset = load_dataset("openclipart")
    pretrain_clip(dataset, get_modality("image-text").split(dataset, seed, None), config)


def evaluate_cell(kind: str, seed: int, protocol: str, labels: str, args: argparse.Namespace) -> dict[str, Any]:
    from fewlabel.approaches.selfsupervised import EvaluateConfig, evaluate_backbone
    from fewlabel.engine.fit import Budget

    run = Path(args.runs) / f"{kind}-s{seed}"
    out = None
    if protocol == "linear":
        out = Path(args.runs) / f"{kind}-s{seed}-linear-{labels.replace('/', '')}"
        shutil.rmtree(out, ignore_errors=True)
    started = time.perf_counter()
    result = evaluate_backbone(EvaluateConfig(backbone=str(run), protocol=protocol, labels=labels, data=SUBCATEGORIES,
                                              budget=Budget(accelerator="cpu"), out=None if out is None else str(out)))
    keep = {k: v for k, v in result.items() if k in ("test_accuracy", "labelled", "test", "seconds", "probe_c",
                                                     "macro_f1", "chance", "per_class_accuracy")}
    keep["test_accuracy"] = round(100 * keep["test_accuracy"], 2)
    return {**keep, "wall_seconds": round(time.perf_counter() - started, 1)}


# --- speed --------------------------------------------------------------------------------------------------------


def _lit_inputs(seed: int) -> tuple[Any, Any, torch.Tensor, np.ndarray]:
    from fewlabel.approaches.pretrain_clip import build_image_tower, pair_image_features
    from fewlabel.data.registry import load_dataset
    from fewlabel.modalities import LoadedBackbone, get_modality

    modality = get_modality("image-text")
    dataset = load_dataset("openclipart")
    split = modality.split(dataset, seed, None)
    backbone = build_image_tower("efficientnet_lite0", dataset, None, None)
    working = modality.working_data(dataset, backbone.input_spec.size[0], resize_arrays=False)
    features = pair_image_features(LoadedBackbone(backbone, working, "efficientnet_lite0"), split.pool, None)
    return dataset, split, features, split.pool


def bare_lit(epochs: int, batch: int, seed: int) -> dict[str, float]:
    """Pairs per second of the bare LiT step on the cached image features: tokenise, MiniLM forward (mean
    pooling), both projections, normalise, symmetric InfoNCE with a learnable temperature, backward, AdamW step."""
    import torch.nn.functional as F
    from torch import nn

    from fewlabel.models.text_encoder import load_text_backbone
    from fewlabel.models.tokenizers import TextCollator

    dataset, _, features, pool = _lit_inputs(seed)
    captions = dataset.extra["captions"]
    torch.manual_seed(seed)
    text, tokenizer = load_text_backbone("minilm", max_length=64, pooling="mean")
    text.train()
    collate = TextCollator(tokenizer, max_length=64)
    image_proj, text_proj = nn.Linear(features.shape[1], 256, bias=False), nn.Linear(text.embed_dim, 256, bias=False)
    log_scale = nn.Parameter(torch.tensor(np.log(1 / 0.07), dtype=torch.float32))
    optimizer = torch.optim.AdamW([{"params": text.parameters(), "lr": 5e-5},
                                   {"params": [*image_proj.parameters(), *text_proj.parameters(), log_scale],
                                    "lr": 5e-4}], weight_decay=0.05)
    rng = np.random.default_rng(seed)
    seen = 0
    started = time.perf_counter()
    for _ in range(epochs):
        order = rng.permutation(len(pool))
        for start in range(0, len(order) - batch + 1, batch):
            rows = order[start : start + batch]
            tokens = collate([captions[int(pool[i])] for i in rows])
            image_emb = F.normalize(image_proj(features[torch.as_tensor(rows)]), dim=-1)
            text_emb = F.normalize(text_proj(text(tokens)), dim=-1)
            logits = log_scale.exp() * image_emb @ text_emb.T
            target = torch.arange(len(rows))
            loss = (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            with torch.no_grad():
                log_scale.clamp_(0, np.log(100))
            seen += len(rows)
    seconds = time.perf_counter() - started
    return {"pairs_per_second": round(seen / seconds, 2), "seconds": round(seconds, 2), "pairs": seen}


def fewlabel_lit(epochs: int, batch: int, seed: int, folder: Path) -> dict[str, float]:
    """Pairs per second of ``fewlabel pretrain --method clip`` (LiT) as its run reports it (training loop only:
    ``pretrain_seconds`` is the fit, features come from the cache)."""
    from fewlabel.approaches.pretrain_clip import pretrain_clip
    from fewlabel.approaches.selfsupervised import PretrainConfig
    from fewlabel.engine.fit import Budget

    dataset, split, _, _ = _lit_inputs(seed)
    shutil.rmtree(folder, ignore_errors=True)
    config = PretrainConfig(method="clip", data="openclipart", seed=seed, epochs=epochs, batch_size=batch,
                            budget=Budget(workers=0, accelerator="cpu"), out=str(folder))
    m = pretrain_clip(dataset, split, config).metrics
    shutil.rmtree(folder, ignore_errors=True)
    return {"pairs_per_second": m["samples_per_second"], "seconds": m["pretrain_seconds"],
            "pairs": m["epochs"] * (m["pool_size"] // batch) * batch}


def speed_cell(round_: int, args: argparse.Namespace) -> dict[str, Any]:
    order = ("bare", "fewlabel") if round_ % 2 == 0 else ("fewlabel", "bare")
    row: dict[str, Any] = {"order": list(order)}
    for name in order:
        if name == "bare":
            row[name] = bare_lit(args.speed_epochs, 128, 0)
        else:
            row[name] = fewlabel_lit(args.speed_epochs, 128, 0, Path(args.runs) / "speed")
    row["overhead"] = round(row["bare"]["pairs_per_second"] / row["fewlabel"]["pairs_per_second"] - 1, 4)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--both-seeds", default=None, help="seeds of the both-towers run (default: --seeds)")
    parser.add_argument("--lit-epochs", type=int, default=3)
    parser.add_argument("--both-epochs", type=int, default=2)
    parser.add_argument("--both-size", type=int, default=128)
    parser.add_argument("--speed-rounds", type=int, default=2)
    parser.add_argument("--speed-epochs", type=int, default=1)
    parser.add_argument("--only", default="floor,lit,both,speed", help="which parts to run, comma-separated")
    parser.add_argument("--runs", default="runs/clip18")
    parser.add_argument("--json", default="benchmarks/results/clip_openclipart.json")
    args = parser.parse_args()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    store = CellStore(args.json)
    store.data["command"] = " ".join(sys.argv)
    store.data["settings"] = {"lit_epochs": args.lit_epochs, "both_epochs": args.both_epochs,
                              "both_size": args.both_size, "speed_epochs": args.speed_epochs}
    seeds = [int(s) for s in args.seeds.split(",")]
    both_seeds = [int(s) for s in (args.both_seeds or args.seeds).split(",")]
    parts = args.only.split(",")
    plan: list[tuple[str, list[int]]] = []
    if "floor" in parts:
        plan += [("floor224", seeds), (f"floor{args.both_size}", seeds)]
    if "lit" in parts:
        plan.append(("lit", seeds))
    if "both" in parts:
        plan.append(("both", both_seeds))
    for kind, kind_seeds in plan:
        for seed in kind_seeds:
            settings = ({"epochs": args.lit_epochs} if kind == "lit" else
                        {"epochs": args.both_epochs, "image_size": args.both_size} if kind == "both" else {})
            store.run({"cell": "pretrain", "kind": kind, "seed": seed, **settings},
                      lambda kind=kind, seed=seed: pretrain_cell(kind, seed, args))
            store.run({"cell": "zero-shot", "kind": kind, "seed": seed, **settings},
                      lambda kind=kind, seed=seed: evaluate_cell(kind, seed, "zero-shot", "1.0", args))
            for labels in ("1/class", "10/class"):
                store.run({"cell": "linear", "kind": kind, "seed": seed, "labels": labels, **settings},
                          lambda kind=kind, seed=seed, labels=labels: evaluate_cell(kind, seed, "linear", labels,
                                                                                     args))
    if "speed" in parts:
        for round_ in range(args.speed_rounds):
            store.run({"cell": "speed", "round": round_, "epochs": args.speed_epochs},
                      lambda round_=round_: speed_cell(round_, args))


if __name__ == "__main__":
    main()
