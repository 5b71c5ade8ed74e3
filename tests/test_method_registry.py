"""A method is what its MethodSpec says: registering one (the toy in ``toy_method.py``, or a
third-party package's entry point) gives it a CLI name, a config section, the contract
tests, a compare row with its display name and an analysis perturbation, with no other edit."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from conftest import demo_config, silent_trainer
from toy_method import TOY_SPEC, ToyOptions

from focalsam.cli import main
from focalsam.compare.table import markdown, summarize
from focalsam.errors import ConfigError, InputError, MethodPluginError
from focalsam.optim import create_optimizer, get_method, list_optimizers, register_method
from focalsam.optim.registry import MethodRegistry, unregister_method
from focalsam.train import make_config

TESTS = Path(__file__).resolve().parent


@pytest.fixture
def toy() -> Iterator[None]:
    register_method(TOY_SPEC)
    try:
        yield
    finally:
        unregister_method("toy")


def test_the_toy_has_a_cli_name_and_a_config_section(toy, capsys):
    assert "toy" in list_optimizers()
    cfg = make_config(overrides=["optimizer=Toy", "optim.methods.toy.strength=0.25"])
    assert cfg.optim.name == "toy"  # normalised once, when the config is made
    assert cfg.method_options() == ToyOptions(strength=0.25)
    argv = ["train", "--print-config", "optimizer=toy", "optim.methods.toy.strength=0.25"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "name: toy" in printed and "strength: 0.25" in printed


def test_the_toy_section_is_validated_by_its_options(toy, capsys):
    with pytest.raises(ConfigError, match=r"toy.strength must lie in \[0, 1\], got 2"):
        make_config(overrides=["optimizer=toy", "optim.methods.toy.strength=2"])
    with pytest.raises(ConfigError, match="strenth"):
        make_config(overrides=["optimizer=toy", "optim.methods.toy.strenth=0.5"])
    assert main(["train", "--print-config", "optimizer=toy", "optim.methods.toy.strength=2"]) == 2
    assert "toy.strength must lie in [0, 1]" in capsys.readouterr().err


def test_an_unknown_later_section_is_refused():
    with pytest.raises(ConfigError, match="optim.methods.nope is not the section"):
        make_config(overrides=["optim.methods.nope.x=1"])


def test_create_optimizer_validates_the_options_as_build_does(toy):
    params = [torch.zeros(3, requires_grad=True)]
    with pytest.raises(InputError, match="toy.strength must lie"):  # InputError
        create_optimizer("toy", params, "sgd", strength=1.5, lr=0.1)
    with pytest.raises(InputError, match="focal_sam.gamma must be a finite"):
        create_optimizer("focal_sam", params, "sgd", class_counts=[3, 1], gamma=-1.0, lr=0.1)
    opt = create_optimizer("toy", params, "sgd", strength=0.25, lr=0.1)
    assert type(opt).__name__ == "ToySAM"


def test_the_toy_runs_the_contract_tests():
    """The parametrized contract module, with the toy registered before collection."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), *sys.path])}
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-rs",
            "-p",
            "no:cacheprovider",
            "-p",
            "toy_method",
            str(TESTS / "test_optim_contract.py"),
            "-k",
            "toy",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
        cwd=TESTS.parent,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    summary = result.stdout.strip().splitlines()[-1]
    assert " passed" in summary and "failed" not in summary, summary
    assert "deselected" in summary  # the built-in methods' cases were collected too


def test_the_toy_gets_a_compare_row_with_its_display_name(toy):
    def report(seed: int, acc: float) -> dict:
        groups = dict.fromkeys(("overall", "many", "medium", "few"), acc)
        return {
            "config": {"run": {"seed": seed}},
            "last_epoch": {**groups, "per_class": [acc, acc]},
            "best_test_epoch": {**groups, "epoch": 1},
        }

    doc = summarize({"plain": [report(0, 0.5)], "toy": [report(0, 0.6)]}, {})
    table = markdown(doc)
    assert "| Toy-SAM |" in table and "| SGD |" in table


def test_the_toy_gets_its_analysis_perturbation(toy, tmp_path):
    """``focalsam analyze`` perturbs a toy run along the toy's own class weights."""
    run = tmp_path / "toy"
    cfg = demo_config(
        run, optimizer="toy", model="mlp", epochs=1, **{"optim.methods.toy.strength": 0.25}
    )
    silent_trainer(cfg).fit()
    out = tmp_path / "analysis"
    argv = ["analyze", str(run), "--out", str(out), "--measure", "sharpness"]
    argv += ["--samples-per-class", "4", "--rho", "0.05", "--no-progress"]
    assert main(argv) == 0
    doc = json.loads((out / "analysis.json").read_text())
    targets = next(iter(doc["runs"].values()))["targets"]
    slot = next(iter(targets.values()))["sharpness"]
    assert slot["run_ascent"] == "toy weights s = 0.25"
    assert slot["run"] is not None


# ------------------------------------------------------------------ entry points
def _plugin(root: Path, name: str, value: str, module: str | None = None, body: str = "") -> Path:
    """A tiny installed distribution: its module and a .dist-info with entry_points.txt."""
    site = root / "site"
    if module is not None:
        (site / f"{module}.py").parent.mkdir(parents=True, exist_ok=True)
        (site / f"{module}.py").write_text(textwrap.dedent(body))
    info = site / f"{name}-0.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[focalsam.methods]\n{name} = {value}\n")
    return site


def test_a_third_party_method_registers_through_its_entry_point(tmp_path, monkeypatch):
    body = f"""
        import sys
        sys.path.insert(0, {str(TESTS)!r})
        from dataclasses import replace
        from toy_method import TOY_SPEC

        LOADS = []

        def make_spec():
            LOADS.append(1)
            return replace(TOY_SPEC, name="plugged", display_name="Plugged", aliases=("plug",))
        """
    site = _plugin(
        tmp_path, "plugged_method", "plugged_method_mod:make_spec", "plugged_method_mod", body
    )
    monkeypatch.syspath_prepend(str(site))
    registry = MethodRegistry("focalsam.methods")
    assert "plugged" in registry.names()  # loaded lazily, on the first listing
    assert registry.canonical("Plug") == "plugged"
    assert registry.get("plugged").label() == "Plugged"
    registry.names()
    registry.get("plug")
    import plugged_method_mod

    assert plugged_method_mod.LOADS == [1]  # loaded once


def test_a_broken_plugin_is_one_line_naming_it(tmp_path, monkeypatch):
    site = _plugin(tmp_path, "broken_method", "no_such_module_xyz:SPEC")
    monkeypatch.syspath_prepend(str(site))
    registry = MethodRegistry("focalsam.methods")
    with pytest.raises(MethodPluginError) as info:
        registry.names()
    msg = str(info.value)
    assert "'broken_method'" in msg and "no_such_module_xyz:SPEC" in msg
    assert "could not be loaded" in msg and "\n" not in msg


def test_a_plugin_that_is_not_a_spec_is_refused(tmp_path, monkeypatch):
    site = _plugin(tmp_path, "odd_method", "odd_method_mod:SPEC", "odd_method_mod", "SPEC = 3\n")
    monkeypatch.syspath_prepend(str(site))
    with pytest.raises(
        MethodPluginError, match="'odd_method'.*must name a focalsam.optim.MethodSpec, got int"
    ):
        MethodRegistry("focalsam.methods").names()


def test_every_builtin_method_with_options_has_a_typed_section():
    """The static schema's sections are the registry's options classes."""
    cfg = make_config()
    for name in list_optimizers():
        spec = get_method(name)
        if spec.options is not None:
            assert type(cfg.optim.section(name)) is spec.options
            assert name not in cfg.optim.methods  # typed fields, not the mapping
