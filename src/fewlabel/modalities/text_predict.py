"""``fewlabel predict`` and ONNX export for text runs: rebuilding the classifier and its tokenizer from
``model.json`` (``<run>/tokenizer`` for text ``train`` runs, the encoder's own for ``finetune`` runs), reading text
tables, ``.txt`` files and folders of documents, and tokenising them to the run's sequence length.

The generic flow is :mod:`fewlabel.predict`; this module is what it asks through
:class:`fewlabel.predict.PredictIO` (``TextModality.predict_io()``).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import nn

from fewlabel.errors import FewlabelError
from fewlabel.modalities.text import RNN_CELLS, TextModality
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

TEXT_TRAIN_MAX_LENGTH = 128  # text `train` runs tokenise to at most 128 tokens (TextModality.supervised_setup)
TOKENIZER = "tokenizer"  # beside an exported model.onnx


class TextPredictIO:
    """Texts for predict: kept in memory, tokenised a batch at a time by the run's tokenizer."""

    batch_size: ClassVar[int] = 128
    onnx_files: ClassVar[tuple[str, ...]] = (TOKENIZER,)
    input_names: ClassVar[tuple[str, ...]] = ("input_ids", "attention_mask")

    # --- the run's model --------------------------------------------------------------------------------------
    def claims(self, meta: dict[str, Any]) -> bool:
        """Runs from before model.json named its modality: text runs are those that recorded a tokenizer (BiLSTM /
        BiGRU ``train`` runs) or a pooling (fine-tuned encoders)."""
        return "tokenizer" in meta or "text_pooling" in meta

    def complete_meta(self, run_dir: Path, meta: dict[str, Any], config: dict[str, Any],
                      notes: list[str]) -> dict[str, Any]:
        return meta  # every text run's model.json says how to rebuild it

    def finetuned(self, meta: dict[str, Any]) -> bool:
        """Older fine-tuned encoders recorded their pooling, not always their strategy."""
        return "text_pooling" in meta

    def build(self, run_dir: Path, meta: dict[str, Any], config: dict[str, Any], classes: list[str], kind: str,
              notes: list[str]) -> RunModel:
        """A BiLSTM/BiGRU and the run's own WordPiece tokenizer, or the encoder (and its tokenizer) the run was
        fine-tuned from, rebuilt offline (weights follow)."""
        if "tokenizer" in meta and "text_pooling" not in meta:
            from transformers import AutoTokenizer

            from fewlabel.models.rnn import RNNTextClassifier

            cell = RNN_CELLS.get(str(meta.get("backbone")))
            if cell is None:
                raise FewlabelError(f"{run_dir / MODEL_META}: unknown text model {meta.get('backbone')!r}")
            folder = run_dir / str(meta["tokenizer"])
            if not (folder / "tokenizer.json").is_file() and not (folder / "tokenizer_config.json").is_file():
                raise FewlabelError(f"the run's tokenizer {folder} is missing; the run folder is incomplete")
            try:
                tokenizer = AutoTokenizer.from_pretrained(str(folder))
            except (OSError, ValueError) as exc:
                raise FewlabelError(f"cannot read the run's tokenizer {folder}: {str(exc).splitlines()[0]}") from None
            model = RNNTextClassifier(len(tokenizer), len(classes), cell=cell)
            return RunModel(run_dir, model, classes, TextModality.name, kind, meta, tokenizer=tokenizer,
                            max_length=TEXT_TRAIN_MAX_LENGTH, notes=notes)
        from fewlabel.models.text_encoder import TextClassifier, load_text_backbone

        source = str(meta.get("backbone") or "minilm")
        if source == "efficientnet_lite0":  # text runs before model.json named the text source: the default, MiniLM
            source = "minilm"
            notes.append("model.json names the image default as the text backbone (older run): using MiniLM")
        folder = existing_dir({"backbone": source, "backbone_dir": meta.get("backbone_dir")})
        if folder is None and looks_like_path(source):
            raise FewlabelError(f"the run's text encoder came from {source!r}, which is no longer there (needed for "
                                "its architecture and tokenizer); restore that folder or run predict from where you "
                                "trained")
        backbone, tokenizer = load_text_backbone(str(folder or source),
                                                 pooling=str(meta.get("text_pooling") or "mean"))
        model = TextClassifier(backbone, len(classes))
        return RunModel(run_dir, model, classes, TextModality.name, kind, meta, tokenizer=tokenizer,
                        max_length=backbone.input_spec.max_length, notes=notes)

    def preprocessing(self, run: RunModel) -> dict[str, Any]:
        return {"tokenizer": str(getattr(run.tokenizer, "name_or_path", "")), "max_length": run.max_length}

    # --- inputs -----------------------------------------------------------------------------------------------
    def read_path(self, path: Path, inputs: PredictInputs, columns: InputColumns) -> None:
        """A text table, a .txt file (one text per line) or a folder of .txt documents (``<class>/`` labels)."""
        from fewlabel.data.text import decode_text_file, load_text_table, table_format

        if path.is_file() and table_format(path) is not None:
            dataset = load_text_table(path, text_column=columns.text, label_column=columns.label,
                                      require_labels=False)
            skipped = dataset.extra.get("skipped_rows") or {}
            if skipped:
                inputs.notes.append(f"{path.name}: rows skipped: {skipped}")
            add_dataset(dataset, inputs)
        elif path.is_file() and path.suffix.lower() == ".txt":  # one text per line
            lines = [line.strip() for line in decode_text_file(path)[0].splitlines() if line.strip()]
            inputs.add(lines, [None] * len(lines), texts=lines)
        elif path.is_dir():  # one document per .txt file; <class>/ sub-folders give labels
            documents = [(name, label, decode_text_file(Path(file))[0].strip())
                         for file, name, label in zip(*folder_files(path, (".txt",)), strict=True)]
            empty = sum(not text for _, _, text in documents)
            if empty:
                inputs.notes.append(f"{path.name}: {empty} empty document(s) skipped")
            documents = [document for document in documents if document[2]]
            inputs.add([name for name, _, _ in documents], [label for _, label, _ in documents],
                       texts=[text for _, _, text in documents])
        else:
            raise FewlabelError(f"{path}: not a text table (.csv/.tsv/.jsonl, optionally .gz/.bz2/.xz), a .txt file "
                                "(one text per line) or a folder of .txt documents")

    def add_samples(self, dataset: Dataset, labels: list[str | None], inputs: PredictInputs) -> None:
        inputs.add(dataset.samples, labels, texts=dataset.samples)

    def nothing_found(self, source: str) -> str:
        return (f"no texts found in {source}; the model is a text classifier: pass a text table (.csv/.tsv/.jsonl), "
                "a .txt file (one text per line) or a folder of .txt files")

    def batches(self, run: RunModel, inputs: PredictInputs, batch_size: int, workers: int,
                skip_bad: bool) -> Iterator[BatchItem]:
        """Tokenised batches (a dict of tensors), in input order; texts are never unreadable here."""
        from fewlabel.models.tokenizers import TextCollator

        collate = TextCollator(run.tokenizer, max_length=run.max_length)
        texts = inputs.texts or []
        for start in range(0, len(texts), batch_size):
            chunk = texts[start : start + batch_size]
            yield list(range(start, start + len(chunk))), collate(chunk), []

    # --- ONNX -------------------------------------------------------------------------------------------------
    def onnx_graph(self, run: RunModel) -> OnnxGraph:
        """int64 token ids and attention mask in, dynamic batch and sequence axes; the tokenizer goes beside it."""
        from fewlabel.export_onnx import OnnxGraph

        return OnnxGraph(module=_TextGraph(run.model), input_names=list(self.input_names),
                         dynamic_axes={name: {0: "batch", 1: "sequence"} for name in self.input_names},
                         inputs={name: {"dtype": "int64", "shape": ["N", "T"]} for name in self.input_names},
                         sidecar={"tokenizer": f"{TOKENIZER}/"})

    def onnx_inputs(self, batch: Any) -> dict[str, torch.Tensor]:
        return {name: batch[name] for name in self.input_names}

    def onnx_single(self, batch: Any) -> Any:
        """The first text alone, without the padding its batch added, so the sequence length differs too."""
        single = {k: v[:1] for k, v in batch.items()}
        length = int(single["attention_mask"].sum())
        return {k: v[:, :length] for k, v in single.items()}

    def save_onnx_files(self, run: RunModel, folder: Path) -> None:
        """The run's tokenizer: the ONNX model takes token ids."""
        run.tokenizer.save_pretrained(str(folder / TOKENIZER))


class _TextGraph(nn.Module):
    def __init__(self, classifier: nn.Module):
        super().__init__()
        self.classifier = classifier

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.classifier({"input_ids": input_ids, "attention_mask": attention_mask})


__all__ = ["TEXT_TRAIN_MAX_LENGTH", "TextPredictIO"]
