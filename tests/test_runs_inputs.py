"""Every input checked before anything is written: one table of bad inputs per command
(train, resume, eval, analyze, compare). Each row: exit code 2, exactly one line holding
the expected fragment, no traceback, and every watched folder unchanged."""

from __future__ import annotations

import math
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import file_snapshot

from focalsam.cli import main

QUIET = ["progress=false", "tensorboard=false"]
DEMO = ["train", "--preset", "demo", "--epochs", "1", "model=mlp", *QUIET]
CMP = ["compare", "--preset", "demo", "--optimizers", "sgd", "--seeds", "0", "epochs=1"]


def _ckpt(field: str, value: Any) -> Callable[[Path], None]:
    def mutate(run: Path) -> None:
        payload = torch.load(run / "last.pt", weights_only=True)
        payload[field] = value
        torch.save(payload, run / "last.pt")

    return mutate


def _nan_weights(run: Path) -> None:
    payload = torch.load(run / "last.pt", weights_only=True)
    name = sorted(payload["model"])[0]
    payload["model"][name] = payload["model"][name].clone().fill_(math.nan)
    torch.save(payload, run / "last.pt")


def _config_epochs(run: Path) -> None:
    text = (run / "config.yaml").read_text()
    (run / "config.yaml").write_text(text.replace("epochs: 2", "epochs: 7", 1))


def _resumes_line(run: Path) -> None:
    line = '{"time": "t", "from_epoch": 1, "from_step": 0, "changes": {"train.epochs": 9}}\n'
    (run / "resumes.jsonl").write_text(line)


def _deep_analysis(out: Path) -> None:
    out.mkdir()
    (out / "analysis.json").write_text("[" * 3000 + "]" * 3000)


# (id, argv, expected fragment, how to prepare {copy}: a copy of a finished 2-epoch run)
CASES: list[tuple[str, list[str], str, Callable[[Path], None] | None]] = [
    ("batch larger than the data", [*DEMO, "batch_size=100000"], "larger than the", None),
    ("ccsam batch larger", [*DEMO, "optimizer=ccsam", "batch_size=100000"], "stage 2", None),
    ("tuning on a model without", [*DEMO, "tuning=lora"], "model.tuning=lora", None),
    ("clip weights on resnet", [*DEMO, "clip_pretrained=openai"], "model.clip_pretrained", None),
    ("seed too large", [*DEMO, f"seed={2**40}"], "run.seed must lie in 0..4294967295", None),
    ("seed negative", [*DEMO, "seed=-1"], "run.seed", None),
    ("seed not an int", [*DEMO, "seed=1.5"], "seed", None),
    ("device mps", [*DEMO, "device=mps"], "not available", None),
    ("lora rank 10**9", [*DEMO, "lora_rank=1000000000"], "model.lora_rank", None),
    ("vpt tokens 10**9", [*DEMO, "vpt_tokens=1000000000"], "model.vpt_tokens", None),
    ("image size 10**9", [*DEMO, "data.image_size=1000000000"], "data.image_size", None),
    ("yaml nested 3000 deep", ["train", "--config", "{tmp}/deep.yaml"], "nested deeper", None),
    ("yaml alias bomb", ["train", "--config", "{tmp}/bomb.yaml"], "aliases", None),
    (
        "yaml too large",
        ["train", "--config", "{tmp}/big.yaml"],
        "over the limit",
        lambda run: (run.parent / "big.yaml").write_text("# pad\n" * (3 * 2**20)),
    ),
    ("resume run_dir=OTHER", ["train", "--resume", "{copy}", "run_dir={tmp}/o"], "run.dir", None),
    (
        "resume after config.yaml epochs edit",
        ["train", "--resume", "{copy}"],
        "edited by hand",
        _config_epochs,
    ),
    (
        "resume with a hand-made resumes.jsonl",
        ["train", "--resume", "{copy}"],
        "edited by hand",
        _resumes_line,
    ),
    ("resume shorter than done", ["train", "--resume", "{copy}", "epochs=1"], "epoch 2 is", None),
    ("checkpoint epoch -3", ["train", "--resume", "{copy}"], "epoch -3", _ckpt("epoch", -3)),
    ("checkpoint epoch 10**30", ["train", "--resume", "{copy}"], "outside", _ckpt("epoch", 10**30)),
    (
        "checkpoint step 10**12",
        ["train", "--resume", "{copy}", "epochs=3"],
        "step_in_epoch 1000000000000",
        _ckpt("step_in_epoch", 10**12),
    ),
    (
        "checkpoint epoch a string",
        ["train", "--resume", "{copy}"],
        "'epoch' must be int",
        _ckpt("epoch", "2"),
    ),
    ("checkpoint NaN weights resume", ["train", "--resume", "{copy}"], "NaN/inf", _nan_weights),
    ("checkpoint NaN weights eval", ["eval", "{copy}"], "NaN/inf weights in", _nan_weights),
    (
        "analyze top-k 10**9",
        ["analyze", "{copy}", "--out", "{tmp}/a", "--top-k", "1000000000"],
        "--top-k",
        None,
    ),
    (
        "analyze deep analysis.json",
        ["analyze", "{copy}", "--out", "{tmp}/an"],
        "nested 3000 levels",
        lambda run: _deep_analysis(run.parent / "an"),
    ),
    (
        "compare threads 100000",
        [*CMP, "--threads", "100000", "--out", "{tmp}/c"],
        "CPU cores",
        None,
    ),
]


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("runs") / "done"
    assert main([*DEMO, "--epochs", "2", f"run_dir={run}"]) == 0
    return run


@pytest.mark.parametrize("argv,fragment,prepare", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_exit_2_nothing_written(
    argv, fragment, prepare, finished, tmp_path, capsys, monkeypatch
):
    (tmp_path / "deep.yaml").write_text("a: " + "[" * 3000 + "]" * 3000 + "\n")
    bomb = ["a: &a [x, x, x, x, x, x, x, x, x]"]
    bomb += [
        f"{c}: &{c} [*{p}, *{p}, *{p}, *{p}, *{p}, *{p}]" for p, c in zip("abcdefgh", "bcdefghi")
    ]
    (tmp_path / "bomb.yaml").write_text("\n".join(bomb) + "\n")
    copy = tmp_path / "copy"
    shutil.copytree(finished, copy)
    if prepare is not None:
        prepare(copy)
    monkeypatch.chdir(tmp_path)
    before = file_snapshot(tmp_path)
    filled = [a.replace("{tmp}", str(tmp_path)).replace("{copy}", str(copy)) for a in argv]

    rc = main(filled)

    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert rc == 2, err
    assert len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith("focalsam: error: ") and fragment in lines[0], err
    assert file_snapshot(tmp_path) == before, "something was written"


def test_class_counts_longer_than_the_logits_raise_at_the_first_step_naming_both():
    from focalsam.errors import ClassCountsError
    from focalsam.optim import FocalSAM

    torch.manual_seed(0)
    model = torch.nn.Linear(4, 10)
    opt = FocalSAM(model.parameters(), torch.optim.SGD, class_counts=[5] * 20, lr=0.1)
    assert opt.num_classes == 20
    x, y = torch.randn(8, 4), torch.randint(0, 10, (8,))

    def closure():
        logits = model(x)
        return torch.nn.functional.cross_entropy(logits, y, reduction="none"), logits

    with pytest.raises(ClassCountsError, match="20 class counts.*10 classes"):
        opt.step(closure, y)
