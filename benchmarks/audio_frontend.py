"""Log-mel resolution for audio from scratch: the same ResNet-small (width 16) trained on spoken-words with
two front ends, AdamW with a one-cycle schedule, random batches of 64 from the official training clips,
scored on the official test clips.

    FEWLABEL_DATA=../shared/data python benchmarks/audio_frontend.py --n-mels 40 --hop 320 --steps 600
    FEWLABEL_DATA=../shared/data python benchmarks/audio_frontend.py --n-mels 64 --hop 160 --steps 600
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

from fewlabel.augment.audio import LogMel
from fewlabel.data.registry import load_dataset
from fewlabel.models.backbones import BackboneSpec, EmbeddingClassifier, create_backbone
from fewlabel.models.spectrogram import SpectrogramBackbone


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-mels", type=int, default=40)
    parser.add_argument("--hop", type=int, default=320, help="samples between frames (320 = 20 ms at 16 kHz)")
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    dataset = load_dataset("spoken-words")
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    train = np.flatnonzero(~dataset.official_test & ~dataset.official_val)
    test = np.flatnonzero(dataset.official_test)
    x, y = dataset.samples, torch.as_tensor(dataset.labels)
    log_mel = LogMel(16000, n_mels=args.n_mels, hop_length=args.hop)
    body = create_backbone(BackboneSpec("resnet_small", in_chans=1, width=16))
    model = EmbeddingClassifier(SpectrogramBackbone(body, log_mel), dataset.num_classes)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=args.lr, total_steps=args.steps)
    started = time.perf_counter()
    for _ in range(args.steps):
        batch = torch.as_tensor(rng.choice(train, 64))
        loss = torch.nn.functional.cross_entropy(model(x[batch]), y[batch])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
    seconds = time.perf_counter() - started
    model.eval()
    with torch.no_grad():
        predictions = torch.cat([model(x[torch.as_tensor(test[i : i + 256])]).argmax(1)
                                 for i in range(0, len(test), 256)])
    print(json.dumps({**vars(args), "test_accuracy": round(float((predictions == y[test]).float().mean()), 4),
                      "seconds_per_step": round(seconds / args.steps, 3)}))


if __name__ == "__main__":
    main()
