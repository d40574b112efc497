"""``fewlabel predict``: use a trained model on new data, with the exact preprocessing its run used.

Any run that writes ``model.safetensors`` + ``model.json`` works: ``train`` (images and text), ``finetune`` (all
three strategies, images and text), ``evaluate --protocol finetune`` and every run a ``compare`` grid makes.
``model.json`` says how to rebuild the network without downloading anything, and how samples reached it:

* images are decoded as training decoded them, :func:`fewlabel.data.image_files.decode_image` at the run's
  ``data_size`` with its ``in_chans`` (shorter side scaled, centre square kept, grey or RGB), one batch at a time
  in DataLoader workers; the model's own input adapter (restored from the weights, normalisation included) does
  the rest;
* texts are tokenised by the run's tokenizer (``<run>/tokenizer`` for text ``train`` runs, the encoder's own for
  ``finetune`` runs) and truncated to the run's sequence length.

What differs between modalities (rebuilding the model, reading and batching inputs, the ONNX graph's inputs) is
each modality's :class:`PredictIO` (``fewlabel/modalities/<name>_predict.py``, from ``Modality.predict_io()``);
this module is the flow they share and never tests a modality's name.

Data from another source is the normal case: labels (class sub-folders, a label column) are matched to the run's
classes *by name* (``"01"`` and ``"1"`` count as the same name, as label columns read them); a class the run does
not know is reported and its rows count as unlabelled for the metrics.

Outputs (``out``, default ``<run>/predictions/<data name>/``, a new ``-2``, ``-3`` ... folder when that one
already holds predictions): ``predictions.csv`` (input, label when known, predicted class, its probability and one
``prob_<class>`` column per class), ``summary.json`` (model, data, preprocessing, counts and, with labels,
accuracy, macro-F1, per-class accuracy and the confusion matrix) and ``confusion_matrix.png`` (with labels).
Each file is written under a temporary name and published only if that name is still free: nothing is ever
overwritten.
"""

from __future__ import annotations

import contextlib
import csv
import json
import logging
import os
import re
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

import numpy as np
import torch
from torch import nn

from fewlabel.errors import FewlabelError
from fewlabel.modalities import get_modality
from fewlabel.models.backbones import to_channels_last

if TYPE_CHECKING:
    from fewlabel.data.dataset import Dataset
    from fewlabel.export_onnx import OnnxGraph

log = logging.getLogger("fewlabel")

MODEL_WEIGHTS = "model.safetensors"
MODEL_META = "model.json"
PREDICTIONS = "predictions.csv"
SUMMARY = "summary.json"
CONFUSION_PNG = "confusion_matrix.png"
PROB_PREFIX = "prob_"

# (positions, model batch or None, [(position, error)]): what iterate_batches yields
BatchItem = tuple[list[int], Any, list[tuple[int, str]]]


# --------------------------------------------------------------------------------------------------------------
# The run's model


@dataclass
class RunModel:
    """A run's classifier rebuilt on the CPU in eval mode, with what predict needs to feed it."""

    run_dir: Path
    model: nn.Module
    classes: list[str]
    modality: str  # a registered modality's name: model.json's, or inferred by run_io for older runs
    kind: str  # "train", "finetune" or "evaluate" (evaluate --protocol finetune)
    meta: dict[str, Any]
    channels: int | None = None  # images: channels samples are decoded with
    data_size: int | None = None  # images: side samples are decoded at (before the model's own resizing)
    tokenizer: Any = None  # text
    max_length: int | None = None  # text
    notes: list[str] = field(default_factory=list)

    @property
    def io(self) -> PredictIO:
        """How this run's modality reads, batches and exports inputs."""
        return get_modality(self.modality).predict_io()

    def preprocessing(self) -> dict[str, Any]:
        """What happens to an input before the network sees it, for summaries and the ONNX sidecar."""
        return self.io.preprocessing(self)


@dataclass(frozen=True)
class InputColumns:
    """The table columns named on the command line (None: found by their usual names); each modality reads the
    ones its tables have."""

    label: str | None = None
    text: str | None = None
    image: str | None = None


class PredictIO(Protocol):
    """What predict and ONNX export ask a modality (``Modality.predict_io()``; one class per modality in
    ``fewlabel/modalities/<name>_predict.py``), so that this module and :mod:`fewlabel.export_onnx` hold only the
    flow every modality shares."""

    batch_size: ClassVar[int]  # the default --batch-size
    onnx_files: ClassVar[tuple[str, ...]]  # what an ONNX export writes beside model.onnx (text: tokenizer/)

    def claims(self, meta: dict[str, Any]) -> bool:
        """Whether a model.json without "modality" (runs before it was recorded) is a run of this modality."""
        ...

    def complete_meta(self, run_dir: Path, meta: dict[str, Any], config: dict[str, Any],
                      notes: list[str]) -> dict[str, Any]:
        """model.json with what older runs did not record, from config.yaml (noted in ``notes``)."""
        ...

    def finetuned(self, meta: dict[str, Any]) -> bool:
        """Whether a model.json without "strategy" is a fine-tuned run all the same (older runs)."""
        ...

    def build(self, run_dir: Path, meta: dict[str, Any], config: dict[str, Any], classes: list[str], kind: str,
              notes: list[str]) -> RunModel:
        """The run's classifier rebuilt offline (weights not loaded yet), with what feeding it needs."""
        ...

    def preprocessing(self, run: RunModel) -> dict[str, Any]:
        """What happens to an input before the network sees it (summary.json, the ONNX sidecar)."""
        ...

    def read_path(self, path: Path, inputs: PredictInputs, columns: InputColumns) -> None:
        """Add the inputs found at an existing ``path`` (file, folder, table) to ``inputs``, or raise one line."""
        ...

    def add_samples(self, dataset: Dataset, labels: list[str | None], inputs: PredictInputs) -> None:
        """Add a loaded dataset's samples (labels already named) to ``inputs``."""
        ...

    def nothing_found(self, source: str) -> str:
        """The error when ``source`` held no input of this modality: what the model takes instead."""
        ...

    def batches(self, run: RunModel, inputs: PredictInputs, batch_size: int, workers: int,
                skip_bad: bool) -> Iterator[BatchItem]:
        """Model batches in input order, preprocessed as the run's training preprocessed its data."""
        ...

    def onnx_graph(self, run: RunModel) -> OnnxGraph:
        """The exportable graph, its input names, dynamic axes and sidecar fields."""
        ...

    def onnx_inputs(self, batch: Any) -> dict[str, torch.Tensor]:
        """A model batch as the ONNX graph's named inputs, in the graph's argument order."""
        ...

    def onnx_single(self, batch: Any) -> Any:
        """The first input of a model batch as a batch of one, as it would be batched alone."""
        ...

    def save_onnx_files(self, run: RunModel, folder: Path) -> None:
        """Write :attr:`onnx_files` into ``folder``."""
        ...


def run_io(meta: dict[str, Any]) -> PredictIO:
    """The predict I/O of the run's modality: model.json's "modality", else (older runs) the modality whose predict
    I/O claims the model.json. The one place a run's modality is inferred."""
    from fewlabel.modalities import registered_modalities

    recorded = meta.get("modality")
    if recorded is not None:
        return get_modality(str(recorded)).predict_io()
    for modality in registered_modalities():
        io = modality.predict_io()
        if io.claims(meta):
            return io
    raise FewlabelError(f"{MODEL_META} does not say which data the model takes (no 'modality'); train the run again")


def _read_json(path: Path, what: str) -> dict[str, Any]:
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise FewlabelError(f"{path} is corrupt ({exc.msg} at line {exc.lineno}); {what}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise FewlabelError(f"cannot read {path} ({exc}); {what}") from None
    if not isinstance(info, dict):
        raise FewlabelError(f"{path} is not a JSON object; {what}")
    return info


def _read_config(run_dir: Path) -> dict[str, Any]:
    """The run's ``config.yaml`` ({} when absent or unreadable): fallbacks for runs whose model.json is older."""
    import yaml

    path = run_dir / "config.yaml"
    try:
        config = yaml.safe_load(path.read_text(encoding="utf-8")) if path.is_file() else {}
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return {}
    return config if isinstance(config, dict) else {}


def _check_run_folder(model_dir: str | os.PathLike) -> tuple[Path, dict[str, Any]]:
    run_dir = Path(model_dir).expanduser()
    if not run_dir.exists():
        raise FewlabelError(f"model folder {run_dir} does not exist; pass the folder of a train, finetune or "
                            "evaluate run")
    if not run_dir.is_dir():
        raise FewlabelError(f"{run_dir} is not a folder; pass the run folder that holds {MODEL_WEIGHTS}")
    if not (run_dir / MODEL_WEIGHTS).is_file():
        hint = ("it is a pretraining run: its backbone has no classifier yet; train one with `fewlabel evaluate "
                "--protocol finetune` or `fewlabel finetune --backbone` this folder"
                if (run_dir / "export").is_dir() else "the run did not finish, or it is not a run folder")
        raise FewlabelError(f"{run_dir} has no {MODEL_WEIGHTS}: {hint}")
    if not (run_dir / MODEL_META).is_file():
        raise FewlabelError(f"{run_dir} has {MODEL_WEIGHTS} but no {MODEL_META}; the run folder is incomplete")
    meta = _read_json(run_dir / MODEL_META, "the run's model cannot be rebuilt; train it again")
    classes = meta.get("classes")
    if not isinstance(classes, list) or not classes or not all(isinstance(c, str) for c in classes):
        raise FewlabelError(f"{run_dir / MODEL_META} has no list of class names under 'classes'; it is corrupt")
    return run_dir, meta


def existing_dir(meta: dict[str, Any]) -> Path | None:
    """The backbone folder a run started from: the absolute path it recorded, else the name as given."""
    for candidate in (meta.get("backbone_dir"), meta.get("backbone")):
        if isinstance(candidate, str) and candidate and Path(candidate).expanduser().is_dir():
            return Path(candidate).expanduser()
    return None


def looks_like_path(source: str) -> bool:
    return source.startswith(("/", "./", "../", "~")) or os.sep in source.split("@", 1)[0]


def load_run_model(model_dir: str | os.PathLike) -> RunModel:
    """Rebuild a run's classifier from ``model.json`` + ``model.safetensors`` (eval mode, CPU)."""
    from fewlabel.models.weights import apply_state_dict, load_state_dict_file

    run_dir, meta = _check_run_folder(model_dir)
    classes = list(meta["classes"])
    config = _read_config(run_dir)
    notes: list[str] = []
    io = run_io(meta)
    meta = io.complete_meta(run_dir, meta, config, notes)
    kind = "evaluate" if meta.get("protocol") == "evaluate" else (
        "finetune" if "strategy" in meta or io.finetuned(meta) else "train")
    try:
        result = io.build(run_dir, meta, config, classes, kind, notes)
    except (KeyError, TypeError, ValueError) as exc:
        raise FewlabelError(f"{run_dir / MODEL_META} does not describe a model fewlabel can rebuild "
                            f"({type(exc).__name__}: {exc}); it is corrupt or from another tool") from None
    state = load_state_dict_file(run_dir / MODEL_WEIGHTS)
    apply_state_dict(result.model, state, source=str(run_dir / MODEL_WEIGHTS))
    result.model.eval()
    return result


# --------------------------------------------------------------------------------------------------------------
# Inputs


@dataclass
class PredictInputs:
    """What to predict: one entry per input, in order, with its label's name when the data has one."""

    names: list[str]
    labels: list[str | None]
    name: str  # short name of the data (default output folder)
    source: str  # where the inputs came from, for the summary
    paths: list[str] | None = None  # image files (decoded a batch at a time)
    tensor: torch.Tensor | None = None  # in-memory images, uint8 (N, C, H, W)
    texts: list[str] | None = None
    notes: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.names)

    @property
    def labelled(self) -> bool:
        return any(label is not None for label in self.labels)

    def take(self, indices: Sequence[int]) -> PredictInputs:
        """The inputs at ``indices``, in that order."""
        def pick(values: list | None) -> list | None:
            return None if values is None else [values[i] for i in indices]

        return PredictInputs(names=pick(self.names), labels=pick(self.labels), name=self.name, source=self.source,
                             paths=pick(self.paths), texts=pick(self.texts), notes=list(self.notes),
                             tensor=None if self.tensor is None else self.tensor[torch.as_tensor(list(indices))])

    def add(self, names: Sequence[str], labels: Sequence[str | None], *, paths: Sequence[str] | None = None,
            texts: Sequence[str] | None = None) -> None:
        self.names.extend(names)
        self.labels.extend(labels)
        if paths is not None:
            self.paths = [*(self.paths or []), *paths]
        if texts is not None:
            self.texts = [*(self.texts or []), *texts]


def folder_files(folder: Path, suffixes: Sequence[str]) -> tuple[list[str], list[str], list[str | None]]:
    """(paths, names relative to ``folder``, labels) of the files with these suffixes under ``folder``, in sorted
    order, hidden files and folders skipped as training skips them. ``folder/<class>/**`` layouts (every file
    inside a sub-folder) are labelled by the sub-folder's name, as training labels them; anything else is
    unlabelled."""
    from fewlabel.data.image_files import hidden

    paths: list[str] = []
    for root, subdirs, files in os.walk(folder):
        subdirs[:] = sorted(d for d in subdirs if not hidden(d))
        paths.extend(os.path.join(root, f) for f in sorted(files)
                     if not hidden(f) and os.path.splitext(f)[1].lower() in suffixes)
    names = [Path(p).relative_to(folder).as_posix() for p in paths]
    labelled = all("/" in name for name in names)
    return paths, names, [name.split("/", 1)[0] if labelled else None for name in names]


def add_dataset(dataset: Dataset, inputs: PredictInputs) -> None:
    """A loaded dataset's samples, with their label names, added as its modality adds them."""
    from fewlabel.data.dataset import UNLABELLED

    labels = [None if y == UNLABELLED else dataset.classes[y] for y in dataset.labels.tolist()]
    get_modality(dataset.modality).predict_io().add_samples(dataset, labels, inputs)


def collect_inputs(run: RunModel, data: str | os.PathLike | Sequence[str | os.PathLike], *,
                   text_column: str | None = None, label_column: str | None = None,
                   image_column: str | None = None, data_dir: str | None = None) -> PredictInputs:
    """Resolve ``data`` (paths, or a registered dataset name as ``load_dataset`` reads names) into the inputs of
    ``run``'s modality. Nothing is decoded: image files are listed, and decoded a batch at a time later."""
    from fewlabel.data.registry import load_dataset, registered_datasets

    io = run.io
    columns = InputColumns(label=label_column, text=text_column, image=image_column)
    items = [data] if isinstance(data, str | os.PathLike) else list(data)
    if not items:
        raise FewlabelError("no data given; pass files, a folder or a table with --data")
    sources = [str(item) for item in items]
    inputs = PredictInputs(names=[], labels=[], name="", source=", ".join(sources))
    registered = {entry.name for entry in registered_datasets()}
    for item in sources:
        if item in registered:  # a name first, as every other command reads --data
            dataset = load_dataset(item, data_dir)
            if get_modality(dataset.modality) is not get_modality(run.modality):
                raise FewlabelError(f"{item} is a {dataset.modality} dataset; the model takes {run.modality}")
            add_dataset(dataset, inputs)
            continue
        path = Path(item).expanduser()
        if not path.exists():
            raise FewlabelError(f"data {item} does not exist; pass image files, a folder, a table or a dataset "
                                f"name ({', '.join(sorted(registered))})")
        io.read_path(path, inputs, columns)
    if inputs.tensor is not None and len(inputs) != len(inputs.tensor):
        raise FewlabelError("an in-memory dataset (.npz or a dataset name) cannot be mixed with other inputs; "
                            "predict on it alone")
    if not len(inputs):
        raise FewlabelError(io.nothing_found(inputs.source))
    first = Path(sources[0]).expanduser()
    inputs.name = (first.stem if first.is_file() else first.name or "data") if len(items) == 1 else "files"
    return inputs


# --------------------------------------------------------------------------------------------------------------
# Running the model


class Progress:
    """A one-line progress bar on a terminal; on anything else (logs, CI) a log line every 10%."""

    def __init__(self, total: int, label: str = "predict", enabled: bool | None = None):
        self.total, self.label, self.done = max(total, 1), label, 0
        self.started = self.last_draw = time.perf_counter()
        self.bar = enabled is not False and sys.stderr.isatty()
        self.lines = enabled is not False and not self.bar
        self.next_report = 0.1

    def update(self, count: int) -> None:
        self.done += count
        now = time.perf_counter()
        rate = self.done / max(now - self.started, 1e-9)
        if self.bar and (now - self.last_draw > 0.1 or self.done >= self.total):
            self.last_draw = now
            filled = int(30 * self.done / self.total)
            sys.stderr.write(f"\r{self.label} [{'#' * filled}{'.' * (30 - filled)}] {self.done}/{self.total} "
                             f"{rate:.0f}/s eta {(self.total - self.done) / max(rate, 1e-9):.0f}s ")
            sys.stderr.flush()
        elif self.lines and self.done / self.total >= self.next_report:
            log.info("%s: %d/%d (%.0f%%, %.0f inputs/s)", self.label, self.done, self.total,
                     100 * self.done / self.total, rate)
            self.next_report = (int(10 * self.done / self.total) + 1) / 10

    def close(self) -> None:
        if self.bar:
            sys.stderr.write("\n")
            sys.stderr.flush()


def iterate_batches(run: RunModel, inputs: PredictInputs, batch_size: int, workers: int,
                    skip_bad: bool) -> Iterator[BatchItem]:
    """(positions, model batch or None, [(position, error)]) in input order, preprocessed as the run's modality
    preprocessed its training data (images: files decoded a batch at a time in ``workers`` processes; texts:
    tokenised by the run's tokenizer)."""
    return run.io.batches(run, inputs, batch_size, workers, skip_bad)


def _to_device(batch: Any, device: torch.device) -> Any:
    if isinstance(batch, dict):
        return {k: v.to(device) for k, v in batch.items()}
    return batch.to(device)


def _device(name: str) -> torch.device:
    from fewlabel.engine.trainer import run_device

    if name == "auto":
        return run_device("auto")  # as training resolves it: CUDA, else Apple's MPS, else the CPU
    try:
        device = torch.device(name)
        torch.empty(0, device=device)  # an unknown name, or a device this machine lacks (cuda, cuda:3, mps)
    except (RuntimeError, AssertionError) as exc:
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise FewlabelError(f"--device {name!r} is not available here ({reason}); use auto, cpu or cuda") from None
    return device


# --------------------------------------------------------------------------------------------------------------
# Results


@dataclass(frozen=True)
class PredictMetrics:
    """Scores on the inputs whose label is one of the run's classes."""

    accuracy: float
    macro_f1: float  # sklearn, over the classes present in the labels or the predictions
    scored: int
    per_class_accuracy: dict[str, float | None]  # recall per run class; None where the data has none
    confusion_matrix: list[list[int]]  # rows: true class, columns: predicted class, in the run's class order

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class PredictionResult:
    """What :func:`predict` returns: one row per input that could be read, in input order."""

    run_dir: str
    classes: list[str]
    inputs: list[str]
    labels: list[str | None]  # the data's label names (None: unlabelled), also those the run does not know
    predicted: list[str]
    probabilities: np.ndarray  # (N, len(classes)) float64, rows sum to 1
    metrics: PredictMetrics | None
    unknown_classes: dict[str, int]  # label name -> rows; counted as unlabelled for the metrics
    skipped: list[str]  # inputs that could not be read (skip_bad)
    out_dir: str | None
    files: dict[str, str]
    notes: list[str]
    seconds: float

    @property
    def predicted_index(self) -> np.ndarray:
        return self.probabilities.argmax(axis=1)


def match_classes(labels: Sequence[str | None], classes: Sequence[str]) -> tuple[np.ndarray, dict[str, int]]:
    """Indices of ``labels`` among ``classes`` by name (-1: unlabelled or unknown) and the unknown names' counts.

    A name matches exactly, else by the form label columns give it (:func:`fewlabel.data.text.label_key`:
    ``"03"`` and ``"3"`` are the same number) when that picks one class: a run trained on a table knows class
    ``"3"``, one trained on folders ``"03"``.
    """
    from fewlabel.data.text import label_key

    exact = {name: i for i, name in enumerate(classes)}
    by_key: dict[str | int | None, list[int]] = {}
    for i, name in enumerate(classes):
        by_key.setdefault(label_key(name), []).append(i)
    by_key.pop(None, None)  # a class named like a missing label ("nan", "none") matches only exactly
    unknown: Counter[str] = Counter()
    out = np.full(len(labels), -1, dtype=np.int64)
    for row, label in enumerate(labels):
        if label is None:
            continue
        found = exact.get(label)
        if found is None and len(candidates := by_key.get(label_key(label), [])) == 1:
            found = candidates[0]
        if found is None:
            unknown[label] += 1
        else:
            out[row] = found
    return out, dict(sorted(unknown.items()))


def _near_miss(name: str, classes: Sequence[str]) -> str | None:
    lowered = {c.strip().lower(): c for c in classes}
    return lowered.get(name.strip().lower())


def compute_metrics(true: np.ndarray, predicted: np.ndarray, classes: Sequence[str]) -> PredictMetrics | None:
    from sklearn.metrics import confusion_matrix, f1_score

    scored = true >= 0
    if not scored.any():
        return None
    y, p = true[scored], predicted[scored]
    matrix = confusion_matrix(y, p, labels=list(range(len(classes))))
    support = matrix.sum(axis=1)
    return PredictMetrics(
        accuracy=float((y == p).mean()),
        macro_f1=float(f1_score(y, p, average="macro", zero_division=0)),
        scored=int(scored.sum()),
        per_class_accuracy={name: float(matrix[c, c] / support[c]) if support[c] else None
                            for c, name in enumerate(classes)},
        confusion_matrix=matrix.astype(int).tolist(),
    )


# --------------------------------------------------------------------------------------------------------------
# Writing


def _slug(name: str) -> str:
    slug = re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-.")
    return slug[:60] or "data"


def output_folder(default: Path, out: str | os.PathLike | None, files: Sequence[str]) -> Path:
    """``out`` (refused when it already holds one of ``files``), or ``default`` (``<run>/predictions/<data
    name>``) with ``-2``, ``-3`` ... appended until the folder holds none of them."""
    if out is not None:
        folder = Path(out).expanduser()
        if folder.exists() and not folder.is_dir():
            raise FewlabelError(f"--out {folder} is a file; give a folder")
        taken = [name for name in files if (folder / name).exists()]
        if taken:
            raise FewlabelError(f"{folder / taken[0]} already exists; choose another --out or remove it (nothing "
                                "is overwritten)")
        return folder
    base = default.with_name(_slug(default.name))
    folder, suffix = base, 2
    while any((folder / name).exists() for name in files):
        folder, suffix = base.with_name(f"{base.name}-{suffix}"), suffix + 1
    return folder


def publish(tmp: Path, path: Path) -> None:
    """Give the finished file ``tmp`` its name ``path``, only if no file has that name (never overwrites)."""
    try:
        os.link(tmp, path)  # fails if the name exists, even against a concurrent writer
    except FileExistsError:
        raise FewlabelError(f"{path} already exists; choose another --out or remove it (nothing is "
                            "overwritten)") from None
    except OSError:  # a file system without hard links: check, then rename
        if path.exists():
            raise FewlabelError(f"{path} already exists; choose another --out or remove it") from None
        os.replace(tmp, path)


@contextlib.contextmanager
def new_file(path: Path) -> Iterator[Path]:
    """A temporary path beside ``path`` for the caller to write; synced and :func:`publish`-ed as ``path`` when the
    block succeeds, removed in any case (like :func:`fewlabel.engine.run.atomic_path`, without overwriting)."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as exc:
        raise FewlabelError(f"cannot write to {path.parent}: {exc.strerror}; choose another --out") from None
    os.close(handle)
    tmp = Path(name)
    try:
        yield tmp
        with open(tmp, "rb") as written:
            os.fsync(written.fileno())
        publish(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_predictions(path: Path, names: Sequence[str], labels: Sequence[str | None] | None,
                      predicted: Sequence[str], probabilities: np.ndarray, classes: Sequence[str]) -> None:
    """``predictions.csv``, streamed row by row (``labels=None``: no label column)."""
    # surrogateescape: a file name with bytes that are not UTF-8 is written as those bytes, so it names the file.
    with new_file(path) as tmp, open(tmp, "w", newline="", encoding="utf-8", errors="surrogateescape") as handle:
        writer = csv.writer(handle)
        writer.writerow(["input", *(["label"] if labels is not None else []), "predicted", "probability",
                         *(f"{PROB_PREFIX}{c}" for c in classes)])
        for row, (name, predicted_class, probs) in enumerate(zip(names, predicted, probabilities, strict=True)):
            writer.writerow([name, *([labels[row] or ""] if labels is not None else []), predicted_class,
                             f"{probs.max():.6g}", *(f"{p:.6g}" for p in probs)])


def plot_confusion(matrix: list[list[int]], classes: Sequence[str], path: Path, title: str) -> None:
    """The confusion matrix as a PNG (rows: true class, columns: predicted), written as a new file."""
    from matplotlib.figure import Figure

    counts = np.asarray(matrix)
    n = len(classes)
    side = min(20.0, max(4.5, 0.45 * n + 2.5))
    fig = Figure(figsize=(side, side * 0.9))
    ax = fig.subplots()
    shown = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)  # row-normalised colours: recall per class
    image = ax.imshow(shown, cmap="Blues", vmin=0.0, vmax=1.0)
    if n <= 60:
        rotate = n > 6 and max(len(str(c)) for c in classes) > 2
        ax.set_xticks(range(n), [str(c) for c in classes], rotation=45 if rotate else 0,
                      ha="right" if rotate else "center", fontsize=8)
        ax.set_yticks(range(n), [str(c) for c in classes], fontsize=8)
    if n <= 30:
        for i, j in zip(*np.nonzero(counts), strict=True):
            ax.text(j, i, str(counts[i, j]), ha="center", va="center", fontsize=7,
                    color="white" if shown[i, j] > 0.5 else "black")
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title(title, fontsize=9)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="share of the true class")
    fig.tight_layout()
    with new_file(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")


# --------------------------------------------------------------------------------------------------------------
# The function


def predict(model_dir: str | os.PathLike, data: str | os.PathLike | Sequence[str | os.PathLike],
            out: str | os.PathLike | None = None, *, text_column: str | None = None,
            label_column: str | None = None, image_column: str | None = None, data_dir: str | None = None,
            batch_size: int | None = None, workers: int | None = None, device: str = "auto",
            skip_bad: bool = False, write: bool = True, progress: bool | None = None) -> PredictionResult:
    """Predict ``data`` with the classifier of the run in ``model_dir``; write the files unless ``write=False``.

    ``data``: image files, a folder (``<class>/`` sub-folders give labels; otherwise every image in it), a table
    (images: a column of file paths relative to the table; text: a text column), a ``.txt`` file (one text per
    line), ``.npz`` or a registered dataset name. Labels are matched to the run's classes by name. Image files
    are decoded a batch at a time (``workers`` processes), so a folder of any size predicts in bounded memory.
    """
    started = time.perf_counter()
    if batch_size is not None and batch_size < 1:
        raise FewlabelError(f"--batch-size {batch_size} is impossible; give a positive number")
    if workers is not None and workers < 0:
        raise FewlabelError(f"--workers {workers} is impossible; give 0 or more")
    target = _device(device)
    run = load_run_model(model_dir)
    inputs = collect_inputs(run, data, text_column=text_column, label_column=label_column,
                            image_column=image_column, data_dir=data_dir)
    folder = (output_folder(run.run_dir / "predictions" / inputs.name, out, (PREDICTIONS, SUMMARY, CONFUSION_PNG))
              if write else None)
    model = run.model.to(target)
    if get_modality(run.modality).channels_last:  # as in training (engine.fit): the same kernels, faster on CPUs
        model = to_channels_last(model)
    batch = batch_size or run.io.batch_size
    if workers is None:
        workers = 0 if inputs.paths is None or len(inputs) < 256 else min(4, max(1, (os.cpu_count() or 2) - 1))
    log.info("predicting %d inputs from %s with %s (%s run, %d classes) on %s", len(inputs), inputs.source,
             run.run_dir, run.kind, len(run.classes), target)

    probabilities = np.zeros((len(inputs), len(run.classes)), dtype=np.float64)
    done = np.zeros(len(inputs), dtype=bool)
    skipped: list[str] = []
    bar = Progress(len(inputs), enabled=progress)
    try:
        with torch.inference_mode():
            for positions, batch_input, bad in iterate_batches(run, inputs, batch, workers, skip_bad):
                if positions:
                    # Softmax in float64 on the CPU: every row sums to 1 to ~1e-16 (float32 is off by ~1e-7).
                    logits = model(_to_device(batch_input, target)).float().cpu().double()
                    probabilities[positions] = torch.softmax(logits, dim=1).numpy()
                    done[positions] = True
                for position, error in bad:
                    skipped.append(inputs.names[position])
                    log.warning("skipped: %s", error.split("; ")[0])
                bar.update(len(positions) + len(bad))
    finally:
        bar.close()
    if not done.any():
        raise FewlabelError(f"none of the {len(inputs)} inputs could be read; nothing was predicted")
    keep = np.flatnonzero(done)
    probabilities = probabilities[keep]
    names = [inputs.names[i] for i in keep]
    labels = [inputs.labels[i] for i in keep]
    predicted_index = probabilities.argmax(axis=1)
    predicted = [run.classes[i] for i in predicted_index]
    true, unknown = match_classes(labels, run.classes)
    metrics = compute_metrics(true, predicted_index, run.classes)
    notes = [*run.notes, *inputs.notes]
    for name, count in unknown.items():
        near = _near_miss(name, run.classes)
        notes.append(f"class {name!r} ({count} inputs) is not one of the run's classes; counted as unlabelled"
                     + (f" (did you mean {near!r}?)" if near else ""))
    seconds = time.perf_counter() - started

    files: dict[str, str] = {}
    if folder is not None:
        files["predictions"] = str(folder / PREDICTIONS)
        write_predictions(folder / PREDICTIONS, names, labels if inputs.labelled else None, predicted,
                          probabilities, run.classes)
        if metrics is not None:
            files["confusion_matrix"] = str(folder / CONFUSION_PNG)
            plot_confusion(metrics.confusion_matrix, run.classes, folder / CONFUSION_PNG,
                           f"{run.run_dir.name} on {inputs.name}: accuracy {metrics.accuracy:.3f} "
                           f"({metrics.scored} inputs)")
        files["summary"] = str(folder / SUMMARY)
        summary = _summary(run, inputs, metrics, unknown, skipped, notes, len(names), seconds, target, files)
        with new_file(folder / SUMMARY) as tmp:
            # backslashreplace: a file name that is not UTF-8 stays valid JSON (its odd bytes as \udcXX escapes).
            tmp.write_text(json.dumps(summary, indent=2, ensure_ascii=False) + "\n", encoding="utf-8",
                           errors="backslashreplace")
    return PredictionResult(
        run_dir=str(run.run_dir), classes=list(run.classes), inputs=names, labels=labels, predicted=predicted,
        probabilities=probabilities, metrics=metrics, unknown_classes=unknown, skipped=skipped,
        out_dir=str(folder) if folder is not None else None, files=files, notes=notes, seconds=round(seconds, 3))


def _summary(run: RunModel, inputs: PredictInputs, metrics: PredictMetrics | None, unknown: dict[str, int],
             skipped: list[str], notes: list[str], predicted: int, seconds: float, device: torch.device,
             files: dict[str, str]) -> dict[str, Any]:
    from fewlabel import __version__

    return {
        "model": str(run.run_dir), "run_kind": run.kind, "modality": run.modality, "classes": run.classes,
        "data": inputs.source, "inputs": len(inputs), "predicted": predicted, "skipped": len(skipped),
        "skipped_examples": skipped[:10], "with_labels": sum(label is not None for label in inputs.labels),
        "unknown_classes": unknown, "preprocessing": run.preprocessing(),
        "metrics": metrics.to_dict() if metrics is not None else None, "notes": notes, "seconds": round(seconds, 3),
        "inputs_per_second": round(predicted / seconds, 1) if seconds > 0 else None, "device": str(device),
        "files": files, "fewlabel": __version__,
    }


def describe(result: PredictionResult) -> list[str]:
    """Console lines for a result: counts, metrics and what was not scored."""
    lines = [f"{len(result.predicted)} predictions in {result.seconds:.1f} s"
             + (f" -> {result.files['predictions']}" if "predictions" in result.files else "")]
    if result.skipped:
        lines.append(f"skipped {len(result.skipped)} unreadable input(s), e.g. {result.skipped[0]}")
    if result.metrics is not None:
        m = result.metrics
        unlabelled = len(result.predicted) - m.scored
        lines.append(f"accuracy {m.accuracy:.4f}  macro-F1 {m.macro_f1:.4f}  on {m.scored} labelled inputs"
                     + (f" ({unlabelled} unlabelled or of unknown classes)" if unlabelled else ""))
        if "confusion_matrix" in result.files:
            lines.append(f"confusion matrix: {result.files['confusion_matrix']} (numbers in "
                         f"{result.files.get('summary', 'summary.json')})")
    elif any(label is not None for label in result.labels):
        lines.append("no label matches a class of the run: no metrics")
    lines.extend(f"note: {note}" for note in result.notes)
    return lines


__all__ = ["InputColumns", "PredictIO", "PredictInputs", "PredictMetrics", "PredictionResult", "RunModel",
           "add_dataset", "collect_inputs", "iterate_batches", "load_run_model", "predict"]
