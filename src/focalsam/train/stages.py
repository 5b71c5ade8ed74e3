"""The stages of a run, built from the method's spec: the optimizer's own stage, then
any later stage the spec declares (CC-SAM: the classifier on balanced batches)."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from focalsam.losses import LongTailLoss
from focalsam.optim import MethodSpec, get_method
from focalsam.train.config import ConfigError, TrainConfig
from focalsam.train.epoch import StepFn
from focalsam.train.runtime import Runtime
from focalsam.train.schedules import RhoSchedule, build_lr_scheduler


def classifier_of(model: nn.Module) -> nn.Module:
    """The head mapping features to logits (``model.fc``)."""
    head = getattr(model, "fc", None)
    if not isinstance(head, nn.Module):
        raise ConfigError(f"{type(model).__name__} has no classifier head `fc`")
    return head


class OptimizerStage:
    """The method's optimizer over the whole model, with its lr and rho schedules."""

    name = "train"

    def __init__(
        self,
        cfg: TrainConfig,
        spec: MethodSpec,
        model: nn.Module,
        train_model: nn.Module,
        loss_fn: LongTailLoss,
        class_counts: list[int],
        steps_per_epoch: int,
        rt: Runtime,
    ) -> None:
        o, t = cfg.optim, cfg.train
        base: dict[str, Any] = {"lr": o.lr, "weight_decay": o.weight_decay}
        if o.base.lower() == "sgd":
            base.update(momentum=o.momentum, nesterov=o.nesterov)
        settings = {
            "rho": o.rho,
            "adaptive": o.adaptive,
            "bn_update": o.bn_update,
            "ascent_all_reduce": o.ascent_all_reduce,
            "max_grad_norm": o.max_grad_norm,
            "model": train_model,
            "strict_checks": o.strict_checks,
            "sam_every": o.sam_every,
        }
        self.optimizer: Any = spec.build(
            model.parameters(),
            o.base,
            options=cfg.method_options(),
            class_counts=class_counts,
            classifier=classifier_of(model) if spec.needs_classifier else None,
            settings=settings,
            **base,
        )
        self.epochs = t.epochs
        self.scheduler = build_lr_scheduler(
            self.optimizer,
            schedule=t.lr_schedule,
            epochs=t.epochs,
            steps_per_epoch=steps_per_epoch,
            warmup_epochs=t.warmup_epochs,
            milestones=t.lr_milestones,
            decay=t.lr_decay,
        )
        rho_milestones = t.rho_milestones if t.rho_schedule == "step" else []
        self.rho = RhoSchedule(self.optimizer, rho_milestones, t.rho_decay)
        self.accum_steps = t.accum_steps  # validate_config checked the method accumulates
        self.model, self.train_model, self.loss_fn, self.rt = model, train_model, loss_fn, rt
        self.scaler = rt.make_scaler()
        self.loader_name = "train"
        self.cuda_graph = cfg.run.cuda_graph
        if self.cuda_graph and rt.device.type != "cuda":
            raise ConfigError(f"run.cuda_graph captures CUDA work; the run is on {rt.device}")
        if self.cuda_graph and rt.world > 1:
            raise ConfigError("run.cuda_graph captures one process's step: run it without DDP")
        self._captured: Any = None

    def start_epoch(self, epoch: int) -> dict[str, Any]:
        """Set this epoch's rho and loss weights (deferred re-weighting) and tell the
        optimizer the epoch when it has a schedule of its own (``set_epoch(epoch,
        epochs)``, e.g. SSE-SAM's stage switch; what it returns is logged); what to log."""
        self.model.train()
        self.loss_fn.set_epoch(epoch)
        rho = self.rho.set_epoch(epoch)
        row = {"stage": 1, "lr": float(self.optimizer.param_groups[0]["lr"]), "rho": rho}
        set_epoch = getattr(self.optimizer, "set_epoch", None)
        if callable(set_epoch):
            own = set_epoch(epoch, self.epochs)
            if isinstance(own, dict):
                row.update(own)
        return row

    def passes_per_step(self) -> tuple[float, float] | None:
        """The optimizer's measured mean (forward, backward) passes per step, when it
        counts them (a rule whose passes depend on the batch), else ``None``."""
        measured = getattr(self.optimizer, "passes_per_step", None)
        return measured() if callable(measured) else None

    def step_fn(self, epoch: int) -> StepFn:
        model, loss_fn, rt = self.train_model, self.loss_fn, self.rt

        def closure_of(x: Tensor, y: Tensor) -> Callable[[], tuple[Tensor, Tensor]]:
            def closure() -> tuple[Tensor, Tensor]:
                with rt.autocast():
                    logits = model(x)
                return loss_fn(logits.float(), y), logits.detach()

            return closure

        def step(x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
            if self.cuda_graph:
                losses, logits = self._replay(x, y)
            elif self.accum_steps == 1:
                losses, logits = self.optimizer.step(closure_of(x, y), y, scaler=self.scaler)
            else:  # one step over the whole batch, its passes micro-batch by micro-batch
                micro = [
                    (closure_of(xm, ym), ym)
                    for xm, ym in zip(x.chunk(self.accum_steps), y.chunk(self.accum_steps))
                ]
                outs = self.optimizer.step_accumulated(micro, scaler=self.scaler)
                losses = torch.cat([o[0] for o in outs])
                logits = torch.cat([o[1] for o in outs])
            self.scheduler.step()
            return losses, logits

        return step

    def _replay(self, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        """The whole step from one CUDA graph, captured on the first batch; a batch of
        another shape (the last, partial one) runs the same step eagerly."""
        from focalsam.train.capture import CapturedStep

        if self._captured is None:
            dtype = torch.bfloat16 if self.rt.precision == "bf16" else None
            self._captured = CapturedStep(
                self.optimizer, self.train_model, self.loss_fn, x, y, autocast=dtype
            )
        if x.shape == self._captured.program.x.shape:
            losses, logits = self._captured(x, y)
            return losses, logits
        return self._captured.eager(x, y)  # type: ignore[no-any-return]

    def skipped_steps(self) -> Any:
        """Steps the optimizer skipped on the device since the last call (one sync), or
        ``None``; the epoch function asks at its end."""
        return self.optimizer.take_skip_report()

    def state_dict(self) -> dict[str, Any]:
        optimizer = self.optimizer.state_dict()
        for group in optimizer["param_groups"]:  # a captured step keeps lr, rho on the device
            for key in ("lr", "rho"):
                if isinstance(group.get(key), Tensor):
                    group[key] = float(group[key])
        return {
            "optimizer": optimizer,
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
        }

    def load_state_dict(self, state: dict[str, Any], *, keep_schedule: bool = True) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        if keep_schedule:
            self.scheduler.load_state_dict(state["scheduler"])
        if self.scaler is not None and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])

    def fast_forward(self, steps: int) -> None:
        """Replay ``steps`` scheduler steps (a resumed run whose length changed); torch's
        warning about a scheduler stepped before its optimizer does not apply here."""
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r"Detected call of `lr_scheduler\.step\(\)`")
            for _ in range(steps):
                self.scheduler.step()


class ClassifierStage:
    """A later stage that trains the classifier alone on the features that enter it,
    from a frozen backbone kept in train mode (as CC-SAM's public code)."""

    def __init__(
        self,
        build: Callable[..., Any],
        epochs: int,
        first: OptimizerStage,
        cfg: TrainConfig,
    ) -> None:
        if first.rt.world > 1:
            raise ConfigError(
                f"the classifier stage of {cfg.optim.name} runs in one process: set its "
                "stage epochs to 0 under torchrun, or run it without torchrun"
            )
        self.model, self.rt, self.epochs = first.model, first.rt, epochs
        self.classifier = classifier_of(first.model)
        self.impl = build(
            first.optimizer,
            self.classifier,
            cfg.method_options(),
            momentum=cfg.optim.momentum,
            weight_decay=cfg.optim.weight_decay,
            max_grad_norm=cfg.optim.max_grad_norm,
        )
        self.scaler = self.rt.make_scaler()
        self.loader_name = "balanced"

    def start_epoch(self, epoch: int) -> dict[str, Any]:
        self.model.train()
        return {"stage": 2, **self.impl.describe(epoch)}

    def step_fn(self, epoch: int) -> StepFn:
        captured: dict[str, Tensor] = {}

        def capture(_module: nn.Module, args: tuple[Any, ...]) -> None:
            captured["features"] = args[0]

        def step(x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
            hook = self.classifier.register_forward_pre_hook(capture)
            try:
                with torch.no_grad(), self.rt.autocast():
                    logits = self.model(x)
            finally:
                hook.remove()
            features = captured.pop("features").float()
            losses = self.impl.step(features, y, epoch=epoch, scaler=self.scaler)
            return losses, logits

        return step

    def state_dict(self) -> dict[str, Any]:
        return {"optimizer": self.impl.state_dict()}

    def load_state_dict(self, state: dict[str, Any], *, keep_schedule: bool = True) -> None:
        self.impl.load_state_dict(state["optimizer"])

    def skipped_steps(self) -> Any:
        return None


def build_stages(
    cfg: TrainConfig,
    model: nn.Module,
    train_model: nn.Module,
    loss_fn: LongTailLoss,
    class_counts: list[int],
    steps_per_epoch: int,
    rt: Runtime,
) -> list[Any]:
    """Every stage of the configured method with at least one epoch, in order."""
    spec = get_method(cfg.optim.name)
    first = OptimizerStage(
        cfg, spec, model, train_model, loss_fn, class_counts, steps_per_epoch, rt
    )
    stages: list[Any] = [first]
    for later in spec.later_stages:
        epochs = later.epochs(cfg.method_options())
        if epochs > 0:
            if later.kind != "classifier":
                raise ConfigError(f"stage kind {later.kind!r} is not supported by the trainer")
            stages.append(ClassifierStage(later.build, epochs, first, cfg))
    return stages
