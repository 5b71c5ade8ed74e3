"""The command line: ``KEY=VALUE`` overrides before or after flags, and every usage error
in one line (exit code 2)."""

from __future__ import annotations

import pytest
import yaml

from focalsam.cli import main


def test_overrides_may_follow_flags(capsys):
    argv = ["train", "--preset", "demo", "lr=0.05", "--epochs", "1", "gamma=3", "--print-config"]
    assert main([*argv, "--seed", "4", "model=mlp"]) == 0
    cfg = yaml.safe_load(capsys.readouterr().out)
    assert cfg["optim"]["lr"] == 0.05 and cfg["train"]["epochs"] == 1
    assert cfg["optim"]["focal_sam"]["gamma"] == 3 and cfg["run"]["seed"] == 4
    assert cfg["model"]["name"] == "mlp"


USAGE = [
    ("unknown flag", ["train", "--bogus"], "unrecognized arguments: --bogus"),
    ("stray word after a flag", ["train", "--preset", "demo", "--epochs", "1", "lr"], "lr"),
    ("not an integer", ["compare", "--preset", "demo", "--parallel", "x"], "--parallel"),
    ("missing required", ["analyze"], "required"),
    ("unknown command", ["fly"], "invalid choice"),
    ("flag without value", ["train", "--epochs"], "expected one argument"),
]


@pytest.mark.parametrize("argv,fragment", [c[1:] for c in USAGE], ids=[c[0] for c in USAGE])
def test_a_usage_error_is_one_line(argv, fragment, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    captured = capsys.readouterr()
    err = [ln for ln in captured.err.splitlines() if ln.strip()]
    assert len(err) == 1 and err[0].startswith("focalsam: error: ") and fragment in err[0], err
    assert captured.out == "" and list(tmp_path.iterdir()) == []
