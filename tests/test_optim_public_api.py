"""``focalsam.optim`` exports a curated list of public names, each defined in a public
module; the base the optimizers share works without anything from them."""

from __future__ import annotations

import inspect

import torch

import focalsam.optim as optim
from focalsam.optim.wrapped import WrappedOptimizer


def test_all_names_exist_once_and_come_from_public_modules() -> None:
    assert len(optim.__all__) == len(set(optim.__all__))
    for name in optim.__all__:
        obj = getattr(optim, name)
        module = getattr(obj, "__module__", None)
        if module is None or not (inspect.isclass(obj) or inspect.isfunction(obj)):
            continue
        assert module.startswith("focalsam."), (name, module)
        private = [part for part in module.split(".") if part.startswith("_")]
        assert not private, f"{name} is defined in the private module {module}"


def test_skip_report_is_public() -> None:
    assert optim.SkipReport.__module__ == "focalsam.optim.policies.syncfree"


def test_the_engine_base_needs_nothing_from_its_children() -> None:
    """The wrapper base works on its own: it shares groups and state with the base
    optimizer and round-trips a state dict, with no subclass."""
    p = torch.nn.Parameter(torch.ones(3))

    class Bare(WrappedOptimizer):
        def __init__(self) -> None:
            self._wrap([p], torch.optim.SGD, {"rho": 0.1}, {"lr": 0.5, "momentum": 0.9})

    bare = Bare()
    assert bare.param_groups is bare.base_optimizer.param_groups
    p.grad = torch.ones(3)
    bare.base_optimizer.step()
    state = bare.state_dict()
    again = Bare()
    again.load_state_dict(state)
    assert torch.equal(
        again.state[p]["momentum_buffer"], bare.base_optimizer.state[p]["momentum_buffer"]
    )
