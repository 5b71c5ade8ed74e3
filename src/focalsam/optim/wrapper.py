"""The base of every optimizer here: it owns a torch base optimizer and shares
its parameter groups and state, so an lr scheduler attached to the wrapper
drives the base optimizer's lr and ``state_dict`` is exactly the base's."""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor, nn
from torch.optim import Optimizer

from focalsam.optim.errors import InvalidHyperparameterError


def _validate_rho(rho: Any) -> None:
    if not isinstance(rho, int | float) or not math.isfinite(rho) or rho < 0:
        raise InvalidHyperparameterError(f"rho must be a finite number >= 0, got {rho!r}")


def _validate_bn_update(bn_update: Any) -> None:
    if bn_update not in ("both", "clean"):
        raise InvalidHyperparameterError(f"bn_update must be 'both' or 'clean', got {bn_update!r}")


def _validate_max_grad_norm(max_grad_norm: Any) -> None:
    if max_grad_norm is not None and not max_grad_norm > 0:
        raise InvalidHyperparameterError(f"max_grad_norm must be > 0, got {max_grad_norm}")


class WrappedOptimizer(Optimizer):
    """Shares ``param_groups`` and ``state`` with ``self.base_optimizer``.

    Subclasses call :meth:`_wrap` from ``__init__``; every group gets the
    wrapper's ``defaults`` (``rho`` and the like) besides the base's options.
    """

    base_optimizer: Optimizer
    model: nn.Module | None
    max_grad_norm: float | None

    def _wrap(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]] | None,
        base_optimizer: type[Optimizer] | Optimizer,
        defaults: dict[str, Any],
        base_kwargs: dict[str, Any],
    ) -> None:
        if isinstance(base_optimizer, Optimizer):
            if params is not None:
                raise InvalidHyperparameterError(
                    "base_optimizer is already constructed: pass params=None (its "
                    "parameter groups are used)"
                )
            if base_kwargs:
                raise InvalidHyperparameterError(
                    f"options {sorted(base_kwargs)} go to the constructed base optimizer, not here"
                )
            base = base_optimizer
            Optimizer.__init__(self, base.param_groups, defaults)
        elif isinstance(base_optimizer, type) and issubclass(base_optimizer, Optimizer):
            if params is None:
                raise InvalidHyperparameterError("params is required with an optimizer class")
            Optimizer.__init__(self, params, defaults)
            base = base_optimizer(self.param_groups, **base_kwargs)
        else:
            raise InvalidHyperparameterError(
                "base_optimizer must be a torch.optim.Optimizer class or instance, "
                f"got {base_optimizer!r}"
            )
        for group in base.param_groups:
            for key, value in defaults.items():
                group.setdefault(key, value)
            _validate_rho(group["rho"])
        self.base_optimizer = base
        # Share groups and state: a scheduler on this object drives the base lr.
        self.param_groups = base.param_groups
        self.state = base.state
        self._bn_saved: list[tuple[nn.modules.batchnorm._BatchNorm, Any, Tensor | None]] = []

    def state_dict(self) -> dict[str, Any]:
        """The base optimizer's state (momentum, moments, param groups with ``rho``)."""
        return self.base_optimizer.state_dict()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.base_optimizer.load_state_dict(state_dict)
        self.param_groups = self.base_optimizer.param_groups
        self.state = self.base_optimizer.state

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        base = getattr(self, "base_optimizer", None)
        if base is None:  # during Optimizer.__init__
            super().add_param_group(param_group)
            return
        for key, value in self.defaults.items():
            param_group.setdefault(key, value)
        _validate_rho(param_group["rho"])
        base.add_param_group(param_group)

    # ------------------------------------------------------------ shared steps
    def _trainable(self) -> list[Tensor]:
        return [p for group in self.param_groups for p in group["params"] if p.requires_grad]

    def _freeze_bn(self) -> None:
        """Hold BatchNorm running statistics (momentum 0) until :meth:`_unfreeze_bn`."""
        assert self.model is not None
        for m in self.model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats:
                tracked = m.num_batches_tracked
                self._bn_saved.append((m, m.momentum, None if tracked is None else tracked.clone()))
                m.momentum = 0.0

    def _unfreeze_bn(self) -> None:
        for m, momentum, tracked in self._bn_saved:
            m.momentum = momentum
            if tracked is not None and m.num_batches_tracked is not None:
                m.num_batches_tracked.copy_(tracked)
        self._bn_saved.clear()

    def _update(self, scaler: torch.amp.GradScaler | None, skip: bool) -> None:
        """Clip the final gradient and take the base step (through the scaler if any)."""
        self._opt_called = True  # tells lr schedulers that the optimizer stepped
        params = [p for p in self._trainable() if p.grad is not None]
        if scaler is not None:
            if self.max_grad_norm is not None and not skip:
                scaler.unscale_(self.base_optimizer)
                torch.nn.utils.clip_grad_norm_(params, self.max_grad_norm, foreach=True)
            scaler.step(self.base_optimizer)
            scaler.update()
            return
        if self.max_grad_norm is not None:
            torch.nn.utils.clip_grad_norm_(params, self.max_grad_norm, foreach=True)
        self.base_optimizer.step()
