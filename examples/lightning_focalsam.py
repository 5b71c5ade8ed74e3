"""Focal-SAM in a Lightning module (manual optimization), on a long-tailed copy of digits.

Needs Lightning: ``pip install 'focalsam[lightning]'``. Runs offline in seconds on a CPU:

    python examples/lightning_focalsam.py

and prints the many/medium/few-shot test accuracy.

Focal-SAM owns its backward passes (a step is 2 forward and 3 backward passes), so the
module uses manual optimization and steps the optimizer with a closure that returns the
per-sample losses, through the ``LightningOptimizer`` that ``self.optimizers()`` returns:
``opt.step(closure, targets=y, backward=self.manual_backward)``. Lightning details this
relies on:

- ``LightningOptimizer.step`` passes the closure (wrapped: it runs Lightning's
  ``on_before_optimizer_step`` hooks after each call, so twice per step) and the keyword
  arguments to the optimizer's own ``step``, and counts the step: ``trainer.global_step``
  is the number of optimizer steps, as Lightning's loggers, checkpoint callbacks and
  ``max_steps`` expect.
- Manual optimization never steps lr schedulers: ``training_step`` steps it once per step.
- Trainer-side gradient clipping is refused under manual optimization: pass
  ``max_grad_norm=`` to the optimizer instead. fp32, ``"64-true"`` and ``"bf16-mixed"``
  work; ``"16-mixed"`` on a GPU does not (``manual_backward`` scales the losses by Lightning's
  GradScaler, which the optimizer's own base step never unscales).
- Single device as written: under DDP, construct the optimizer with ``model=`` the DDP
  wrapper (see the README).
"""

from __future__ import annotations

import logging
import time
import warnings
from collections.abc import Sequence
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

from focalsam.data import digits_lt
from focalsam.metrics import LongTailAccuracy
from focalsam.optim import FocalSAM


class FocalSAMClassifier(L.LightningModule):
    """Trains ``net`` with Focal-SAM (SGD base) and a per-step cosine lr schedule.

    Args:
        net: the classifier (logits ``(B, C)``).
        class_counts: training images per class (the focal weights, and the shot groups).
        rho, gamma, lam: Focal-SAM's radius, focusing exponent and sharpness weight.
        lr, momentum, weight_decay: the SGD base optimizer's options.
        t_max: steps of the cosine schedule; ``None``: the whole run
            (``trainer.estimated_stepping_batches``).
        shot_thresholds: ``(many_above, few_below)`` training counts for the test report.
    """

    def __init__(
        self,
        net: nn.Module,
        class_counts: Sequence[int],
        rho: float = 0.05,
        gamma: float = 2.0,
        lam: float = 0.8,
        lr: float = 0.05,
        momentum: float = 0.9,
        weight_decay: float = 5e-4,
        t_max: int | None = None,
        shot_thresholds: tuple[float, float] = (70, 25),
    ) -> None:
        super().__init__()
        self.automatic_optimization = False  # the optimizer runs the backward passes
        self.save_hyperparameters(ignore=["net"])
        self.net = net
        self.class_counts = [int(c) for c in class_counts]
        self.test_accuracy = LongTailAccuracy(
            len(self.class_counts), class_counts=self.class_counts, thresholds=shot_thresholds
        )
        self.test_summary: dict[str, Any] = {}

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)

    def configure_optimizers(self) -> Any:
        hp = self.hparams
        opt = FocalSAM(
            self.parameters(),
            torch.optim.SGD,
            class_counts=self.class_counts,
            rho=hp.rho,
            gamma=hp.gamma,
            lam=hp.lam,
            lr=hp.lr,
            momentum=hp.momentum,
            weight_decay=hp.weight_decay,
        )
        t_max = hp.t_max if hp.t_max is not None else int(self.trainer.estimated_stepping_batches)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=t_max)
        return [opt], [sched]

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        x, y = batch
        opt = self.optimizers()  # a LightningOptimizer: its step counts trainer.global_step

        def closure() -> Tensor:  # called at theta and at theta + eps
            return F.cross_entropy(self(x), y, reduction="none")

        losses = opt.step(closure, targets=y, backward=self.manual_backward)
        self.lr_schedulers().step()  # manual optimization: ours to step
        self.log("train_loss", losses.mean(), on_step=True, on_epoch=True)

    def on_test_epoch_start(self) -> None:
        self.test_accuracy.reset()

    def test_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        x, y = batch
        self.test_accuracy.update(self(x), y)

    def on_test_epoch_end(self) -> None:
        self.test_summary = self.test_accuracy.compute()
        for key in ("overall", "many", "medium", "few"):
            self.log(f"test_{key}", float(self.test_summary[key]))


def make_net(num_classes: int = 10) -> nn.Module:
    """A small MLP with BatchNorm for 1x8x8 images."""
    return nn.Sequential(
        nn.Flatten(),
        nn.Linear(64, 128),
        nn.BatchNorm1d(128),
        nn.ReLU(),
        nn.Linear(128, num_classes),
    )


class _PrintEpoch(L.Callback):
    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        epoch = trainer.current_epoch + 1
        if epoch % 5 == 0 or epoch == trainer.max_epochs:
            loss = float(trainer.callback_metrics["train_loss_epoch"])
            lr = trainer.optimizers[0].param_groups[0]["lr"]
            print(f"epoch {epoch:3d}: train loss {loss:.4f}, lr {lr:.4f}")


def main(epochs: int = 30, batch_size: int = 32, seed: int = 0) -> dict[str, Any]:
    warnings.filterwarnings("ignore", ".*does not have many workers.*")
    # Lightning's pytree helper on recent torch; harmless, not ours.
    warnings.filterwarnings("ignore", ".*LeafSpec.*", FutureWarning)
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    L.seed_everything(seed, verbose=False)
    # A model this small runs fastest on one thread (more threads only spin on a busy CPU).
    torch.set_num_threads(1)

    data = digits_lt()
    counts = data.class_counts.tolist()
    print("train counts per class:", counts)
    train = DataLoader(
        TensorDataset(data.x_train, data.y_train), batch_size=batch_size, shuffle=True
    )
    test = DataLoader(TensorDataset(data.x_test, data.y_test), batch_size=256)

    module = FocalSAMClassifier(make_net(), counts)
    trainer = L.Trainer(
        accelerator="cpu",
        devices=1,
        max_epochs=epochs,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[_PrintEpoch()],
    )
    start = time.perf_counter()
    trainer.fit(module, train)
    trainer.test(module, test, verbose=False)
    r = module.test_summary
    print(f"trained {epochs} epochs in {time.perf_counter() - start:.1f}s")
    print(f"shot groups ({r['thresholds']}), classes: {r['group_sizes']}")
    print(
        f"test accuracy {r['overall']:.3f}: many {r['many']:.3f}, "
        f"medium {r['medium']:.3f}, few {r['few']:.3f}"
    )
    return r


if __name__ == "__main__":
    main()
