"""What the trainer guarantees about a run: CC-SAM keeps its own radius under a rho
schedule, config.yaml is the run's record (never rewritten, an edited one refused),
settings layer in one order, --print-config and eval write nothing, a taken run
directory is refused, NaN weights are never checkpointed, ranges are checked, and a
failed save leaves no metrics row behind."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
import torch
from conftest import demo_config, silent_trainer

from focalsam.cli import main
from focalsam.errors import InputError
from focalsam.train import (
    ConfigError,
    TrainingDiverged,
    load_checkpoint,
    make_config,
)

silent = silent_trainer


def cfg_of(run_dir: Path, **kw):
    return demo_config(run_dir, model="mlp", **kw)


def epochs_in(run: Path) -> list[int]:
    return [json.loads(line)["epoch"] for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_ccsam_keeps_its_own_radius_and_the_rho_schedule_scales_it(tmp_path):
    seen: dict[int, set[float]] = {}

    def record(trainer, epoch, step):
        rho = trainer.parts.stages[0].optimizer.param_groups[0]["rho"]
        seen.setdefault(epoch, set()).add(rho)

    cfg = cfg_of(
        tmp_path / "cc",
        optimizer="ccsam",
        rho=0.3,
        rho_schedule="step",
        rho_milestones=[1],
        rho_decay=0.5,
        **{"optim.ccsam.rho": 0.01, "optim.ccsam.stage2_epochs": 0},
    )
    silent(cfg, on_step=record).fit()
    assert seen == {0: {0.01}, 1: {0.005}}


def test_resume_with_a_change_never_rewrites_config_yaml(tmp_path, capsys):
    run = tmp_path / "run"
    assert (
        main(
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
        == 0
    )
    written = (run / "config.yaml").read_bytes()
    assert main(["train", "--resume", str(run), "--epochs", "2"]) == 0
    assert main(["train", "--resume", str(run)]) == 0  # still resumable, still 2 epochs
    assert main(["train", "--resume", str(run), "lr=0.5"]) == 2
    assert "optim.lr would change the experiment" in capsys.readouterr().err
    assert (run / "config.yaml").read_bytes() == written
    assert epochs_in(run) == [1, 2]
    records = [json.loads(x) for x in (run / "resumes.jsonl").read_text().splitlines()]
    assert records[0]["changes"] == {"train.epochs": 2} and records[1]["changes"] == {}
    assert load_checkpoint(run / "last.pt")["config"]["train"]["epochs"] == 2


def test_layering_flags_alone_start_from_the_schema_and_a_yaml_preset_applies(tmp_path):
    cfg = make_config(None, None, ["dataset=cifar10", "model=resnet32"])
    assert cfg.run.device == "auto" and cfg.preset is None
    yaml_file = tmp_path / "c.yaml"
    yaml_file.write_text("preset: cifar10-lt-r100\noptim:\n  lr: 0.05\n")
    cfg = make_config(None, yaml_file, ["epochs=3"])
    assert (cfg.preset, cfg.optim.rho, cfg.optim.lr, cfg.train.epochs) == (
        "cifar10-lt-r100",
        0.2,
        0.05,
        3,
    )


def test_print_config_prints_and_runs_nothing(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["train", "--print-config"]) == 0
    out = capsys.readouterr().out
    assert "preset: demo" in out and "optim:" in out
    assert main(["train", "--print-config", "--dataset", "cifar10"]) == 0
    assert "device: auto" in capsys.readouterr().out
    assert list(tmp_path.iterdir()) == []


def test_an_edited_config_yaml_is_refused_on_resume(tmp_path, capsys):
    run = tmp_path / "run"
    silent(cfg_of(run, epochs=1)).fit()
    path = run / "config.yaml"
    path.write_text(path.read_text().replace("name: focal_sam", "name: sam"))
    assert main(["train", "--resume", str(run), "--epochs", "2"]) == 2
    err = capsys.readouterr().err
    assert "optim.name: 'focal_sam' -> 'sam'" in err
    assert epochs_in(run) == [1]


def test_eval_reads_the_run_and_writes_nothing(tmp_path, capsys):
    run = tmp_path / "run"
    report = silent(cfg_of(run, epochs=1)).fit()
    before = {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in run.rglob("*") if p.is_file()}
    assert main(["eval", str(run), "--device", "cpu", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["overall"] == pytest.approx(report["last_epoch"]["overall"])
    after = {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in run.rglob("*") if p.is_file()}
    assert after == before


def test_an_existing_run_dir_is_refused_without_resume(tmp_path):
    run = tmp_path / "run"
    silent(cfg_of(run)).fit()
    with pytest.raises(InputError, match="already exists.*--resume"):
        silent(cfg_of(run))
    assert epochs_in(run) == [1, 2]


def test_nan_weights_are_never_checkpointed(tmp_path):
    def poison(trainer, epoch, step):
        if epoch == 1:
            with torch.no_grad():
                next(trainer.model.parameters()).fill_(float("nan"))

    run = tmp_path / "run"
    trainer = silent(cfg_of(run, epochs=3, batch_size=417), on_step=poison)  # one batch
    assert trainer.parts.stages[0].epochs == 3 and len(trainer.parts.data.train) == 1
    with pytest.raises(TrainingDiverged, match="NaN/inf by epoch 2.*last good checkpoint"):
        trainer.fit()
    ckpt = load_checkpoint(run / "last.pt")
    assert ckpt["epoch"] == 1
    assert all(torch.isfinite(v).all() for v in ckpt["model"].values() if v.is_floating_point())
    assert epochs_in(run) == [1]


@pytest.mark.parametrize(
    "override, message",
    [
        ("lr_decay=-1", "train.lr_decay must be a finite number > 0"),
        ("rho_decay=-1", "train.rho_decay must be a finite number >= 0"),
        ("lr=nan", "optim.lr must be a finite number > 0"),
        ("lr=inf", "optim.lr must be a finite number > 0"),
        ("lam=-0.1", "lam must be a finite number >= 0"),
    ],
)
def test_schedules_and_ranges(override, message):
    with pytest.raises(ConfigError, match=message):
        make_config("demo", overrides=[override])


def test_lam_above_one_warns_but_stays_possible():
    with pytest.warns(UserWarning, match="lam=1.1 > 1.*negative"):
        cfg = make_config("demo", overrides=["lam=1.1"])
    assert cfg.optim.focal_sam.lam == 1.1
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        make_config("demo", overrides=["lam=1.1", "optimizer=sam"])  # not the chosen method


def test_a_failed_save_leaves_no_metrics_row_and_resume_does_not_duplicate(tmp_path, monkeypatch):
    import focalsam.train.trainer as trainer_module

    run = tmp_path / "run"
    real = trainer_module.save_checkpoint
    calls = {"n": 0}

    def flaky(payload, path):
        calls["n"] += 1
        if payload["epoch"] == 2 and payload["step_in_epoch"] == 0:
            raise OSError(28, "No space left on device")
        return real(payload, path)

    monkeypatch.setattr(trainer_module, "save_checkpoint", flaky)
    with pytest.raises(OSError):
        silent(cfg_of(run, epochs=3)).fit()
    assert epochs_in(run) == [1]
    monkeypatch.setattr(trainer_module, "save_checkpoint", real)
    silent(cfg_of(run, epochs=3), resume=run).fit()
    assert epochs_in(run) == [1, 2, 3]
