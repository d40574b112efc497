from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest
from conftest import write_fake_fashion_mnist, write_idx
from PIL import Image

from fewlabel.data import load_dataset
from fewlabel.data.images import read_idx
from fewlabel.data.resolve import RemoteFile, download_files
from fewlabel.errors import FewlabelError


def test_digits_is_embedded() -> None:
    ds = load_dataset("digits")
    assert len(ds) == 1797
    assert ds.image_shape == (1, 8, 8)
    assert ds.samples.dtype.is_floating_point is False
    assert int(ds.samples.max()) == 255  # 16 grey levels scaled to the full uint8 range
    assert ds.num_classes == 10
    assert not ds.flip_invariant


@pytest.mark.parametrize("compress", [True, False])
def test_read_idx_round_trip(tmp_path: Path, compress: bool) -> None:
    array = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    path = tmp_path / ("a.idx.gz" if compress else "a.idx")
    write_idx(path, array, compress=compress)
    np.testing.assert_array_equal(read_idx(path), array)


def test_read_idx_rejects_corrupt_files(tmp_path: Path) -> None:
    bad_magic = tmp_path / "bad.idx"
    bad_magic.write_bytes(b"\x01\x02\x03\x04rest")
    with pytest.raises(FewlabelError, match="magic"):
        read_idx(bad_magic)
    truncated = tmp_path / "short.idx"
    write_idx(truncated, np.zeros((4, 5), dtype=np.uint8), compress=False)
    truncated.write_bytes(truncated.read_bytes()[:-3])
    with pytest.raises(FewlabelError, match="truncated"):
        read_idx(truncated)
    not_gzip = tmp_path / "fake.gz"
    not_gzip.write_bytes(b"plain bytes, not gzip")
    with pytest.raises(FewlabelError, match="corrupt"):
        read_idx(not_gzip)


def test_fashion_mnist_from_data_dir_flag(fake_fashion_mnist: Path) -> None:
    ds = load_dataset("fashion-mnist", str(fake_fashion_mnist))
    assert len(ds) == 80 and ds.image_shape == (1, 28, 28)
    assert ds.official_test.sum() == 20
    assert ds.classes[0] == "T-shirt/top"
    assert "data dir" in ds.source


def test_fashion_mnist_from_environment(fake_fashion_mnist: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FEWLABEL_DATA", str(fake_fashion_mnist))
    assert len(load_dataset("fashion-mnist")) == 80


def test_flag_takes_precedence_over_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_fake_fashion_mnist(tmp_path / "flag" / "fashion-mnist", n_train=30)
    write_fake_fashion_mnist(tmp_path / "env" / "fashion-mnist", n_train=40)
    monkeypatch.setenv("FEWLABEL_DATA", str(tmp_path / "env"))
    assert len(load_dataset("fashion-mnist", str(tmp_path / "flag"))) == 50


def test_missing_named_dataset_names_every_place_searched(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("fewlabel.data.images.FASHION_MNIST_LOCAL", ())
    with pytest.raises(FewlabelError) as info:
        load_dataset("fashion-mnist", str(tmp_path / "nowhere"))
    message = str(info.value)
    assert str(tmp_path / "nowhere") in message and "cache" not in message.split("searched")[0]
    assert "--data-dir" in message and "\n" not in message


def test_download_verifies_checksum(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    payload = b"the real bytes"

    class FakeResponse:
        def __init__(self, data: bytes) -> None:
            self.data = data

        def __enter__(self):
            import io

            return io.BytesIO(self.data)

        def __exit__(self, *exc) -> None:
            return None

    monkeypatch.setattr("urllib.request.urlopen", lambda url, timeout: FakeResponse(payload))
    import hashlib

    good = RemoteFile("good.bin", "http://example.invalid/good", hashlib.sha256(payload).hexdigest())
    download_files([good], tmp_path)
    assert (tmp_path / "good.bin").read_bytes() == payload
    bad = RemoteFile("bad.bin", "http://example.invalid/bad", "0" * 64)
    with pytest.raises(OSError, match="checksum"):
        download_files([bad], tmp_path)
    assert not (tmp_path / "bad.bin").exists()
    assert not list(tmp_path.glob("*.part"))


def _save(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def test_image_folder_grey(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    for cls in ("cat", "dog"):
        for i in range(3):
            _save(tmp_path / "pets" / cls / f"{i}.png", rng.integers(0, 255, (10, 12), dtype=np.uint8))
    ds = load_dataset(tmp_path / "pets")
    assert ds.classes == ["cat", "dog"]
    assert ds.image_shape == (1, 10, 10)  # decoded as squares of the shorter side (centre crop)
    assert ds.labels.tolist() == [0, 0, 0, 1, 1, 1]


def test_image_folder_mixed_colour_and_sizes(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    _save(tmp_path / "x" / "a" / "0.png", rng.integers(0, 255, (16, 16), dtype=np.uint8))
    _save(tmp_path / "x" / "a" / "1.png", rng.integers(0, 255, (16, 16), dtype=np.uint8))
    _save(tmp_path / "x" / "b" / "0.jpg", rng.integers(0, 255, (20, 24, 3), dtype=np.uint8))
    ds = load_dataset(tmp_path / "x")
    assert ds.image_shape == (3, 16, 16)  # any colour image makes the set RGB; sizes follow the majority


def test_image_folder_errors(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(FewlabelError, match="no class sub-folders"):
        load_dataset(tmp_path / "empty")
    (tmp_path / "noimg" / "a").mkdir(parents=True)
    with pytest.raises(FewlabelError, match="no images"):
        load_dataset(tmp_path / "noimg")
    (tmp_path / "corrupt" / "a").mkdir(parents=True)
    (tmp_path / "corrupt" / "a" / "broken.png").write_bytes(b"\x89PNG not really")
    with pytest.raises(FewlabelError, match=r"broken\.png"):
        load_dataset(tmp_path / "corrupt")


def test_npz_layouts(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "nhw.npz", x=rng.integers(0, 255, (6, 9, 9), dtype=np.uint8), y=np.array([0, 1, 2] * 2))
    ds = load_dataset(tmp_path / "nhw.npz")
    assert ds.image_shape == (1, 9, 9) and ds.num_classes == 3
    np.savez(tmp_path / "nhwc.npz", images=rng.random((4, 5, 5, 3)), labels=np.array(["b", "a", "b", "a"]))
    ds = load_dataset(tmp_path / "nhwc.npz")
    assert ds.image_shape == (3, 5, 5) and ds.classes == ["a", "b"]
    assert ds.labels.tolist() == [1, 0, 1, 0]
    assert int(ds.samples.max()) <= 255 and int(ds.samples.max()) > 200  # [0,1] floats scaled to uint8


def test_npz_errors(tmp_path: Path) -> None:
    np.savez(tmp_path / "nokeys.npz", a=np.zeros(3))
    with pytest.raises(FewlabelError, match="needs arrays"):
        load_dataset(tmp_path / "nokeys.npz")
    np.savez(tmp_path / "mismatch.npz", x=np.zeros((3, 4, 4), dtype=np.uint8), y=np.zeros(2))
    with pytest.raises(FewlabelError, match="3 images but 2 labels"):
        load_dataset(tmp_path / "mismatch.npz")
    (tmp_path / "junk.npz").write_bytes(gzip.compress(b"junk"))
    with pytest.raises(FewlabelError, match="cannot read"):
        load_dataset(tmp_path / "junk.npz")


def test_unknown_name_or_path() -> None:
    with pytest.raises(FewlabelError, match="neither a registered name"):
        load_dataset("/nonexistent")
    with pytest.raises(FewlabelError, match="neither a registered name"):
        load_dataset("fashion_mnist_typo")
