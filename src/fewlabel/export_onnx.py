"""Export a run's classifier to ONNX and check it against PyTorch with onnxruntime.

``fewlabel predict --model RUN --format onnx`` (or :func:`export_onnx`) writes ``<run>/onnx/`` (or ``--out``):

* ``model.onnx``: images: input ``images``, uint8 ``(N, C, S, S)`` decoded as the run decoded its images (see
  :func:`fewlabel.data.image_files.decode_image`; ``C`` and ``S`` are the run's ``in_chans`` and ``data_size``),
  output ``logits`` ``(N, classes)``; the graph contains the model's whole input adapter (scaling to [0, 1],
  channel conversion, resizing to the backbone's input size, normalisation). Text: inputs ``input_ids`` and
  ``attention_mask``, int64 ``(N, T)`` from the run's tokenizer (saved beside it as ``tokenizer/``), output
  ``logits``. Class names are in the model's metadata (``fewlabel.classes``) and in the sidecar;
* ``model.onnx.json``: classes, inputs, preprocessing and the check's result.

The check runs the ONNX model with onnxruntime and the run's PyTorch classifier on the same real inputs (the data
given, else the first test samples of the run's own data), as one batch and as a batch of one (so the dynamic batch
and sequence axes are exercised), and refuses to write the model when the logits differ by more than the tolerance
(1e-4, relative to the largest logit when that exceeds 1: float32 rounding grows with the logits).

What differs between modalities (the graph, its named inputs and dynamic axes, the batch of one for the check, the
sidecar's input description and the files beside the model) comes from the run's modality, through
:meth:`fewlabel.predict.PredictIO.onnx_graph` and its neighbours; this module is the export and check they share.

Exporter: the TorchScript exporter (``torch.onnx.export(..., dynamo=False)``, opset 17). It exports every
fewlabel classifier (timm convnets, BiLSTM/BiGRU with packed sequences, Hugging Face encoders) in about a second
and needs only the ``onnx`` package, where the ``torch.export``-based exporter takes 10-30 s on the same models
and fails on packed RNN sequences. The one operation the TorchScript exporter lacks is antialiased bilinear
*down*-sampling: an input adapter that shrinks images (data decoded larger than the backbone's input) is exported
with the ``torch.export``-based exporter (opset 18, whose Resize has antialiasing; needs ``onnxscript``). Bilinear
*up*-sampling with antialiasing is plain bilinear interpolation, so it is exported as such (the check confirms it).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from fewlabel.errors import FewlabelError
from fewlabel.predict import (
    PredictInputs,
    PredictIO,
    RunModel,
    _read_config,
    add_dataset,
    collect_inputs,
    iterate_batches,
    load_run_model,
    new_file,
    output_folder,
    publish,
)

ONNX_FILE = "model.onnx"
SIDECAR = "model.onnx.json"
TORCHSCRIPT_OPSET = 17
DYNAMO_OPSET = 18


@dataclass(frozen=True)
class OnnxExport:
    """Where the model went and how closely onnxruntime reproduces PyTorch."""

    path: str
    sidecar: str
    exporter: str  # "torchscript" or "dynamo"
    opset: int
    max_abs_diff: float  # on the logits, over every checked input
    max_abs_logit: float  # the tolerance is relative to this, when it exceeds 1
    checked_inputs: int
    tolerance: float
    same_predictions: bool


@dataclass
class OnnxGraph:
    """A modality's exportable graph (:meth:`~fewlabel.predict.PredictIO.onnx_graph`): the module whose arguments
    are the ONNX model's inputs, and how those inputs are described."""

    module: nn.Module
    input_names: list[str]
    dynamic_axes: dict[str, dict[int, str]]  # per input; the logits' batch axis is added by the export
    inputs: dict[str, Any]  # the sidecar's "inputs": dtype and shape of each
    dynamo: bool = False  # needs the torch.export-based exporter (antialiased down-sampling)
    sidecar: dict[str, Any] = field(default_factory=dict)  # extra sidecar fields (text: where the tokenizer is)


def _require_onnx() -> tuple[Any, Any]:
    try:
        import onnx
        import onnxruntime
    except ImportError as exc:
        raise FewlabelError(f"ONNX export needs onnx and onnxruntime ({exc.name} is missing): "
                            "pip install 'fewlabel[onnx]'") from None
    return onnx, onnxruntime


def _run_data_inputs(run: RunModel, samples: int) -> PredictInputs:
    """The first test samples of the run's own data (its split.npz), for the check when no data is given."""
    from fewlabel.data.registry import load_dataset
    from fewlabel.data.splits import LabelSplit

    config = _read_config(run.run_dir)
    data = config.get("data")
    if config.get("command") == "evaluate" and not data:
        from fewlabel.models.export import load_backbone

        data = load_backbone(str(config.get("backbone")))[1].get("dataset")
    if not isinstance(data, str) or not data:
        raise FewlabelError(f"{run.run_dir}/config.yaml does not name the run's data; pass --data with a few inputs "
                            "for the check")
    try:
        dataset = load_dataset(data, config.get("data_dir"), config.get("columns") or None)
    except FewlabelError as exc:
        raise FewlabelError(f"the run's data for the check is not available ({exc}); pass --data with a few "
                            "inputs") from None
    order: Sequence[int] = range(len(dataset))
    with contextlib.suppress(FewlabelError):  # no split.npz, or one made for other data: the first samples
        order = LabelSplit.load(run.run_dir / "split.npz", dataset).test.tolist()
    inputs = PredictInputs(names=[], labels=[], name=dataset.name, source=f"{data} (test split)")
    add_dataset(dataset, inputs)
    return inputs.take(order[: samples * 4])  # a few spare ones for unreadable files


def _check_batches(run: RunModel, io: PredictIO, inputs: PredictInputs, samples: int) -> list[Any]:
    """A batch of up to ``samples`` real inputs and a batch of one, preprocessed as predict does it."""
    head = inputs.take(range(min(len(inputs), samples * 4)))
    batches = [batch for positions, batch, _ in iterate_batches(run, head, samples, 0, skip_bad=True) if positions]
    if not batches:
        raise FewlabelError(f"none of the first inputs of {inputs.source} could be read for the check")
    return [batches[0], io.onnx_single(batches[0])]


def _as_feed(io: PredictIO, batch: Any) -> dict[str, np.ndarray]:
    return {name: value.cpu().numpy() for name, value in io.onnx_inputs(batch).items()}


def export_onnx(model_dir: str | os.PathLike, data: Any = None, out: str | os.PathLike | None = None, *,
                text_column: str | None = None, label_column: str | None = None, image_column: str | None = None,
                data_dir: str | None = None, samples: int = 8, tolerance: float = 1e-4) -> OnnxExport:
    """Export the classifier of the run in ``model_dir`` to ONNX and check it with onnxruntime (see module doc)."""
    onnx, onnxruntime = _require_onnx()
    run = load_run_model(model_dir)
    inputs = (collect_inputs(run, data, text_column=text_column, label_column=label_column,
                             image_column=image_column, data_dir=data_dir)
              if data is not None else _run_data_inputs(run, samples))
    io = run.io
    folder = output_folder(run.run_dir / "onnx", out, (ONNX_FILE, SIDECAR, *io.onnx_files))
    batches = _check_batches(run, io, inputs, samples)
    spec = io.onnx_graph(run)
    graph, input_names, dynamo = spec.module, spec.input_names, spec.dynamo
    dynamic = {**spec.dynamic_axes, "logits": {0: "batch"}}
    graph.eval()
    example = tuple(io.onnx_inputs(batches[0]).values())

    try:
        folder.mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(dir=folder, prefix=".onnx-export-"))
    except OSError as exc:
        raise FewlabelError(f"cannot write to {folder}: {exc.strerror}; choose another --out") from None
    try:
        tmp_model = work / ONNX_FILE
        _export(graph, example, tmp_model, input_names, dynamic, dynamo)
        model_proto = onnx.load(str(tmp_model))
        try:
            onnx.checker.check_model(model_proto)
            session = onnxruntime.InferenceSession(str(tmp_model), providers=["CPUExecutionProvider"])
            outputs = [session.run(["logits"], _as_feed(io, batch))[0] for batch in batches]
        except Exception as exc:  # onnx's ValidationError and onnxruntime's many failure types
            raise FewlabelError(f"the exported ONNX model does not run in onnxruntime ({_first_line(exc)}); the "
                                "model was not written") from None
        worst, scale, same, checked = 0.0, 1.0, True, 0
        with torch.inference_mode():
            for batch, got in zip(batches, outputs, strict=True):
                expected = run.model(batch).float().numpy()
                worst = max(worst, float(np.abs(got - expected).max()))
                scale = max(scale, float(np.abs(expected).max()))
                same = same and bool((got.argmax(axis=1) == expected.argmax(axis=1)).all())
                checked += len(expected)
        exporter, opset = ("dynamo", DYNAMO_OPSET) if dynamo else ("torchscript", TORCHSCRIPT_OPSET)
        # float32 rounding grows with the logits' size: the tolerance is absolute up to |logit| 1, relative above.
        if not worst <= tolerance * scale:
            raise FewlabelError(f"the ONNX model's logits differ from PyTorch's by {worst:.3g} (> {tolerance:g} x "
                                f"{scale:.3g}) on {checked} inputs of {inputs.source}; the model was not written")
        sidecar = _sidecar(run, spec, exporter, opset, worst, checked, tolerance * scale, same, inputs.source)
        for key, value in (("fewlabel.classes", json.dumps(run.classes, ensure_ascii=False)),
                           ("fewlabel.inputs", json.dumps(sidecar["inputs"], ensure_ascii=False))):
            entry = model_proto.metadata_props.add()
            entry.key, entry.value = key, value
        onnx.save(model_proto, str(tmp_model))
        # First: the model and its sidecar appear only with the files they need (text: the tokenizer).
        io.save_onnx_files(run, work)
        for name in io.onnx_files:
            try:
                os.rename(work / name, folder / name)  # refused when a non-empty folder has the name
            except OSError:
                raise FewlabelError(f"{folder / name} already exists; choose another --out or remove "
                                    "it") from None
        publish(tmp_model, folder / ONNX_FILE)
        with new_file(folder / SIDECAR) as tmp:
            tmp.write_text(json.dumps(sidecar, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    finally:
        shutil.rmtree(work, ignore_errors=True)
        if folder.is_dir() and not any(folder.iterdir()):
            folder.rmdir()
    return OnnxExport(path=str(folder / ONNX_FILE), sidecar=str(folder / SIDECAR), exporter=exporter, opset=opset,
                      max_abs_diff=worst, max_abs_logit=scale, checked_inputs=checked, tolerance=tolerance,
                      same_predictions=same)


def _export(graph: nn.Module, example: tuple[torch.Tensor, ...], path: Path, input_names: list[str],
            dynamic: dict[str, dict[int, str]], dynamo: bool) -> None:
    with warnings.catch_warnings():
        # The TorchScript exporter's deprecation notice, and its LSTM batch-size advice (the check covers it).
        warnings.simplefilter("ignore")
        try:
            if dynamo:
                try:
                    import onnxscript  # noqa: F401
                except ImportError:
                    raise FewlabelError("this model shrinks its input images (antialiased resizing), which only the "
                                        "torch.export-based ONNX exporter supports: pip install onnxscript") from None
                batch = torch.export.Dim("batch")
                torch.onnx.export(graph, example, str(path), dynamo=True, opset_version=DYNAMO_OPSET,
                                  input_names=input_names, output_names=["logits"],
                                  dynamic_shapes=({0: batch},), verbose=False)
            else:
                torch.onnx.export(graph, example, str(path), dynamo=False, opset_version=TORCHSCRIPT_OPSET,
                                  input_names=input_names, output_names=["logits"], dynamic_axes=dynamic)
        except FewlabelError:
            raise
        except Exception as exc:  # exporter failures come as many types (unsupported operator, tracing errors)
            raise FewlabelError(f"ONNX export failed ({_first_line(exc)})") from None


def _first_line(exc: Exception) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0][:200]}" if text else type(exc).__name__


def _sidecar(run: RunModel, spec: OnnxGraph, exporter: str, opset: int, worst: float, checked: int,
             tolerance: float, same: bool, source: str) -> dict[str, Any]:
    return {
        "format": "fewlabel-onnx/1", "model": str(run.run_dir), "run_kind": run.kind, "modality": run.modality,
        "classes": run.classes, "inputs": spec.inputs, "outputs": {"logits": {"dtype": "float32",
                                                                             "shape": ["N", len(run.classes)]}},
        "probabilities": "softmax over the logits", "preprocessing": run.preprocessing(), **spec.sidecar,
        "exporter": exporter, "opset": opset,
        "check": {"max_abs_diff": worst, "tolerance": tolerance, "inputs": checked, "same_predictions": same,
                  "data": source, "runtime": "onnxruntime CPUExecutionProvider"},
    }


__all__ = ["OnnxExport", "OnnxGraph", "export_onnx"]
