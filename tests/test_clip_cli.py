"""Image-text as a modality, end to end through the command line: `pretrain --method clip` (LiT and both towers),
its export, `evaluate --protocol zero-shot`, the image tower as a backbone, resuming, and bad input.

Tiny on purpose (a dozen 16 px coloured shapes, a 2-layer 32-wide BERT, an 8-wide ResNet): the numbers are not
the point, the plumbing is.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import save_tiny_bert
from PIL import Image, ImageDraw

from fewlabel.cli import main
from fewlabel.data import load_dataset
from fewlabel.data.splits import LabelSplit
from fewlabel.models.backbones import BackboneSpec, create_backbone
from fewlabel.models.export import load_backbone, save_backbone

COLOURS = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 40, 220)}
TOWERS = ["--option", "embed_dim=16", "--option", "image_size=16", "--batch-size", "4", "--workers", "0"]


def _write_pairs(root: Path) -> Path:
    """12 drawings (3 colours x 2 shapes x 2 sizes), captioned "a <colour> <shape>" (so the two sizes share a
    caption), labelled by colour."""
    (root / "img").mkdir(parents=True)
    rows = ["file,caption,colour"]
    for colour, rgb in COLOURS.items():
        for shape in ("square", "circle"):
            for size in (10, 14):
                image = Image.new("RGB", (16, 16), "white")
                box = (8 - size // 2, 8 - size // 2, 8 + size // 2, 8 + size // 2)
                draw = ImageDraw.Draw(image)
                (draw.rectangle if shape == "square" else draw.ellipse)(box, fill=rgb)
                name = f"img/{colour}-{shape}-{size}.png"
                image.save(root / name)
                rows.append(f"{name},a {colour} {shape},{colour}")
    (root / "pairs.csv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    return root / "pairs.csv"


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Path]]:
    """The pair table, a tiny BERT folder, a resnet_small export (the image tower) and a LiT run, shared by the
    tests of this module (each CLI run costs seconds). The cache is isolated here too (module fixtures run before
    conftest's per-test isolation)."""
    root = tmp_path_factory.mktemp("clip")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("FEWLABEL_CACHE", str(root / "cache"))
        patch.setenv("FEWLABEL_OFFLINE", "1")
        patch.delenv("FEWLABEL_DATA", raising=False)
        table = _write_pairs(root)
        texts = [f"a {c} {s}" for c in COLOURS for s in ("square", "circle")] + [f"a drawing of {c}" for c in COLOURS]
        bert = save_tiny_bert(root / "bert", texts * 4)
        torch.manual_seed(0)
        spec = BackboneSpec(name="resnet_small", in_chans=3, width=8)
        save_backbone(create_backbone(spec), spec, root / "resnet")
        paths = {"root": root, "table": table, "bert": bert, "resnet": root / "resnet", "lit": root / "lit"}
        code = main(["-q", "pretrain", "--method", "clip", *_data(paths), *_towers(paths), "--epochs", "2",
                     "--out", str(paths["lit"])])
        assert code == 0
        yield paths


def _data(env: dict[str, Path]) -> list[str]:
    return ["--data", str(env["table"]), "--image-column", "file", "--label-column", "colour"]


def _towers(env: dict[str, Path]) -> list[str]:
    return [*TOWERS, "--option", f"image_backbone={env['resnet']}", "--option", f"text_backbone={env['bert']}"]


def _state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _bert_state(folder: Path) -> dict[str, torch.Tensor]:
    from fewlabel.models.text_encoder import load_text_backbone

    return _state(load_text_backbone(folder)[0].body)


def test_lit_pretraining_reports_retrieval_and_zero_shot_and_exports(env: dict[str, Path]) -> None:
    from fewlabel.models.clip_export import load_clip

    run = env["lit"]
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["method"] == "clip" and metrics["epochs"] == 2
    for direction in ("image_to_text", "text_to_image"):
        for k in (1, 5, 10):
            assert 0.0 <= metrics["retrieval"][f"{direction}_R@{k}"] <= 1.0
    assert 0.0 <= metrics["zero_shot_accuracy"] <= 1.0
    assert metrics["zero_shot"]["classes"] == 3 and metrics["test_images"] >= 2
    assert metrics["towers"]["image"]["locked"] and not metrics["towers"]["text"]["locked"]

    # Split by image: no drawing has pairs on both sides; only the training pairs trained.
    dataset = load_dataset(env["table"], columns={"image": "file", "label": "colour"})
    split = LabelSplit.load(run)
    held = set(dataset.groups[np.concatenate([split.val, split.test])].tolist())
    assert not held & set(dataset.groups[split.pool].tolist())
    assert metrics["pool_size"] == len(split.pool)

    # The export loads back: the locked image tower is the source's weights, the text tower has trained.
    clip = load_clip(run)
    source, _ = load_backbone(env["resnet"])
    assert _same(_state(clip.image_tower), _state(source))
    assert not _same(_state(clip.model.text_tower.body), _bert_state(env["bert"]))
    texts = clip.encode_texts(["a red square", "a blue circle"])
    assert texts.shape == (2, 16) and torch.allclose(texts.norm(dim=1), torch.ones(2), atol=1e-5)
    info = json.loads((run / "export" / "clip.json").read_text())
    assert info["lock_image"] and info["image"]["builder"]["kind"] == "fewlabel" and info["logit_scale"] > 0
    from transformers import AutoModel, AutoTokenizer  # outside fewlabel too

    assert AutoModel.from_pretrained(run / "export" / "text").config.hidden_size == 32
    assert AutoTokenizer.from_pretrained(run / "export" / "text")("a red square")["input_ids"]


def test_zero_epochs_scores_and_exports_the_towers_as_loaded(env: dict[str, Path], tmp_path: Path) -> None:
    """The floor of a benchmark: ``pretrain_clip`` with 0 epochs trains nothing (both towers unlocked here, so a
    step would change them) and still writes retrieval, zero-shot and an export that `evaluate` takes."""
    from fewlabel.approaches.pretrain_clip import pretrain_clip
    from fewlabel.approaches.selfsupervised import PretrainConfig
    from fewlabel.engine.fit import Budget
    from fewlabel.modalities import get_modality
    from fewlabel.models.clip_export import load_clip

    columns = {"image": "file", "label": "colour"}
    dataset = load_dataset(env["table"], columns=columns)
    split = get_modality("image-text").split(dataset, 0, None)
    options = {"embed_dim": 16, "image_size": 16, "lock_image": False, "image_backbone": str(env["resnet"]),
               "text_backbone": str(env["bert"])}
    out = tmp_path / "floor"
    config = PretrainConfig(method="clip", data=str(env["table"]), columns=columns, epochs=0, batch_size=4,
                            method_options=options, budget=Budget(workers=0, accelerator="cpu"), out=str(out))
    metrics = pretrain_clip(dataset, split, config).metrics
    assert metrics["epochs"] == 0 and metrics["retrieval"] and metrics["zero_shot"]["classes"] == 3
    clip = load_clip(out)
    source, _ = load_backbone(env["resnet"])
    assert _same(_state(clip.image_tower), _state(source))
    assert _same(_state(clip.model.text_tower.body), _bert_state(env["bert"]))
    assert main(["-q", "evaluate", "--backbone", str(out), "--protocol", "zero-shot"]) == 0


def test_both_towers_train_and_a_run_resumes(env: dict[str, Path], tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    """lock_image=false, lock_text=true (and the SigLIP loss): the image tower trains, the text tower does not;
    --resume continues the run from its checkpoint."""
    from fewlabel.models.clip_export import load_clip

    out = tmp_path / "both"
    assert main(["-q", "pretrain", "--method", "clip", *_data(env), *_towers(env), "--option", "lock_image=false",
                 "--option", "lock_text=true", "--option", "loss=siglip", "--epochs", "1", "--out", str(out)]) == 0
    clip = load_clip(out)
    source, _ = load_backbone(env["resnet"])
    assert not _same(_state(clip.image_tower), _state(source))
    assert _same(_state(clip.model.text_tower.body), _bert_state(env["bert"]))
    assert clip.model.logit_bias is not None  # SigLIP's bias is exported with the heads
    first = _state(clip.image_tower)
    assert main(["-q", "pretrain", "--resume", str(out), "--epochs", "2"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["epochs"] == 2 and metrics["resumed_after_epochs"] == 1 and metrics["loss"] == "siglip"
    assert not _same(_state(load_clip(out).image_tower), first)
    assert "test retrieval R@1/5/10" in capsys.readouterr().out


def test_zero_shot_evaluate_on_the_pairs_and_on_an_image_dataset(env: dict[str, Path], tmp_path: Path,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    result_file = tmp_path / "zero-shot.json"
    assert main(["-q", "evaluate", "--backbone", str(env["lit"]), "--protocol", "zero-shot", "--prompts",
                 "a drawing of {}|a {} shape", "--prompts", "{}", "--json", str(result_file)]) == 0
    result = json.loads(result_file.read_text())
    assert result["protocol"] == "zero-shot" and result["labelled"] == 0 and result["dataset"] == "pairs"
    assert result["prompts"] == ["a drawing of {}", "a {} shape", "{}"]
    assert result["class_names"] == ["blue", "green", "red"] and 0.0 <= result["test_accuracy"] <= 1.0
    assert result["test"] == json.loads((env["lit"] / "metrics.json").read_text())["zero_shot"]["images"]
    assert {"seconds", "backbone", "labels", "test"} <= set(result)
    # Any labelled image dataset: digits, named by --class-names (the export folder works as well as the run).
    names = ",".join(["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"])
    assert main(["-q", "evaluate", "--backbone", str(env["lit"] / "export"), "--protocol", "zero-shot", "--data",
                 "digits", "--class-names", names]) == 0
    assert "zero-shot test accuracy" in capsys.readouterr().out


def test_the_image_tower_is_a_backbone_for_finetune_and_evaluate(env: dict[str, Path], tmp_path: Path) -> None:
    lit = str(env["lit"])
    out = tmp_path / "ft"
    assert main(["-q", "finetune", "--backbone", lit, *_data(env), "--strategy", "feature-extract",
                 "--out", str(out)]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert 0.0 <= metrics["test_accuracy"] <= 1.0 and metrics["split"]["labelled"] >= 3
    assert json.loads((out / "model.json").read_text())["modality"] == "image-text"
    assert main(["-q", "predict", "--model", str(out), "--data", str(env["root"] / "img")]) == 0  # rebuilt offline
    assert main(["-q", "finetune", "--backbone", lit, *_data(env), "--strategy", "partial", "--epochs", "1",
                 "--workers", "0", "--out", str(tmp_path / "partial")]) == 0
    assert main(["-q", "evaluate", "--backbone", lit, "--protocol", "linear", "--data", "digits", "--labels", "0.1",
                 "--out", str(tmp_path / "linear")]) == 0
    assert json.loads((tmp_path / "linear" / "metrics.json").read_text())["test_accuracy"] > 0.1


def _bad_table(root: Path, kind: str) -> list[str]:
    if kind == "missing image":
        (root / "t.csv").write_text("file,caption\nimg/red-square-10.png,a\nimg/nowhere.png,b\n", encoding="utf-8")
        (root / "img").mkdir()
        Image.new("RGB", (8, 8)).save(root / "img" / "red-square-10.png")
    else:  # every caption empty
        (root / "t.csv").write_text('file,caption\nimg/a.png,""\nimg/a.png,"  "\n', encoding="utf-8")
        (root / "img").mkdir()
        Image.new("RGB", (8, 8)).save(root / "img" / "a.png")
    return ["--data", str(root / "t.csv"), "--image-column", "file"]


def _image_folder(root: Path) -> list[str]:
    for cls in ("a", "b"):
        (root / "folder" / cls).mkdir(parents=True)
        for i in range(3):
            Image.new("RGB", (8, 8), (80 * i, 0, 0)).save(root / "folder" / cls / f"{i}.png")
    return ["--data", str(root / "folder")]


@pytest.mark.parametrize(("case", "message"), [
    ("digits", "needs image-text pairs"),
    ("image folder", "needs image-text pairs"),
    ("text table", "--image-column"),
    ("missing image", "missing"),
    ("empty captions", "empty in every row"),
    ("unknown option", "unknown option(s) temperature for clip"),
    ("both locked", "unlock one tower"),
])
def test_bad_pretrain_input_is_one_line_and_writes_nothing(case: str, message: str, env: dict[str, Path],
                                                           tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = {"digits": ["--data", "digits"],
            "image folder": _image_folder(tmp_path) if case == "image folder" else [],
            "text table": ["--data", str(env["table"]), "--text-column", "caption", "--label-column", "colour"],
            "missing image": _bad_table(tmp_path, case) if case == "missing image" else [],
            "empty captions": _bad_table(tmp_path, case) if case == "empty captions" else [],
            "unknown option": [*_data(env), "--option", "temperature=0.2"],
            "both locked": [*_data(env), "--option", "lock_text=true"]}[case]
    out = tmp_path / "run"
    assert main(["-q", "pretrain", "--method", "clip", *args, "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err, err
    assert not out.exists()


def test_zero_shot_needs_a_clip_backbone(env: dict[str, Path], tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "ev"
    for args, message in (
        (["--backbone", str(env["resnet"]), "--data", "digits"], "needs a CLIP backbone"),
        (["--backbone", str(env["lit"]), "--prompts", "a drawing"], "has no {}"),
        (["--backbone", str(env["lit"]), "--class-names", "red,green"], "gives 2 names"),
    ):
        assert main(["-q", "evaluate", *args, "--protocol", "zero-shot", "--out", str(out)]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and message in err, err
        assert not out.exists()


def test_compare_runs_clip_as_a_self_supervised_row(tmp_path: Path) -> None:
    """`compare` on an image-text table: CLIP pretraining (the default towers, offline) and its image tower's
    linear probe are one more self-supervised row of the report, beside transfer."""
    table = _write_pairs(tmp_path / "data")
    out = tmp_path / "cmp"
    assert main(["-q", "compare", "--data", str(table), "--image-column", "file", "--text-column", "caption",
                 "--label-column", "colour", "--approaches", "selfsupervised,transfer", "--labels", "0.5",
                 "--seeds", "1", "--out", str(out)]) == 0
    results = [json.loads(p.read_text()) for p in (out / "results").glob("*.json")]
    assert {r["job"]["variant"] for r in results} == {"clip", "clip+linear", "feature-extract@efficientnet_lite0"}
    assert all(r["test_accuracy"] is not None for r in results if r["job"]["approach"] != "pretrain")
    assert "self-supervised: clip+linear" in (out / "report.md").read_text()
