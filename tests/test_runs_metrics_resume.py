"""A mid-epoch SIGTERM, then resume: the interrupted epoch's metrics row equals the
uninterrupted run's (the checkpoint carries the epoch's running sums and its starting
lr/rho), timing columns aside; the weights are bitwise the same too."""

from __future__ import annotations

import json
import os
import signal

import pytest
import torch
from conftest import demo_config, silent_trainer

from focalsam.train import TrainingInterrupted, load_checkpoint

TIMING = ("epoch_seconds", "images_per_second")


def _rows(run):
    rows = [json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k not in TIMING} for r in rows]


@pytest.mark.parametrize("optimizer", ["focal_sam"])
def test_a_mid_epoch_sigterm_then_resume_gives_the_uninterrupted_row(tmp_path, optimizer):
    settings = {"optimizer": optimizer, "model": "mlp", "epochs": 2, "warmup_epochs": 1}
    full = silent_trainer(demo_config(tmp_path / "full", **settings))
    full.fit()

    def sigterm_at(trainer, epoch, step):
        if (epoch, step) == (1, 2):
            os.kill(os.getpid(), signal.SIGTERM)  # handled: the step ends, then a save

    first = silent_trainer(demo_config(tmp_path / "run", **settings), on_step=sigterm_at)
    with pytest.raises(TrainingInterrupted, match="SIGTERM: saved .*epoch 2, step 3"):
        first.fit()
    ckpt = load_checkpoint(tmp_path / "run" / "last.pt")
    assert ckpt["epoch_partial"]["totals"][2] > 0  # images of the steps done so far
    resumed = silent_trainer(demo_config(tmp_path / "run", **settings), resume=tmp_path / "run")
    resumed.fit()

    assert _rows(tmp_path / "run") == _rows(tmp_path / "full")
    for key, value in full.model.state_dict().items():
        assert torch.equal(value, resumed.model.state_dict()[key]), key
