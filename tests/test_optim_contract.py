"""Contracts every registered optimizer keeps, each built generically through its MethodSpec.

Parametrized over ``list_optimizers()``: a newly registered method is tested here without
any change. The model is a float64 softmax regression (one linear layer, a convex loss) on
separable data, so every check is exact and fast.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from conftest import checkpoint_roundtrip
from torch import Tensor, nn

import focalsam.optim
from focalsam.errors import InputError
from focalsam.optim import (
    InvalidHyperparameterError,
    LabelError,
    LossShapeError,
    NonFiniteLossError,
    OptimizerInputError,
    StateDictError,
    get_method,
)

METHODS = focalsam.optim.list_optimizers()
# head classes (>= 100 samples) and tail classes, so every class-weighted rule runs all passes
COUNTS = [400, 150, 40, 10]
C, D = len(COUNTS), 5


def make_model(d_in: int = D, seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(d_in, C)).double()


def make_batch(d_in: int = D, per_class: int = 3, seed: int = 1) -> tuple[Tensor, Tensor]:
    """Separable data: each class around its own centre, every class present."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(C).repeat(per_class)
    centres = 3.0 * torch.eye(C, d_in, dtype=torch.float64)
    return centres[y] + 0.3 * torch.randn(len(y), d_in, generator=g, dtype=torch.float64), y


def build_from_spec(
    name: str, model: nn.Sequential, settings: dict[str, Any] | None = None, **kw: Any
):
    spec = get_method(name)
    return spec.build(
        model.parameters(),
        "sgd",
        class_counts=COUNTS if spec.needs_class_counts else None,
        classifier=model[-1] if spec.needs_classifier else None,
        settings={"rho": 0.05, "model": model, **(settings or {})},
        lr=0.1,
        **kw,
    )


def closure_for(model: nn.Module, x: Tensor, y: Tensor) -> Callable[[], Tensor]:
    return lambda: F.cross_entropy(model(x), y, reduction="none")


def params_of(model: nn.Module) -> list[Tensor]:
    return [p.detach().clone() for p in model.parameters()]


def same(a: list[Tensor], b: list[Tensor]) -> bool:
    return all(torch.equal(p, q) for p, q in zip(a, b))


@pytest.fixture(params=METHODS)
def name(request: pytest.FixtureRequest) -> str:
    return request.param


# ------------------------------------------------------------------ descent
def test_steps_decrease_a_convex_loss(name):
    model = make_model()
    x, y = make_batch()
    opt = build_from_spec(name, model)
    start = F.cross_entropy(model(x), y).item()
    for _ in range(5):
        opt.step(closure_for(model, x, y), y)
    end = F.cross_entropy(model(x), y).item()
    assert end < 0.8 * start, (start, end)


# ------------------------------------------------------------- state dicts
def test_state_dict_round_trip(name):
    x, y = make_batch()
    m1, m2, m3 = make_model(), make_model(), make_model()
    opt1 = build_from_spec(name, m1, momentum=0.9)
    for _ in range(2):
        opt1.step(closure_for(m1, x, y), y)
    for m in (m2, m3):
        m.load_state_dict(m1.state_dict())
    opt2, opt3 = build_from_spec(name, m2, momentum=0.9), build_from_spec(name, m3, momentum=0.9)
    opt2.load_state_dict(checkpoint_roundtrip({"o": opt1.state_dict()})["o"])
    for opt, m in ((opt1, m1), (opt2, m2), (opt3, m3)):
        opt.step(closure_for(m, x, y), y)
    assert same(params_of(m1), params_of(m2))
    assert not same(params_of(m1), params_of(m3))  # the loaded momentum mattered


def _foreign_state_dicts(name: str) -> dict[str, Any]:
    """State dicts that this method, built on ``make_model()``, must refuse."""
    x3, y3 = make_batch(d_in=3)
    other = make_model(d_in=3)  # as many parameters, of other shapes
    opt = build_from_spec(name, other, momentum=0.9)
    opt.step(closure_for(other, x3, y3), y3)
    bigger = nn.Sequential(nn.Linear(D, D), nn.Tanh(), nn.Linear(D, C)).double()
    plain = torch.optim.SGD(make_model().parameters(), lr=0.1, momentum=0.9)
    two_groups = torch.optim.SGD(
        [{"params": [p]} for p in make_model().parameters()], lr=0.1
    ).state_dict()
    for group in two_groups["param_groups"]:
        group.update(rho=0.05, adaptive=False)
    return {
        "not a dict": [1, 2],
        "no param_groups": {"state": {}},
        "other shapes": opt.state_dict(),
        "other parameters": build_from_spec(name, bigger).state_dict(),
        "two groups": two_groups,
        "torch SGD, no rho": plain.state_dict(),
    }


@pytest.mark.parametrize(
    "kind",
    [
        "not a dict",
        "no param_groups",
        "other shapes",
        "other parameters",
        "two groups",
        "torch SGD, no rho",
    ],
)
def test_foreign_state_dict_is_refused_at_load(name, kind):
    model = make_model()
    x, y = make_batch()
    opt = build_from_spec(name, model, momentum=0.9)
    opt.step(closure_for(model, x, y), y)
    before = opt.state_dict()
    with pytest.raises(StateDictError) as info:
        opt.load_state_dict(_foreign_state_dicts(name)[kind])
    assert isinstance(info.value, OptimizerInputError) and isinstance(info.value, InputError)
    # nothing changed, and the optimizer still steps
    after = opt.state_dict()
    assert after["param_groups"] == before["param_groups"]
    assert after["state"].keys() == before["state"].keys()
    for k, s in before["state"].items():
        assert all(torch.equal(v, after["state"][k][key]) for key, v in s.items())
    assert opt.param_groups is opt.base_optimizer.param_groups
    opt.step(closure_for(model, x, y), y)


# --------------------------------------------------------------- bad input
def test_negative_rho_is_refused(name):
    spec = get_method(name)
    model = make_model()
    if "rho" in spec.settings:
        with pytest.raises(InvalidHyperparameterError, match="rho"):
            build_from_spec(name, model, settings={"rho": -0.1})
    elif radii := _radius_options(spec):
        for field_name in radii:  # every radius of the method's own (SSE-SAM: head, tail)
            options = dataclasses.replace(spec.default_options(), **{field_name: -0.1})
            with pytest.raises(InvalidHyperparameterError, match=field_name):
                spec.build(
                    model.parameters(),
                    "sgd",
                    options=options,
                    class_counts=COUNTS if spec.needs_class_counts else None,
                    classifier=model[-1] if spec.needs_classifier else None,
                    lr=0.1,
                )
    else:
        pytest.skip(f"{name} takes no rho")


def _radius_options(spec: Any) -> list[str]:
    """The method's own radius options: ``rho`` and ``rho_*``."""
    if spec.options is None:
        return []
    names = [f.name for f in dataclasses.fields(spec.options)]
    return [n for n in names if n == "rho" or n.startswith("rho_")]


def _refused(name: str, error: type[Exception], match: str, bad_step: Callable) -> None:
    """``bad_step(model, opt, x, y)`` raises ``error`` and takes no step."""
    model = make_model()
    x, y = make_batch()
    opt = build_from_spec(name, model, momentum=0.9)
    before = params_of(model)
    with pytest.raises(error, match=match):
        bad_step(model, opt, x, y)
    assert same(params_of(model), before)
    assert not opt.state  # no momentum: the base optimizer never stepped


def test_labels_outside_the_classes(name):
    if not get_method(name).needs_class_counts:
        pytest.skip(f"{name} does not use the labels")
    _refused(
        name,
        LabelError,
        rf"\[0, {C}\).*\[0, {C}\]",
        lambda m, opt, x, y: opt.step(closure_for(m, x, y), torch.where(y == 1, C, y)),
    )


@pytest.mark.parametrize("dtype", [torch.uint8, torch.bool, torch.float32])
def test_labels_that_are_not_integer_class_indices(name, dtype):
    # uint8 and bool would index the per-class weights as masks
    _refused(
        name,
        LabelError,
        "1-D integer tensor of class labels",
        lambda m, opt, x, y: opt.step(closure_for(m, x, y), y.to(dtype)),
    )


def test_loss_of_the_wrong_shape(name):
    _refused(
        name,
        LossShapeError,
        "reduction='none'",
        lambda m, opt, x, y: opt.step(lambda: F.cross_entropy(m(x), y), y),
    )


def test_nan_loss(name):
    _refused(
        name,
        NonFiniteLossError,
        "non-finite",
        lambda m, opt, x, y: opt.step(lambda: closure_for(m, x, y)() * float("nan"), y),
    )


# ---------------------------------------------------------------- passes
def test_passes_per_step_match_the_spec(name):
    spec = get_method(name)
    if spec.passes is None:
        pytest.skip(f"{name}'s passes depend on the batch")
    model = make_model()
    x, y = make_batch()
    counts = {"forward": 0, "backward": 0}
    model.register_forward_hook(lambda *_: counts.__setitem__("forward", counts["forward"] + 1))
    model[0].weight.register_hook(lambda _: counts.__setitem__("backward", counts["backward"] + 1))
    opt = build_from_spec(name, model)
    opt.step(closure_for(model, x, y), y)
    assert (counts["forward"], counts["backward"]) == spec.passes
