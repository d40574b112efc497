"""`fewlabel predict` and ONNX export on tiny runs trained through the CLI: the run's own test images give the run's
own accuracy, classes are matched by name, outputs are complete and never overwritten, errors are one line."""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import save_tiny_bert
from PIL import Image

from fewlabel.cli import main
from fewlabel.data.images import load_digits_dataset
from fewlabel.errors import FewlabelError
from fewlabel.predict import load_run_model, predict

FAST = ["--epochs", "1", "--workers", "0"]


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Module-wide isolation (the runs below are shared by several tests): own cache, never a download."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("FEWLABEL_CACHE", str(tmp_path_factory.mktemp("cache")))
        patch.setenv("FEWLABEL_OFFLINE", "1")
        patch.delenv("FEWLABEL_DATA", raising=False)
        yield tmp_path_factory.mktemp("predict")


def cli(args: list[str], capsys: pytest.CaptureFixture[str] | None = None) -> tuple[int, str, str]:
    code = main(args)
    if capsys is None:
        return code, "", ""
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture(scope="module")
def digits_run(env: Path) -> Path:
    out = env / "digits-run"
    assert main(["-q", "train", "--data", "digits", "--labels", "0.2", "--width", "8", *FAST, "--out", str(out)]) == 0
    return out


def write_digits(root: Path, indices: np.ndarray, rename: dict[str, str] | None = None) -> None:
    """Digits images as 8 x 8 PNG files in ``root/<class>/``: lossless, so they decode to the same pixels."""
    dataset = load_digits_dataset()
    for i in indices:
        name = dataset.classes[dataset.labels[i]]
        folder = root / (rename or {}).get(name, name)
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(dataset.samples[i, 0].numpy()).save(folder / f"{i:04d}.png")


@pytest.fixture(scope="module")
def digits_test_folder(env: Path, digits_run: Path) -> Path:
    root = env / "digits-test-png"
    write_digits(root, np.load(digits_run / "split.npz")["test"])
    return root


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def test_predict_reproduces_the_runs_test_accuracy(digits_run: Path, digits_test_folder: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = cli(["-q", "predict", "--model", str(digits_run), "--data", str(digits_test_folder)], capsys)
    assert code == 0 and "accuracy" in out and "macro-F1" in out
    folder = digits_run / "predictions" / digits_test_folder.name
    rows = read_csv(folder / "predictions.csv")
    classes = [str(d) for d in range(10)]
    assert list(rows[0]) == ["input", "label", "predicted", "probability", *(f"prob_{c}" for c in classes)]
    probs = np.array([[float(r[f"prob_{c}"]) for c in classes] for r in rows])
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    assert [r["predicted"] for r in rows] == [classes[i] for i in probs.argmax(axis=1)]

    # The same predictions as the run's reloaded model on the in-memory test images, and the run's own accuracy.
    dataset = load_digits_dataset()
    index = [int(Path(r["input"]).stem) for r in rows]
    model = load_run_model(digits_run).model
    with torch.inference_mode():
        expected = model(dataset.samples[torch.as_tensor(index)]).argmax(dim=1).numpy()
    assert [int(r["predicted"]) for r in rows] == expected.tolist()
    summary = json.loads((folder / "summary.json").read_text(encoding="utf-8"))
    metrics = json.loads((digits_run / "metrics.json").read_text())
    assert summary["metrics"]["accuracy"] == pytest.approx(metrics["test_accuracy"], abs=1.5 / len(rows))
    assert summary["preprocessing"]["data_size"] == 8 and summary["preprocessing"]["channels"] == 1
    matrix = np.array(summary["metrics"]["confusion_matrix"])
    assert matrix.shape == (10, 10) and matrix.sum() == len(rows) == 360
    assert (folder / "confusion_matrix.png").stat().st_size > 1000

    # A second prediction never overwrites the first: the default folder gets a new name, --out is refused.
    before = (folder / "predictions.csv").read_bytes()
    second = predict(digits_run, digits_test_folder, progress=False)
    assert Path(second.out_dir).name == f"{digits_test_folder.name}-2"
    code, _, err = cli(["predict", "--model", str(digits_run), "--data", str(digits_test_folder), "--out",
                        str(folder)], capsys)
    assert code == 2 and "already exists" in err and len(err.strip().splitlines()) == 1
    assert (folder / "predictions.csv").read_bytes() == before


def test_classes_are_matched_by_name(env: Path, digits_run: Path) -> None:
    """Another source: a subset of the run's classes, one it does not know, and sub-folders in another order."""
    root = env / "new-source"
    dataset = load_digits_dataset()
    threes, sevens = np.flatnonzero(dataset.labels == 3)[:5], np.flatnonzero(dataset.labels == 7)[:4]
    write_digits(root, np.concatenate([threes, sevens]))
    write_digits(root, np.flatnonzero(dataset.labels == 1)[:3], rename={"1": "cat"})
    result = predict(digits_run, root, out=env / "new-source-out", progress=False)
    assert result.unknown_classes == {"cat": 3}
    assert result.metrics is not None and result.metrics.scored == 9
    assert any("'cat'" in note for note in result.notes)
    matrix = np.array(result.metrics.confusion_matrix)
    assert matrix[3].sum() == 5 and matrix[7].sum() == 4 and matrix.sum() == 9
    assert result.metrics.per_class_accuracy["0"] is None
    rows = read_csv(Path(result.files["predictions"]))
    assert len(rows) == 12 and sorted({r["label"] for r in rows}) == ["3", "7", "cat"]
    assert Path(result.files["confusion_matrix"]).is_file()
    # Unlabelled images (a flat folder) and a list of files: predictions only, no metrics, no label column.
    flat = env / "flat"
    flat.mkdir()
    for i in range(3):
        Image.fromarray(dataset.samples[i, 0].numpy()).save(flat / f"x{i}.png")
    unlabelled = predict(digits_run, [flat / "x0.png", flat / "x2.png"], out=env / "flat-out", progress=False)
    assert unlabelled.metrics is None and unlabelled.inputs == [str(flat / "x0.png"), str(flat / "x2.png")]
    assert "label" not in read_csv(Path(unlabelled.files["predictions"]))[0]
    assert not (env / "flat-out" / "confusion_matrix.png").exists()


def test_older_runs_fall_back_to_their_config(env: Path, digits_run: Path, digits_test_folder: Path) -> None:
    """A model.json from before data_size/in_chans were recorded: the dataset shape in config.yaml is used."""
    old = env / "old-run"
    old.mkdir()
    for name in ("model.safetensors", "config.yaml"):
        (old / name).write_bytes((digits_run / name).read_bytes())
    meta = json.loads((digits_run / "model.json").read_text())
    del meta["data_size"], meta["in_chans"]
    (old / "model.json").write_text(json.dumps(meta), encoding="utf-8")
    result = predict(old, digits_test_folder, write=False, progress=False)
    assert any("older run" in note for note in result.notes)
    reference = predict(digits_run, digits_test_folder, write=False, progress=False)
    np.testing.assert_array_equal(result.probabilities, reference.probabilities)


@pytest.fixture(scope="module")
def photo_folder(env: Path) -> Path:
    """Colour images of three classes (red, green or blue dominant) at 40 x 30 px, as PNG and JPEG."""
    rng = np.random.default_rng(0)
    root = env / "photos"
    for c, name in enumerate(["red", "green", "blue"]):
        (root / name).mkdir(parents=True)
        for i in range(14):
            pixels = rng.integers(0, 90, size=(30, 40, 3), dtype=np.uint8)
            pixels[..., c] = rng.integers(150, 256, size=(30, 40), dtype=np.uint8)
            Image.fromarray(pixels).save(root / name / f"{i}.{'jpg' if i % 2 else 'png'}")
    return root


def test_image_folder_run_predicts_with_its_decoding(env: Path, photo_folder: Path) -> None:
    from fewlabel.data.image_files import decode_image

    run = env / "photo-run"
    assert main(["-q", "train", "--data", str(photo_folder), "--labels", "1.0", "--image-size", "16", "--width", "8",
                 *FAST, "--out", str(run)]) == 0
    loaded = load_run_model(run)
    assert (loaded.channels, loaded.data_size) == (3, 16)
    # A table of image paths (relative to the table) with a label column: the same decoding as training.
    table = photo_folder / "list.csv"
    files = sorted(photo_folder.glob("*/*.*"))
    table.write_text("file,class\n" + "".join(f"{p.relative_to(photo_folder)},{p.parent.name}\n" for p in files),
                     encoding="utf-8")
    result = predict(run, table, out=env / "photo-out", progress=False)
    assert len(result.predicted) == len(files) == 42 and result.metrics is not None
    batch = torch.stack([decode_image(p, 16, 3) for p in files])
    with torch.inference_mode():
        expected = loaded.model(batch).softmax(dim=1).numpy()
    np.testing.assert_allclose(result.probabilities, expected, atol=1e-5)
    assert result.metrics.scored == 42


def test_efficientnet_feature_extract_predict_and_onnx(env: Path, digits_run: Path, digits_test_folder: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    run = env / "effnet-run"
    assert main(["-q", "finetune", "--backbone", "efficientnet_lite0", "--strategy", "feature-extract", "--data",
                 "digits", "--labels", "5/class", "--image-size", "32", "--out", str(run)]) == 0
    meta = json.loads((run / "model.json").read_text())
    assert (meta["image_size"], meta["data_size"], meta["in_chans"]) == (32, 8, 1)
    result = predict(run, digits_test_folder, write=False, progress=False)
    metrics = json.loads((run / "metrics.json").read_text())
    assert result.metrics is not None and result.out_dir is None
    assert result.metrics.accuracy == pytest.approx(metrics["test_accuracy"], abs=1.5 / 360)
    # ONNX: no --data, so the check runs on the run's own first test images (8 px, upsampled to 32 in the graph).
    code, out, _ = cli(["-q", "predict", "--model", str(run), "--format", "onnx"], capsys)
    assert code == 0 and "onnxruntime matches" in out
    sidecar = json.loads((run / "onnx" / "model.onnx.json").read_text(encoding="utf-8"))
    assert sidecar["inputs"]["images"]["shape"] == ["N", 1, 8, 8] and sidecar["classes"][0] == "0"
    assert sidecar["check"]["max_abs_diff"] <= sidecar["check"]["tolerance"] and sidecar["check"]["same_predictions"]

    import onnxruntime

    session = onnxruntime.InferenceSession(str(run / "onnx" / "model.onnx"), providers=["CPUExecutionProvider"])
    images = load_digits_dataset().samples[:5]
    with torch.inference_mode():
        expected = load_run_model(run).model(images).numpy()
    got = session.run(None, {"images": images.numpy()})[0]
    assert np.abs(got - expected).max() <= 1e-4 * max(1.0, float(np.abs(expected).max()))
    # The scratch run too, checked on the PNG folder; the folder already holding model.onnx is refused.
    assert cli(["-q", "predict", "--model", str(digits_run), "--format", "onnx", "--data", str(digits_test_folder)],
               capsys)[0] == 0
    code, _, err = cli(["predict", "--model", str(digits_run), "--format", "onnx", "--out",
                        str(digits_run / "onnx")], capsys)
    assert code == 2 and "already exists" in err


POSITIVE = ["a wonderful heartfelt film", "great acting and a lovely story", "brilliant funny and warm",
            "a joy to watch", "superb and moving", "delightful clever fun"]
NEGATIVE = ["a dull boring mess", "terrible acting and a weak plot", "tedious and flat", "a waste of time",
            "awful lifeless script", "clumsy dreary failure"]


@pytest.fixture(scope="module")
def reviews(env: Path) -> Path:
    rng = np.random.default_rng(0)
    path = env / "reviews.csv"
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["review", "sentiment"])
        for i in range(120):
            positive = i % 2 == 0
            writer.writerow([" and ".join(rng.choice(POSITIVE if positive else NEGATIVE, size=2)),
                             "pos" if positive else "neg"])
    return path


def test_text_runs_predict_and_export(env: Path, reviews: Path, capsys: pytest.CaptureFixture[str]) -> None:

    from fewlabel.data.text import load_text_table

    # BiLSTM from scratch: the run's test rows, written to a new table, give the run's test accuracy.
    run = env / "text-run"
    assert main(["-q", "train", "--data", str(reviews), "--labels", "0.5", "--epochs", "2", "--workers", "0",
                 "--out", str(run)]) == 0
    dataset = load_text_table(reviews)
    test_rows = env / "text-test.csv"
    with open(test_rows, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["text", "label"])
        for i in np.load(run / "split.npz")["test"]:
            writer.writerow([dataset.samples[i], dataset.classes[dataset.labels[i]]])
    result = predict(run, test_rows, write=False, progress=False)
    metrics = json.loads((run / "metrics.json").read_text())
    assert result.metrics is not None
    assert result.metrics.accuracy == pytest.approx(metrics["test_accuracy"], abs=1.5 / len(result.predicted))
    code, out, _ = cli(["-q", "predict", "--model", str(run), "--format", "onnx"], capsys)
    assert code == 0 and "onnxruntime matches" in out and (run / "onnx" / "tokenizer" / "tokenizer.json").is_file()

    # A fine-tuned encoder (feature-extract): its tokenizer is the encoder's; a .txt file is one text per line.
    encoder = save_tiny_bert(env / "tiny-bert", POSITIVE + NEGATIVE)
    tuned = env / "text-finetune"
    assert main(["-q", "finetune", "--backbone", str(encoder), "--data", str(reviews), "--labels", "0.5",
                 "--out", str(tuned)]) == 0
    lines = env / "new-texts.txt"
    lines.write_text("a joy to watch\n\nawful and dull\nsuperb\n", encoding="utf-8")
    texts = predict(tuned, lines, progress=False)
    assert texts.inputs == ["a joy to watch", "awful and dull", "superb"] and texts.metrics is None
    assert Path(texts.out_dir) == tuned / "predictions" / "new-texts"
    # A folder of documents: <class>/ sub-folders give labels; hidden folders and empty documents are left out.
    docs = env / "new-docs"
    for name, text in {"pos/a.txt": "a joy to watch", "neg/b.txt": "awful lifeless script", "pos/empty.txt": " \n",
                       ".ipynb_checkpoints/c.txt": "superb", "neg/._b.txt": "tedious"}.items():
        (docs / name).parent.mkdir(parents=True, exist_ok=True)
        (docs / name).write_text(text, encoding="utf-8")
    documents = predict(tuned, docs, write=False, progress=False)
    assert documents.inputs == ["neg/b.txt", "pos/a.txt"] and documents.labels == ["neg", "pos"]
    assert documents.metrics is not None and documents.metrics.scored == 2
    assert any("1 empty document" in note for note in documents.notes)
    assert cli(["-q", "predict", "--model", str(tuned), "--format", "onnx", "--data", str(reviews)], capsys)[0] == 0
    sidecar = json.loads((tuned / "onnx" / "model.onnx.json").read_text(encoding="utf-8"))
    assert set(sidecar["inputs"]) == {"input_ids", "attention_mask"} and sidecar["check"]["inputs"] == 9


def test_evaluate_finetune_runs_record_what_predict_needs(env: Path, digits_test_folder: Path) -> None:
    from fewlabel.models.backbones import BackboneSpec, create_backbone
    from fewlabel.models.export import save_backbone

    # A pretraining run's export, as `fewlabel pretrain` writes it (its training is not what is tested here).
    pretrained = env / "simclr"
    spec = BackboneSpec(name="resnet_small", in_chans=1, width=8)
    dataset = load_digits_dataset()
    save_backbone(create_backbone(spec), spec, pretrained / "export", method="simclr", dataset="digits",
                  dataset_fingerprint=dataset.fingerprint(), seed=0, image_shape=[1, 8, 8])
    run = env / "evaluate-finetune"
    assert main(["-q", "evaluate", "--backbone", str(pretrained), "--protocol", "finetune", "--labels", "0.1",
                 *FAST, "--out", str(run)]) == 0
    meta = json.loads((run / "model.json").read_text())
    assert meta["protocol"] == "evaluate" and meta["data_size"] == 8 and meta["in_chans"] == 1
    result = predict(run, digits_test_folder, write=False, progress=False)
    assert result.metrics is not None and result.metrics.scored == 360


@pytest.mark.parametrize(("make", "fragment"), [
    (lambda root, run: ["--model", str(root / "missing"), "--data", str(root)], "does not exist"),
    (lambda root, run: ["--model", str(root), "--data", str(root)], "has no model.safetensors"),
    (lambda root, run: ["--model", str(run), "--data", str(root / "missing")], "does not exist"),
    (lambda root, run: ["--model", str(run), "--data", str(root / "empty")], "no images found"),
    (lambda root, run: ["--model", str(run), "--data", str(root / "broken")], "cannot decode image"),
    (lambda root, run: ["--model", str(root / "corrupt"), "--data", str(root)], "is corrupt"),
    (lambda root, run: ["--model", str(run), "--data", str(root), "--device", "cuda:99"], "is not available"),
    (lambda root, run: ["--model", str(run), "--data", str(root), "--device", "gpu-0"], "is not available"),
])
def test_errors_are_one_line(make, fragment: str, env: Path, digits_run: Path,
                             capsys: pytest.CaptureFixture[str]) -> None:
    root = env / "errors"
    if not root.exists():
        (root / "empty" / "a").mkdir(parents=True)
        (root / "broken" / "3").mkdir(parents=True)
        (root / "broken" / "3" / "bad.png").write_bytes(b"not an image")
        (root / "corrupt").mkdir()
        (root / "corrupt" / "model.safetensors").write_bytes((digits_run / "model.safetensors").read_bytes())
        (root / "corrupt" / "model.json").write_text('{"classes": ["0", ', encoding="utf-8")
    outputs = digits_run / "predictions"
    before = sorted(outputs.rglob("*")) if outputs.exists() else []
    code, out, err = cli(["-q", "predict", *make(root, digits_run)], capsys)
    assert code == 2 and out == ""
    assert len(err.strip().splitlines()) == 1 and err.startswith("fewlabel: error:") and fragment in err
    # Nothing written anywhere: no new output folder or file, no temporary file left behind.
    assert (sorted(outputs.rglob("*")) if outputs.exists() else []) == before
    assert not list(root.rglob("predictions*")) and not list(root.rglob(".*.tmp"))
    if fragment == "cannot decode image":  # --skip-bad predicts the rest (here: nothing left) or says so
        code, _, err = cli(["-q", "predict", "--skip-bad", *make(root, digits_run)], capsys)
        assert code == 2 and "none of the 1 inputs could be read" in err


def test_folders_stream_in_batches_and_skip_bad_files(env: Path, digits_run: Path, digits_test_folder: Path) -> None:
    """Files are listed, not decoded, until their batch; batch size and worker processes change nothing; hidden
    files are ignored as training ignores them; --skip-bad predicts the rest and counts what it left out."""
    from fewlabel.predict import collect_inputs, iterate_batches

    run = load_run_model(digits_run)
    inputs = collect_inputs(run, digits_test_folder)
    assert inputs.tensor is None and len(inputs.paths) == len(inputs) == 360
    sizes = [len(positions) for positions, _, _ in iterate_batches(run, inputs, 50, 0, skip_bad=False)]
    assert sizes == [50] * 7 + [10]
    reference = predict(digits_run, digits_test_folder, write=False, progress=False)
    streamed = predict(digits_run, digits_test_folder, write=False, progress=False, batch_size=7, workers=2)
    assert streamed.inputs == reference.inputs
    np.testing.assert_allclose(streamed.probabilities, reference.probabilities, rtol=0, atol=1e-6)
    np.testing.assert_allclose(reference.probabilities.sum(axis=1), 1.0, rtol=0, atol=1e-12)

    mixed = env / "mixed"
    files = sorted(digits_test_folder.glob("*/*.png"))[:20]
    for file in files:
        (mixed / file.parent.name).mkdir(parents=True, exist_ok=True)
        (mixed / file.parent.name / file.name).write_bytes(file.read_bytes())
    bad = mixed / files[0].parent.name / "zz-truncated.png"
    bad.write_bytes(files[0].read_bytes()[:40])
    (mixed / ".ipynb_checkpoints").mkdir()
    (mixed / ".ipynb_checkpoints" / "x.png").write_bytes(b"not an image")
    (mixed / files[0].parent.name / "._resource-fork.png").write_bytes(b"not an image")
    with pytest.raises(FewlabelError, match=r"zz-truncated\.png"):
        predict(digits_run, mixed, out=env / "mixed-out", progress=False)
    assert not (env / "mixed-out").exists()
    result = predict(digits_run, mixed, out=env / "mixed-out", progress=False, skip_bad=True, batch_size=4)
    assert result.skipped == [bad.relative_to(mixed).as_posix()] and len(result.predicted) == 20
    assert result.metrics is not None and result.metrics.scored == 20
    summary = json.loads((env / "mixed-out" / "summary.json").read_text(encoding="utf-8"))
    assert summary["skipped"] == 1 and summary["predicted"] == 20 and summary["inputs"] == 21
    assert len(read_csv(env / "mixed-out" / "predictions.csv")) == 20


def test_in_memory_inputs_and_dataset_names(env: Path, digits_run: Path, digits_test_folder: Path) -> None:
    """A registered name and an .npz give the same probabilities as the same images as PNG files."""
    dataset = load_digits_dataset()
    test = np.load(digits_run / "split.npz")["test"]
    reference = predict(digits_run, digits_test_folder, write=False, progress=False)
    by_file = dict(zip(reference.inputs, reference.probabilities, strict=True))
    expected = np.stack([by_file[f"{dataset.classes[dataset.labels[i]]}/{i:04d}.png"] for i in test])
    named = predict(digits_run, "digits", write=False, progress=False)
    assert len(named.predicted) == len(dataset) and named.metrics is not None and named.metrics.scored == len(dataset)
    np.testing.assert_allclose(named.probabilities[test], expected, rtol=0, atol=1e-6)
    npz = env / "test-images.npz"
    np.savez(npz, x=dataset.samples[torch.as_tensor(test), 0].numpy(), y=dataset.labels[test])
    from_npz = predict(digits_run, npz, write=False, progress=False)
    np.testing.assert_allclose(from_npz.probabilities, expected, rtol=0, atol=1e-6)
    assert from_npz.metrics is not None and from_npz.metrics.accuracy == pytest.approx(reference.metrics.accuracy)
    with pytest.raises(FewlabelError, match="cannot be mixed"):
        predict(digits_run, [str(npz), str(digits_test_folder)], write=False, progress=False)


def test_class_names_match_as_label_columns_read_them() -> None:
    from fewlabel.predict import match_classes

    true, unknown = match_classes(["3", "03", "cat", None, "Cat", "7"], ["3", "7", "cat"])
    assert true.tolist() == [0, 0, 2, -1, -1, 1] and unknown == {"Cat": 1}
    # A run trained on folders "01", "02": labels read from a table as 1 and 2 still match.
    true, unknown = match_classes(["1", "02", "3"], ["01", "02"])
    assert true.tolist() == [0, 1, -1] and unknown == {"3": 1}
    # Two classes of one number ("3" and "03"): only exact names match.
    true, unknown = match_classes(["3", "03", "003"], ["3", "03"])
    assert true.tolist() == [0, 1, -1] and unknown == {"003": 1}
    # A label that reads as missing never matches a class by that reading.
    true, unknown = match_classes(["None", "nan"], ["nan", "b"])
    assert true.tolist() == [-1, 0] and unknown == {"None": 1}


def test_progress_is_a_bar_on_terminals_and_log_lines_elsewhere(monkeypatch: pytest.MonkeyPatch) -> None:
    import io
    import logging

    from fewlabel.predict import Progress

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    terminal = Terminal()
    monkeypatch.setattr("sys.stderr", terminal)
    bar = Progress(100)
    for _ in range(4):
        bar.update(25)
    bar.close()
    assert "\rpredict [" in terminal.getvalue() and "100/100" in terminal.getvalue()

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            lines.append(record.getMessage())

    monkeypatch.setattr("sys.stderr", io.StringIO())
    lines: list[str] = []
    handler, logger = Collect(), logging.getLogger("fewlabel")
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        logged = Progress(200)
        for _ in range(40):
            logged.update(5)
        Progress(200, enabled=False).update(200)
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    assert [line.split(" (")[0] for line in lines] == [f"predict: {20 * k}/200" for k in range(1, 11)]
