"""Benchmark: which MiniLM layers make the best frozen features for Rotten Tomatoes sentiment?

BERT's feature-based recipe concatenates the top hidden layers instead of using the last one. This script
mean-pools every hidden state of all-MiniLM-L6-v2 (128 tokens), then fits fewlabel's linear probe
(standardised logistic regression, C by cross-validation on the labelled set) on: the last layer, the last
four layers concatenated, the mean of the six layers, and each single layer. Same splits as
``text_rottentomatoes.py``. Resumable; prints a table.

    python benchmarks/text_feature_layers.py --data-dir ../shared/data --seeds 0
"""

from __future__ import annotations

import argparse
import functools

import numpy as np
import torch
from _cells import CellStore

from fewlabel.data import LabelRequest, load_dataset, make_split
from fewlabel.evaluate.probes import fit_linear_probe
from fewlabel.models.text_encoder import load_text_backbone, masked_mean

FEATURES = {"last": [6], "last4-concat": [3, 4, 5, 6], "mean-of-6": "mean", **{f"layer{i}": [i] for i in range(1, 6)}}


@functools.cache
def minilm():
    """all-MiniLM-L6-v2 (offline package) and its tokenizer, loaded once."""
    return load_text_backbone("minilm")


def pooled_hidden_states(texts: list[str], batch: int = 64) -> np.ndarray:
    """(len(texts), 7, 384): masked mean of the embedding output and each of the 6 layers."""
    backbone, tokenizer = minilm()
    body = backbone.body.eval()
    chunks = []
    for start in range(0, len(texts), batch):
        encoded = tokenizer(texts[start:start + batch], padding=True, truncation=True,
                            max_length=backbone.input_spec.max_length, return_tensors="pt")
        with torch.no_grad():
            states = body(**encoded, output_hidden_states=True).hidden_states
        chunks.append(torch.stack([masked_mean(h, encoded["attention_mask"]) for h in states], dim=1))
    return torch.cat(chunks).numpy()


def select(states: np.ndarray, layers: list[int] | str) -> np.ndarray:
    if layers == "mean":
        return states[:, 1:].mean(axis=1)
    return states[:, layers].reshape(len(states), -1)


def run_seed(store: CellStore, dataset, seed: int, fractions: list[str]) -> None:
    """All fractions of one seed; the test texts are encoded once per seed."""
    split = make_split(dataset, seed=seed)
    test_states: list[np.ndarray] = []
    for fraction in fractions:
        train_idx = split.labelled(LabelRequest.parse(fraction), dataset.labels)

        def work(train_idx: np.ndarray = train_idx) -> dict:
            if not test_states:
                test_states.append(pooled_hidden_states([dataset.samples[i] for i in split.test]))
            train = pooled_hidden_states([dataset.samples[i] for i in train_idx])
            cell = {"labelled": len(train_idx)}
            for name, layers in FEATURES.items():
                probe = fit_linear_probe(select(train, layers), dataset.labels[train_idx], seed=seed)
                predictions = probe.predict(select(test_states[0], layers))
                cell[name] = float((predictions == dataset.labels[split.test]).mean())
                cell[f"C:{name}"] = float(probe[-1].C)
            return cell

        store.run({"seed": seed, "labels": fraction}, work)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--fractions", default="0.1,1.0")
    parser.add_argument("--results", default="benchmarks/results/text_feature_layers.json")
    args = parser.parse_args()
    store = CellStore(args.results)
    dataset = load_dataset("rotten-tomatoes", args.data_dir)
    for seed in (int(s) for s in args.seeds.split(",")):
        run_seed(store, dataset, seed, args.fractions.split(","))
    print("| seed | labels | " + " | ".join(FEATURES) + " |")
    print("|---" * (len(FEATURES) + 2) + "|")
    for cell in store.data["cells"]:
        row = [str(cell["seed"]), cell["labels"]] + [f"{100 * cell[name]:.2f}%" for name in FEATURES]
        print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
