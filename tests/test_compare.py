"""Compare: CI statistics, recommendation logic, resumable executor, report from stored results."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from fewlabel.cli import main
from fewlabel.compare import BUDGETS, build_grid, recommend, summarize
from fewlabel.compare.executor import ResultStore, execute
from fewlabel.compare.report import write_report
from fewlabel.errors import FewlabelError


def test_confidence_interval_by_hand() -> None:
    # values 0.80, 0.82, 0.84: mean 0.82, sample sd 0.02, t(0.975, 2) = 4.302653 -> half width 0.049685
    s = summarize([0.80, 0.82, 0.84])
    assert s.mean == pytest.approx(0.82)
    assert s.half_width == pytest.approx(4.302653 * 0.02 / math.sqrt(3), rel=1e-5)
    assert s.n == 3
    single = summarize([0.5])
    assert single.mean == 0.5 and math.isnan(single.half_width)
    assert summarize([0.9, 0.9]).half_width == 0.0


def test_recommendation_clear_winner_and_tie() -> None:
    clear = recommend("0.1", {"a": [0.90, 0.91, 0.92], "b": [0.70, 0.71, 0.72], "c": [0.5, 0.5, 0.5]})
    assert clear.best == "a" and clear.runner_up == "b"
    assert clear.margin == pytest.approx(0.20) and not clear.within_noise
    assert clear.verdict == "better" and "is better than the runner-up b" in clear.sentence()
    assert set(clear.against) == {"b", "c"} and clear.against["c"].mean == pytest.approx(0.41)
    tie = recommend("0.1", {"a": [0.80, 0.90, 0.85], "b": [0.84, 0.82, 0.83]})
    assert tie.best == "a" and tie.within_noise
    assert "not distinguishable with 3 seeds — run more seeds" in tie.sentence()
    one_seed = recommend("0.1", {"a": [0.9], "b": [0.5]})
    assert one_seed.within_noise  # a single seed cannot separate signal from noise
    assert "not distinguishable with 1 seed — run more seeds" in one_seed.sentence()
    alone = recommend("1.0", {"a": [0.9]})
    assert alone.runner_up is None and "only approach" in alone.sentence()


def test_grid_keys_follow_configuration() -> None:
    small = build_grid("digits", ["0.1", "1"], 2, ["supervised", "transfer", "selfsupervised"], BUDGETS["small"],
                       ["efficientnet_lite0"])
    keys = [j.key() for j in small]
    assert len(keys) == len(set(keys))
    # one pretraining job per method and seed, reused by every label fraction's probes
    pretrain = [j for j in small if j.approach == "pretrain"]
    assert len(pretrain) == 2
    probes = [j for j in small if j.approach == "probe"]
    assert {p.depends_on for p in probes} == {p.key() for p in pretrain}
    again = build_grid("digits", ["0.1", "1"], 2, ["supervised", "transfer", "selfsupervised"], BUDGETS["small"],
                       ["efficientnet_lite0"])
    assert [j.key() for j in again] == keys
    changed = build_grid("digits", ["0.1", "1"], 2, ["supervised"], BUDGETS["medium"], [])
    assert not {j.key() for j in changed} & set(keys)
    with pytest.raises(FewlabelError, match="unknown approach"):
        build_grid("digits", ["0.1"], 1, ["magic"], BUDGETS["small"], [])


def fake_runner(calls: list[str]):
    def run(job, store):
        calls.append(job.key())
        rng = np.random.default_rng(abs(hash(job.key())) % 2**32)
        base = {"supervised": 0.8, "transfer": 0.85, "probe": 0.9, "pretrain": 0.0,
                "semisupervised": 0.87}[job.approach]
        return {"test_accuracy": None if job.approach == "pretrain" else base + 0.01 * rng.random(),
                "seconds": 1.0, "labelled": 10 if job.labels == "0.1" else 100, "warnings": []}
    return run


def test_resume_runs_exactly_the_missing_jobs(tmp_path: Path) -> None:
    jobs = build_grid("digits", ["0.1", "1"], 2, ["supervised", "transfer", "selfsupervised"], BUDGETS["small"],
                      ["efficientnet_lite0"])
    store = ResultStore(tmp_path)
    first: list[str] = []
    ran, skipped = execute(jobs, store, runner=fake_runner(first), limit=5)  # "killed" after 5 runs
    assert (ran, skipped) == (5, 0)
    second: list[str] = []
    ran, skipped = execute(jobs, store, runner=fake_runner(second))
    assert skipped == 5 and ran == len(jobs) - 5
    assert set(first).isdisjoint(second) and set(first) | set(second) == {j.key() for j in jobs}
    third: list[str] = []
    assert execute(jobs, store, runner=fake_runner(third)) == (0, len(jobs)) and not third


def test_interrupted_run_folder_is_moved_aside(tmp_path: Path) -> None:
    jobs = build_grid("digits", ["0.1"], 1, ["supervised"], BUDGETS["small"], [])
    store = ResultStore(tmp_path)
    stale = store.runs / jobs[0].key()
    stale.mkdir(parents=True)
    (stale / "partial.txt").write_text("half a run")
    fresh = store.fresh_run_dir(jobs[0])
    assert fresh == stale and not fresh.exists()
    assert (store.runs / f"{jobs[0].key()}.interrupted-1" / "partial.txt").read_text() == "half a run"


def test_report_from_stored_results_without_training(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    jobs = build_grid("digits", ["0.1", "1"], 3, ["supervised", "transfer", "selfsupervised", "semisupervised"],
                      BUDGETS["small"], ["efficientnet_lite0"])
    execute(jobs, ResultStore(tmp_path), runner=fake_runner([]))
    assert main(["report", str(tmp_path)]) == 0
    md = (tmp_path / "report.md").read_text()
    assert "| approach | needs labels? | data used |" in md
    # Every row says what data it used, the semi-supervised one included.
    assert "| semi-supervised: label-spreading@efficientnet_lite0 | yes | labelled subset + unlabelled pool" in md
    assert "self-supervised: simclr+linear" in md and "(n=3)" in md
    assert "**0.1 labels**" in md and "is better than the runner-up" in md
    assert "## Paired differences against the recommended approach" in md
    assert "| data augmentation: standard |" in md and "| transfer learning: feature-extract@efficientnet_lite0 |" in md
    assert "keeps" in md  # the 10%-of-labels retention question is answered
    page = (tmp_path / "report.html").read_text()
    assert page.count("data:image/png;base64,") == 2  # self-contained: both figures embedded
    assert (tmp_path / "figures" / "label_efficiency.png").stat().st_size > 1000


def test_report_leaves_out_results_of_an_earlier_grid(tmp_path: Path) -> None:
    """Results of jobs no longer in the folder's grid stay on disk but are not averaged into the report."""
    import yaml

    args = (["0.1", "1"], ["supervised", "transfer", "selfsupervised"], BUDGETS["small"], ["efficientnet_lite0"])
    old = build_grid("digits", args[0], 3, *args[1:])
    execute(old, ResultStore(tmp_path), runner=fake_runner([]))
    current = build_grid("digits", args[0], 2, *args[1:])  # seeds 0 and 1 of the same grid
    assert {j.key() for j in current} < {j.key() for j in old}
    (tmp_path / "compare.yaml").write_text(yaml.safe_dump({"data": "digits",
                                                           "job_keys": [j.key() for j in current]}))
    assert main(["report", str(tmp_path)]) == 0
    md = (tmp_path / "report.md").read_text()
    assert "(n=2)" in md and "(n=3)" not in md
    left_out = len(old) - len(current)
    assert f"{left_out} stored result(s) from earlier settings" in md
    assert len(list((tmp_path / "results").glob("*.json"))) == len(old)  # nothing deleted


def test_report_without_results_is_an_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["report", str(tmp_path)]) == 2
    assert "no compare results" in capsys.readouterr().err


def test_write_report_notes_domain_gap(tmp_path: Path) -> None:
    results = []
    for seed in range(2):
        for approach, variant, acc in (("supervised", "standard", 0.9), ("transfer", "feature-extract@x", 0.6)):
            job = {"approach": approach, "variant": variant, "labels": "1", "seed": seed, "depends_on": None}
            results.append({"job": job, "key": f"{approach}-{seed}", "test_accuracy": acc + 0.001 * seed,
                            "seconds": 2.0, "labelled": 100})
    write_report(results, tmp_path, "t", {})
    assert "domain gap" in (tmp_path / "report.md").read_text()


def test_compare_on_an_unseen_npz_dataset(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rng = np.random.default_rng(0)
    labels = np.repeat([0, 1, 2], 40)
    images = (rng.random((120, 12, 12)) * 60).astype(np.uint8)
    for cls in range(3):  # a learnable signal: a bright bar whose row depends on the class
        images[labels == cls, 2 + 4 * cls : 4 + 4 * cls, :] = 250
    np.savez(tmp_path / "bars.npz", x=images, y=labels)
    out = tmp_path / "cmp"
    args = ["-q", "compare", "--data", str(tmp_path / "bars.npz"), "--labels", "0.5,1.0", "--seeds", "1",
            "--approaches", "supervised", "--out", str(out)]
    assert main([*args, "--max-jobs", "1"]) == 0
    assert len(list((out / "results").glob("*.json"))) == 1
    assert main(args) == 0  # resumes: runs only the second job
    results = [json.loads(p.read_text()) for p in (out / "results").glob("*.json")]
    assert len(results) == 2 and all(r["test_accuracy"] is not None for r in results)
    assert (out / "report.html").is_file() and "1 runs done, 1 reused" in capsys.readouterr().out


def test_text_grid_uses_text_variants() -> None:
    from fewlabel.modalities import get_modality

    jobs = build_grid("rotten-tomatoes", ["0.1"], 1, ["supervised", "transfer", "selfsupervised"],
                      BUDGETS["medium"], [get_modality("text").default_backbones["transfer"]], modality="text")
    variants = {(j.approach, j.variant) for j in jobs}
    assert ("supervised", "none") in variants and ("supervised", "eda") in variants
    assert ("pretrain", "mlm") in variants and ("transfer", "finetune@minilm") in variants
    assert all(j.settings["modality"] == "text" for j in jobs)


def test_time_cap_notes_name_runs_cut_short() -> None:
    from fewlabel.compare.report import time_cap_notes

    def record(approach: str, seconds: float, metrics: dict, epochs: int | None = None) -> dict:
        settings = {"max_minutes": 5.0, **({"epochs": epochs} if epochs else {})}
        job = {"approach": approach, "variant": "simclr" if approach == "pretrain" else "standard",
               "labels": None if approach == "pretrain" else "1.0", "settings": settings}
        return {"job": job, "seconds": seconds, "metrics": metrics}

    results = [record("pretrain", 301.0, {"epochs": 2}, epochs=15),
               record("supervised", 310.0, {"epochs_run": 4, "epochs_planned": 10}),
               record("supervised", 120.0, {"epochs_run": 13, "epochs_planned": 20}),  # early stopping, not the cap
               record("supervised", 300.0, {"epochs_run": 10, "epochs_planned": 10})]
    assert time_cap_notes(results) == [
        "The time cap stopped data augmentation: standard at 1.0 labels after 4/10 epochs (one per seed); its "
        "accuracy understates what it reaches with the planned budget.",
        "The time cap stopped simclr pretraining after 2/15 epochs (one per seed); its accuracy understates "
        "what it reaches with the planned budget."]


def test_stored_benchmark_grid_keeps_its_job_keys() -> None:
    """A rerun of the committed Fashion-MNIST comparison reuses every stored result: its grid, rebuilt from its
    compare.yaml by today's code, has exactly the job keys it was run with."""
    import yaml

    from fewlabel.modalities import get_modality

    recorded = yaml.safe_load((Path(__file__).parents[1] / "benchmarks/reports/fashion-mnist/compare.yaml")
                              .read_text(encoding="utf-8"))
    backbones = list(recorded["backbones"]) or [get_modality("image").default_backbones["transfer"]]
    jobs = build_grid(recorded["data"], list(recorded["labels"]), recorded["seeds"], list(recorded["approaches"]),
                      BUDGETS[recorded["budget"]], backbones, recorded["data_dir"], modality="image")
    assert [job.key() for job in jobs] == recorded["job_keys"]
