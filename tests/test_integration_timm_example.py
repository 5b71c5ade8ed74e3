"""examples/timm_loop.py runs: timm's model and data config, Mixup/CutMix soft targets,
bf16 autocast and Focal-SAM, for one small step."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import pytest

pytest.importorskip("timm")
pytest.importorskip("sklearn")

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "timm_loop.py"


def test_timm_loop_takes_a_bf16_mixup_step(capsys):
    spec = importlib.util.spec_from_file_location("timm_loop_example", EXAMPLE)
    assert spec is not None and spec.loader is not None
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    result = example.main("test_resnet", epochs=1, batch_size=8, bf16=True, max_batches=1)
    assert 0.0 <= result["overall"] <= 1.0
    loss = float(capsys.readouterr().out.split("train loss ")[1].split()[0])
    assert math.isfinite(loss) and loss > 0
