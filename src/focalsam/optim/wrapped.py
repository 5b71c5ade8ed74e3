"""The base of every optimizer here: it owns a torch base optimizer and shares
its parameter groups and state, so an lr scheduler attached to the wrapper
drives the base optimizer's lr and ``state_dict`` is exactly the base's."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from itertools import chain
from typing import Any

from torch import Tensor
from torch.optim import Optimizer

from focalsam.optim.errors import InvalidHyperparameterError, StateDictError
from focalsam.optim.validators import validate_rho

#: Per-parameter state of torch's optimizers that has the parameter's shape.
_PARAM_SHAPED = frozenset(
    {
        "momentum_buffer",
        "exp_avg",
        "exp_avg_sq",
        "max_exp_avg_sq",
        "square_avg",
        "grad_avg",
        "acc_delta",
        "sum",
        "ax",
        "prev",
    }
)


class WrappedOptimizer(Optimizer):
    """Shares ``param_groups`` and ``state`` with ``self.base_optimizer``.

    An optimizer built on it calls :meth:`_wrap` from ``__init__``; every group gets its
    ``defaults`` (``rho`` and the like) besides the base's options. It needs nothing else
    from the optimizer built on it.
    """

    base_optimizer: Optimizer

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
            validate_rho(group["rho"])
        self.base_optimizer = base
        # Share groups and state: a scheduler on this object drives the base lr.
        self.param_groups = base.param_groups
        self.state = base.state

    def state_dict(self) -> dict[str, Any]:
        """The base optimizer's state (momentum, moments, param groups with ``rho``)."""
        return self.base_optimizer.state_dict()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load what :meth:`state_dict` of this kind of optimizer saved on the same groups.

        Anything else (not a dict with ``state`` and ``param_groups``, other numbers of
        groups or parameters, state of other shapes, groups without this optimizer's or
        its base's options) raises :class:`StateDictError` here and changes nothing.
        """
        groups = self.param_groups
        _check_state_dict(state_dict, groups, type(self).__name__)
        expected = [set(g) for g in groups]
        previous = self.base_optimizer.state_dict()
        self.base_optimizer.load_state_dict(state_dict)
        try:
            for i, (keys, group) in enumerate(zip(expected, self.base_optimizer.param_groups)):
                missing = sorted(keys - set(group))
                if missing:
                    raise StateDictError(
                        f"parameter group {i} of the state dict lacks {missing}: it was not "
                        f"saved by {type(self).__name__} over "
                        f"{type(self.base_optimizer).__name__} (expected the options {sorted(keys)})"
                    )
                validate_rho(group["rho"])
        except InvalidHyperparameterError as exc:
            self.base_optimizer.load_state_dict(previous)
            raise StateDictError(f"the state dict's {exc}") from None
        except StateDictError:
            self.base_optimizer.load_state_dict(previous)
            raise
        finally:
            self.param_groups = self.base_optimizer.param_groups
            self.state = self.base_optimizer.state

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        base = getattr(self, "base_optimizer", None)
        if base is None:  # during Optimizer.__init__
            super().add_param_group(param_group)
            return
        for key, value in self.defaults.items():
            param_group.setdefault(key, value)
        validate_rho(param_group["rho"])
        base.add_param_group(param_group)

    def take_skip_report(self) -> Any:
        """Steps skipped on the device since the last call (a ``SkipReport``), or
        ``None``: always ``None`` for an optimizer whose steps check strictly (they
        raise instead). Optimizers with sync-free steps override it."""
        return None


def trainable(param_groups: list[dict[str, Any]]) -> list[Tensor]:
    """The parameters of every group that require a gradient."""
    return [p for group in param_groups for p in group["params"] if p.requires_grad]


def _check_state_dict(state_dict: Any, groups: list[dict[str, Any]], owner: str) -> None:
    """Refuse a state dict whose structure, group sizes or state shapes do not fit ``groups``."""
    if not isinstance(state_dict, Mapping) or not {"state", "param_groups"} <= set(state_dict):
        got = sorted(state_dict) if isinstance(state_dict, Mapping) else type(state_dict).__name__
        raise StateDictError(
            f"{owner}.load_state_dict expects a dict with 'state' and 'param_groups' "
            f"(what state_dict() returns), got {got}"
        )
    saved, state = state_dict["param_groups"], state_dict["state"]
    if (
        not isinstance(state, Mapping)
        or not isinstance(saved, list | tuple)
        or not all(isinstance(g, Mapping) and isinstance(g.get("params"), list) for g in saved)
    ):
        raise StateDictError(
            "the state dict's 'state' must be a dict and its 'param_groups' a list of dicts "
            "with a 'params' list"
        )
    if len(saved) != len(groups):
        raise StateDictError(
            f"the state dict has {len(saved)} parameter groups, {owner} has {len(groups)}: "
            "it was saved by an optimizer over other parameters"
        )
    for i, (s, g) in enumerate(zip(saved, groups)):
        if len(s["params"]) != len(g["params"]):
            raise StateDictError(
                f"parameter group {i} of the state dict has {len(s['params'])} parameters, "
                f"{owner}'s has {len(g['params'])}: it was saved by an optimizer over other "
                "parameters"
            )
    params = dict(
        zip(chain.from_iterable(s["params"] for s in saved), chain(*(g["params"] for g in groups)))
    )
    for key, entry in state.items():
        p = params.get(key)
        if p is None:
            raise StateDictError(
                f"the state dict holds state for parameter {key!r}, which none of its "
                "parameter groups lists"
            )
        for name, value in entry.items() if isinstance(entry, Mapping) else ():
            if name in _PARAM_SHAPED and isinstance(value, Tensor) and value.shape != p.shape:
                raise StateDictError(
                    f"the state dict's {name!r} of parameter {key!r} has shape "
                    f"{tuple(value.shape)}, the parameter {tuple(p.shape)}: it was saved by "
                    "an optimizer over other parameters"
                )
