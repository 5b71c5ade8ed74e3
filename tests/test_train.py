"""The trainer: configs, resume, checkpoints, failure modes, the CLI and torchrun."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from conftest import demo_config, run_gloo, silent_trainer

from focalsam.cli import main
from focalsam.errors import CheckpointWriteError, InputError
from focalsam.train import (
    CheckpointError,
    ConfigError,
    TrainingDiverged,
    TrainingInterrupted,
    get_preset,
    load_checkpoint,
    make_config,
    save_checkpoint,
)

small_cfg, silent = demo_config, silent_trainer


# ------------------------------------------------------------------ config
def test_config_layers_and_errors(tmp_path):
    yaml_file = tmp_path / "c.yaml"
    yaml_file.write_text("optim:\n  lr: 0.02\ntrain:\n  epochs: 7\n")
    cfg = make_config("cifar10-lt-r100", yaml_file, ["epochs=3", "loss.tau=1.5"])
    assert (cfg.optim.lr, cfg.train.epochs, cfg.optim.rho, cfg.loss.tau) == (0.02, 3, 0.2, 1.5)
    assert cfg.preset == "cifar10-lt-r100"
    with pytest.raises(ConfigError, match="unknown config key 'lrr'; did you mean lr"):
        make_config(None, None, ["lrr=0.1"])
    with pytest.raises(ConfigError, match="'optim.lr'.*could not be converted"):
        make_config(None, None, ["lr=fast"])
    with pytest.raises(ConfigError, match="run.precision must be one of fp32, bf16, fp16"):
        make_config(None, None, ["precision=fp8"])
    with pytest.raises(ConfigError, match="unknown preset 'x'; valid: cifar10-lt-r100"):
        get_preset("x")
    bad = tmp_path / "bad.yaml"
    bad.write_text("nonsense_key: 1\n")
    with pytest.raises(ConfigError, match="nonsense_key"):
        make_config(None, bad)


def test_unknown_optimizer_and_loss_list_the_valid_ones(tmp_path):
    with pytest.raises(ConfigError, match="unknown optimizer 'adam'; valid: .*focal_sam.*sgd"):
        small_cfg(tmp_path / "a", optimizer="adam")
    with pytest.raises(ConfigError, match="unknown loss 'hinge'; valid: .*logit_adjustment"):
        small_cfg(tmp_path / "b", loss="hinge")


def test_unwritable_run_dir(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(InputError, match="not writable"):
        silent(small_cfg(blocker / "run"))


# ------------------------------------------------------------------ resume
def _params(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("optimizer", ["focal_sam", "sgd"])
def test_resume_at_an_epoch_equals_uninterrupted(tmp_path, optimizer):
    full = silent(small_cfg(tmp_path / "full", optimizer=optimizer))
    full_report = full.fit()

    def stop_after_epoch_1(trainer, epoch, step):
        if epoch == 0 and step + 1 == trainer.steps_in_epoch:
            trainer.request_stop("SIGTERM")

    part = silent(small_cfg(tmp_path / "part", optimizer=optimizer), on_step=stop_after_epoch_1)
    with pytest.raises(TrainingInterrupted, match="after epoch 1"):
        part.fit()
    cfg = small_cfg(tmp_path / "part", optimizer=optimizer)
    resumed = silent(cfg, resume=tmp_path / "part")
    assert resumed.epoch == 1
    report = resumed.fit()
    for key, value in _params(full.model).items():
        assert torch.equal(value, resumed.model.state_dict()[key]), key
    assert report["last_epoch"]["overall"] == full_report["last_epoch"]["overall"]
    lines = (tmp_path / "part" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [1, 2]


def test_interrupted_mid_epoch_resumes_exactly(tmp_path):
    full = silent(small_cfg(tmp_path / "full"))
    full.fit()

    def stop_at(trainer, epoch, step):
        if (epoch, step) == (0, 2):
            trainer.request_stop("SIGINT")

    first = silent(small_cfg(tmp_path / "run"), on_step=stop_at)
    with pytest.raises(TrainingInterrupted, match="SIGINT: saved .*epoch 1, step 3.*--resume"):
        first.fit()
    ckpt = load_checkpoint(tmp_path / "run" / "last.pt")
    assert (ckpt["epoch"], ckpt["step_in_epoch"]) == (0, 3)
    resumed = silent(small_cfg(tmp_path / "run"), resume=tmp_path / "run")
    resumed.fit()
    for key, value in _params(full.model).items():
        assert torch.equal(value, resumed.model.state_dict()[key]), key


# ------------------------------------------------------------------ failures
def test_nan_loss_stops_naming_epoch_and_step_and_keeps_last_checkpoint(tmp_path):
    def poison(trainer, epoch, step):
        if (epoch, step) == (1, 1):
            with torch.no_grad():
                next(trainer.model.parameters()).fill_(float("nan"))

    trainer = silent(small_cfg(tmp_path / "run", epochs=3), on_step=poison)
    with pytest.raises(
        TrainingDiverged, match=r"epoch 2, step 3.*last good checkpoint .*last\.pt was kept"
    ):
        trainer.fit()
    ckpt = load_checkpoint(tmp_path / "run" / "last.pt")
    assert ckpt["epoch"] == 1
    assert all(torch.isfinite(v).all() for v in ckpt["model"].values() if v.is_floating_point())


def test_checkpoint_write_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    save_checkpoint({"model": {"w": torch.ones(3)}}, path)

    def crash(obj, f, *a, **k):
        f.write(b"half a checkpoint")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(CheckpointWriteError, match=f"checkpoint {path} could not be written"):
        save_checkpoint({"model": {"w": torch.zeros(3)}}, path)
    monkeypatch.undo()
    assert torch.equal(load_checkpoint(path)["model"]["w"], torch.ones(3))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_corrupt_checkpoint_is_named_not_unpickled(tmp_path, capsys):
    trainer = silent(small_cfg(tmp_path / "run", epochs=1))
    trainer.fit()
    (tmp_path / "run" / "last.pt").write_bytes(b"\x80\x04garbage" * 10)
    with pytest.raises(CheckpointError, match="corrupt or not a focalsam checkpoint"):
        load_checkpoint(tmp_path / "run" / "last.pt")
    assert main(["eval", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert "corrupt" in err and "Traceback" not in err


# ------------------------------------------------------------------ CLI
def test_cli_train_then_eval(tmp_path, capsys):
    run = tmp_path / "run"
    rc = main(
        [
            "train",
            "--preset",
            "demo",
            "--epochs",
            "1",
            "--model",
            "mlp",
            f"run_dir={run}",
            "progress=false",
        ]
    )
    assert rc == 0
    out = capsys.readouterr().out
    assert "overall" in out and "preset 'standard'" in out
    report = json.loads((run / "report.json").read_text())
    assert (run / "config.yaml").exists() and (run / "metrics.csv").exists()
    assert main(["eval", str(run), "--json"]) == 0
    evaluated = json.loads(capsys.readouterr().out)
    assert evaluated["overall"] == pytest.approx(report["last_epoch"]["overall"])
    assert main(["train", "--preset", "nope"]) == 2
    assert "valid: cifar10-lt-r100" in capsys.readouterr().err


def test_best_epoch_selection_is_labelled(tmp_path):
    report = silent(small_cfg(tmp_path / "run", epochs=3, select="best")).fit()
    assert report["select"] == "best"
    assert report["selected"] is report["best_test_epoch"]
    assert report["best_test_epoch"]["overall"] >= report["last_epoch"]["overall"]
    assert (tmp_path / "run" / "best.pt").exists()


def test_demo_runs_and_plots(tmp_path, capsys):
    from focalsam.cli import run_demo

    assert run_demo(epochs=1, root=tmp_path / "demo") == 0
    out = capsys.readouterr().out
    for name in ("SGD", "SAM", "Focal-SAM", "overall", "many", "medium", "few", "img/s", " ± "):
        assert name in out
    for name in ("per_class.png", "accuracy_vs_throughput.png"):  # the compare layout
        assert (tmp_path / "demo" / name).read_bytes()[:4] == b"\x89PNG"
    assert (tmp_path / "demo" / "focal_sam-seed2" / "report.json").is_file()


def test_torchrun_two_cpu_processes(tmp_path):
    run = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        "-m",
        "focalsam",
        "train",
        "--preset",
        "demo",
        "--epochs",
        "2",
        "--eval-every",
        "1",
        "--model",
        "mlp",
        "--device",
        "cpu",
        f"run_dir={run}",
        "progress=false",
        "tensorboard=false",
    ]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "x 2 processes" in proc.stdout
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2]  # written once, by rank 0
    ckpt = load_checkpoint(run / "last.pt")
    assert ckpt["epoch"] == 2


def _callers_group_worker(rank: int, world: int, run_dir: str) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank))
    cfg = small_cfg(Path(run_dir), epochs=1, model="mlp", device="cpu")
    with silent(cfg) as trainer:
        trainer.fit()
    assert dist.is_initialized(), "the trainer ended a process group it did not start"


def test_trainer_leaves_a_callers_process_group_open(tmp_path):
    # run_gloo's closing barrier needs the group: it fails if the trainer destroyed it
    run_gloo(_callers_group_worker, 2, tmp_path / "store", str(tmp_path / "run"))
    assert [json.loads(r)["epoch"] for r in (tmp_path / "run" / "metrics.jsonl").open()] == [1]


def test_ccsam_runs_both_stages_and_stage_2_trains_only_the_classifier(tmp_path):
    snapshots = {}

    def snap(trainer, epoch, step):
        if epoch == 1 and step + 1 == trainer.steps_in_epoch:  # end of stage 1
            snapshots["end1"] = {k: v.clone() for k, v in trainer.model.state_dict().items()}

    cfg = small_cfg(
        tmp_path / "cc",
        optimizer="ccsam",
        **{"optim.ccsam.stage2_epochs": 2, "optim.ccsam.rho": 0.05},
    )
    trainer = silent(cfg, on_step=snap)
    report = trainer.fit()
    rows = [
        json.loads(line) for line in (tmp_path / "cc" / "metrics.jsonl").read_text().splitlines()
    ]
    assert [r["epoch"] for r in rows] == [1, 2, 3, 4]
    assert [r.get("stage", 1) for r in rows] == [1, 1, 2, 2]
    assert report["last_epoch"]["epoch"] == 4
    final = trainer.model.state_dict()
    for key, before in snapshots["end1"].items():
        if key.startswith("fc."):
            assert not torch.equal(before, final[key]), key
        elif (
            "running" not in key and "num_batches" not in key
        ):  # BN statistics update, as published
            assert torch.equal(before, final[key]), key


def test_ccsam_resume_in_stage_2_equals_uninterrupted(tmp_path):
    kw = {
        "optimizer": "ccsam",
        "optim.ccsam.stage2_epochs": 2,
        "optim.ccsam.rho": 0.05,
        "epochs": 1,
    }
    full = silent(small_cfg(tmp_path / "full", **kw))
    full.fit()

    def stop(trainer, epoch, step):
        if (epoch, step) == (1, 1):
            trainer.request_stop("SIGTERM")

    with pytest.raises(TrainingInterrupted):
        silent(small_cfg(tmp_path / "run", **kw), on_step=stop).fit()
    resumed = silent(small_cfg(tmp_path / "run", **kw), resume=tmp_path / "run")
    resumed.fit()
    for key, value in full.model.state_dict().items():
        assert torch.equal(value, resumed.model.state_dict()[key]), key


def test_dataloader_shuffle_depends_only_on_seed_and_epoch():
    from torch.utils.data import DataLoader, TensorDataset

    from focalsam.train.data_setup import _EpochDataLoader

    data = TensorDataset(torch.arange(40).float(), torch.arange(40))

    def order(epoch, seed=0):
        loader = DataLoader(data, 8, shuffle=True, generator=torch.Generator())
        wrapped = _EpochDataLoader(loader, torch.device("cpu"), seed)
        wrapped.set_epoch(epoch)
        return torch.cat([y for _, y in wrapped]).tolist()

    assert order(3) == order(3)  # a resumed run sees the same epoch
    assert order(3) != order(4) and order(3) != order(3, seed=1)


def test_deferred_reweighting_follows_the_epoch(tmp_path):
    seen = {}

    def record(trainer, epoch, step):
        loss = trainer.parts.loss_fn
        seen[epoch] = (loss.epoch, loss.weight.clone())

    cfg = small_cfg(tmp_path / "drw", model="mlp", loss="ldam_drw", drw_start_epoch=1)
    silent(cfg, on_step=record).fit()
    assert [seen[e][0] for e in (0, 1)] == [0, 1]
    assert torch.equal(seen[0][1], torch.ones(10))
    assert not torch.equal(seen[1][1], seen[0][1])
