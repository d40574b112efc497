"""Audio datasets: decoding (resampling, mix-down, crop/pad), class folders, manifests, the Speech Commands layout,
bad input, the int16 cache and the real ``spoken-words`` set."""

from __future__ import annotations

import hashlib
import json
import os
import tarfile
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf  # the audio extra is part of the dev install: a missing one fails

from fewlabel.data import Dataset, load_dataset, make_split
from fewlabel.data import audio as audio_module
from fewlabel.data.audio import (
    check_audio_settings,
    decode_audio,
    load_audio_folder,
    load_audio_manifest,
)
from fewlabel.data.resolve import RemoteFile
from fewlabel.errors import FewlabelError

# Read at import: the autouse fixture in conftest removes FEWLABEL_DATA from each test's environment.
REAL_DATA_ROOTS = [Path(p) for p in os.environ.get("FEWLABEL_DATA", "").split(os.pathsep) if p]
REAL_DATA_ROOTS.append(Path(__file__).resolve().parents[1].parent / "shared" / "data")


def sine(seconds: float, rate: int, amplitude: float, freq: float = 440.0) -> np.ndarray:
    t = np.arange(round(seconds * rate)) / rate
    return (amplitude * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def write_clip(path: Path, seconds: float = 0.1, rate: int = 16000, amplitude: float = 0.3, freq: float = 440.0,
               fmt: str | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, sine(seconds, rate, amplitude, freq), rate, format=fmt)
    return path


def speech_commands_folder(root: Path, words: tuple[str, ...] = ("yes", "no", "up"), speakers: int = 10,
                           lists: bool = True, noise: bool = True) -> Path:
    """A tiny Speech Commands v2 layout: one 0.1 s clip per word and speaker (``<speaker>_nohash_0.wav``)."""
    for s in range(speakers):
        for w, word in enumerate(words):
            write_clip(root / word / f"spk{s:02d}_nohash_0.wav", freq=200.0 + 50 * w + 5 * s)
    if lists:
        # The last two speakers: validation, then test (with a "./" prefix, which lists may carry).
        (root / "validation_list.txt").write_text("".join(f"{w}/spk{speakers - 2:02d}_nohash_0.wav\n" for w in words))
        (root / "testing_list.txt").write_text("".join(f"./{w}/spk{speakers - 1:02d}_nohash_0.wav\n" for w in words))
    if noise:
        write_clip(root / "_background_noise_" / "hum.wav", seconds=2.0, amplitude=0.1)
        (root / "_background_noise_" / "README.md").write_text("noise for augmentation")
    return root


# --- decoding -----------------------------------------------------------------------------------------------------


def test_wav_at_8khz_stereo_is_mixed_down_resampled_and_padded_at_the_end(tmp_path: Path) -> None:
    left, right = sine(0.5, 8000, 0.6), sine(0.5, 8000, 0.2)
    path = tmp_path / "words" / "a" / "stereo.wav"
    path.parent.mkdir(parents=True)
    sf.write(path, np.stack([left, right], axis=1), 8000, subtype="PCM_16")
    wave = decode_audio(path)
    assert wave.dtype == np.int16 and len(wave) == 8000  # 0.5 s at 16 kHz
    middle = wave[1000:7000].astype(np.float64)
    assert abs(middle.max() / 32768 - 0.4) < 0.01  # (0.6 + 0.2) / 2
    assert abs(middle.min() / 32768 + 0.4) < 0.01
    ds = load_audio_folder(tmp_path / "words")
    assert ds.modality == "audio" and ds.samples.dtype.is_floating_point is False
    assert str(ds.samples.dtype) == "torch.int16" and tuple(ds.samples.shape) == (1, 16000)
    assert (ds.samples[0, 8000:] == 0).all()  # padded with zeros at the end
    np.testing.assert_array_equal(ds.samples[0, :8000].numpy(), wave)
    assert ds.extra["sample_rate"] == 16000 and ds.extra["clip_seconds"] == 1.0


def test_flac_at_16khz_is_exact_and_a_long_clip_keeps_its_centre(tmp_path: Path) -> None:
    long = (np.arange(24000) % 20000 - 10000).astype(np.int16)  # 1.5 s
    short = np.full(4000, 1234, dtype=np.int16)  # 0.25 s, a constant
    (tmp_path / "set" / "long").mkdir(parents=True)
    (tmp_path / "set" / "short").mkdir(parents=True)
    sf.write(tmp_path / "set" / "long" / "a.flac", long, 16000, subtype="PCM_16")
    sf.write(tmp_path / "set" / "short" / "b.flac", short, 16000, subtype="PCM_16")
    ds = load_audio_folder(tmp_path / "set")
    assert ds.classes == ["long", "short"] and ds.labels.tolist() == [0, 1]
    np.testing.assert_array_equal(ds.samples[0].numpy(), long[4000:20000])  # the centre second
    np.testing.assert_array_equal(ds.samples[1, :4000].numpy(), short)  # survives bit-exact
    assert (ds.samples[1, 4000:] == 0).all()
    half = load_audio_folder(tmp_path / "set", clip_seconds=0.5)
    assert tuple(half.samples.shape) == (2, 8000)
    np.testing.assert_array_equal(half.samples[0].numpy(), long[8000:16000])


@pytest.mark.parametrize("suffix, fmt", [(".ogg", "OGG"), (".mp3", "MP3")])
def test_ogg_and_mp3_decode(tmp_path: Path, suffix: str, fmt: str) -> None:
    if fmt not in sf.available_formats():
        pytest.skip(f"this libsndfile cannot write {fmt}")
    path = write_clip(tmp_path / f"clip{suffix}", seconds=0.5, rate=22050, amplitude=0.5, fmt=fmt)
    wave = decode_audio(path)
    assert wave.dtype == np.int16
    assert abs(len(wave) - 8000) < 1200  # lossy codecs may add a little padding
    peak = np.abs(wave[2000:6000].astype(np.float64)).max() / 32768
    assert 0.4 < peak < 0.6


# --- layouts ------------------------------------------------------------------------------------------------------


def test_speech_commands_layout_honours_lists_and_keeps_noise_out_of_the_classes(tmp_path: Path) -> None:
    root = speech_commands_folder(tmp_path / "sc")
    ds = load_dataset(root)
    assert ds.modality == "audio" and ds.classes == ["no", "up", "yes"]  # _background_noise_ is not a class
    assert len(ds) == 30 and ds.extra["layout"] == "speech commands"
    noise = ds.extra["noise"]
    assert len(noise) == 1 and noise[0].dtype.is_floating_point is False and len(noise[0]) == 32000
    assert ds.extra["noise_names"] == ["_background_noise_/hum.wav"]  # README.md is not audio
    speakers = np.asarray(ds.extra["group_names"])[ds.groups]
    np.testing.assert_array_equal(np.flatnonzero(ds.official_test), np.flatnonzero(speakers == "spk09"))
    np.testing.assert_array_equal(np.flatnonzero(ds.official_val), np.flatnonzero(speakers == "spk08"))
    split = make_split(ds, seed=3)
    np.testing.assert_array_equal(split.test, np.flatnonzero(ds.official_test))
    np.testing.assert_array_equal(split.val, np.flatnonzero(ds.official_val))
    assert len(split.pool) == 24
    summary = ds.summary()
    assert summary["official_val"] == 3 and summary["official_test"] == 3 and summary["noise_recordings"] == 1
    json.dumps(summary)  # run records store it


def test_without_lists_speakers_never_straddle_the_split(tmp_path: Path) -> None:
    ds = load_audio_folder(speech_commands_folder(tmp_path / "sc", speakers=12, lists=False), clip_seconds=0.1)
    assert ds.official_test is None and ds.official_val is None and len(ds.extra["noise"]) == 1
    assert len(set(ds.groups.tolist())) == 12
    for seed in (0, 1):
        split = make_split(ds, seed=seed)
        pool, val, test = (set(ds.groups[part].tolist()) for part in (split.pool, split.val, split.test))
        assert test and val and not (pool & test) and not (pool & val) and not (val & test)


def test_official_validation_without_official_test_is_kept_out_of_the_drawn_test() -> None:
    import torch

    labels = np.arange(100) % 2
    official_val = np.zeros(100, dtype=bool)
    official_val[:10] = True
    ds = Dataset("toy", "audio", torch.zeros((100, 4), dtype=torch.int16), labels, ["a", "b"],
                 official_val=official_val)
    split = make_split(ds, seed=0)
    np.testing.assert_array_equal(split.val, np.arange(10))
    assert not set(split.test) & set(range(10)) and len(split.test) == 18
    assert sorted([*split.pool, *split.val, *split.test]) == list(range(100))


def test_manifest_with_custom_columns(tmp_path: Path) -> None:
    for i, word in enumerate(["go", "stop", "go", "stop"]):
        write_clip(tmp_path / "clips" / f"{word}{i}.flac", freq=300.0 + 100 * i)
    rows = ["recording,word,person"] + [f"clips/{w}{i}.flac,{w},p{i // 2}" for i, w in enumerate(["go", "stop"] * 2)]
    rows.append(",go,p9")  # no path: skipped and counted
    manifest = tmp_path / "meta.csv"
    manifest.write_text("\n".join(rows) + "\n")
    direct = load_audio_manifest(manifest, path_column="recording", label_column="word", group_column="person",
                                 clip_seconds=0.2)
    assert direct.classes == ["go", "stop"] and direct.labels.tolist() == [0, 1, 0, 1]
    assert direct.groups.tolist() == [0, 0, 1, 1] and tuple(direct.samples.shape) == (4, 3200)
    assert direct.extra["skipped_rows"] == {"missing path": 1}
    # Through load_dataset: the command line's column flags fill ``columns`` (--text-column names the path column).
    ds = load_dataset(manifest, columns={"text": "recording", "label": "word", "group": "person"})
    assert ds.modality == "audio" and ds.labels.tolist() == [0, 1, 0, 1] and len(ds) == 4
    # JSON lines with the default column names are detected without any column named.
    jsonl = tmp_path / "meta.jsonl"
    jsonl.write_text("".join(json.dumps({"path": str(tmp_path / "clips" / f"{w}{i}.flac"), "label": w}) + "\n"
                             for i, w in enumerate(["go", "stop"] * 2)))
    assert load_dataset(jsonl).modality == "audio"
    # A text table stays text.
    text_table = tmp_path / "reviews.csv"
    text_table.write_text("text,label\ngood film,1\nbad film,0\n")
    assert load_dataset(text_table).modality == "text"


# --- bad input ----------------------------------------------------------------------------------------------------


def test_corrupt_clip_names_the_file_or_is_skipped_and_counted(tmp_path: Path) -> None:
    root = tmp_path / "words"
    for i in range(3):
        write_clip(root / "yes" / f"y{i}.wav")
        write_clip(root / "no" / f"n{i}.wav")
    (root / "no" / "broken.wav").write_bytes(b"RIFF this is not a wave file")
    (root / "yes" / "empty.flac").write_bytes(b"")
    (root / "yes" / ".hidden.wav").write_bytes(b"ignored")
    with pytest.raises(FewlabelError, match=r"broken\.wav") as error:
        load_audio_folder(root)
    assert "--skip-bad" in str(error.value) and "\n" not in str(error.value)
    ds = load_dataset(root, skip_bad=True)
    assert len(ds) == 6 and ds.extra["skipped_bad"]["count"] == 2
    assert set(ds.extra["skipped_bad"]["examples"]) == {"no/broken.wav", "yes/empty.flac"}
    silent = tmp_path / "silent.wav"
    sf.write(silent, np.zeros(0, dtype=np.int16), 16000)
    with pytest.raises(FewlabelError, match=r"silent\.wav.*no audio samples"):
        decode_audio(silent)


def test_folder_without_audio_is_one_clear_error(tmp_path: Path) -> None:
    (tmp_path / "empty" / "yes").mkdir(parents=True)
    (tmp_path / "empty" / "yes" / "notes.md").write_text("no clips here")
    with pytest.raises(FewlabelError, match="holds no audio files"):
        load_audio_folder(tmp_path / "empty")
    write_clip(tmp_path / "half" / "yes" / "a.wav")
    (tmp_path / "half" / "no").mkdir()
    with pytest.raises(FewlabelError, match=r"class folder .*no has no audio files"):
        load_audio_folder(tmp_path / "half")


@pytest.mark.parametrize("seconds", [0, -1.0, 60.5, float("nan"), "long"])
def test_impossible_clip_length(seconds: object) -> None:
    with pytest.raises(FewlabelError, match="clip length") as error:
        check_audio_settings(seconds, 16000)  # type: ignore[arg-type]
    assert "\n" not in str(error.value)


@pytest.mark.parametrize("rate", [0, 500, 10**6, 16000.5])
def test_impossible_sample_rate(tmp_path: Path, rate: object) -> None:
    with pytest.raises(FewlabelError, match="sample rate"):
        load_audio_folder(tmp_path, sample_rate=rate)  # type: ignore[arg-type]


# --- cache, fingerprint, named sets --------------------------------------------------------------------------------


def test_cache_is_reused_and_rebuilt_when_a_file_changes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = speech_commands_folder(tmp_path / "sc", speakers=4, noise=False, lists=False)
    first = load_audio_folder(root, clip_seconds=0.1, cache=True)
    assert first.extra["audio_cache"] and Path(first.extra["audio_cache"]).is_file()
    real_decode = audio_module.decode_audio
    monkeypatch.setattr(audio_module, "decode_audio", lambda *a, **k: pytest.fail("decoded despite the cache"))
    again = load_audio_folder(root, clip_seconds=0.1, cache=True)
    np.testing.assert_array_equal(again.samples.numpy(), first.samples.numpy())
    assert again.fingerprint() == first.fingerprint()
    monkeypatch.setattr(audio_module, "decode_audio", real_decode)
    write_clip(root / "yes" / "spk00_nohash_0.wav", freq=900.0)  # new content: new size/time, new key
    changed = load_audio_folder(root, clip_seconds=0.1, cache=True)
    assert changed.extra["audio_cache"] != first.extra["audio_cache"]
    assert changed.fingerprint() != first.fingerprint()
    assert not list(Path(first.extra["audio_cache"]).parent.glob("*.tmp*"))


def test_speech_commands_from_a_data_dir_and_offline_error(tmp_path: Path) -> None:
    speech_commands_folder(tmp_path / "data" / "speech-commands", speakers=3)
    ds = load_dataset("speech-commands", str(tmp_path / "data"))
    assert ds.name == "speech-commands" and "data dir" in ds.source and ds.num_classes == 3
    with pytest.raises(FewlabelError, match="FEWLABEL_OFFLINE=1") as error:
        load_dataset("speech-commands", str(tmp_path / "elsewhere"))
    assert "\n" not in str(error.value) and "speech_commands_v0.02.tar.gz" in str(error.value)


def test_speech_commands_download_is_checked_and_extracted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    source = speech_commands_folder(tmp_path / "upstream", speakers=3)
    archive = tmp_path / "speech_commands_v0.02.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        for item in sorted(source.iterdir()):
            tar.add(item, arcname=f"./{item.name}")
    digest = hashlib.sha256(archive.read_bytes()).hexdigest()
    monkeypatch.delenv("FEWLABEL_OFFLINE")
    monkeypatch.setattr(audio_module, "_shared_copies", lambda name: ())
    monkeypatch.setattr(audio_module, "SPEECH_COMMANDS_ARCHIVE", RemoteFile(archive.name, archive.as_uri(), "0" * 64))
    with pytest.raises(FewlabelError, match="checksum mismatch"):
        load_dataset("speech-commands", str(tmp_path / "nowhere"))
    monkeypatch.setattr(audio_module, "SPEECH_COMMANDS_ARCHIVE", RemoteFile(archive.name, archive.as_uri(), digest))
    ds = load_dataset("speech-commands", str(tmp_path / "nowhere"))
    assert ds.source.startswith("downloaded:") and len(ds) == 9 and len(ds.extra["noise"]) == 1
    assert "cache" in load_dataset("speech-commands", str(tmp_path / "nowhere")).source  # extracted once


def test_real_spoken_words() -> None:
    root = next((r for r in REAL_DATA_ROOTS if (r / "spoken-words" / "testing_list.txt").is_file()), None)
    if root is None:  # CI points FEWLABEL_DATA at the shared data: there, a missing copy is a failure
        missing = "spoken-words is not in $FEWLABEL_DATA or ../shared/data"
        (pytest.fail if os.environ.get("CI") else pytest.skip)(missing)
    ds = load_dataset("spoken-words", str(root))
    assert ds.modality == "audio" and ds.num_classes == 20 and len(ds) == 3200
    assert str(ds.samples.dtype) == "torch.int16" and tuple(ds.samples.shape) == (3200, 16000)
    assert int(ds.official_test.sum()) == 480 and int(ds.official_val.sum()) == 320
    assert len(ds.extra["noise"]) == 8 and "_background_noise_" not in ds.classes
    assert set(ds.class_counts().values()) == {160}
    split = make_split(ds, seed=0)
    assert (len(split.pool), len(split.val), len(split.test)) == (2400, 320, 480)
    pool, val, test = (set(ds.groups[part].tolist()) for part in (split.pool, split.val, split.test))
    assert len(pool | val | test) == 160
    assert not (pool & val) and not (pool & test) and not (val & test)
