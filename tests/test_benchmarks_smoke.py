"""The GPU suite's CPU smoke mode: `bash benchmarks/gpu_suite.sh --smoke --out TMP`
writes gpu_suite.json with every section, each ok with numbers or skipped with a reason,
and a markdown summary naming the device."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]
SUITE = REPO / "benchmarks" / "gpu_suite.sh"
sys.path.insert(0, str(REPO / "benchmarks"))

from suite_tools import SECTIONS  # noqa: E402


def numbers(value: Any) -> list[float]:
    """Every int or float anywhere in a JSON value (booleans excluded)."""
    if isinstance(value, bool):
        return []
    if isinstance(value, int | float):
        return [float(value)]
    if isinstance(value, dict):
        return [n for v in value.values() for n in numbers(v)]
    if isinstance(value, list):
        return [n for v in value for n in numbers(v)]
    return []


@pytest.mark.slow
@pytest.mark.skipif(
    shutil.which("bash") is None or shutil.which("timeout") is None,
    reason="needs bash and coreutils timeout",
)
def test_smoke_suite_reports_every_section(tmp_path: Path) -> None:
    out = tmp_path / "suite"
    proc = subprocess.run(
        ["bash", str(SUITE), "--smoke", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
        env={"PATH": "/usr/bin:/bin", "PYTHON": sys.executable, "HOME": str(tmp_path)},
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    doc = json.loads((out / "gpu_suite.json").read_text())
    assert doc["smoke"] is True
    assert set(doc["sections"]) == {name for name, _ in SECTIONS}
    for name, section in doc["sections"].items():
        assert section["status"] in ("ok", "skipped"), (name, section)
        if section["status"] == "skipped":
            assert section["reason"].strip(), name
        else:
            assert numbers(section["result"]), name
    step = doc["sections"]["step_cost_b64"]
    if step["status"] == "ok":
        batch = next(iter(step["result"]["by_batch"].values()))
        assert batch["median_ms"]["eager"]["focal_sam"] > 0
        assert batch["skipped"]["focal_sam/captured"] == "no CUDA"
    checks = doc["sections"]["checks"]
    if checks["status"] == "ok":
        assert checks["result"]["captured_vs_eager"] == {"skipped": "no CUDA"}
        assert checks["result"]["compiled_vs_eager"]["ok"] is True
    md = (out / "gpu_suite.md").read_text()
    assert doc["card"] in md and "| section | status |" in md
