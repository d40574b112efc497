"""``fewlabel predict`` for audio runs: rebuilding the log-mel CNN or the speech encoder a run trained, reading
audio files, folders (``<class>/`` labels) and manifests, and decoding each clip as training did (mono, soxr to
the run's rate, centre crop or zero padding to its clip length), a batch at a time.

The generic flow is :mod:`fewlabel.predict`; this module is what it asks through
:class:`fewlabel.predict.PredictIO` (``AudioModality.predict_io()``).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import torch

from fewlabel.errors import FewlabelError
from fewlabel.modalities.audio import AudioModality
from fewlabel.predict import BatchItem, InputColumns, PredictInputs, RunModel, add_dataset, existing_dir, folder_files

if TYPE_CHECKING:
    from fewlabel.data.dataset import Dataset
    from fewlabel.export_onnx import OnnxGraph


class AudioPredictIO:
    """Clips for predict: files decoded a batch at a time, or an in-memory int16 dataset."""

    batch_size: ClassVar[int] = 64
    onnx_files: ClassVar[tuple[str, ...]] = ()

    # --- the run's model --------------------------------------------------------------------------------------
    def claims(self, meta: dict[str, Any]) -> bool:
        return False  # every audio run's model.json names its modality

    def complete_meta(self, run_dir: Path, meta: dict[str, Any], config: dict[str, Any],
                      notes: list[str]) -> dict[str, Any]:
        return meta

    def finetuned(self, meta: dict[str, Any]) -> bool:
        return "audio_layer" in meta

    def build(self, run_dir: Path, meta: dict[str, Any], config: dict[str, Any], classes: list[str], kind: str,
              notes: list[str]) -> RunModel:
        """The log-mel front end + image backbone of a ``train`` run, or the speech encoder a transfer / evaluate
        run started from (rebuilt offline from its folder; the run's weights follow)."""
        from fewlabel.models.backbones import EmbeddingClassifier

        if meta.get("front_end") == "log-mel":
            from fewlabel.augment.audio import LogMel
            from fewlabel.models.backbones import BackboneSpec, create_backbone
            from fewlabel.models.spectrogram import SpectrogramBackbone

            log_mel = LogMel(int(meta["sample_rate"]), n_mels=int(meta["n_mels"]), hop_length=int(meta["hop_length"]))
            body = create_backbone(BackboneSpec(name=str(meta["backbone"]), in_chans=1, width=meta.get("width")))
            backbone = SpectrogramBackbone(body, log_mel)
        else:
            from fewlabel.models.audio_encoder import load_audio_backbone

            folder = existing_dir(meta)
            if folder is None:
                raise FewlabelError(f"the run's speech encoder came from {meta.get('backbone')!r}, which is no longer "
                                    "there (needed for its architecture); restore that folder")
            backbone = load_audio_backbone(str(folder), layer=str(meta.get("audio_layer") or "last"))
        return RunModel(run_dir, EmbeddingClassifier(backbone, len(classes)), classes, AudioModality.name, kind,
                        meta, notes=notes)

    def preprocessing(self, run: RunModel) -> dict[str, Any]:
        return {"decode": "mono, resampled with soxr, centre crop or zero padding at the end",
                "sample_rate": run.meta.get("sample_rate"), "clip_samples": run.meta.get("clip_samples")}

    # --- inputs -----------------------------------------------------------------------------------------------
    def read_path(self, path: Path, inputs: PredictInputs, columns: InputColumns) -> None:
        """An audio file, a folder of them (``<class>/`` sub-folders give labels; ``_background_noise_`` is not
        data) or a manifest table (a path column, optionally a label column)."""
        from fewlabel.data.audio import AUDIO_SUFFIXES, NOISE_FOLDER, load_audio_manifest
        from fewlabel.data.text import table_format

        if path.is_dir():
            found = [(p, n, label) for p, n, label in zip(*folder_files(path, tuple(AUDIO_SUFFIXES)), strict=True)
                     if not n.startswith(f"{NOISE_FOLDER}/")]
            inputs.add([n for _, n, _ in found], [label for _, _, label in found], paths=[p for p, _, _ in found])
        elif path.suffix.lower() in AUDIO_SUFFIXES:
            inputs.add([path.name], [None], paths=[str(path)])
        elif table_format(path) is not None:
            add_dataset(load_audio_manifest(path, path_column=columns.image or columns.text,
                                            label_column=columns.label), inputs)
        else:
            raise FewlabelError(f"{path}: not an audio file ({', '.join(sorted(AUDIO_SUFFIXES))}), a folder of them "
                                "or a manifest table")

    def add_samples(self, dataset: Dataset, labels: list[str | None], inputs: PredictInputs) -> None:
        inputs.tensor = dataset.samples  # int16 clips, decoded by the dataset's reader
        inputs.add([f"{dataset.name}[{i}]" for i in range(len(dataset))], labels)

    def nothing_found(self, source: str) -> str:
        return (f"no audio found in {source}; the model is an audio classifier: pass audio files (.wav, .flac, .ogg, "
                ".mp3), a folder of them or a manifest table")

    def batches(self, run: RunModel, inputs: PredictInputs, batch_size: int, workers: int,
                skip_bad: bool) -> Iterator[BatchItem]:
        """int16 clips ``(B, samples)`` in input order; an unreadable file stops, or is skipped with ``skip_bad``."""
        from fewlabel.data.audio import decode_audio, fit_length

        rate, length = int(run.meta.get("sample_rate") or 16000), int(run.meta.get("clip_samples") or 16000)
        if inputs.tensor is not None:
            for start in range(0, len(inputs.tensor), batch_size):
                chunk = inputs.tensor[start : start + batch_size]
                yield list(range(start, start + len(chunk))), chunk, []
            return
        paths = inputs.paths or []
        for start in range(0, len(paths), batch_size):
            good: list[tuple[int, np.ndarray]] = []
            bad: list[tuple[int, str]] = []
            for position in range(start, min(start + batch_size, len(paths))):
                try:
                    good.append((position, fit_length(decode_audio(paths[position], rate), length)))
                except FewlabelError as exc:
                    if not skip_bad:
                        raise
                    bad.append((position, str(exc)))
            batch = torch.from_numpy(np.stack([clip for _, clip in good])) if good else None
            yield [position for position, _ in good], batch, bad

    # --- ONNX -------------------------------------------------------------------------------------------------
    def onnx_graph(self, run: RunModel) -> OnnxGraph:
        raise FewlabelError("ONNX export of audio models is not supported yet; predict with --format csv")

    def onnx_inputs(self, batch: Any) -> dict[str, torch.Tensor]:
        raise FewlabelError("ONNX export of audio models is not supported yet")

    def onnx_single(self, batch: Any) -> Any:
        raise FewlabelError("ONNX export of audio models is not supported yet")

    def save_onnx_files(self, run: RunModel, folder: Path) -> None:
        raise FewlabelError("ONNX export of audio models is not supported yet")


__all__ = ["AudioPredictIO"]
