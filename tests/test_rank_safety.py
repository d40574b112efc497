"""Multi-device runs: one run folder per run whatever the number of processes, one device unless asked."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from fewlabel.cli import build_parser
from fewlabel.compare import CompareConfig, compare
from fewlabel.compare.executor import ResultStore
from fewlabel.compare.grid import Job
from fewlabel.engine import run as run_module
from fewlabel.engine.fit import Budget
from fewlabel.engine.run import LAUNCH_NOTE, RunFolder, is_rank_zero, launch_rank
from fewlabel.engine.trainer import auto_precision, build_trainer, device_type, run_device
from fewlabel.errors import FewlabelError

LAUNCH_VARIABLES = ("RANK", "LOCAL_RANK", "NODE_RANK", "GROUP_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR",
                    "MASTER_PORT", "TORCHELASTIC_RUN_ID", "SLURM_PROCID", "SLURM_NTASKS", "SLURM_JOB_NAME",
                    "SLURM_JOB_ID", "SLURM_STEP_ID")


@pytest.fixture(autouse=True)
def _plain_process(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test starts as a plain process that has created no run folder yet, and leaves no hand-over behind."""
    for name in LAUNCH_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    for name in [n for n in os.environ if n.startswith("FEWLABEL_RUN_")]:
        monkeypatch.delenv(name)
    monkeypatch.setattr(run_module, "_created", {})
    yield
    for name in [n for n in os.environ if n.startswith("FEWLABEL_RUN_")]:
        del os.environ[name]


def as_new_process(monkeypatch: pytest.MonkeyPatch, child_of_this_process: bool = True, **env: str) -> None:
    """What a freshly started rank sees: its launcher's variables, no run folder requested yet, and (for
    Lightning's launcher) this test process as its parent."""
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(run_module, "_created", {})
    parent = os.getpid() if child_of_this_process else os.getpid() + 1
    monkeypatch.setattr(run_module.os, "getppid", lambda: parent)


def test_launch_rank_from_each_launcher(monkeypatch: pytest.MonkeyPatch) -> None:
    assert launch_rank() is None and is_rank_zero()
    monkeypatch.setenv("LOCAL_RANK", "1")  # Lightning's DDP launcher, second device
    assert launch_rank() == 1 and not is_rank_zero()
    monkeypatch.setenv("LOCAL_RANK", "0")
    monkeypatch.setenv("NODE_RANK", "2")  # a later node of a multi-node launch
    assert launch_rank() == 2
    monkeypatch.setenv("RANK", "0")  # torchrun names the global rank itself
    assert launch_rank() == 0 and is_rank_zero()
    for name in ("RANK", "LOCAL_RANK", "NODE_RANK"):
        monkeypatch.delenv(name)
    monkeypatch.setenv("SLURM_PROCID", "3")
    monkeypatch.setenv("SLURM_NTASKS", "1")
    assert launch_rank() is None  # one srun task: Lightning launches the devices itself
    monkeypatch.setenv("SLURM_NTASKS", "4")
    assert launch_rank() == 3


def test_launched_ranks_take_the_folder_rank_zero_created(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    base = tmp_path / "runs"
    (base / "train-x").mkdir(parents=True)  # an earlier run: rank 0 picks the next free name
    first = RunFolder.create(None, "train-x", base=base)
    assert first.path == base / "train-x-2"
    assert not (first.path / LAUNCH_NOTE).exists()  # a plain run leaves no launch note
    # Lightning's launcher copies rank 0's environment into the process it starts for the second device.
    as_new_process(monkeypatch, LOCAL_RANK="1", NODE_RANK="0", MASTER_ADDR="127.0.0.1", MASTER_PORT="12345")
    second = RunFolder.create(None, "train-x", base=base)
    assert second.path.resolve() == first.path.resolve()
    assert sorted(p.name for p in base.iterdir()) == ["train-x", "train-x-2"]


def test_out_is_reused_by_launched_ranks_not_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "run"
    rank0 = RunFolder.create(str(out), "unused")
    (out / "config.yaml").write_text("command: train\n", encoding="utf-8")  # rank 0 went on writing
    as_new_process(monkeypatch, LOCAL_RANK="1", NODE_RANK="0", MASTER_ADDR="127.0.0.1", MASTER_PORT="12345")
    assert RunFolder.create(str(out), "unused").path.resolve() == rank0.path.resolve()


def test_externally_launched_ranks_find_rank_zero_by_its_note(tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    base = tmp_path / "runs"
    torchrun = {"MASTER_ADDR": "10.0.0.1", "MASTER_PORT": "29500", "TORCHELASTIC_RUN_ID": "job7", "WORLD_SIZE": "2"}
    # a folder left by another launch with the same name is not ours
    as_new_process(monkeypatch, RANK="0", **{**torchrun, "TORCHELASTIC_RUN_ID": "job6"})
    old = RunFolder.create(None, "pretrain-x", base=base)
    as_new_process(monkeypatch, RANK="0", **torchrun)
    made = RunFolder.create(None, "pretrain-x", base=base)
    assert made.path != old.path
    note = json.loads((made.path / LAUNCH_NOTE).read_text(encoding="utf-8"))
    assert note["occurrence"] == 1 and "job7" in note["launch"]
    for name in [n for n in os.environ if n.startswith("FEWLABEL_RUN_")]:
        monkeypatch.delenv(name)  # torchrun starts every rank itself: nothing is handed over in the environment
    as_new_process(monkeypatch, RANK="1", **torchrun)
    assert RunFolder.create(None, "pretrain-x", base=base).path == made.path


def test_a_rank_waits_for_rank_zero_then_says_why(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    as_new_process(monkeypatch, RANK="1", WORLD_SIZE="2", MASTER_ADDR="x", MASTER_PORT="1", FEWLABEL_RANK_WAIT="0.3")
    with pytest.raises(FewlabelError, match="rank 1: rank 0 did not create run folder"):
        RunFolder.create(str(tmp_path / "never"), "unused")
    assert not (tmp_path / "never").exists()  # other ranks never create or write folders


def test_other_ranks_write_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    run = RunFolder.create(str(tmp_path / "run"), "unused")
    monkeypatch.setenv("LOCAL_RANK", "1")
    run.write_config({"command": "train"})
    run.write_metrics({"test_accuracy": 1.0})
    handler = run.attach_log()
    run.detach_log(handler)

    class Split:
        def save(self, path: Path) -> None:
            raise AssertionError("rank 1 saved the split")

    run.save_split(Split())
    assert sorted(p.name for p in run.path.iterdir()) == ["checkpoints", "logs"]
    assert not any(run.logs.iterdir())


def test_save_split_is_atomic_and_loadable(tmp_path: Path) -> None:
    from fewlabel.data import load_dataset, make_split
    from fewlabel.data.splits import LabelSplit

    dataset = load_dataset("digits")
    split = make_split(dataset, seed=3)
    run = RunFolder.create(str(tmp_path / "run"), "unused")
    run.save_split(split)
    again = LabelSplit.load(run.path, dataset)
    np.testing.assert_array_equal(again.pool, split.pool)
    assert sorted(p.name for p in run.path.iterdir()) == ["checkpoints", "logs", "split.npz"]


def test_one_device_unless_asked(tmp_path: Path) -> None:
    assert Budget().devices == 1
    args = build_parser().parse_args(["train"])
    assert args.devices == "1"
    trainer = build_trainer(RunFolder.create(str(tmp_path / "run"), "unused"), max_epochs=1, accelerator="cpu")
    assert trainer.num_devices == 1 and trainer.world_size == 1


def test_precision_follows_the_chosen_accelerator(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert auto_precision("cpu") == "32-true"  # a GPU host told to train on the CPU
    assert auto_precision("auto") == "bf16-mixed"
    assert auto_precision("gpu") == "bf16-mixed"
    assert device_type("auto") == "cuda" and run_device("cpu") == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert auto_precision("cuda") == "16-mixed"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert auto_precision("auto") == "32-true"


def test_cpu_trainer_on_a_gpu_host_trains_in_full_precision(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import fewlabel.engine.trainer as trainer_module

    monkeypatch.setattr(trainer_module, "auto_precision", lambda accelerator="auto": (
        "32-true" if accelerator == "cpu" else "bf16-mixed"))
    trainer = build_trainer(RunFolder.create(str(tmp_path / "run"), "unused"), max_epochs=1, accelerator="cpu")
    assert trainer.precision == "32-true"


def test_compare_refuses_several_launched_processes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    with pytest.raises(FewlabelError, match="start it as one process"):
        compare(CompareConfig(data="digits", labels=("0.2",), seeds=1, approaches=("supervised",),
                              out=str(tmp_path / "cmp")))
    assert not (tmp_path / "cmp").exists()


def test_compare_in_a_later_rank_leaves_the_grid_to_rank_zero(tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "cmp"
    live = out / "runs" / "abc"
    live.mkdir(parents=True)
    monkeypatch.setenv("LOCAL_RANK", "1")  # e.g. a DDP script whose ranks go on to call compare
    result = compare(CompareConfig(data="digits", labels=("0.2",), seeds=1, approaches=("supervised",),
                                   out=str(out)))
    assert result["ran"] == 0 and not result["complete"]
    assert sorted(p.name for p in out.rglob("*")) == ["abc", "runs"]  # nothing written, nothing moved


def test_only_rank_zero_moves_a_leftover_job_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = ResultStore(tmp_path)
    job = Job(approach="supervised", variant="standard", data="digits", labels="0.2", seed=0,
              settings={"steps": 1})
    live = store.runs / job.key()
    live.mkdir(parents=True)
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert store.fresh_run_dir(job) == live and live.is_dir()
    monkeypatch.setenv("LOCAL_RANK", "0")
    assert store.fresh_run_dir(job) == live and not live.exists()
    assert (store.runs / f"{job.key()}.interrupted-1").is_dir()


def test_two_process_ddp_run_writes_one_run_folder(tmp_path: Path) -> None:
    """A real 2-process DDP run on the CPU (gloo): Lightning re-runs the command for the second device."""
    env = {k: v for k, v in os.environ.items() if k not in LAUNCH_VARIABLES and not k.startswith("FEWLABEL_RUN_")}
    env["PYTHONWARNINGS"] = "ignore"
    out = tmp_path / "ddp"
    command = [sys.executable, "-m", "fewlabel.cli", "train", "--data", "digits", "--labels", "0.2", "--epochs", "1",
               "--width", "8", "--workers", "0", "--devices", "2", "--accelerator", "cpu", "--out", str(out)]
    done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ddp"]  # no runs/ folder from the second rank
    names = sorted(p.name for p in out.iterdir())
    assert names == ["checkpoints", "config.yaml", "logs", "metrics.json", "model.json", "model.safetensors",
                     "split.npz"], names
    metrics = json.loads((out / "metrics.json").read_text(encoding="utf-8"))
    assert metrics["device"] == "cpu" and metrics["samples_per_second"] > 0
    assert [p.name for p in (out / "checkpoints").glob("best-*.ckpt")]
    assert done.stderr.count("run folder") == 1  # the second rank's console shows warnings only
    assert "already exists" not in done.stderr


def test_sync_batchnorm_only_on_gpus(tmp_path: Path) -> None:
    """torch's SyncBatchNorm needs CUDA: a multi-process CPU run (gloo) keeps per-process BatchNorm."""
    trainer = build_trainer(RunFolder.create(str(tmp_path / "run"), "unused"), max_epochs=1, monitor=None,
                            accelerator="cpu", sync_batchnorm=True)
    assert trainer._accelerator_connector._layer_sync is None


@pytest.mark.slow
def test_two_process_ddp_simclr_gathers_and_writes_one_run_folder(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in LAUNCH_VARIABLES and not k.startswith("FEWLABEL_RUN_")}
    env["PYTHONWARNINGS"] = "ignore"
    command = [sys.executable, "-m", "fewlabel.cli", "-q", "pretrain", "--method", "simclr", "--data", "digits",
               "--epochs", "1", "--width", "8", "--workers", "0", "--batch-size", "64", "--devices", "2",
               "--accelerator", "cpu", "--option", "gather_distributed=true"]
    done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    runs = list((tmp_path / "runs").iterdir())
    assert [p.name for p in runs] == ["pretrain-simclr-digits-resnet_small-s0"]
    assert (runs[0] / "export" / "backbone.json").is_file() and (runs[0] / "metrics.json").is_file()


def test_a_relaunch_with_the_same_launch_id_takes_the_new_folder(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """torchrun without --rdzv-id has run id 'none' and a fixed address every time: the earlier launch's note
    matches the id, but it is older than this launch, so the rank waits for and takes rank 0's new folder."""
    base = tmp_path / "runs"
    torchrun = {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29500", "TORCHELASTIC_RUN_ID": "none", "WORLD_SIZE": "2"}
    as_new_process(monkeypatch, RANK="0", **torchrun)
    old = RunFolder.create(None, "train-x", base=base)
    note = json.loads((old.path / LAUNCH_NOTE).read_text(encoding="utf-8"))
    note["created"] -= 3600  # the first launch ran an hour ago
    (old.path / LAUNCH_NOTE).write_text(json.dumps(note), encoding="utf-8")
    as_new_process(monkeypatch, RANK="0", **torchrun)
    new = RunFolder.create(None, "train-x", base=base)
    assert new.path == base / "train-x-2"
    as_new_process(monkeypatch, RANK="1", **torchrun)
    assert RunFolder.create(None, "train-x", base=base).path == new.path


def test_an_inherited_hand_over_is_not_taken_by_another_launch(tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """A driver (notebook, sweep script) that made a run and then starts torchrun passes its environment on:
    the ranks' parent is the launcher, not the driver, so they ignore the hand-over and use rank 0's note."""
    base = tmp_path / "runs"
    driver = RunFolder.create(None, "train-x", base=base)  # a plain run in the driver process
    inherited = {n: v for n, v in os.environ.items() if n.startswith("FEWLABEL_RUN_")}
    assert inherited
    torchrun = {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29500", "TORCHELASTIC_RUN_ID": "none", "WORLD_SIZE": "2"}
    as_new_process(monkeypatch, child_of_this_process=False, RANK="0", **torchrun)
    rank0 = RunFolder.create(None, "train-x", base=base)
    # rank 1 is its own process: it sees the driver's environment, not what rank 0 set in its own
    as_new_process(monkeypatch, child_of_this_process=False, RANK="1", **torchrun, **inherited)
    rank1 = RunFolder.create(None, "train-x", base=base)
    assert rank0.path == rank1.path == base / "train-x-2" and driver.path == base / "train-x"
