"""fewlabel's wav2vec 2.0 pretraining loop against a bare Hugging Face loop on the same clips, in one run.

    FEWLABEL_DATA=../shared/data python benchmarks/wav2vec2_speed.py --epochs 2 --rounds 2 \\
        --json benchmarks/results/wav2vec2_speed.json

bare: ``Wav2Vec2ForPreTraining`` (the ``tiny`` preset) forward with the library's masks and negatives, backward,
AdamW step, Gumbel temperature update, over the spoken-words training pool in shuffled batches of 32.
fewlabel: ``fewlabel pretrain --method wav2vec2`` on the same pool, batch and epochs (Lightning loop, logging,
checkpoints, the codebook and kNN monitors), timed by its own ``pretrain_seconds``. Rounds alternate the order.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


def bare(epochs: int, batch: int, seed: int) -> float:
    """Clips per second of the bare loop (steps only; data already in memory as int16, as fewlabel holds it)."""
    from transformers.models.wav2vec2.modeling_wav2vec2 import _compute_mask_indices, _sample_negative_indices

    from fewlabel.data.registry import load_dataset
    from fewlabel.data.splits import make_split
    from fewlabel.methods.wav2vec2 import build_wav2vec2, normalize_waveforms

    dataset = load_dataset("spoken-words")
    pool = make_split(dataset, seed=seed).pool
    torch.manual_seed(seed)
    model = build_wav2vec2("tiny").train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=5e-4, weight_decay=0.01)
    rng = np.random.default_rng(seed)
    frames = int(model._get_feat_extract_output_lengths(dataset.samples.shape[1]))
    seen, step = 0, 0
    started = time.perf_counter()
    for _ in range(epochs):
        order = rng.permutation(pool)
        for start in range(0, len(order) - batch + 1, batch):
            x = normalize_waveforms(dataset.samples[torch.as_tensor(order[start : start + batch])])
            mask = _compute_mask_indices((batch, frames), 0.65, 5, min_masks=2)
            negatives = _sample_negative_indices((batch, frames), model.config.num_negatives, mask)
            out = model(x, mask_time_indices=torch.from_numpy(mask),
                        sampled_negative_indices=torch.from_numpy(negatives).long())
            loss = (out.contrastive_loss + model.config.diversity_loss_weight * out.diversity_loss) / mask.sum()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1
            model.set_gumbel_temperature(max(2.0 * 0.999995**step, 0.5))
            seen += batch
    return seen / (time.perf_counter() - started)


def fewlabel_loop(epochs: int, batch: int, seed: int) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([sys.executable, "-m", "fewlabel.cli", "-q", "pretrain", "--method", "wav2vec2", "--data",
                        "spoken-words", "--epochs", str(epochs), "--batch-size", str(batch), "--seed", str(seed),
                        "--accelerator", "cpu", "--out", f"{tmp}/run"], check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        return float(json.loads(Path(f"{tmp}/run/metrics.json").read_text())["samples_per_second"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    rows = []
    for round_ in range(args.rounds):
        order = ("bare", "fewlabel") if round_ % 2 == 0 else ("fewlabel", "bare")
        row = {}
        for name in order:
            row[name] = round((bare if name == "bare" else fewlabel_loop)(args.epochs, args.batch, 0), 1)
        row["overhead"] = round(row["bare"] / row["fewlabel"] - 1, 3)
        rows.append(row)
        print(row, flush=True)
    result = {"command": " ".join(sys.argv), "torch_threads": torch.get_num_threads(), "rounds": rows}
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
