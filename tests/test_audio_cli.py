"""Audio end to end through the same commands as images and text: train (log-mel CNN, every policy),
pretrain --method wav2vec2 (export loads outside fewlabel), evaluate and finetune from that run, and the
one-line errors of wrong combinations."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf  # the audio extra is part of the dev install: a missing one fails

from fewlabel.cli import main

WORDS = {"low": 300.0, "mid": 900.0, "high": 2500.0}


@pytest.fixture(scope="module")
def clips(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A Speech Commands-style folder: 3 'words' (tones of different pitch at random offsets, in noise) said by
    8 speakers, plus a background-noise folder."""
    root = tmp_path_factory.mktemp("audio") / "words"
    rng = np.random.default_rng(0)
    rate = 16000
    for word, freq in WORDS.items():
        (root / word).mkdir(parents=True)
        for speaker in range(8):
            wave = 0.02 * rng.standard_normal(rate)
            start = int(rng.integers(0, rate // 2))
            t = np.arange(rate // 3) / rate
            wave[start : start + len(t)] += 0.4 * np.sin(2 * np.pi * freq * (1 + 0.03 * speaker) * t)
            sf.write(root / word / f"spk{speaker:02d}_nohash_0.wav", wave.astype(np.float32), rate, subtype="PCM_16")
    (root / "_background_noise_").mkdir()
    sf.write(root / "_background_noise_" / "hum.wav", (0.1 * rng.standard_normal(2 * rate)).astype(np.float32),
             rate, subtype="PCM_16")
    return root


@pytest.fixture(scope="module")
def wav2vec2_run(clips: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("pre") / "run"
    assert main(["-q", "pretrain", "--method", "wav2vec2", "--data", str(clips), "--epochs", "2", "--batch-size", "8",
                 "--accelerator", "cpu", "--out", str(out)]) == 0
    return out


@pytest.mark.parametrize("policy", ["none", "standard", "specaugment", "mixup"])
def test_train_log_mel_cnn_with_each_policy(clips: Path, tmp_path: Path, policy: str) -> None:
    out = tmp_path / policy
    assert main(["-q", "train", "--data", str(clips), "--augment", policy, "--epochs", "2", "--width", "8",
                 "--accelerator", "cpu", "--out", str(out)]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    model = json.loads((out / "model.json").read_text())
    assert 0.0 <= metrics["test_accuracy"] <= 1.0 and metrics["optim"]["optimizer"] == "adamw"
    assert model["modality"] == "audio" and model["n_mels"] == 40 and model["sample_rate"] == 16000


def test_clip_seconds_sets_the_clip_length(clips: Path, tmp_path: Path) -> None:
    out = tmp_path / "half"
    assert main(["-q", "train", "--data", str(clips), "--clip-seconds", "0.5", "--epochs", "1", "--width", "8",
                 "--accelerator", "cpu", "--out", str(out)]) == 0
    model = json.loads((out / "model.json").read_text())
    assert model["clip_samples"] == 8000


def test_wav2vec2_pretraining_exports_a_hugging_face_folder(wav2vec2_run: Path) -> None:
    from transformers import AutoFeatureExtractor, Wav2Vec2Model

    metrics = json.loads((wav2vec2_run / "metrics.json").read_text())
    assert metrics["epochs"] == 2 and len(metrics["codebook"]) == 2
    assert all(r["codevector_perplexity"] > 1 for r in metrics["codebook"])
    model = Wav2Vec2Model.from_pretrained(wav2vec2_run / "export")
    assert AutoFeatureExtractor.from_pretrained(wav2vec2_run / "export").sampling_rate == 16000
    assert model.config.hidden_size == 128


@pytest.mark.parametrize("protocol", ["knn", "linear"])
def test_evaluate_a_wav2vec2_run(wav2vec2_run: Path, tmp_path: Path, protocol: str,
                                 capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["-q", "evaluate", "--backbone", str(wav2vec2_run), "--protocol", protocol, "--out",
                 str(tmp_path / "ev"), "--json", str(tmp_path / "r.json")]) == 0
    result = json.loads((tmp_path / "r.json").read_text())
    assert result["protocol"] == protocol and 0.0 <= result["test_accuracy"] <= 1.0
    if protocol == "linear":  # the probe is saved as a classifier: wav2vec2 body + linear head
        assert (tmp_path / "ev" / "model.safetensors").is_file()
        assert json.loads((tmp_path / "ev" / "model.json").read_text())["modality"] == "audio"


@pytest.mark.parametrize("strategy", ["feature-extract", "finetune", "partial"])
def test_finetune_from_a_wav2vec2_run(wav2vec2_run: Path, clips: Path, tmp_path: Path, strategy: str) -> None:
    out = tmp_path / strategy
    assert main(["-q", "finetune", "--backbone", str(wav2vec2_run), "--strategy", strategy, "--data", str(clips),
                 "--epochs", "1", "--accelerator", "cpu", "--out", str(out)]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    if strategy == "finetune":  # the convolutional feature encoder stays frozen, as in the paper
        assert metrics["transfer"]["frozen_stages"] == ["feature_extractor"]
    if strategy == "partial":  # the default: the top two transformer layers
        assert metrics["transfer"]["trainable_stages"] == ["encoder.layers.2", "encoder.layers.3"]
    if strategy != "feature-extract":  # LP-FT and its fallback for speech encoders too
        assert metrics["kept"] in ("fine-tuned", "linear probe") and "start_val_accuracy" in metrics


@pytest.mark.parametrize(("args", "message"), [
    (["pretrain", "--method", "wav2vec2", "--data", "digits"], "needs audio clips"),
    (["finetune", "--strategy", "feature-extract"], "audio transfer needs --backbone"),
    (["finetune", "--backbone", "{run}", "--strategy", "finetune", "--augment", "specaugment"],
     "masks log-mel features"),
    (["pretrain", "--method", "wav2vec2", "--option", "colour=red"], "unknown option(s) colour"),
    (["pretrain", "--method", "simclr"], "needs images"),
    (["train", "--clip-seconds", "0"], "clip length 0 s is impossible"),
    (["train", "--clip-seconds", "2", "--data", "digits"], "--clip-seconds applies to audio data"),
])
def test_wrong_combinations_are_one_line(args: list[str], message: str, clips: Path, wav2vec2_run: Path,
                                         tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = [a.replace("{run}", str(wav2vec2_run)) for a in args]
    if "--data" not in args:
        args += ["--data", str(clips)]
    out = tmp_path / "out"
    assert main(["-q", *args, "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
    assert not out.exists()


def test_predict_with_an_audio_run(clips: Path, wav2vec2_run: Path, tmp_path: Path,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    """A log-mel CNN and a wav2vec2 linear probe predict a folder of clips as they were trained (labels from the
    sub-folders give metrics; the noise folder is not data); a corrupt file is skipped with --skip-bad."""
    import csv

    cnn = tmp_path / "cnn"
    assert main(["-q", "train", "--data", str(clips), "--epochs", "1", "--width", "8", "--accelerator", "cpu",
                 "--out", str(cnn)]) == 0
    probe = tmp_path / "probe"
    assert main(["-q", "evaluate", "--backbone", str(wav2vec2_run), "--protocol", "linear", "--out", str(probe)]) == 0
    (clips / "mid" / "broken.wav").write_bytes(b"RIFF not audio")
    try:
        for run in (cnn, probe):
            out = run / "pred"
            assert main(["-q", "predict", "--model", str(run), "--data", str(clips), "--out", str(out),
                         "--skip-bad"]) == 0
            rows = list(csv.DictReader((out / "predictions.csv").open()))
            assert len(rows) == 24 and {r["label"] for r in rows} == set(WORDS)
            summary = json.loads((out / "summary.json").read_text())
            assert summary["skipped"] == 1 and 0.0 <= summary["metrics"]["accuracy"] <= 1.0
        assert main(["-q", "predict", "--model", str(cnn), "--data", str(clips), "--format", "onnx",
                     "--out", str(tmp_path / "onnx")]) == 2
        assert "not supported yet" in capsys.readouterr().err
    finally:
        (clips / "mid" / "broken.wav").unlink()


def test_own_manifest_with_own_column_names(clips: Path, tmp_path: Path) -> None:
    """A user's CSV: their own names for the path, label and speaker columns, paths relative to the table."""
    import csv

    table = clips / "labels.csv"
    with table.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["recording", "command", "person"])
        for word in WORDS:
            for file in sorted((clips / word).glob("*.wav")):
                writer.writerow([f"{word}/{file.name}", word, file.name.split("_")[0]])
    try:
        out = tmp_path / "run"
        assert main(["-q", "train", "--data", str(table), "--audio-column", "recording", "--label-column", "command",
                     "--group-column", "person", "--epochs", "1", "--width", "8", "--accelerator", "cpu",
                     "--out", str(out)]) == 0
        summary = json.loads((out / "metrics.json").read_text())
        assert summary["split"]["labelled"] + summary["split"]["val"] + summary["split"]["test"] == 24
    finally:
        table.unlink()
