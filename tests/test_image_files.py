"""Image folders indexed, not loaded: decoding, hidden files, bad files, the decoded cache, chunked kNN."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from fewlabel.cli import main
from fewlabel.data.image_files import ImageArrayFile, ImageFiles, cached_store, decode_image
from fewlabel.data.images import at_working_size, load_npz
from fewlabel.data.registry import load_dataset
from fewlabel.errors import FewlabelError
from fewlabel.evaluate.probes import knn_predict


def _jpeg(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, quality=95)


def _photo_folder(root: Path, per_class: int = 4, side: tuple[int, int] = (120, 160)) -> Path:
    rng = np.random.default_rng(0)
    for index, name in enumerate(("cat", "dog", "owl")):
        for i in range(per_class):
            base = np.full((*side, 3), 60 * index + 20, dtype=np.uint8)
            _jpeg(root / name / f"{i}.jpg", base + rng.integers(0, 10, base.shape, dtype=np.uint8))
    return root


def test_decode_keeps_the_centre_square_of_the_shorter_side(tmp_path: Path) -> None:
    # 20 x 40 (h x w): black 8-column borders left and right, white middle. Scaled by 1/2 to 10 x 20, the
    # centre 10 x 10 square comes from columns 10-29, whose bilinear support (2 px) stays inside the white.
    image = np.zeros((20, 40), dtype=np.uint8)
    image[:, 8:32] = 255
    Image.fromarray(image).save(tmp_path / "wide.png")
    out = decode_image(tmp_path / "wide.png", 10, 1)
    assert out.shape == (1, 10, 10) and out.dtype == torch.uint8
    assert int(out.min()) >= 250
    rgb = decode_image(tmp_path / "wide.png", 10, 3)  # grey files in a colour set become RGB
    assert rgb.shape == (3, 10, 10) and torch.equal(rgb[0], rgb[2])


def test_large_jpeg_decodes_at_the_working_size(tmp_path: Path) -> None:
    _jpeg(tmp_path / "big.jpg", np.random.default_rng(0).integers(0, 255, (1200, 1600, 3), dtype=np.uint8))
    assert decode_image(tmp_path / "big.jpg", 64, 3).shape == (3, 64, 64)


def test_folder_is_indexed_and_skips_hidden_files(tmp_path: Path) -> None:
    root = _photo_folder(tmp_path / "pets")
    (root / "cat" / "._0.jpg").write_bytes(b"macOS resource fork")  # would be unreadable if read
    (root / "dog" / ".ipynb_checkpoints").mkdir()
    _jpeg(root / "dog" / ".ipynb_checkpoints" / "0-checkpoint.jpg", np.zeros((8, 8, 3), np.uint8))
    (root / ".hidden_class").mkdir()
    _jpeg(root / ".hidden_class" / "x.jpg", np.zeros((8, 8, 3), np.uint8))
    dataset = load_dataset(root)
    assert isinstance(dataset.samples, ImageFiles)
    assert dataset.classes == ["cat", "dog", "owl"] and len(dataset) == 12
    assert dataset.image_shape == (3, 120, 120)  # the shorter side, until a run picks its working size
    working = at_working_size(dataset, None)
    assert working.image_shape == (3, 96, 96)  # at most 96 px from scratch
    assert at_working_size(dataset, 32).image_shape == (3, 32, 32)
    assert working.fingerprint() == dataset.fingerprint()  # same files, same split validation


def test_store_indexes_like_a_tensor_and_pickles(tmp_path: Path) -> None:
    files = load_dataset(_photo_folder(tmp_path / "pets")).samples.at_size(16)
    single = files[5]
    assert single.shape == (3, 16, 16)
    assert torch.equal(files[-7], single)
    batch = files[torch.tensor([5, 0])]
    assert batch.shape == (2, 3, 16, 16) and torch.equal(batch[0], single)
    assert torch.equal(files[np.array([5])][0], single)
    assert files[1:4].shape == (3, 3, 16, 16)
    assert torch.equal(pickle.loads(pickle.dumps(files))[5], single)
    with pytest.raises(IndexError):
        files[12]


def test_empty_class_folder_is_an_error_that_names_it(tmp_path: Path) -> None:
    root = _photo_folder(tmp_path / "pets")
    (root / "zebra").mkdir()
    (root / "zebra" / "notes.txt").write_text("no images here")
    with pytest.raises(FewlabelError, match=r"class folder .*zebra has no images"):
        load_dataset(root)


def test_unreadable_image_is_named_or_skipped_and_counted(tmp_path: Path) -> None:
    root = _photo_folder(tmp_path / "pets")
    (root / "owl" / "broken.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    good = (root / "cat" / "0.jpg").read_bytes()
    (root / "dog" / "truncated.jpg").write_bytes(good[: len(good) // 3])  # the header reads, decoding fails
    with pytest.raises(FewlabelError, match=r"broken\.jpg.*--skip-bad"):
        load_dataset(root)
    dataset = load_dataset(root, skip_bad=True)
    assert len(dataset) == 12
    assert dataset.summary()["skipped_bad"]["count"] == 2
    assert sorted(Path(p).name for p in dataset.summary()["skipped_bad"]["examples"]) == ["broken.jpg",
                                                                                           "truncated.jpg"]


def test_decode_error_names_the_file(tmp_path: Path) -> None:
    (tmp_path / "x.jpg").write_bytes(b"garbage")
    with pytest.raises(FewlabelError, match=r"x\.jpg"):
        decode_image(tmp_path / "x.jpg", 16, 3)


def test_cache_is_built_once_and_reads_the_same_pixels(tmp_path: Path) -> None:
    files = load_dataset(_photo_folder(tmp_path / "pets")).samples.at_size(24)
    store = cached_store(files, tmp_path / "cache", workers=0)
    assert isinstance(store, ImageArrayFile) and store.shape == (12, 3, 24, 24)
    assert torch.equal(store[np.arange(12)], files[np.arange(12)])
    stamp = Path(store.path).stat().st_mtime_ns
    again = cached_store(files, tmp_path / "cache", workers=0)
    assert again.path == store.path and Path(again.path).stat().st_mtime_ns == stamp  # reused, not rebuilt
    assert torch.equal(pickle.loads(pickle.dumps(again))[3], files[3])
    assert cached_store(files.at_size(16), tmp_path / "cache", workers=0).path != store.path  # size in the key
    assert np.load(store.path, mmap_mode="r").shape == (12, 3, 24, 24)  # an ordinary .npy file


def test_changed_files_change_the_cache_key(tmp_path: Path) -> None:
    root = _photo_folder(tmp_path / "pets")
    before = load_dataset(root).samples.at_size(16)
    _jpeg(root / "cat" / "extra.jpg", np.zeros((20, 20, 3), np.uint8))
    after = load_dataset(root).samples.at_size(16)
    assert before.cache_key() != after.cache_key()


def test_interrupted_cache_build_leaves_no_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    files = load_dataset(_photo_folder(tmp_path / "pets")).samples.at_size(16)

    def fail(self, index):
        raise KeyboardInterrupt

    monkeypatch.setattr(ImageFiles, "_read", fail)
    with pytest.raises(KeyboardInterrupt):
        cached_store(files, tmp_path / "cache", workers=0)
    assert not list((tmp_path / "cache").glob("*.npy"))


def test_a_non_image_array_is_not_taken_for_a_cache(tmp_path: Path) -> None:
    np.save(tmp_path / "x.npy", np.zeros((3, 4), dtype=np.float32))
    with pytest.raises(FewlabelError, match="not an image cache"):
        ImageArrayFile(tmp_path / "x.npy")


def test_float_npz_is_converted_without_float64(tmp_path: Path) -> None:
    images = np.array([[[0.0, 0.5], [1.0, 0.25]]] * 2, dtype=np.float32)
    np.savez(tmp_path / "f.npz", x=images, y=np.array(["b", "a"]))
    dataset = load_npz(tmp_path / "f.npz")
    assert dataset.samples.dtype == torch.uint8
    assert dataset.samples[0, 0].tolist() == [[0, 128], [255, 64]]  # rint(255 * v)
    assert dataset.classes == ["a", "b"] and dataset.labels.tolist() == [1, 0]


def test_leave_one_out_knn_in_chunks_matches_the_full_matrix() -> None:
    gen = torch.Generator().manual_seed(0)
    features = torch.randn(50, 8, generator=gen)
    labels = torch.randint(0, 3, (50,), generator=gen)
    chunked = knn_predict(features, labels, features, 3, k=5, chunk=7, leave_one_out=True)
    normed = torch.nn.functional.normalize(features, dim=1)
    similarity = normed @ normed.T
    similarity.fill_diagonal_(-float("inf"))
    top_sim, top_idx = similarity.topk(5, dim=1)
    votes = torch.zeros(50, 3).scatter_add_(1, labels[top_idx], (top_sim / 0.1).exp())
    assert torch.equal(chunked, votes.argmax(dim=1))


def test_train_on_a_photo_folder_runs_at_the_working_size(tmp_path: Path, capsys) -> None:
    root = _photo_folder(tmp_path / "pets", per_class=8, side=(300, 400))
    out = tmp_path / "run"
    code = main(["-q", "train", "--data", str(root), "--labels", "1.0", "--epochs", "1", "--image-size", "32",
                 "--cache-images", "--workers", "0", "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    import json

    import yaml

    config = yaml.safe_load((out / "config.yaml").read_text())
    assert config["dataset"]["working_size"] == 32 and config["dataset"]["shape"] == [3, 32, 32]
    assert config["dataset"]["image_cache"].endswith(".npy")
    assert json.loads((out / "model.json").read_text())["data_size"] == 32


@pytest.mark.parametrize("kind", ["folder", "csv"])
def test_one_class_is_a_one_line_error(tmp_path: Path, capsys, kind: str) -> None:
    if kind == "folder":
        data = tmp_path / "one"
        for i in range(12):
            _jpeg(data / "only" / f"{i}.jpg", np.full((16, 16, 3), i * 10, np.uint8))
    else:
        data = tmp_path / "one.csv"
        data.write_text("text,label\n" + "".join(f"review number {i},good\n" for i in range(20)))
    out = tmp_path / "run"
    code = main(["train", "--data", str(data), "--epochs", "1", "--out", str(out)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert err[-1].startswith("fewlabel: error:") and "at least two classes" in err[-1]
    assert not out.exists()


def test_decode_error_in_a_loader_worker_is_one_line(tmp_path: Path, capsys) -> None:
    root = _photo_folder(tmp_path / "pets", per_class=6)
    good = (root / "cat" / "0.jpg").read_bytes()
    (root / "cat" / "0.jpg").write_bytes(good[: len(good) // 3])  # the header reads, decoding fails
    code = main(["train", "--data", str(root), "--epochs", "1", "--workers", "1", "--image-size", "16",
                 "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert err[-1].startswith("fewlabel: error: cannot decode image") and "0.jpg" in err[-1]
    assert "Traceback" not in "\n".join(err)


def test_text_folder_ignores_hidden_files_and_names_empty_classes(tmp_path: Path) -> None:
    for name in ("pos", "neg"):
        for i in range(6):
            (tmp_path / "t" / name).mkdir(parents=True, exist_ok=True)
            (tmp_path / "t" / name / f"{i}.txt").write_text(f"{name} document {i}")
    (tmp_path / "t" / "pos" / "._0.txt").write_bytes(b"\x00\x05\x16\x07 resource fork")
    (tmp_path / "t" / "pos" / ".ipynb_checkpoints").mkdir()
    (tmp_path / "t" / "pos" / ".ipynb_checkpoints" / "0-checkpoint.txt").write_text("a duplicate")
    dataset = load_dataset(tmp_path / "t")
    assert dataset.modality == "text" and len(dataset) == 12
    (tmp_path / "t" / "empty").mkdir()
    (tmp_path / "t" / "empty" / "._x.txt").write_text("hidden only")
    with pytest.raises(FewlabelError, match=r"class folder .*empty has no \.txt documents"):
        load_dataset(tmp_path / "t")


def test_image_size_resizes_in_memory_arrays_for_training_only() -> None:
    digits = load_dataset("digits")
    bigger = at_working_size(digits, 16)
    assert bigger.image_shape == (1, 16, 16) and bigger.samples.dtype == torch.uint8
    assert bigger.summary()["working_size"] == 16
    # A constant image stays constant; the mean brightness survives the antialiased resize.
    assert abs(float(bigger.samples[:50].float().mean()) - float(digits.samples[:50].float().mean())) < 2.0
    assert at_working_size(digits, 16, resize_arrays=False).samples is digits.samples
    assert at_working_size(digits, None).samples is digits.samples


def test_headers_of_an_unchanged_folder_are_read_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = _photo_folder(tmp_path / "pets")
    first = load_dataset(root)
    import fewlabel.data.image_files as image_files

    def no_header_reads(path):
        raise AssertionError(f"header of {path} read again")

    monkeypatch.setattr(image_files, "_read_header", no_header_reads)
    again = load_dataset(root)
    assert again.image_shape == first.image_shape and again.fingerprint() == first.fingerprint()
    _jpeg(root / "cat" / "new.jpg", np.zeros((30, 30, 3), np.uint8))  # a changed folder is read again
    with pytest.raises(AssertionError, match="read again"):
        load_dataset(root)


def test_sixteen_bit_grey_is_scaled_not_clipped(tmp_path: Path) -> None:
    ramp = (np.arange(64, dtype=np.uint16).reshape(8, 8) * 1000).astype(np.uint16)  # 0 .. 63,000
    Image.fromarray(ramp).save(tmp_path / "deep.png")
    out = decode_image(tmp_path / "deep.png", 8, 1)[0]
    assert out.tolist() == np.rint(ramp * (255.0 / 65535.0)).astype(np.uint8).tolist()


def test_dangling_links_and_oversized_headers_are_named_or_skipped(tmp_path: Path) -> None:
    root = _photo_folder(tmp_path / "pets")
    (root / "cat" / "gone.jpg").symlink_to(tmp_path / "nowhere.jpg")
    with pytest.raises(FewlabelError, match=r"gone\.jpg"):
        load_dataset(root)
    # A header that claims 20,000 x 20,000 px (a panorama, or a corrupt file): Pillow refuses it as a bomb.
    Image.new("L", (1, 1)).save(root / "dog" / "huge.bmp")
    data = bytearray((root / "dog" / "huge.bmp").read_bytes())
    data[18:22] = (20000).to_bytes(4, "little")
    data[22:26] = (20000).to_bytes(4, "little")
    (root / "dog" / "huge.bmp").write_bytes(bytes(data))
    dataset = load_dataset(root, skip_bad=True)
    assert sorted(Path(p).name for p in dataset.summary()["skipped_bad"]["examples"]) == ["gone.jpg", "huge.bmp"]
    assert len(dataset) == 12


def test_a_file_rewritten_with_its_old_size_and_time_gets_a_new_cache(tmp_path: Path) -> None:
    import os

    root = tmp_path / "bmp"
    for name in ("a", "b"):
        for i in range(3):
            (root / name).mkdir(parents=True, exist_ok=True)
            Image.new("L", (8, 8), 40).save(root / name / f"{i}.bmp")
    target = root / "a" / "0.bmp"
    before = load_dataset(root).samples.at_size(8)
    stamp = target.stat()
    target.unlink()  # rewritten as a new file (cp -p, unzip), same size, old modification time restored
    Image.new("L", (8, 8), 255).save(target)
    os.utime(target, ns=(stamp.st_atime_ns, stamp.st_mtime_ns))
    after = load_dataset(root).samples.at_size(8)
    assert after.fingerprint == before.fingerprint  # same names, sizes and times: the same data for splits
    assert after.cache_key() != before.cache_key()  # but never the old decoded pixels
    assert int(cached_store(after, tmp_path / "cache", workers=0)[0].float().mean()) == 255


def test_truncated_caches_and_abandoned_builds(tmp_path: Path) -> None:
    files = load_dataset(_photo_folder(tmp_path / "pets")).samples.at_size(16)
    store = cached_store(files, tmp_path / "cache", workers=0)
    with open(store.path, "r+b") as handle:
        handle.truncate(Path(store.path).stat().st_size - 10)
    with pytest.raises(FewlabelError, match="truncated"):
        ImageArrayFile(store.path)
    abandoned = tmp_path / "cache" / f"{files.cache_key()}.99999999.tmp.npy"  # no such process
    abandoned.write_bytes(b"half a cache")
    rebuilt = cached_store(files, tmp_path / "cache", workers=0)  # the truncated cache is rebuilt
    assert torch.equal(rebuilt[np.arange(12)], files[np.arange(12)])
    assert not abandoned.exists()


def test_a_cached_dataset_refuses_another_size(tmp_path: Path) -> None:
    dataset = load_dataset(_photo_folder(tmp_path / "pets"))
    cached = at_working_size(dataset, 16, cache=True)
    assert at_working_size(cached, 16) is cached
    with pytest.raises(FewlabelError, match="16 px cache"):
        at_working_size(cached, 32)


def test_evaluate_sees_the_size_a_backbone_was_pretrained_at(tmp_path: Path) -> None:
    from fewlabel.approaches.selfsupervised import EvaluateConfig, PretrainConfig, evaluate_backbone, pretrain
    from fewlabel.engine.fit import Budget

    run = pretrain(PretrainConfig(method="simclr", data="digits", epochs=1, width=8, image_size=16,
                                  budget=Budget(workers=0, progress=False), out=str(tmp_path / "pre")))
    import yaml

    config = yaml.safe_load((Path(run.run_dir) / "config.yaml").read_text())
    assert config["dataset"]["shape"] == [1, 16, 16]
    result = evaluate_backbone(EvaluateConfig(backbone=run.run_dir, protocol="knn", labels="0.2", k=5))
    # the pretraining run's own split was reused (same data), so the test set is the one pretraining never saw
    from fewlabel.data.splits import LabelSplit

    assert result["test"] == len(LabelSplit.load(Path(run.run_dir) / "split.npz").test)
    assert 0.0 <= result["test_accuracy"] <= 1.0


def test_training_crops_come_from_the_whole_photo(tmp_path: Path) -> None:
    """A 4:3 photo with a black band at its left edge: its centre square never shows the band, while training
    crops of the whole decoded photo (random-resized, 25-100% of the area) sometimes do."""
    from fewlabel.augment.supervised import build_policy

    photo = np.full((60, 80, 3), 255, dtype=np.uint8)
    photo[:, :6] = 0  # the centre square of the 80 px width starts at column 10
    for name in ("a", "b"):
        for i in range(3):
            (tmp_path / "wide" / name).mkdir(parents=True, exist_ok=True)
            Image.fromarray(photo).save(tmp_path / "wide" / name / f"{i}.png")
    files = at_working_size(load_dataset(tmp_path / "wide"), 64).samples
    assert int(files[0].min()) > 200  # the centre square: no black
    whole = files.whole_images()
    assert whole[0].shape == (3, 64, 85)  # shorter side 64, nothing cropped away
    policy = build_policy("standard", (64, 64), 2, flip=False)
    assert policy.crops_to_size
    torch.manual_seed(0)
    crops = [policy.sample_transform(whole[0]) for _ in range(40)]
    assert all(c.shape == (3, 64, 64) for c in crops)
    assert any(int(c.min()) < 50 for c in crops)  # some crops reach the black band
    with pytest.raises(ValueError, match="one at a time"):
        whole[[0, 1]]


def test_fit_feeds_whole_photos_to_cropping_policies_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import fewlabel.engine.fit as fit

    seen = []
    original = fit.IndexedSamples

    def spy(samples, *args, **kwargs):
        seen.append(getattr(samples, "crop", None))
        return original(samples, *args, **kwargs)

    monkeypatch.setattr(fit, "IndexedSamples", spy)
    root = _photo_folder(tmp_path / "pets", per_class=6)
    for augment, expected in (("standard", False), ("none", True)):
        seen.clear()
        assert main(["-q", "train", "--data", str(root), "--epochs", "1", "--image-size", "32", "--workers", "0",
                     "--augment", augment, "--out", str(tmp_path / f"run-{augment}")]) == 0
        assert seen[0] is expected  # the train loader; validation and test always see centre squares
        assert seen[1:] == [True, True]
