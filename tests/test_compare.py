"""``focalsam compare``: the table against the runs' own reports, the noise rule,
resume, --parallel against sequential runs (bitwise), bad input, the demo."""

from __future__ import annotations

import contextlib
import json
import shutil
import statistics
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from conftest import file_snapshot, silent_trainer

from focalsam.cli import main
from focalsam.compare import CompareSpec, stat, summarize, terminal, within_noise
from focalsam.compare.table import GROUPS, markdown, verdicts
from focalsam.train import TrainingInterrupted, load_checkpoint

OPTS, SEEDS = "sgd,focal_sam", "0,1"
RUNS = [f"{o}-seed{s}" for o in ("plain", "focal_sam") for s in (0, 1)]
SETTINGS = ["epochs=2", "eval_every=1", "tensorboard=false"]


def compare_argv(out: Path, *extra: str, seeds: str = SEEDS) -> list[str]:
    return [
        "compare",
        "--preset",
        "demo",
        "--optimizers",
        OPTS,
        "--seeds",
        seeds,
        "--out",
        str(out),
        *extra,
        *SETTINGS,
    ]


@pytest.fixture(scope="module")
def sequential(tmp_path_factory):
    """A compare made one run after another in this process."""
    out = tmp_path_factory.mktemp("cmp") / "seq"
    assert main(compare_argv(out)) == 0
    return out


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def _weights(run: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(run / "last.pt")["model"]


def _same_weights(a: Path, b: Path) -> bool:
    wa, wb = _weights(a), _weights(b)
    return wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def _accuracy_rows(out: Path) -> dict[str, dict]:
    rows = json.loads((out / "compare.json").read_text())["rows"]
    return {
        n: {"acc": r["last_epoch"], "best": r["best_test_epoch"], "pc": r["per_class"]}
        for n, r in rows.items()
    }


# ------------------------------------------------------------------ end to end
def test_table_equals_the_numbers_recomputed_from_the_runs(sequential):
    for name in ("compare.json", "compare.md", "compare.yaml"):
        assert (sequential / name).is_file()
    for name in ("accuracy_vs_throughput.png", "per_class.png"):
        assert (sequential / name).read_bytes()[:4] == b"\x89PNG"
    doc = json.loads((sequential / "compare.json").read_text())
    assert list(doc["rows"]) == ["plain", "focal_sam"] and doc["baseline"] == "plain"
    for opt, row in doc["rows"].items():
        reports = [
            json.loads((sequential / f"{opt}-seed{s}" / "report.json").read_text()) for s in (0, 1)
        ]
        assert row["n"] == 2 and row["seeds"] == [0, 1]
        for g in GROUPS:
            xs = [r["last_epoch"][g] for r in reports]
            assert row["last_epoch"][g]["mean"] == pytest.approx(statistics.mean(xs), abs=1e-12)
            assert row["last_epoch"][g]["std"] == pytest.approx(statistics.stdev(xs), abs=1e-12)
            best = [r["best_test_epoch"][g] for r in reports]
            assert row["best_test_epoch"][g]["mean"] == pytest.approx(statistics.mean(best))
        ips = [
            statistics.mean(
                json.loads(line)["images_per_second"]
                for line in (sequential / f"{opt}-seed{s}" / "metrics.jsonl").open()
            )
            for s in (0, 1)
        ]
        assert row["images_per_second"]["mean"] == pytest.approx(statistics.mean(ips))
        assert row["passes_per_step"] == {"plain": [1, 1], "focal_sam": [2, 3]}[opt]
        assert row["peak_gpu_memory_mb"]["mean"] is None  # the demo preset runs on the CPU
        per_class = [r["last_epoch"]["per_class"] for r in reports]
        assert row["per_class"]["mean"] == pytest.approx(
            [statistics.mean(c) for c in zip(*per_class)]
        )
    md = (sequential / "compare.md").read_text()
    assert "best epoch (selected on test)" in md and "max(std_a, std_b)" in md
    assert " ± " in md and "n/a" in md  # peak GPU memory on the CPU


def test_each_run_is_the_run_focalsam_train_makes(sequential, tmp_path):
    spec = CompareSpec.create("demo", OPTS, SEEDS, SETTINGS)
    cfg = spec.run_config("focal_sam", 1, tmp_path)
    cfg.run.dir = str(tmp_path / "alone")
    with one_thread(), silent_trainer(cfg) as trainer:  # as the compare runs every run
        trainer.fit()
    assert _same_weights(tmp_path / "alone", sequential / "focal_sam-seed1")


# ------------------------------------------------------------------ noise rule
def _fake(values: dict[str, list[float]]) -> dict[str, list[dict]]:
    out = {}
    for name, xs in values.items():
        out[name] = [
            {
                "config": {"run": {"seed": i}},
                "shot_preset": "standard",
                "class_counts": [3, 1],
                "last_epoch": {**dict.fromkeys(GROUPS, x), "per_class": [x, x]},
                "best_test_epoch": {**dict.fromkeys(GROUPS, x), "epoch": 1},
            }
            for i, x in enumerate(xs)
        ]
    return out


def test_noise_rule_on_made_up_numbers():
    a, inside, outside = [0.80, 0.82, 0.84], [0.81, 0.83, 0.85], [0.90, 0.91, 0.92]
    s = stat(a)
    assert s["mean"] == pytest.approx(statistics.mean(a))
    assert s["std"] == pytest.approx(statistics.stdev(a))  # sample std, ddof=1
    assert within_noise(stat(inside), s) is True
    assert within_noise(stat(outside), s) is False
    assert within_noise(stat([0.9]), stat([0.5])) is None  # one seed: no estimate

    doc = summarize(_fake({"plain": a, "sam": inside, "focal_sam": outside}), {})
    rows = doc["rows"]
    assert rows["sam"]["vs_baseline"]["overall"]["within_noise"] is True
    assert rows["focal_sam"]["vs_baseline"]["overall"]["within_noise"] is False
    assert doc["best"]["overall"] == "focal_sam"
    assert rows["sam"]["vs_best"]["overall"]["within_noise"] is False
    table = terminal(doc)
    sam_line = next(ln for ln in table.splitlines() if ln.startswith("SAM "))
    focal_line = next(ln for ln in table.splitlines() if ln.startswith("Focal-SAM "))
    assert "~b" in sam_line and "~b" not in focal_line and "^" in focal_line
    assert "SAM vs SGD: +1.00 points overall, within noise" in table
    assert "Focal-SAM vs SGD: +9.00 points overall, outside the spread" in table
    assert "~b" in markdown(doc).split("| SAM |")[1].splitlines()[0]


def test_a_single_seed_gives_no_noise_estimate():
    doc = summarize(_fake({"plain": [0.8], "focal_sam": [0.9]}), {})
    assert doc["rows"]["focal_sam"]["vs_baseline"]["overall"]["within_noise"] is None
    assert "no noise estimate" in " ".join(verdicts(doc))
    rows = [ln for ln in terminal(doc).splitlines() if ln.startswith(("SGD ", "Focal-SAM "))]
    assert len(rows) == 2 and not any("~" in ln for ln in rows)


def test_rows_with_one_seed_beside_rows_with_more_are_said_to_have_no_estimate():
    """A diverged seed leaves one row with a single run: the others are still compared,
    the legend stays, and that row is named as never marked."""
    doc = summarize(_fake({"plain": [0.80, 0.82], "focal_sam": [0.81, 0.83], "sam": [0.5]}), {})
    said = verdicts(doc)
    assert any(v.startswith("Focal-SAM vs SGD") and "within noise" in v for v in said)
    assert any(v.startswith("SAM vs SGD") and "no noise estimate" in v for v in said)
    assert said[-1] == "one seed only, so never marked ~: SAM"
    text = markdown(doc)
    assert "~b: within noise of the baseline" in text
    assert "~" not in text.split("| SAM |")[1].splitlines()[0]


# ------------------------------------------------------------------ resume
def test_rerun_keeps_finished_runs_and_completes_the_others(sequential, tmp_path):
    out = tmp_path / "resumed"
    assert main(compare_argv(out)) == 0
    (out / "plain-seed1" / "report.json").unlink()  # finished training, report lost
    shutil.rmtree(out / "focal_sam-seed0")  # interrupted mid-epoch: last.pt only
    spec = CompareSpec.create("demo", OPTS, SEEDS, SETTINGS)

    def stop(trainer, epoch, step):
        if epoch == 1 and step == 2:
            trainer.request_stop()

    with one_thread(), pytest.raises(TrainingInterrupted):
        silent_trainer(spec.run_config("focal_sam", 0, out), on_step=stop).fit()
    assert not (out / "focal_sam-seed0" / "report.json").exists()
    shutil.rmtree(out / "focal_sam-seed1")  # never started
    kept = {r: file_snapshot(out / r) for r in ("plain-seed0",)}

    assert main(compare_argv(out)) == 0

    assert {r: file_snapshot(out / r) for r in kept} == kept  # untouched
    for run in RUNS:
        assert (out / run / "report.json").is_file()
        assert _same_weights(out / run, sequential / run), run
    assert _accuracy_rows(out) == _accuracy_rows(sequential)


# ------------------------------------------------------------------ parallel
def test_parallel_runs_equal_sequential_runs_bitwise(sequential, tmp_path, capsys):
    out = tmp_path / "par"  # seed 0 of each optimizer: two `focalsam train` processes at once
    assert main(compare_argv(out, "--parallel", "2", seeds="0")) == 0
    finished = [ln for ln in capsys.readouterr().out.splitlines() if "overall" in ln and "[" in ln]
    assert len(finished) == 2  # one line per finished run
    for run in ("plain-seed0", "focal_sam-seed0"):
        assert _same_weights(out / run, sequential / run), run
        a, b = (json.loads((d / run / "report.json").read_text()) for d in (out, sequential))
        assert a["last_epoch"] == b["last_epoch"] and a["best_test_epoch"] == b["best_test_epoch"]


# ------------------------------------------------------------------ bad input
BAD: list[tuple[str, list[str]]] = [
    ("unknown optimizer", ["--optimizers", "sgd,adam_sam"]),
    ("optimizer twice", ["--optimizers", "sgd,plain"]),
    ("seeds 0,x", ["--seeds", "0,x"]),
    ("seeds negative", ["--seeds", "-1"]),
    ("parallel 0", ["--parallel", "0"]),
    ("threads 0", ["--threads", "0"]),
    ("unknown preset", ["--preset", "nope"]),
    ("bad override", ["lr=nan"]),
    ("override of the optimizer", ["optimizer=sam"]),
    ("override of the seed", ["seed=3"]),
    ("missing data", ["dataset=cifar10", "model=mlp", "data_root={tmp}/nodata"]),
    ("not a compare folder", ["--out", "{tmp}/other"]),
    ("different command", ["--out", "{cmp}", "--seeds", "0,1,2"]),
    ("different override", ["--out", "{cmp}", "lr=0.05"]),
]


@pytest.mark.parametrize("extra", [c[1] for c in BAD], ids=[c[0] for c in BAD])
def test_bad_input_is_one_line_exit_2_nothing_written(
    extra, sequential, tmp_path, capsys, monkeypatch
):
    (tmp_path / "nodata").mkdir()
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine\n")
    monkeypatch.chdir(tmp_path)
    before_tmp, before_cmp = file_snapshot(tmp_path), file_snapshot(sequential)
    filled = [a.replace("{tmp}", str(tmp_path)).replace("{cmp}", str(sequential)) for a in extra]
    argv = [
        "compare",
        "--preset",
        "demo",
        "--optimizers",
        OPTS,
        "--seeds",
        SEEDS,
        "--out",
        str(tmp_path / "new"),
        *filled,
        *SETTINGS,
    ]

    rc = main(argv)

    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert rc == 2, err
    assert len(lines) == 1 and lines[0].startswith("focalsam: error: "), err
    assert file_snapshot(tmp_path) == before_tmp, "something was written"
    assert file_snapshot(sequential) == before_cmp, "the compare folder was changed"


# ------------------------------------------------------------------ demo
def test_demo_prints_mean_std_and_a_noise_verdict(tmp_path, capsys):
    from focalsam.cli import run_demo

    assert run_demo(epochs=1, root=tmp_path / "demo") == 0
    out = capsys.readouterr().out
    for name in ("SGD", "SAM", "Focal-SAM", "overall", "many", "medium", "few", " ± "):
        assert name in out
    assert "SAM vs SGD" in out and ("within noise" in out or "outside the spread" in out)
    doc = json.loads((tmp_path / "demo" / "compare.json").read_text())
    assert [r["n"] for r in doc["rows"].values()] == [3, 3, 3]


def test_an_interrupted_compare_says_to_rerun_the_compare(tmp_path, monkeypatch, capsys):
    """SIGINT inside an in-process run: the hint is the compare command, not a single
    run's --resume (which would leave the compare's other runs undone)."""
    from focalsam.train import Trainer

    def interrupted(self):
        self.request_stop("SIGINT")
        raise TrainingInterrupted(
            f"SIGINT: saved {self.run_dir / 'last.pt'} at epoch 1, step 2; continue with "
            f"focalsam train --resume {self.run_dir}"
        )

    monkeypatch.setattr(Trainer, "fit", interrupted)
    out = tmp_path / "cut"
    assert main(compare_argv(out, seeds="0")) == 130
    err = capsys.readouterr().err
    assert "run the same compare command (with --out" in err and "train --resume" not in err
