"""Files other runs and tools read are replaced whole or not at all, and text files are UTF-8."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from fewlabel.compare.report import write_report
from fewlabel.engine.fit import save_classifier
from fewlabel.engine.run import RunFolder, atomic_path, atomic_write
from fewlabel.models.backbones import BackboneSpec, Classifier, create_backbone
from fewlabel.models.export import load_backbone, save_backbone


def fail_on_replace(monkeypatch: pytest.MonkeyPatch) -> None:
    """The process dies between writing the new file and putting it in place."""

    def replace(src, dst):
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "replace", replace)


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(".") or p.suffix == ".tmp")


def test_interrupted_write_keeps_the_old_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "metrics.json"
    atomic_write(target, '{"old": 1}\n')
    with monkeypatch.context() as patch:
        fail_on_replace(patch)
        with pytest.raises(KeyboardInterrupt):
            atomic_write(target, '{"new": 2}\n')
    assert target.read_text(encoding="utf-8") == '{"old": 1}\n'
    assert leftovers(tmp_path) == []  # the temporary file is removed too


def test_atomic_path_for_writers_that_need_a_file_name(tmp_path: Path) -> None:
    target = tmp_path / "weights.bin"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_bytes(b"half")
        raise RuntimeError("writer failed")
    assert target.read_bytes() == b"old" and leftovers(tmp_path) == []
    with atomic_path(target) as tmp:
        tmp.write_bytes(b"new")
    assert target.read_bytes() == b"new" and leftovers(tmp_path) == []


def test_text_is_utf8_whatever_the_locale(tmp_path: Path) -> None:
    target = tmp_path / "note.md"
    atomic_write(target, "Précision — 95 % ± 1\n")
    assert target.read_bytes().decode("utf-8") == "Précision — 95 % ± 1\n"


def test_backbone_export_survives_an_interrupted_re_export(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    spec = BackboneSpec(name="resnet_small", in_chans=1, width=8)
    first = create_backbone(spec)
    save_backbone(first, spec, tmp_path, method="simclr")
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    second = create_backbone(spec)
    with torch.no_grad():
        for param in second.parameters():
            param.add_(1.0)
    with monkeypatch.context() as patch:
        fail_on_replace(patch)
        with pytest.raises(KeyboardInterrupt):
            save_backbone(second, spec, tmp_path, method="byol")
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before
    _, info = load_backbone(tmp_path)
    assert info["method"] == "simclr"


def test_classifier_files_are_replaced_whole(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    run = RunFolder.create(str(tmp_path / "run"), "unused")
    model = Classifier(create_backbone(BackboneSpec(name="resnet_small", in_chans=1, width=8)), 3, data_channels=1)
    save_classifier(run, model, ["chat", "chien", "café"], {"backbone": "resnet_small"})
    meta = json.loads((run.path / "model.json").read_text(encoding="utf-8"))
    assert meta["classes"] == ["chat", "chien", "café"]
    before = (run.path / "model.json").read_bytes(), (run.path / "model.safetensors").read_bytes()
    with monkeypatch.context() as patch:
        fail_on_replace(patch)
        with pytest.raises(KeyboardInterrupt):
            save_classifier(run, model, ["a", "b", "c"])
    assert ((run.path / "model.json").read_bytes(), (run.path / "model.safetensors").read_bytes()) == before
    assert leftovers(run.path) == []


def test_reports_are_utf8_atomic_and_declare_their_charset(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_report([], tmp_path, "fewlabel compare: données é", setup={"données": "Fashion-MNIST ±"})
    html = (tmp_path / "report.html").read_bytes().decode("utf-8")
    assert '<meta charset="utf-8">' in html and "données é" in html
    assert "données é" in (tmp_path / "report.md").read_bytes().decode("utf-8")
    before = {name: (tmp_path / name).read_bytes() for name in ("report.md", "report.html")}
    with monkeypatch.context() as patch:
        fail_on_replace(patch)
        with pytest.raises(KeyboardInterrupt):
            write_report([], tmp_path, "another title", setup={})
    assert {name: (tmp_path / name).read_bytes() for name in ("report.md", "report.html")} == before


def test_compare_yaml_is_replaced_whole(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from fewlabel.compare import CompareConfig, compare

    config = CompareConfig(data="digits", labels=("0.2",), seeds=1, approaches=("supervised",), out=str(tmp_path),
                           max_jobs=0)
    compare(config)
    before = (tmp_path / "compare.yaml").read_bytes()
    with monkeypatch.context() as patch:
        fail_on_replace(patch)
        with pytest.raises(KeyboardInterrupt):
            compare(CompareConfig(**{**config.__dict__, "seeds": 2}))
    assert (tmp_path / "compare.yaml").read_bytes() == before
    assert leftovers(tmp_path) == []


def test_atomic_folder_replaces_a_folder_whole_or_not_at_all(tmp_path: Path) -> None:
    from fewlabel.engine.run import atomic_folder

    target = tmp_path / "export"
    with atomic_folder(target) as folder:
        (folder / "config.json").write_text("v1", encoding="utf-8")
    assert (target / "config.json").read_text(encoding="utf-8") == "v1"
    with pytest.raises(RuntimeError), atomic_folder(target) as folder:
        (folder / "config.json").write_text("half of v2", encoding="utf-8")
        raise RuntimeError("interrupted while saving")
    assert (target / "config.json").read_text(encoding="utf-8") == "v1"  # the earlier export survives
    with atomic_folder(target) as folder:
        (folder / "model.safetensors").write_bytes(b"v2")
    assert sorted(p.name for p in target.iterdir()) == ["model.safetensors"]  # replaced, not merged
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export"]  # no temporary or old folders left
