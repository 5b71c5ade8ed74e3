"""Focal-SAM under Lightning manual optimization equals our own loop (examples/lightning_focalsam.py)."""

from __future__ import annotations

import importlib.util
import logging
import os
import sys
from pathlib import Path

import pytest
import torch
from conftest import per_sample_ce, tiny_batches, tiny_model
from torch.utils.data import DataLoader, TensorDataset

from focalsam.optim import FocalSAM

L = pytest.importorskip("lightning")

pytestmark = [
    pytest.mark.filterwarnings("ignore:.*does not have many workers:UserWarning"),
    pytest.mark.filterwarnings("ignore:.*LeafSpec.*:FutureWarning"),
]

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "lightning_focalsam.py"
COUNTS = [40, 20, 6, 2]
HPARAMS = {"rho": 0.2, "gamma": 2.0, "lam": 0.5, "lr": 0.1, "momentum": 0.9, "weight_decay": 1e-3}
EPOCHS, BATCHES = 2, 3  # 6 steps, the same three batches in each epoch


def _load_example():
    name = "lightning_focalsam_example"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, EXAMPLE)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


@pytest.fixture
def quiet_deterministic_lightning():
    """Quiet Lightning's info lines, one thread; undo the global switch ``deterministic=True`` flips."""
    log = logging.getLogger("lightning.pytorch")
    level = log.level
    det = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    cublas = os.environ.get("CUBLAS_WORKSPACE_CONFIG")
    threads = torch.get_num_threads()
    log.setLevel(logging.WARNING)
    torch.set_num_threads(1)  # tiny model: one thread is fastest, and steady on a busy CPU
    yield
    torch.set_num_threads(threads)
    log.setLevel(level)
    torch.use_deterministic_algorithms(det, warn_only=warn_only)
    if cublas is None:
        os.environ.pop("CUBLAS_WORKSPACE_CONFIG", None)
    else:
        os.environ["CUBLAS_WORKSPACE_CONFIG"] = cublas


def _state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Parameters and buffers (BatchNorm running statistics and batch count)."""
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _fit_lightning(batches, max_steps=-1, **overrides):
    example = _load_example()
    net = tiny_model()  # float64, with BatchNorm
    module = example.FocalSAMClassifier(net, COUNTS, **{**HPARAMS, **overrides})
    x = torch.cat([b[0] for b in batches])
    y = torch.cat([b[1] for b in batches])
    loader = DataLoader(TensorDataset(x, y), batch_size=batches[0][0].shape[0], shuffle=False)
    trainer = L.Trainer(
        accelerator="cpu",
        devices=1,
        max_epochs=EPOCHS,
        max_steps=max_steps,
        precision="64-true",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        deterministic=True,
    )
    trainer.fit(module, loader)
    return net, trainer


def _fit_plain(batches, steps=EPOCHS * BATCHES):
    model = tiny_model()
    opt = FocalSAM(model.parameters(), torch.optim.SGD, class_counts=COUNTS, **HPARAMS)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=EPOCHS * len(batches))
    model.train()
    for x, y in (batches * EPOCHS)[:steps]:
        opt.step(per_sample_ce(model, x, y), y)
        sched.step()
    return model, opt


def test_lightning_manual_optimization_equals_own_loop(quiet_deterministic_lightning):
    batches = tiny_batches(BATCHES)
    initial = _state(tiny_model())
    net, trainer = _fit_lightning(batches)
    model, opt = _fit_plain(batches)

    got, want = _state(net), _state(model)
    assert got.keys() == want.keys() and any("running_mean" in k for k in got)
    for k in want:
        torch.testing.assert_close(got[k], want[k], atol=1e-6, rtol=1e-6, msg=k)
        if k.endswith("num_batches_tracked"):
            # BatchNorm counts both forward passes of every step (bn_update="both")
            assert int(got[k]) == 2 * EPOCHS * BATCHES
        else:
            assert not torch.allclose(got[k], initial[k], atol=1e-3), f"{k} did not change"

    # Lightning counted every optimizer step, as its loggers and max_steps expect.
    assert trainer.global_step == EPOCHS * BATCHES
    # The cosine schedule ran its whole length in both loops (stepped once per step).
    lr = trainer.optimizers[0].param_groups[0]["lr"]
    assert lr == pytest.approx(opt.param_groups[0]["lr"], abs=1e-12)
    assert lr < 1e-6 < HPARAMS["lr"]
    assert "train_loss_epoch" in trainer.callback_metrics


def test_max_steps_stops_training_after_that_many_optimizer_steps(
    quiet_deterministic_lightning,
):
    batches = tiny_batches(BATCHES)
    steps = EPOCHS * BATCHES - 2
    net, trainer = _fit_lightning(batches, max_steps=steps, t_max=EPOCHS * BATCHES)
    model, _ = _fit_plain(batches, steps=steps)
    assert trainer.global_step == steps
    got, want = _state(net), _state(model)
    for k in want:
        torch.testing.assert_close(got[k], want[k], atol=1e-6, rtol=1e-6, msg=k)


def test_a_different_rho_is_caught(quiet_deterministic_lightning):
    """The comparison above can fail: Lightning with another rho gives other weights."""
    batches = tiny_batches(BATCHES)
    net, _ = _fit_lightning(batches, rho=0.1)
    model, _ = _fit_plain(batches)
    got, want = _state(net), _state(model)
    with pytest.raises(AssertionError):
        for k in want:
            torch.testing.assert_close(got[k], want[k], atol=1e-6, rtol=1e-6)
