"""Audio datasets: class folders of clips, manifests (CSV/TSV/JSONL of paths and labels) and the Speech Commands
v2 layout, plus the named ``spoken-words`` and ``speech-commands`` sets.

Every clip is decoded once (``soundfile``: WAV, FLAC, OGG, MP3), mixed down to mono, resampled with ``soxr`` to
16 kHz and fitted to ``clip_seconds``: a longer clip keeps its centre, a shorter one is zero-padded **at the end**
(as TensorFlow's Speech Commands pipeline does, so the start of a short recording keeps its time). Samples are held
as one ``int16`` tensor ``(N, num_samples)``: 32 KB per 1 s clip, a quarter of float64, and exact for 16-bit
sources. Keyword-spotting sets are small clips in large numbers, so memory stays modest (Speech Commands v2,
105,829 clips: 3.4 GB) and augmentation reads rows without decoding.

Folders of at least :data:`CACHE_MIN_FILES` clips are decoded once into an int16 ``.npy`` under
``cache_dir()/audio``, keyed by the files' names, sizes, modification times (and inodes), the sample rate, the clip
length and :data:`DECODE_VERSION`; it is written under a temporary name and renamed when complete.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import io
import json
import logging
import os
import re
import shutil
import tarfile
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fewlabel.data.dataset import UNLABELLED, Dataset
from fewlabel.data.image_files import IMAGE_SUFFIXES, hidden, remove_abandoned_builds
from fewlabel.data.resolve import RemoteFile, cache_dir, download_files, resolve_files
from fewlabel.data.text import (
    GROUP_COLUMNS,
    LABEL_COLUMNS,
    RowLog,
    group_ids,
    label_key,
    pick_column,
    read_records,
    table_format,
)
from fewlabel.errors import FewlabelError

log = logging.getLogger("fewlabel")

AUDIO_SUFFIXES = frozenset({".wav", ".flac", ".ogg", ".mp3"})
SAMPLE_RATE = 16000
DEFAULT_CLIP_SECONDS = 1.0
MAX_CLIP_SECONDS = 60.0
SAMPLE_RATE_RANGE = (1000, 192000)
# Decoding 1 s FLAC clips runs at about 10,000 clips/s on one core: below this many files the cache saves little.
CACHE_MIN_FILES = 2000
# Part of the cache key: bump when decoding changes (mix-down, resampler, crop/pad), so old caches are not reused.
DECODE_VERSION = "mean-mixdown-soxr-hq-centre-crop-end-pad-v1"
PATH_COLUMNS = ("path", "file", "filename", "file_name", "filepath", "file_path", "audio", "audio_path", "wav",
                "clip")
SPEAKER_COLUMNS = ("speaker", "speaker_id", "client_id")

NOISE_FOLDER = "_background_noise_"
VALIDATION_LIST = "validation_list.txt"
TESTING_LIST = "testing_list.txt"
# Speech Commands names clips ``<speaker hash>_nohash_<repetition>``: the speaker is the group.
SPEAKER_PATTERN = re.compile(r"^(?P<speaker>.+?)_nohash_\d+$")
# Both named sets are found by their split lists (the files ``resolve_files`` looks for).
SPLIT_LIST_FILES = (RemoteFile(VALIDATION_LIST, url="", sha256=""), RemoteFile(TESTING_LIST, url="", sha256=""))

SPEECH_COMMANDS_URL = "http://download.tensorflow.org/data/speech_commands_v0.02.tar.gz"
# SHA-256 as published by TensorFlow Datasets and torchaudio (2,428,923,189 bytes).
SPEECH_COMMANDS_ARCHIVE = RemoteFile("speech_commands_v0.02.tar.gz", SPEECH_COMMANDS_URL,
                                     "af14739ee7dc311471de98f5f9d2c9191b18aedfe957f4a6ff791c709868ff58")
SPEECH_COMMANDS_SUBDIRS = ("speech-commands", "speech_commands", "speech_commands_v0.02",
                           "SpeechCommands/speech_commands_v0.02")
SPOKEN_WORDS_SUBDIRS = ("spoken-words", "spoken_words")

__all__ = [
    "AUDIO_SUFFIXES",
    "SAMPLE_RATE",
    "DecodedClips",
    "check_audio_settings",
    "decode_audio",
    "decode_clips",
    "download_speech_commands",
    "fit_length",
    "folder_is_audio",
    "is_speech_commands_layout",
    "load_audio_folder",
    "load_audio_manifest",
    "load_audio_path",
    "load_speech_commands",
    "load_spoken_words",
    "register_audio_datasets",
]


def _audio_libraries() -> tuple[Any, Any]:
    """``soundfile`` and ``soxr``, imported only when audio is read (they are the ``audio`` extra)."""
    try:
        import soundfile
        import soxr
    except ImportError as exc:
        raise FewlabelError(f"reading audio needs soundfile and soxr ({exc.name} is missing); install them with "
                            "pip install 'fewlabel[audio]'") from None
    return soundfile, soxr


def check_audio_settings(clip_seconds: float, sample_rate: int) -> int:
    """The samples per clip for ``clip_seconds`` at ``sample_rate``; one clear error for impossible values."""
    try:
        seconds = float(clip_seconds)
    except (TypeError, ValueError):
        raise FewlabelError(f"clip length {clip_seconds!r} is not a number; give seconds such as 1.0") from None
    if not 0.0 < seconds <= MAX_CLIP_SECONDS:  # also refuses NaN
        raise FewlabelError(f"clip length {clip_seconds} s is impossible; give a length in (0, {MAX_CLIP_SECONDS:g}] "
                            "seconds, e.g. 1.0 for keyword spotting")
    low, high = SAMPLE_RATE_RANGE
    if isinstance(sample_rate, bool) or not isinstance(sample_rate, int | np.integer) \
            or not low <= sample_rate <= high:
        raise FewlabelError(f"sample rate {sample_rate!r} is out of range; give a whole number of Hz in "
                            f"[{low}, {high}], e.g. {SAMPLE_RATE}")
    return max(1, round(seconds * int(sample_rate)))


def _bad_audio(path: str | os.PathLike, reason: str) -> FewlabelError:
    return FewlabelError(f"cannot decode audio {path}: {reason}; fix or remove the file, or pass --skip-bad to skip "
                         "unreadable audio files")


def decode_audio(path: str | os.PathLike, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """One file, whole, as ``int16`` mono at ``sample_rate``: channels averaged, resampled by soxr (HQ).

    16-bit mono files already at ``sample_rate`` are read as is (bit-exact). Raises ``FewlabelError`` naming the
    file when it cannot be decoded or holds no samples.
    """
    soundfile, soxr = _audio_libraries()
    try:
        with soundfile.SoundFile(path) as handle:
            rate, channels, subtype = handle.samplerate, handle.channels, handle.subtype
            if rate == sample_rate and channels == 1 and subtype == "PCM_16":
                wave = handle.read(dtype="int16")
                if not len(wave):
                    raise _bad_audio(path, "the file holds no audio samples")
                return np.ascontiguousarray(wave)
            data = handle.read(dtype="float32", always_2d=True)
    except FewlabelError:
        raise
    except (RuntimeError, OSError, ValueError, TypeError, EOFError) as exc:  # LibsndfileError is a RuntimeError
        reason = str(exc).strip().splitlines()[-1] if str(exc).strip() else exc.__class__.__name__
        raise _bad_audio(path, reason) from None
    if not data.size:
        raise _bad_audio(path, "the file holds no audio samples")
    mono = data.mean(axis=1, dtype=np.float32) if channels > 1 else data[:, 0]
    if rate != sample_rate:
        mono = soxr.resample(np.ascontiguousarray(mono), rate, sample_rate, quality="HQ")
    if not np.isfinite(mono).all():
        raise _bad_audio(path, "the file holds NaN or infinite samples")
    # soundfile scales 16-bit PCM by 1/32768 on reading: the inverse keeps 16-bit sources exact.
    return np.clip(np.rint(mono * np.float32(32768.0)), -32768, 32767).astype(np.int16)


def fit_length(wave: np.ndarray, num_samples: int) -> np.ndarray:
    """``wave`` with exactly ``num_samples``: the centre of a longer clip, a shorter one zero-padded at the end."""
    if len(wave) >= num_samples:
        start = (len(wave) - num_samples) // 2
        return wave[start : start + num_samples]
    out = np.zeros(num_samples, dtype=wave.dtype)
    out[: len(wave)] = wave
    return out


@dataclass
class DecodedClips:
    """What :func:`decode_clips` returns: the rows of the readable files and what was left out."""

    samples: np.ndarray  # int16 (kept files, num_samples)
    kept: np.ndarray  # bool per input file
    skipped: list[str]  # names of unreadable files (only with ``skip_bad``)
    cache: str | None  # the .npy the rows were read from or written to


def _file_digest(paths: Sequence[str], names: Sequence[str], skip_bad: bool) -> tuple[str, list[str]]:
    """A hash of names, sizes, modification times (and inodes, status-change times: files rewritten in place with
    their times kept) plus the files that cannot even be stat-ed (an error unless ``skip_bad``)."""
    digest = hashlib.sha256()
    missing: list[str] = []
    for path, name in zip(paths, names, strict=True):
        try:
            stat = os.stat(path)
        except OSError as exc:
            if not skip_bad:
                raise _bad_audio(path, exc.strerror or exc.__class__.__name__) from None
            missing.append(name)
            digest.update(f"{name}|missing\n".encode("utf-8", "surrogateescape"))
            continue
        digest.update(f"{name}|{stat.st_size}|{stat.st_mtime_ns}|{stat.st_ino}|{stat.st_ctime_ns}\n"
                      .encode("utf-8", "surrogateescape"))
    return digest.hexdigest(), missing


def decode_clips(paths: Sequence[str], names: Sequence[str], num_samples: int, sample_rate: int = SAMPLE_RATE,
                 skip_bad: bool = False, cache: bool | None = None, workers: int | None = None) -> DecodedClips:
    """Decode ``paths`` (``names`` identify them in errors, logs and the cache key) to int16 rows of ``num_samples``.

    ``cache=None`` caches from :data:`CACHE_MIN_FILES` files on. Threads decode in parallel (libsndfile and soxr
    release the interpreter lock); the first unreadable file in order is the error, unless ``skip_bad``.
    """
    digest, missing = _file_digest(paths, names, skip_bad)
    use_cache = len(paths) >= CACHE_MIN_FILES if cache is None else cache
    key = hashlib.sha256(f"{digest}|{sample_rate}|{num_samples}|{DECODE_VERSION}".encode()).hexdigest()[:24]
    cache_path = cache_dir() / "audio" / f"{key}.npy"
    if use_cache:
        hit = _read_cache(cache_path, names, num_samples)
        if hit is not None and (skip_bad or not hit.skipped):
            return hit
    unreadable = set(missing)
    rows = np.zeros((len(paths), num_samples), dtype=np.int16)
    errors: list[str | None] = [None] * len(paths)

    def decode_row(position: int) -> None:
        if names[position] in unreadable:
            errors[position] = "missing"
            return
        try:
            rows[position] = fit_length(decode_audio(paths[position], sample_rate), num_samples)
        except FewlabelError as exc:
            if not skip_bad:
                raise
            errors[position] = str(exc)

    workers = max(1, min(8, os.cpu_count() or 1)) if workers is None else max(1, workers)
    executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="fewlabel-audio")
    try:
        for _ in executor.map(decode_row, range(len(paths))):  # in order: the first bad file is the one reported
            pass
    finally:
        executor.shutdown(wait=True, cancel_futures=True)
    kept = np.asarray([error is None for error in errors], dtype=bool)
    skipped = [name for name, error in zip(names, errors, strict=True) if error is not None]
    if skipped:
        log.warning("skipped %d unreadable audio file(s), e.g. %s", len(skipped), skipped[0])
        rows = rows[kept]
    written = _write_cache(cache_path, rows, skipped) if use_cache else None
    return DecodedClips(rows, kept, skipped, written)


def _read_cache(path: Path, names: Sequence[str], num_samples: int) -> DecodedClips | None:
    """The cached rows when the cache and its note of skipped files fit these files; else ``None``."""
    note = path.with_suffix(".json")
    try:
        skipped = json.loads(note.read_text(encoding="utf-8"))["skipped"]
        rows = np.load(path, allow_pickle=False)
    except (OSError, ValueError, KeyError, TypeError):
        return None
    bad = set(skipped)
    kept = np.asarray([name not in bad for name in names], dtype=bool)
    if rows.dtype != np.int16 or rows.shape != (int(kept.sum()), num_samples) or not bad <= set(names):
        log.warning("audio cache %s does not fit these files; rebuilding it", path)
        return None
    return DecodedClips(rows, kept, list(skipped), str(path))


def _write_cache(path: Path, rows: np.ndarray, skipped: list[str]) -> str | None:
    """Write the note of skipped files, then the rows, each under a temporary name renamed when complete (the
    ``.npy`` last: it is what marks the cache as present). A read-only cache only costs the next load a decode."""
    note = path.with_suffix(".json")
    tmp_note = path.with_name(f"{path.stem}.{os.getpid()}.tmp.json")
    tmp_rows = path.with_name(f"{path.stem}.{os.getpid()}.tmp.npy")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        remove_abandoned_builds(path.parent, path.stem, suffix="*")
        tmp_note.write_text(json.dumps({"skipped": skipped, "decode": DECODE_VERSION}), encoding="utf-8")
        os.replace(tmp_note, note)
        with open(tmp_rows, "wb") as handle:
            np.save(handle, rows, allow_pickle=False)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_rows, path)
    except OSError as exc:
        log.warning("could not write the audio cache %s (%s); clips will be decoded again next time", path, exc)
        tmp_note.unlink(missing_ok=True)
        tmp_rows.unlink(missing_ok=True)
        return None
    return str(path)


def _visible_files(folder: Path) -> Iterator[Path]:
    """Files under ``folder`` in sorted order, without hidden files and folders."""
    for parent, subdirs, files in os.walk(folder):
        subdirs[:] = sorted(d for d in subdirs if not hidden(d))
        yield from (Path(parent) / f for f in sorted(files) if not hidden(f))


def _is_audio(path: Path) -> bool:
    return path.suffix.lower() in AUDIO_SUFFIXES


def _class_dirs(root: Path) -> list[Path]:
    """Class folders: visible sub-folders except Speech Commands' noise folder."""
    return sorted(p for p in root.iterdir() if p.is_dir() and not hidden(p.name) and p.name != NOISE_FOLDER)


def is_speech_commands_layout(root: str | os.PathLike) -> bool:
    """True when ``root`` has Speech Commands' split lists or its ``_background_noise_`` folder."""
    root = Path(root)
    return (root / VALIDATION_LIST).is_file() or (root / TESTING_LIST).is_file() or (root / NOISE_FOLDER).is_dir()


def folder_is_audio(root: str | os.PathLike) -> bool:
    """True when the class folders hold audio files before any image (stops at the first decisive file)."""
    root = Path(root)
    if not root.is_dir():
        return False
    for class_dir in _class_dirs(root):
        for file in _visible_files(class_dir):
            suffix = file.suffix.lower()
            if suffix in AUDIO_SUFFIXES:
                return True
            if suffix in IMAGE_SUFFIXES:
                return False
    return False


def _speaker_groups(names: Sequence[str]) -> tuple[np.ndarray, list[str]] | None:
    """Speaker ids from ``<speaker>_nohash_<n>`` file names; ``None`` when no name follows that pattern."""
    speakers = []
    for name in names:
        match = SPEAKER_PATTERN.match(Path(name).stem)
        speakers.append(match.group("speaker") if match else "")
    if not any(speakers):
        return None
    return group_ids(speakers)


def _read_list(path: Path) -> set[str]:
    """Relative clip names of a Speech Commands split list (``./`` prefixes and Windows separators tolerated)."""
    try:
        lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError as exc:
        raise FewlabelError(f"cannot read {path}: {exc.strerror}; fix its permissions or remove it") from None
    names = set()
    for line in lines:
        name = line.strip().replace("\\", "/")
        while name.startswith("./"):
            name = name[2:]
        if name:
            names.add(name)
    return names


def _official_mask(root: Path, list_name: str, names: Sequence[str]) -> np.ndarray | None:
    """Which ``names`` a split list names; ``None`` without the list, an error when it names none of them."""
    path = root / list_name
    if not path.is_file():
        return None
    listed = _read_list(path)
    mask = np.asarray([name in listed for name in names], dtype=bool)
    if listed and not mask.any():
        raise FewlabelError(f"{path} names none of the {len(names)} clips under {root} (e.g. {next(iter(listed))}); "
                            "use the list that came with these clips, or remove it")
    return mask


def _load_noise(root: Path, sample_rate: int, skip_bad: bool) -> tuple[list[torch.Tensor], list[str], list[str]]:
    """The recordings in ``_background_noise_/``, whole, at ``sample_rate``: (waves, names, unreadable names)."""
    folder = root / NOISE_FOLDER
    waves: list[torch.Tensor] = []
    names: list[str] = []
    skipped: list[str] = []
    if not folder.is_dir():
        return waves, names, skipped
    for file in _visible_files(folder):
        if not _is_audio(file):
            continue  # Speech Commands ships a README.md there
        name = file.relative_to(root).as_posix()
        try:
            waves.append(torch.from_numpy(decode_audio(file, sample_rate)))
        except FewlabelError:
            if not skip_bad:
                raise
            skipped.append(name)
            continue
        names.append(name)
    return waves, names, skipped


def _skipped_record(skipped: list[str]) -> dict[str, Any]:
    return {"count": len(skipped), "examples": skipped[:5]}


def load_audio_folder(root: str | os.PathLike, clip_seconds: float = DEFAULT_CLIP_SECONDS,
                      sample_rate: int = SAMPLE_RATE, skip_bad: bool = False, cache: bool | None = None) -> Dataset:
    """``root/<class>/**/<clip>`` (WAV, FLAC, OGG, MP3; hidden files skipped), decoded to int16 ``(N, samples)``.

    The Speech Commands v2 layout (``validation_list.txt`` / ``testing_list.txt`` / ``_background_noise_/``) is
    recognised: the lists become ``official_val`` / ``official_test``, ``_background_noise_/`` is not a class
    but ``extra["noise"]`` (whole recordings, int16 1-D tensors, for augmentation). Wherever clip names follow
    ``<speaker>_nohash_<n>``, the speaker is the sample's group, so a drawn split never puts one speaker on both
    sides. ``skip_bad`` leaves unreadable clips out (``extra["skipped_bad"]``) instead of stopping at the first.
    """
    num_samples = check_audio_settings(clip_seconds, sample_rate)
    root = Path(root).expanduser()
    if not root.is_dir():
        raise FewlabelError(f"{root} is not a folder; expected {root}/<class>/<clip>.wav")
    suffixes = ", ".join(sorted(AUDIO_SUFFIXES))
    names: list[str] = []
    labels: list[int] = []
    classes: list[str] = []
    empty: list[Path] = []
    for class_dir in _class_dirs(root):
        clips = [f.relative_to(root).as_posix() for f in _visible_files(class_dir) if _is_audio(f)]
        if not clips:
            empty.append(class_dir)
            continue
        labels.extend([len(classes)] * len(clips))
        names.extend(clips)
        classes.append(class_dir.name)
    if not names:
        raise FewlabelError(f"{root} holds no audio files ({suffixes}) in class sub-folders; expected "
                            f"{root}/<class>/<clip>.wav")
    if empty:
        raise FewlabelError(f"class folder {empty[0]} has no audio files ({suffixes})"
                            + (f" (and {len(empty) - 1} more empty class folders)" if len(empty) > 1 else "")
                            + "; add clips or remove the folder")
    speech_commands = is_speech_commands_layout(root)
    decoded = decode_clips([str(root / n) for n in names], names, num_samples, sample_rate, skip_bad, cache)
    kept_names = [n for n, keep in zip(names, decoded.kept, strict=True) if keep]
    kept_labels = np.asarray(labels, dtype=np.int64)[decoded.kept]
    if not len(kept_names):
        raise FewlabelError(f"{root}: no readable audio files left ({len(decoded.skipped)} unreadable)")
    missing = [c for i, c in enumerate(classes) if not (kept_labels == i).any()]
    if missing:
        raise FewlabelError(f"class folder {root / missing[0]} has no readable audio files; fix or remove it")
    noise, noise_names, noise_skipped = _load_noise(root, sample_rate, skip_bad)
    skipped = decoded.skipped + noise_skipped
    groups = _speaker_groups(kept_names)
    extra: dict[str, Any] = {
        "sample_rate": sample_rate,
        "clip_seconds": float(clip_seconds),
        "noise": noise,
        "noise_names": noise_names,
        "audio_cache": decoded.cache,
        "layout": "speech commands" if speech_commands else "class folders",
    }
    if groups is not None:
        extra["group_names"] = groups[1]
    if skipped:
        extra["skipped_bad"] = _skipped_record(skipped)
    return Dataset(
        name=root.name,
        modality="audio",
        samples=torch.from_numpy(decoded.samples),
        labels=kept_labels,
        classes=classes,
        source=f"{'speech commands folder' if speech_commands else 'audio folder'}: {root}",
        groups=None if groups is None else groups[0],
        official_test=_official_mask(root, TESTING_LIST, kept_names),
        official_val=_official_mask(root, VALIDATION_LIST, kept_names),
        flip_invariant=False,  # a clip played backwards is not the same word
        extra=extra,
    )


def _encode_labels(keys: Sequence[str | int | None]) -> tuple[np.ndarray, list[str]]:
    """Integer labels and class names: integers in numeric order, else sorted names; ``None`` is unlabelled."""
    present = {k for k in keys if k is not None}
    if all(isinstance(k, int) for k in present):
        ordered: list[str | int] = sorted(present)
        lookup: dict[str | int, int] = {k: i for i, k in enumerate(ordered)}
        labels = [UNLABELLED if k is None else lookup[k] for k in keys]
    else:
        ordered = sorted({str(k) for k in present})
        lookup = {k: i for i, k in enumerate(ordered)}
        labels = [UNLABELLED if k is None else lookup[str(k)] for k in keys]
    return np.asarray(labels, dtype=np.int64), [str(k) for k in ordered]


def load_audio_manifest(path: str | os.PathLike, path_column: str | None = None, label_column: str | None = None,
                        group_column: str | None = None, clip_seconds: float = DEFAULT_CLIP_SECONDS,
                        sample_rate: int = SAMPLE_RATE, skip_bad: bool = False, cache: bool | None = None,
                        name: str | None = None) -> Dataset:
    """A table (``.csv``/``.tsv``/``.jsonl``, optionally compressed) of clip paths (relative to the table's folder,
    or absolute) and labels, decoded like :func:`load_audio_folder`.

    Columns default to the first of :data:`PATH_COLUMNS` / ``LABEL_COLUMNS`` / ``GROUP_COLUMNS`` + speaker
    columns present (any case). Labels follow the text tables' rules (integers in numeric order, else sorted
    names; empty/``-1``/``nan`` is unlabelled). Without a group column, ``<speaker>_nohash_<n>`` names give groups.
    """
    num_samples = check_audio_settings(clip_seconds, sample_rate)
    path = Path(path).expanduser()
    if not path.is_file():
        raise FewlabelError(f"{path} does not exist or is not a file")
    rows_log = RowLog()
    columns, records, _ = read_records(path, rows_log)
    path_col = pick_column(columns, path_column, PATH_COLUMNS, "path", path, required=True)
    label_col = pick_column(columns, label_column, LABEL_COLUMNS, "label", path, required=True)
    group_col = pick_column(columns, group_column, (*GROUP_COLUMNS, *SPEAKER_COLUMNS), "group", path,
                            required=False)
    assert path_col is not None and label_col is not None
    names: list[str] = []
    keys: list[str | int | None] = []
    group_values: list[str] = []
    for row, record in records:
        value = record.get(path_col)
        clip = "" if value is None else str(value).strip()
        if not clip:
            rows_log.skip("missing path", row)
            continue
        names.append(clip)
        keys.append(label_key(record.get(label_col)))
        group = record.get(group_col) if group_col else None
        group_values.append("" if group is None else str(group).strip())
    if not names:
        raise FewlabelError(f"{path}: no rows with a clip path in column '{path_col}' "
                            f"(skipped: {dict(rows_log.counts) or 'none'})")
    folder = path.parent
    paths = [clip if os.path.isabs(clip) else str(folder / clip) for clip in names]
    decoded = decode_clips(paths, names, num_samples, sample_rate, skip_bad, cache)
    kept = decoded.kept
    for clip, keep in zip(names, kept, strict=True):
        if not keep:
            rows_log.skip("unreadable audio", clip)
    kept_names = [n for n, keep in zip(names, kept, strict=True) if keep]
    if not kept_names:
        raise FewlabelError(f"{path}: no readable audio files left ({len(decoded.skipped)} unreadable)")
    labels, classes = _encode_labels([k for k, keep in zip(keys, kept, strict=True) if keep])
    if group_col:
        groups: tuple[np.ndarray, list[str]] | None = group_ids(
            [g for g, keep in zip(group_values, kept, strict=True) if keep])
    else:
        groups = _speaker_groups(kept_names)
    extra: dict[str, Any] = {
        **rows_log.record(),
        "sample_rate": sample_rate,
        "clip_seconds": float(clip_seconds),
        "noise": [],
        "audio_cache": decoded.cache,
        "layout": "manifest",
        "columns": {"path": path_col, "label": label_col, "group": group_col},
    }
    if groups is not None:
        extra["group_names"] = groups[1]
    if decoded.skipped:
        extra["skipped_bad"] = _skipped_record(decoded.skipped)
    return Dataset(
        name=name or path.name.split(".")[0],
        modality="audio",
        samples=torch.from_numpy(decoded.samples),
        labels=labels,
        classes=classes,
        source=f"audio manifest: {path}",
        groups=None if groups is None else groups[0],
        flip_invariant=False,
        extra=extra,
    )


def _peek_table(path: Path, max_bytes: int = 1 << 18, max_rows: int = 20) -> tuple[list[str], list[dict[str, Any]]]:
    """Header and first rows of a table from its first ``max_bytes``, so that detecting an audio manifest does not
    read a large text table twice. Unreadable input gives nothing (the full reader reports it properly)."""
    import bz2
    import gzip
    import lzma

    fmt = table_format(path)
    if fmt is None:
        return [], []
    openers: dict[str, Callable[..., Any]] = {".bz2": bz2.open, ".gz": gzip.open, ".xz": lzma.open}
    opener = openers.get(path.suffix.lower(), open)
    try:
        with opener(path, "rb") as handle:
            raw = handle.read(max_bytes)
    except (OSError, EOFError, ValueError, lzma.LZMAError):
        return [], []
    text = raw.decode("utf-8-sig", errors="replace")
    lines = text.splitlines()
    if len(raw) == max_bytes and lines:
        lines = lines[:-1]  # cut mid-line
    kind, delimiter = fmt
    rows: list[dict[str, Any]] = []
    if kind == "csv":
        assert delimiter is not None
        reader = csv.reader(io.StringIO("\n".join(lines)), delimiter=delimiter)
        try:
            header = [c.strip() for c in next(reader, [])]
            for row in reader:
                if len(rows) >= max_rows:
                    break
                rows.append(dict(zip(header, row, strict=False)))
        except csv.Error:
            pass
        return header, rows
    columns: dict[str, None] = {}
    for line in lines:
        if len(rows) >= max_rows:
            break
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict):
            columns.update(dict.fromkeys(record))
            rows.append(record)
    return list(columns), rows


def _manifest_path_column(path: Path, columns: dict[str, str]) -> str | None:
    """The column of clip paths when ``path`` is an audio manifest, else ``None``.

    ``columns["path"]`` names it outright; otherwise a column named by ``columns["text"]`` (the command line's
    ``--text-column``) or one of :data:`PATH_COLUMNS` qualifies when its first non-empty value is an audio file.
    """
    if columns.get("path"):
        return columns["path"]
    header, rows = _peek_table(path)
    lower = {c.lower(): c for c in header}
    candidates = [columns["text"]] if columns.get("text") in header else []
    candidates += [lower[name] for name in PATH_COLUMNS if name in lower]
    for column in candidates:
        first = next((str(r[column]).strip() for r in rows if r.get(column) not in (None, "")), "")
        if Path(first).suffix.lower() in AUDIO_SUFFIXES:
            return column
    return None


def load_audio_path(path: str | os.PathLike, columns: dict[str, str] | None = None,
                    skip_bad: bool = False, clip_seconds: float = DEFAULT_CLIP_SECONDS) -> Dataset | None:
    """Load ``path`` when it is audio: a folder whose class folders hold audio files, or a table whose path column
    points at audio files (``columns`` may name the ``path``, ``label`` and ``group`` columns). Returns ``None``
    for anything else, so the caller can try the text and image loaders."""
    path = Path(path).expanduser()
    columns = columns or {}
    if path.is_dir():
        return load_audio_folder(path, clip_seconds, skip_bad=skip_bad) if folder_is_audio(path) else None
    if not path.is_file() or table_format(path) is None:
        return None
    path_column = _manifest_path_column(path, columns)
    if path_column is None:
        return None
    return load_audio_manifest(path, path_column=path_column, label_column=columns.get("label"),
                               group_column=columns.get("group"), clip_seconds=clip_seconds, skip_bad=skip_bad)


def _shared_copies(name: str) -> tuple[str, ...]:
    """Known local copies: ``../shared/data/<name>`` beside the working directory and beside the source tree."""
    places = [Path.cwd().parent / "shared" / "data" / name,
              Path(__file__).resolve().parents[3].parent / "shared" / "data" / name]
    return tuple(dict.fromkeys(str(p) for p in places))


def _where_searched(error: FewlabelError) -> str:
    """The "not found; searched ..." part of ``resolve_files``' error, without its advice about single files (these
    sets are folders)."""
    return str(error).split(" Put its files")[0].rstrip(".")


def load_spoken_words(data_dir: str | None = None, clip_seconds: float = DEFAULT_CLIP_SECONDS) -> Dataset:
    """``spoken-words``: 20 words x 160 synthetic speakers (3,200 clips of 1 s, 16 kHz FLAC) in the Speech
    Commands v2 layout, with official validation/test lists by speaker. It has no download."""
    try:
        folder, how = resolve_files("spoken-words", SPLIT_LIST_FILES, data_dir, subdirs=SPOKEN_WORDS_SUBDIRS,
                                    known_local=_shared_copies("spoken-words"), allow_download=False)
    except FewlabelError as exc:
        raise FewlabelError(f"{_where_searched(exc)}. Copy the spoken-words folder (<word>/*.flac, {VALIDATION_LIST}, "
                            f"{TESTING_LIST}) into one of these or pass --data-dir; it has no download") from None
    dataset = load_audio_folder(folder, clip_seconds)
    return dataclasses.replace(dataset, name="spoken-words", source=how)


def load_speech_commands(data_dir: str | None = None, clip_seconds: float = DEFAULT_CLIP_SECONDS) -> Dataset:
    """Speech Commands v2 (35 words, 105,829 clips of 1 s at 16 kHz, official validation/test lists, background
    noise): local copies first, then the 2.4 GB archive downloaded once (SHA-256 checked) and extracted into the
    cache. Decoding it the first time takes minutes; later loads read the int16 cache."""
    try:
        folder, how = resolve_files("speech-commands", SPLIT_LIST_FILES, data_dir, subdirs=SPEECH_COMMANDS_SUBDIRS,
                                    known_local=_shared_copies("speech-commands"), allow_download=False)
    except FewlabelError as exc:
        searched = f"{_where_searched(exc)}. It is the extracted {SPEECH_COMMANDS_ARCHIVE.name}"
        if os.environ.get("FEWLABEL_OFFLINE") == "1":
            raise FewlabelError(f"{searched}; FEWLABEL_OFFLINE=1, so it was not downloaded: unset it to download "
                                f"{SPEECH_COMMANDS_URL} (2.4 GB), or extract the archive into one of these") from None
        try:
            folder = download_speech_commands()
        except (OSError, tarfile.TarError) as download_error:
            raise FewlabelError(f"{searched}; downloading {SPEECH_COMMANDS_URL} failed ({download_error}); check the "
                                "connection or extract the archive into one of these") from None
        how = f"downloaded: {folder}"
    dataset = load_audio_folder(folder, clip_seconds)
    return dataclasses.replace(dataset, name="speech-commands", source=how)


def download_speech_commands() -> Path:
    """Download the archive into the cache (checksum verified by ``download_files``), extract it next to it under
    a temporary name, rename the folder into place when complete, and delete the archive."""
    target = cache_dir() / "speech-commands"
    downloads = cache_dir() / "downloads"
    download_files([SPEECH_COMMANDS_ARCHIVE], downloads)
    archive = downloads / SPEECH_COMMANDS_ARCHIVE.name
    tmp = target.with_name(f"speech-commands.{os.getpid()}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        with tarfile.open(archive, "r:gz") as tar:
            if hasattr(tarfile, "data_filter"):
                tar.extractall(tmp, filter="data")
            else:  # Python < 3.11.4: only plain files and folders inside the target
                members = [m for m in tar.getmembers() if (m.isfile() or m.isdir()) and not os.path.isabs(m.name)
                           and ".." not in Path(m.name).parts]
                tar.extractall(tmp, members=members)
        if target.exists():  # an incomplete earlier extraction (a complete one is found before downloading)
            shutil.rmtree(target)
        os.replace(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    archive.unlink(missing_ok=True)
    return target


def register_audio_datasets(register: Callable[[str, Callable[[str | None], Dataset], str], None]) -> None:
    """Register the named audio datasets with ``register(name, loader, description)`` (the data registry's)."""
    register("spoken-words", load_spoken_words,
             "spoken words: 20 keywords x 160 synthetic speakers, 3,200 clips of 1 s at 16 kHz, split by speaker")
    register("speech-commands", load_speech_commands,
             "Speech Commands v2: 35 keywords, 105,829 clips of 1 s at 16 kHz, official splits (2.4 GB download)")
