"""Image folders at scale: peak memory and images/s for indexing, a decoding epoch and a cached epoch.

Generates ``<classes>/<n>.jpg`` folders of 512 x 512 px JPEG photos-like images (smooth colour fields with
texture and noise, ~20-40 kB each). Distinct images are encoded once per class and copied to reach the size,
so generation stays fast while every file is a real file that must be opened and decoded. Each phase runs in a
fresh Python process, so its peak RSS (``ru_maxrss``) is its own:

* ``index``: ``load_dataset(folder)``: walk, stat and read every header;
* ``epoch``: one pass of a shuffled ``DataLoader`` over every image, decoded at the working size in workers;
* ``cache``: the one-time build of the uint8 cache at the working size;
* ``cached``: one shuffled pass reading the cache, twice (the second pass finds the file in the OS page cache
  whatever the disk; the first shows what the disk gives right after the build).

Usage::

    python benchmarks/data_scale.py --sizes 10000,50000,200000 --root /tmp/fewlabel-scale \
        --results benchmarks/results/data_scale.json
    python benchmarks/data_scale.py --photos 600 --root /tmp/fewlabel-photos   # issue 14's 640 px folder + train
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

CLASSES = ("alpha", "beta", "gamma")


def _photo(rng: np.random.Generator, side: int) -> np.ndarray:
    """A photo-like RGB image: a smooth colour field, a few blobs, and sensor noise."""
    coarse = rng.integers(0, 256, (6, 6, 3)).astype(np.float32)
    from PIL import Image

    field = np.asarray(Image.fromarray(coarse.astype(np.uint8)).resize((side, side), Image.BICUBIC), np.float32)
    yy, xx = np.mgrid[0:side, 0:side]
    for _ in range(4):
        cy, cx = rng.integers(0, side, 2).tolist()
        r = int(rng.integers(side // 16, side // 4))
        field[(yy - cy) ** 2 + (xx - cx) ** 2 < r * r] = rng.integers(0, 256, 3)
    field += rng.normal(0, 6, field.shape)
    return np.clip(field, 0, 255).astype(np.uint8)


def make_folder(root: Path, count: int, side: int, distinct: int = 200, seed: int = 0) -> float:
    """``count`` JPEGs in ``root/<class>/``; returns seconds. Reuses a folder that already has them."""
    from PIL import Image

    marker = root / f".complete-{count}-{side}"
    if marker.is_file():
        return 0.0
    started = time.perf_counter()
    shutil.rmtree(root, ignore_errors=True)
    rng = np.random.default_rng(seed)
    per_class = [count // len(CLASSES) + (i < count % len(CLASSES)) for i in range(len(CLASSES))]
    for name, wanted in zip(CLASSES, per_class, strict=True):
        folder = root / name
        folder.mkdir(parents=True)
        originals = []
        for i in range(min(distinct, wanted)):
            path = folder / f"{i:06d}.jpg"
            Image.fromarray(_photo(rng, side)).save(path, quality=85)
            originals.append(path)
        for i in range(len(originals), wanted):
            shutil.copyfile(originals[i % len(originals)], folder / f"{i:06d}.jpg")
    marker.write_text("")
    return time.perf_counter() - started


def _peak_mb() -> float:
    """This process's peak RSS in MB. (Loader workers are forks: their own peaks count the pages they share
    with this process, so they are not added.)"""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def phase(name: str, folder: str, size: int, workers: int, cache_root: str) -> dict:
    """One measurement, run inside a fresh process."""
    import torch

    from fewlabel.data.images import at_working_size
    from fewlabel.data.registry import load_dataset
    from fewlabel.engine.data import IndexedSamples, make_loader

    os.environ["FEWLABEL_CACHE"] = cache_root
    started = time.perf_counter()
    dataset = load_dataset(folder)
    index_seconds = time.perf_counter() - started
    record: dict = {"phase": name, "images": len(dataset), "index_seconds": round(index_seconds, 2)}
    if name == "index":
        record["images_per_second"] = round(len(dataset) / index_seconds, 1)
    else:
        started = time.perf_counter()
        working = at_working_size(dataset, size, cache=name in ("cache", "cached"))
        prepare_seconds = time.perf_counter() - started
        record["prepare_seconds"] = round(prepare_seconds, 2)
        if name == "cache":
            record["images_per_second"] = round(len(dataset) / prepare_seconds, 1)
        else:
            torch.manual_seed(0)
            loader = make_loader(IndexedSamples(working.samples, np.arange(len(working))), 256, shuffle=True,
                                 workers=workers)
            started = time.perf_counter()
            seen = checksum = 0
            for batch in loader:
                seen += len(batch)
                checksum += int(batch[:, :, 0, 0].sum())
            seconds = time.perf_counter() - started
            record.update({"epoch_seconds": round(seconds, 2), "images_per_second": round(seen / seconds, 1),
                           "workers": workers, "seen": seen})
    record.update({"peak_rss_mb": round(_peak_mb(), 1), "size": size})
    return record


def run_phase(name: str, folder: Path, size: int, workers: int, cache_root: Path) -> dict:
    command = [sys.executable, __file__, "--phase", name, "--folder", str(folder), "--size", str(size),
               "--workers", str(workers), "--cache-root", str(cache_root)]
    output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    return json.loads(output.strip().splitlines()[-1])


def photos_train(root: Path, count: int) -> dict:
    """Issue 14's case: ``fewlabel train --data FOLDER --labels 0.1 --epochs 1`` on 640 px JPEGs."""
    folder = root / f"photos-{count}"
    make_folder(folder, count, 640)
    out = Path(tempfile.mkdtemp()) / "run"
    command = ["/usr/bin/time", "-f", "%M %e", sys.executable, "-m", "fewlabel.cli", "-q", "train", "--data",
               str(folder), "--labels", "0.1", "--epochs", "1", "--out", str(out)]
    done = subprocess.run(command, check=True, capture_output=True, text=True)
    peak_kb, seconds = done.stderr.strip().splitlines()[-1].split()
    metrics = json.loads((out / "metrics.json").read_text())
    return {"photos": count, "command": "fewlabel " + " ".join(command[6:]),
            "peak_rss_mb": round(int(peak_kb) / 1024, 1),
            "wall_seconds": float(seconds), "train_seconds": metrics["train_seconds"],
            "labelled": metrics["split"]["labelled"], "test": metrics["split"]["test"],
            "test_accuracy": metrics["test_accuracy"], "result_line": done.stdout.strip()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="10000,50000,200000", help="folder sizes to measure")
    parser.add_argument("--root", default="/tmp/fewlabel-scale", help="where the generated folders go")
    parser.add_argument("--side", type=int, default=512, help="generated image side")
    parser.add_argument("--size", type=int, default=96, help="working size images are decoded to")
    parser.add_argument("--workers", type=int, default=2, help="loader workers for the decoding epoch")
    parser.add_argument("--photos", type=int, default=0, help="only run the 640 px photo-folder train check")
    parser.add_argument("--results", default=None, help="write the records to this JSON file")
    parser.add_argument("--phase", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--folder", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--cache-root", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.phase:
        print(json.dumps(phase(args.phase, args.folder, args.size, args.workers, args.cache_root)))
        return
    root = Path(args.root)
    records = []
    if args.photos:
        records.append(photos_train(root, args.photos))
        print(json.dumps(records[-1]), flush=True)
    else:
        for count in (int(s) for s in args.sizes.split(",") if s.strip()):
            folder = root / f"scale-{count}"
            generated = make_folder(folder, count, args.side)
            cache_root = root / f"cache-{count}"
            shutil.rmtree(cache_root, ignore_errors=True)
            for name in ("index", "epoch", "cache", "cached", "cached"):
                record = {"folder_images": count, "generate_seconds": round(generated, 1),
                          **run_phase(name, folder, args.size, args.workers, cache_root)}
                records.append(record)
                print(json.dumps(record), flush=True)
    if args.results:
        Path(args.results).write_text(json.dumps({"command": " ".join(sys.argv), "records": records}, indent=2)
                                      + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
