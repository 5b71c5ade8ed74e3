"""Every bad input the CLI is given ends in one line on stderr, exit code 2, and
nothing written (table-driven: add a row for each new kind of bad input)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from focalsam.cli import main

QUIET = ["progress=false", "tensorboard=false"]
DEMO = ["train", "--preset", "demo", "--epochs", "1", *QUIET]

# (id, argv); {tmp} is the test's folder, {run} a finished run made once per module
CASES: list[tuple[str, list[str]]] = [
    ("model", [*DEMO, "model=foo"]),
    ("base_optimizer", [*DEMO, "base_optimizer=foo"]),
    ("device", [*DEMO, "device=tpu"]),
    ("gamma", [*DEMO, "gamma=-1"]),
    ("lam", [*DEMO, "lam=-0.1"]),
    ("rho nan", [*DEMO, "rho=nan"]),
    ("rho negative", [*DEMO, "--rho", "-1"]),
    ("weight_decay", [*DEMO, "weight_decay=-1"]),
    ("momentum", [*DEMO, "momentum=-1"]),
    ("momentum >= 1", [*DEMO, "momentum=1"]),
    ("max_grad_norm", [*DEMO, "max_grad_norm=-1"]),
    ("eta", [*DEMO, "eta=-1"]),
    ("kappa", [*DEMO, "kappa=nan"]),
    ("unknown loss key", [*DEMO, "loss.bogus=1"]),
    ("old loss_options", [*DEMO, "loss_options.tau=1"]),
    ("loss tau not a number", [*DEMO, "loss.tau=abc"]),
    ("loss tau negative", [*DEMO, "loss.tau=-1"]),
    ("lr nan", [*DEMO, "lr=nan"]),
    ("lr inf", [*DEMO, "lr=inf"]),
    ("lr zero", [*DEMO, "--lr", "0"]),
    ("lr_decay", [*DEMO, "lr_decay=-1"]),
    ("rho_decay", [*DEMO, "rho_decay=-1"]),
    ("lr milestones", [*DEMO, "lr_milestones=[0,5]"]),
    ("warmup", [*DEMO, "warmup_epochs=-1"]),
    ("epochs", [*DEMO, "epochs=0"]),
    ("epochs not an int", [*DEMO, "epochs=1.5"]),
    ("batch_size", [*DEMO, "batch_size=0"]),
    ("eval_every", [*DEMO, "eval_every=0"]),
    ("precision", [*DEMO, "precision=fp8"]),
    ("select", [*DEMO, "select=first"]),
    ("bn_update", [*DEMO, "bn_update=never"]),
    ("dataset", [*DEMO, "dataset=foo"]),
    ("image_folder", [*DEMO, "dataset=image_folder"]),
    ("shot_preset", [*DEMO, "shot_preset=foo"]),
    ("profile", [*DEMO, "profile=linear"]),
    ("imbalance_ratio", [*DEMO, "imbalance_ratio=0.5"]),
    ("num_workers", [*DEMO, "num_workers=-1"]),
    ("optimizer", [*DEMO, "optimizer=adam_sam"]),
    ("loss", [*DEMO, "loss=hinge"]),
    ("ccsam mode", [*DEMO, "optim.ccsam.mode=paper"]),
    ("ccsam stage2 epochs", [*DEMO, "optim.ccsam.stage2_epochs=-1"]),
    ("ccsam flat_ratio", [*DEMO, "optim.ccsam.flat_ratio=2"]),
    ("nesterov with adam", [*DEMO, "base_optimizer=adam", "nesterov=true"]),
    ("resnet50 on 1-channel digits", [*DEMO, "model=resnet50"]),
    ("unknown key", [*DEMO, "lrr=0.1"]),
    ("override without =", [*DEMO, "lr"]),
    ("preset as a key", [*DEMO, "preset=demo"]),
    ("unknown preset", ["train", "--preset", "nope"]),
    ("missing yaml", ["train", "--config", "{tmp}/missing.yaml"]),
    ("yaml not a mapping", ["train", "--config", "{tmp}/list.yaml"]),
    ("yaml not yaml", ["train", "--config", "{tmp}/broken.yaml"]),
    ("yaml unknown preset", ["train", "--config", "{tmp}/badpreset.yaml"]),
    ("cifar missing", [*DEMO, "dataset=cifar10", "model=mlp", "data_root={tmp}/nodata"]),
    ("cifar truncated", [*DEMO, "dataset=cifar10", "model=mlp", "data_root={tmp}/truncated"]),
    (
        "imagenet_lt missing list",
        [*DEMO, "dataset=imagenet_lt", "model=mlp", "data_root={tmp}/nodata"],
    ),
    ("run dir not writable", [*DEMO, "run_dir={tmp}/list.yaml/run"]),
    ("run dir taken", [*DEMO, "run_dir={run}"]),
    ("resume missing", ["train", "--resume", "{tmp}/no-such-run"]),
    ("resume changes lr", ["train", "--resume", "{run}", "lr=0.5"]),
    ("resume changes optimizer", ["train", "--resume", "{run}", "--optimizer", "sam"]),
    ("resume with preset", ["train", "--resume", "{run}", "--preset", "demo"]),
    ("eval missing run", ["eval", "{tmp}/no-such-run"]),
    ("eval missing checkpoint", ["eval", "{run}", "--checkpoint", "best"]),
    ("eval /etc/passwd", ["eval", "{run}", "--checkpoint", "/etc/passwd"]),
    ("eval a folder", ["eval", "{run}", "--checkpoint", "{tmp}"]),
    ("eval truncated", ["eval", "{run}", "--checkpoint", "{tmp}/truncated.pt"]),
    ("eval another model", ["eval", "{run}", "--checkpoint", "{tmp}/other.pt"]),
    ("eval device", ["eval", "{run}", "--device", "tpu"]),
]
if not torch.cuda.is_available():
    CASES.append(("cuda without a GPU", [*DEMO, "device=cuda"]))


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("runs") / "done"
    assert main([*DEMO, "model=mlp", f"run_dir={run}"]) == 0
    return run


def _snapshot(root: Path) -> dict[str, tuple[int, int]]:
    return {str(p): (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(root.rglob("*"))}


@pytest.mark.parametrize("argv", [c[1] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_exit_2_nothing_written(
    argv, tmp_path, finished_run, capsys, monkeypatch
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
    before_tmp, before_run = _snapshot(tmp_path), _snapshot(finished_run)
    filled = [a.replace("{tmp}", str(tmp_path)).replace("{run}", str(finished_run)) for a in argv]

    rc = main(filled)

    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("focalsam: error: ")]
    assert rc == 2, err
    assert len(errors) == 1 and "Traceback" not in err, err
    assert all(line.startswith("focalsam: ") for line in lines), err
    assert _snapshot(tmp_path) == before_tmp, "something was written"
    assert _snapshot(finished_run) == before_run, "the run directory was changed"
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
