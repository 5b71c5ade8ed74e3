"""Pass counts, resume, mixed precision and bad input of the sharpness-aware optimizers."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import (
    InfGrad,
    check_bf16_resnet32_step,
    checkpoint_roundtrip,
    per_sample_ce,
    tiny_batches,
    tiny_model,
)

from focalsam.optim import (
    SAM,
    ClassCountsError,
    FocalSAM,
    ImbSAM,
    InvalidHyperparameterError,
    LabelError,
    LossShapeError,
    NonFiniteLossError,
    StepOrderError,
    create_optimizer,
    focal_weights,
    list_optimizers,
    tail_mask,
)

COUNTS = [40, 20, 6, 2]


class PassCounter:
    """Counts forward passes (module hook) and backward passes (parameter hook)."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.forward = self.backward = 0
        model.register_forward_hook(lambda *_: self._fwd())
        next(model.parameters()).register_hook(lambda g: self._bwd())

    def _fwd(self) -> None:
        self.forward += 1

    def _bwd(self) -> None:
        self.backward += 1


def make(name: str, model: torch.nn.Module, **kw):
    extra = {"focal_sam": {"class_counts": COUNTS}, "imbsam": {"class_counts": COUNTS, "eta": 10}}
    return create_optimizer(name, model.parameters(), "sgd", lr=0.1, **extra.get(name, {}), **kw)


@pytest.mark.parametrize(
    "name,forward,backward",
    [("plain", 1, 1), ("sam", 2, 2), ("asam", 2, 2), ("imbsam", 2, 3), ("focal_sam", 2, 3)],
)
def test_passes_per_step(name, forward, backward):
    model = tiny_model()
    counter = PassCounter(model)
    opt = make(name, model)
    x = torch.randn(8, 5, dtype=torch.float64)
    y = torch.tensor([0, 1, 2, 3, 0, 1, 2, 3])  # head and tail classes present
    opt.step(per_sample_ce(model, x, y), y)
    assert (counter.forward, counter.backward) == (forward, backward)


@pytest.mark.parametrize(
    "labels,forward,backward",
    [([0, 1, 0, 1], 1, 1), ([2, 3, 2, 3], 2, 2)],  # no tail: b = 0; only tail: a = 0
)
def test_all_zero_weights_skip_their_backward(labels, forward, backward):
    model = tiny_model()
    counter = PassCounter(model)
    opt = make("imbsam", model)
    x, y = torch.randn(4, 5, dtype=torch.float64), torch.tensor(labels)
    before = [p.clone() for p in model.parameters()]
    opt.step(per_sample_ce(model, x, y), y)
    assert (counter.forward, counter.backward) == (forward, backward)
    assert any(not torch.equal(p, q) for p, q in zip(model.parameters(), before))


def test_focal_sam_lam0_takes_one_pass():
    model = tiny_model()
    counter = PassCounter(model)
    opt = FocalSAM(model.parameters(), torch.optim.SGD, class_counts=COUNTS, lam=0.0, lr=0.1)
    x, y = tiny_batches(1)[0]
    opt.step(per_sample_ce(model, x, y), y)
    assert (counter.forward, counter.backward) == (1, 1)


@pytest.mark.parametrize(
    "base,kw", [("sgd", {"momentum": 0.9, "weight_decay": 1e-3}), ("adamw", {"weight_decay": 0.05})]
)
@pytest.mark.parametrize("name", ["sam", "imbsam", "focal_sam"])
def test_resume_equals_uninterrupted(name, base, kw):
    batches = tiny_batches(6)
    extra = (
        {"focal_sam": {"class_counts": COUNTS}, "imbsam": {"class_counts": COUNTS, "eta": 10}}[name]
        if name != "sam"
        else {}
    )
    lr = 0.05 if base == "sgd" else 1e-2

    def optimizer_on(model):
        return create_optimizer(name, model.parameters(), base, lr=lr, **kw, **extra)

    full = tiny_model()
    opt = optimizer_on(full)
    for x, y in batches:
        opt.step(per_sample_ce(full, x, y), y)

    first = tiny_model()
    opt = optimizer_on(first)
    for x, y in batches[:3]:
        opt.step(per_sample_ce(first, x, y), y)
    ckpt = checkpoint_roundtrip({"model": first.state_dict(), "optim": opt.state_dict()})

    resumed = tiny_model(seed=123)  # different init: everything must come from the checkpoint
    resumed.load_state_dict(ckpt["model"])
    opt = optimizer_on(resumed)
    opt.load_state_dict(ckpt["optim"])
    for x, y in batches[3:]:
        opt.step(per_sample_ce(resumed, x, y), y)
    for p, q in zip(full.parameters(), resumed.parameters()):
        assert torch.equal(p, q)


def test_fp16_scaler_skips_the_step_on_an_inf_gradient():
    model = tiny_model().float()
    opt = FocalSAM(model.parameters(), torch.optim.SGD, class_counts=COUNTS, lr=0.1, momentum=0.9)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    x, y = tiny_batches(1)[0]
    x = x.float()
    opt.step(
        lambda: F.cross_entropy(model(x), y, reduction="none"), y, scaler=scaler
    )  # builds momentum
    params = [p.clone() for p in model.parameters()]
    momentum = [opt.state[p]["momentum_buffer"].clone() for p in model.parameters()]
    scale = scaler.get_scale()

    def closure():
        return F.cross_entropy(InfGrad.apply(model(x)), y, reduction="none")

    opt.step(closure, y, scaler=scaler)
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), params))
    assert all(
        torch.equal(opt.state[p]["momentum_buffer"], m)
        for p, m in zip(model.parameters(), momentum)
    )
    assert scaler.get_scale() == scale * 0.5  # one update, backoff
    # and the next healthy step goes through
    opt.step(lambda: F.cross_entropy(model(x), y, reduction="none"), y, scaler=scaler)
    assert any(not torch.equal(p, q) for p, q in zip(model.parameters(), params))


def test_fp16_scaler_step_equals_unscaled_step():
    x, y = tiny_batches(1)[0]
    x = x.float()
    m1, m2 = tiny_model().float(), tiny_model().float()
    kw = dict(class_counts=COUNTS, lr=0.1, momentum=0.9, max_grad_norm=5.0)
    opt1 = FocalSAM(m1.parameters(), torch.optim.SGD, **kw)
    opt2 = FocalSAM(m2.parameters(), torch.optim.SGD, **kw)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**12)
    for _ in range(2):
        opt1.step(lambda: F.cross_entropy(m1(x), y, reduction="none"), y, scaler=scaler)
        opt2.step(lambda: F.cross_entropy(m2(x), y, reduction="none"), y)
    for p, q in zip(m1.parameters(), m2.parameters()):
        torch.testing.assert_close(p, q, atol=1e-6, rtol=1e-5)


def test_bf16_autocast_runs():
    check_bf16_resnet32_step(
        lambda model: FocalSAM(model.parameters(), torch.optim.SGD, class_counts=COUNTS, lr=0.05)
    )


# ------------------------------------------------------------------ bad input
def test_negative_rho():
    with pytest.raises(InvalidHyperparameterError, match="rho"):
        SAM(tiny_model().parameters(), torch.optim.SGD, rho=-0.1, lr=0.1)
    model = tiny_model()
    with pytest.raises(InvalidHyperparameterError, match="rho"):
        SAM([{"params": model.parameters(), "rho": -1.0}], torch.optim.SGD, lr=0.1)


@pytest.mark.parametrize(
    "counts,match",
    [
        ([40, 20, 6], "3 entries but there are 4"),
        ([40, 0, 6, 2], "positive"),
        ([40, -3, 6, 2], "positive"),
        ([], "non-empty"),
        ([[40, 20, 6, 2]], r"1-D .*got shape \(1, 4\)"),
        ([1.5, 2, 3, 4], "whole numbers .*got 1.5 for class 0"),
        ([40, float("nan"), 6, 2], "finite, got nan for class 1"),
    ],
)
def test_bad_class_counts(counts, match):
    with pytest.raises(ClassCountsError, match=match):
        FocalSAM(
            tiny_model().parameters(), torch.optim.SGD, class_counts=counts, num_classes=4, lr=0.1
        )


def test_error_kinds():
    """Every bad-input error is an InputError; there is one ClassCountsError."""
    import focalsam.class_counts
    import focalsam.errors
    from focalsam.errors import InputError
    from focalsam.optim import OptimizerInputError

    assert issubclass(OptimizerInputError, InputError) and issubclass(InputError, ValueError)
    assert ClassCountsError is focalsam.errors.ClassCountsError
    assert issubclass(ClassCountsError, InputError)
    assert not hasattr(focalsam.class_counts, "ClassCountsError") or (
        focalsam.class_counts.ClassCountsError is ClassCountsError
    )
    for error in (InvalidHyperparameterError, LabelError, LossShapeError):
        assert issubclass(error, OptimizerInputError)


def test_int32_labels_are_int64_labels():
    x, y = tiny_batches(1)[0]
    m1, m2 = tiny_model(), tiny_model()
    for model, labels in ((m1, y), (m2, y.int())):
        opt = FocalSAM(model.parameters(), torch.optim.SGD, class_counts=COUNTS, lr=0.1)
        opt.step(per_sample_ce(model, x, y), labels)
    assert all(torch.equal(p, q) for p, q in zip(m1.parameters(), m2.parameters()))


def test_labels_outside_the_classes():
    model = tiny_model()
    opt = FocalSAM(model.parameters(), torch.optim.SGD, class_counts=COUNTS, lr=0.1)
    x = torch.randn(4, 5, dtype=torch.float64)
    y = torch.tensor([0, 1, 4, 2])
    closure = lambda: F.cross_entropy(model(x), y.clamp(max=3), reduction="none")  # noqa: E731
    with pytest.raises(LabelError, match=r"\[0, 4\).*\[0, 4\]"):
        opt.step(closure, y)
    with pytest.raises(LabelError, match="labels"):
        opt.step(closure)  # class-weighted rule without labels


@pytest.mark.parametrize(
    "make_losses,match",
    [
        (lambda logits, y: F.cross_entropy(logits, y), "reduction='none'"),
        (
            lambda logits, y: F.cross_entropy(logits, y, reduction="none")[:3],
            "3 losses for 4 labels",
        ),
        (lambda logits, y: logits, r"shape \(B,\)"),
    ],
)
def test_losses_that_are_not_one_per_sample(make_losses, match):
    model = tiny_model()
    opt = FocalSAM(model.parameters(), torch.optim.SGD, class_counts=COUNTS, lr=0.1)
    x, y = torch.randn(4, 5, dtype=torch.float64), torch.tensor([0, 1, 2, 3])
    with pytest.raises(LossShapeError, match=match):
        opt.step(lambda: make_losses(model(x), y), y)


@pytest.mark.parametrize("where", ["clean", "perturbed"])
def test_non_finite_loss_raises_and_does_not_step(where):
    model = tiny_model()
    opt = FocalSAM(model.parameters(), torch.optim.SGD, class_counts=COUNTS, lr=0.1, momentum=0.9)
    x, y = torch.randn(4, 5, dtype=torch.float64), torch.tensor([0, 1, 2, 3])
    calls = []

    def closure():
        calls.append(1)
        losses = F.cross_entropy(model(x), y, reduction="none")
        bad = (where == "clean") == (len(calls) == 1)
        return losses * float("nan") if bad else losses

    before = [p.clone() for p in model.parameters()]
    with pytest.raises(NonFiniteLossError, match="non-finite"):
        opt.step(closure, y)
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), before))
    assert not opt.state  # no momentum: no step was taken
    opt.step(lambda: F.cross_entropy(model(x), y, reduction="none"), y)  # usable afterwards


def test_steps_out_of_order():
    model = tiny_model()
    opt = SAM(model.parameters(), torch.optim.SGD, lr=0.1)
    x, y = tiny_batches(1)[0]
    with pytest.raises(StepOrderError):
        opt.second_step(per_sample_ce(model, x, y)())
    with pytest.raises(StepOrderError, match="closure"):
        opt.step()
    opt.first_step(per_sample_ce(model, x, y)(), y)
    with pytest.raises(StepOrderError, match="twice"):
        opt.first_step(per_sample_ce(model, x, y)(), y)


def test_other_bad_options():
    params = list(tiny_model().parameters())
    with pytest.raises(InvalidHyperparameterError, match="gamma"):
        FocalSAM(params, torch.optim.SGD, class_counts=COUNTS, gamma=-1.0, lr=0.1)
    with pytest.raises(InvalidHyperparameterError, match="model="):
        SAM(params, torch.optim.SGD, bn_update="clean", lr=0.1)
    with pytest.raises(
        InvalidHyperparameterError,
        match=r"valid: asam, .*focal_sam.*, imbsam.*, plain \(sgd.*\), sam",
    ):
        create_optimizer("focal-sma", params)
    with pytest.raises(InvalidHyperparameterError, match="base optimizer"):
        create_optimizer("sam", params, "lion")
    with pytest.raises(InvalidHyperparameterError, match="Optimizer class or instance"):
        SAM(params, "sgd", lr=0.1)  # type: ignore[arg-type]


def test_registry_and_weights_are_public():
    assert {"plain", "sam", "asam", "imbsam", "focal_sam"} <= set(list_optimizers())
    assert (
        type(create_optimizer("Focal-SAM", tiny_model().parameters(), class_counts=COUNTS, lr=0.1))
        is FocalSAM
    )
    asam = create_optimizer("asam", tiny_model().parameters(), lr=0.1)
    assert asam.param_groups[0]["adaptive"] is True
    w = focal_weights([30, 10], gamma=2.0, lam=0.5)
    torch.testing.assert_close(w, torch.tensor([0.5 * 0.25**2, 0.5 * 0.75**2]))
    assert tail_mask([100, 20, 5], eta=20).tolist() == [False, False, True]
    opt = ImbSAM(
        tiny_model().parameters(),
        torch.optim.SGD,
        class_counts=[100, 20, 5, 1],
        eta=20,
        kappa=2.0,
        lr=0.1,
    )
    assert opt.sharp_weights.tolist() == [0, 0, 2, 2]


def test_custom_backward_runs_every_pass():
    """Lightning's manual optimization passes ``backward=self.manual_backward``."""
    model = tiny_model()
    opt = FocalSAM(model.parameters(), torch.optim.SGD, class_counts=COUNTS, lr=0.1)
    calls = []

    def backward(loss, retain_graph=False):
        calls.append(retain_graph)
        loss.backward(retain_graph=retain_graph)

    x, y = torch.randn(8, 5, dtype=torch.float64), torch.tensor([0, 1, 2, 3] * 2)
    opt.step(per_sample_ce(model, x, y), y, backward=backward)
    assert calls == [True, False, False]  # g_b and g_a share one graph, then theta + eps
