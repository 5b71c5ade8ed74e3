"""Every bad input the CLI is given ends in one line on stderr, exit code 2, and
nothing written (table-driven: add a row for each new kind of bad input)."""

from __future__ import annotations

import os

import pytest
import torch
from conftest import file_snapshot

from focalsam.cli import main

QUIET = ["progress=false", "tensorboard=false"]
DEMO = ["train", "--preset", "demo", "--epochs", "1", *QUIET]

# (id, argv, what its one error line says); {tmp} is the test's folder, {run} a finished
# run made once per module
CASES: list[tuple[str, list[str], str]] = [
    ("model", [*DEMO, "model=foo"], "model.name must be one of"),
    ("base_optimizer", [*DEMO, "base_optimizer=foo"], "optim.base must be one of"),
    ("device", [*DEMO, "device=tpu"], "run.device must be auto, cpu, cuda or cuda:N; got 'tpu'"),
    ("gamma", [*DEMO, "gamma=-1"], "focal_sam.gamma must be a finite number >= 0, got -1"),
    ("lam", [*DEMO, "lam=-0.1"], "focal_sam.lam must be a finite number >= 0, got -0.1"),
    ("rho nan", [*DEMO, "rho=nan"], "optim.rho must be a finite number >= 0, got nan"),
    ("rho negative", [*DEMO, "--rho", "-1"], "optim.rho must be a finite number >= 0, got -1"),
    ("weight_decay", [*DEMO, "weight_decay=-1"], "optim.weight_decay must be a finite number >= 0"),
    ("momentum", [*DEMO, "momentum=-1"], "optim.momentum must be a finite number >= 0"),
    ("momentum >= 1", [*DEMO, "momentum=1"], "optim.momentum must be < 1"),
    (
        "max_grad_norm",
        [*DEMO, "max_grad_norm=-1"],
        "optim.max_grad_norm must be a finite number > 0",
    ),
    ("eta", [*DEMO, "eta=-1"], "imbsam.eta must be a finite number >= 0"),
    ("kappa", [*DEMO, "kappa=nan"], "imbsam.kappa must be a finite number >= 0, got nan"),
    ("unknown loss key", [*DEMO, "loss.bogus=1"], "unknown config key 'loss.bogus'"),
    ("old loss_options", [*DEMO, "loss_options.tau=1"], "unknown config key 'loss_options'"),
    ("loss tau not a number", [*DEMO, "loss.tau=abc"], "bad value for config key 'loss.tau'"),
    ("loss tau negative", [*DEMO, "loss.tau=-1"], "loss.tau must be a finite number >= 0"),
    ("lr nan", [*DEMO, "lr=nan"], "optim.lr must be a finite number > 0, got nan"),
    ("lr inf", [*DEMO, "lr=inf"], "optim.lr must be a finite number > 0, got inf"),
    ("lr zero", [*DEMO, "--lr", "0"], "optim.lr must be a finite number > 0, got 0"),
    ("lr_decay", [*DEMO, "lr_decay=-1"], "train.lr_decay must be a finite number > 0"),
    ("rho_decay", [*DEMO, "rho_decay=-1"], "train.rho_decay must be a finite number >= 0"),
    (
        "lr milestones",
        [*DEMO, "lr_milestones=[0,5]"],
        "train.lr_milestones must be increasing epochs >= 1",
    ),
    ("warmup", [*DEMO, "warmup_epochs=-1"], "train.warmup_epochs must be a finite number >= 0"),
    ("epochs", [*DEMO, "epochs=0"], "train.epochs must be >= 1, got 0"),
    ("epochs not an int", [*DEMO, "epochs=1.5"], "bad value for config key 'train.epochs'"),
    ("batch_size", [*DEMO, "batch_size=0"], "train.batch_size must be >= 1"),
    ("eval_every", [*DEMO, "eval_every=0"], "train.eval_every must be >= 1"),
    ("precision", [*DEMO, "precision=fp8"], "run.precision must be one of"),
    ("select", [*DEMO, "select=first"], "train.select must be one of"),
    ("bn_update", [*DEMO, "bn_update=never"], "optim.bn_update must be one of"),
    ("dataset", [*DEMO, "dataset=foo"], "data.name must be one of"),
    ("image_folder", [*DEMO, "dataset=image_folder"], "image_folder"),
    ("shot_preset", [*DEMO, "shot_preset=foo"], "data.shot_preset: unknown shot preset 'foo'"),
    (
        "shot_preset relative",
        [*DEMO, "shot_preset=relative:0.04,0.2"],
        "data.shot_preset: shot preset 'relative:0.04,0.2': the fractions must satisfy",
    ),
    ("profile", [*DEMO, "profile=linear"], "data.profile must be one of"),
    (
        "imbalance_ratio",
        [*DEMO, "imbalance_ratio=0.5"],
        "data.imbalance_ratio must be a finite number >= 1",
    ),
    ("num_workers", [*DEMO, "num_workers=-1"], "data.num_workers must be >= 0"),
    ("optimizer", [*DEMO, "optimizer=adam_sam"], "unknown optimizer 'adam_sam'"),
    ("loss", [*DEMO, "loss=hinge"], "unknown loss 'hinge'"),
    (
        "ccsam mode",
        [*DEMO, "optim.ccsam.mode=paper"],
        "ccsam.mode must be 'classifier' (public code) or 'network' (paper)",
    ),
    (
        "ccsam stage2 epochs",
        [*DEMO, "optim.ccsam.stage2_epochs=-1"],
        "ccsam.stage2_epochs must be >= 0",
    ),
    (
        "ccsam flat_ratio",
        [*DEMO, "optim.ccsam.flat_ratio=2"],
        "ccsam.flat_ratio must lie in [0, 1]",
    ),
    (
        "nesterov with adam",
        [*DEMO, "base_optimizer=adam", "nesterov=true"],
        "optim.nesterov needs optim.base=sgd",
    ),
    ("resnet50 on 1-channel digits", [*DEMO, "model=resnet50"], "resnet50 takes 3-channel images"),
    ("unknown key", [*DEMO, "lrr=0.1"], "unknown config key 'lrr'; did you mean lr?"),
    ("override without =", [*DEMO, "lr"], "overrides must be KEY=VALUE"),
    ("preset as a key", [*DEMO, "preset=demo"], "choose a preset with --preset NAME"),
    ("unknown preset", ["train", "--preset", "nope"], "unknown preset 'nope'"),
    ("missing yaml", ["train", "--config", "{tmp}/missing.yaml"], "missing.yaml does not exist"),
    (
        "yaml not a mapping",
        ["train", "--config", "{tmp}/list.yaml"],
        "must hold a mapping of keys to values",
    ),
    ("yaml not yaml", ["train", "--config", "{tmp}/broken.yaml"], "is not valid YAML"),
    ("yaml unknown preset", ["train", "--config", "{tmp}/badpreset.yaml"], "unknown preset 'nope'"),
    (
        "cifar missing",
        [*DEMO, "dataset=cifar10", "model=mlp", "data_root={tmp}/nodata"],
        "CIFAR-10 not found",
    ),
    (
        "cifar truncated",
        [*DEMO, "dataset=cifar10", "model=mlp", "data_root={tmp}/truncated"],
        "the file is truncated",
    ),
    (
        "imagenet_lt missing list",
        [*DEMO, "dataset=imagenet_lt", "model=mlp", "data_root={tmp}/nodata"],
        "image list not found",
    ),
    ("run dir not writable", [*DEMO, "run_dir={tmp}/list.yaml/run"], "is not writable"),
    ("run dir taken", [*DEMO, "run_dir={run}"], "already exists and is not empty"),
    ("resume missing", ["train", "--resume", "{tmp}/no-such-run"], "no-such-run does not exist"),
    (
        "resume changes lr",
        ["train", "--resume", "{run}", "lr=0.5"],
        "optim.lr would change the experiment",
    ),
    (
        "resume changes optimizer",
        ["train", "--resume", "{run}", "--optimizer", "sam"],
        "optim.name would change the experiment",
    ),
    (
        "resume with preset",
        ["train", "--resume", "{run}", "--preset", "demo"],
        "--resume takes the run's own config",
    ),
    ("eval missing run", ["eval", "{tmp}/no-such-run"], "no-such-run does not exist"),
    (
        "eval missing checkpoint",
        ["eval", "{run}", "--checkpoint", "best"],
        "best.pt does not exist",
    ),
    ("eval /etc/passwd", ["eval", "{run}", "--checkpoint", "/etc/passwd"], "is not a checkpoint"),
    ("eval a folder", ["eval", "{run}", "--checkpoint", "{tmp}"], "is unreadable"),
    ("eval truncated", ["eval", "{run}", "--checkpoint", "{tmp}/truncated.pt"], "is truncated"),
    (
        "eval another model",
        ["eval", "{run}", "--checkpoint", "{tmp}/other.pt"],
        "does not match this model",
    ),
    (
        "eval device",
        ["eval", "{run}", "--device", "tpu"],
        "device must be auto, cpu, cuda or cuda:N; got 'tpu'",
    ),
]
if not torch.cuda.is_available():
    CASES.append(("cuda without a GPU", [*DEMO, "device=cuda"], "CUDA is not available"))


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("runs") / "done"
    assert main([*DEMO, "model=mlp", f"run_dir={run}"]) == 0
    return run


@pytest.mark.parametrize(("argv", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_exit_2_nothing_written(
    argv, expected, tmp_path, finished_run, capsys, monkeypatch
):
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    (tmp_path / "broken.yaml").write_text("a: [1,\n")
    (tmp_path / "badpreset.yaml").write_text("preset: nope\n")
    (tmp_path / "nodata").mkdir()
    batches = tmp_path / "truncated" / "cifar-10-batches-py"
    batches.mkdir(parents=True)
    for name in (
        "data_batch_1",
        "data_batch_2",
        "data_batch_3",
        "data_batch_4",
        "data_batch_5",
        "test_batch",
    ):
        (batches / name).write_bytes(b"\x80\x02}q\x00(X\x04\x00\x00\x00data")  # a cut pickle
    good = (finished_run / "last.pt").read_bytes()
    (tmp_path / "truncated.pt").write_bytes(good[: len(good) // 2])
    torch.save({"model": {"w": torch.zeros(3)}}, tmp_path / "other.pt")
    monkeypatch.chdir(tmp_path)
    before_tmp, before_run = file_snapshot(tmp_path), file_snapshot(finished_run)
    filled = [a.replace("{tmp}", str(tmp_path)).replace("{run}", str(finished_run)) for a in argv]

    rc = main(filled)

    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("focalsam: error: ")]
    assert rc == 2, err
    assert len(errors) == 1 and "Traceback" not in err, err
    assert expected in errors[0], f"expected {expected!r} in: {errors[0]}"
    assert all(line.startswith("focalsam: ") for line in lines), err
    assert file_snapshot(tmp_path) == before_tmp, "something was written"
    assert file_snapshot(finished_run) == before_run, "the run directory was changed"
    assert not (tmp_path / "runs").exists()


def test_debug_shows_the_traceback(tmp_path, monkeypatch):
    from focalsam.train.config import ConfigError

    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match="model.name"):
        main(["--debug", *DEMO, "model=foo"])
    assert os.listdir(tmp_path) == []


def test_ctrl_c_outside_training_is_one_line_not_a_traceback(monkeypatch, capsys):
    import focalsam.cli as cli

    def interrupted() -> int:
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "cmd_presets", interrupted)
    assert cli.main(["presets"]) == 130
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("focalsam: interrupted")
