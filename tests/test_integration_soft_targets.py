"""Soft targets (Mixup, CutMix, label smoothing): class weights apply class by class."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import tiny_batches, tiny_model
from torch.func import functional_call

from focalsam.integrations.soft_targets import soft_target_losses
from focalsam.optim import FocalSAM, LossShapeError, focal_weights

COUNTS = [40, 20, 6, 2]
KW = dict(class_counts=COUNTS, gamma=2.0, lam=0.6, rho=0.2, lr=0.1)


def mixed_targets(y, lam: float, smoothing: float = 0.1, classes: int = 4):
    """timm's Mixup targets: ``lam`` of each sample's label, ``1 - lam`` of the flipped
    batch's, with label smoothing."""
    off, on = smoothing / classes, 1.0 - smoothing + smoothing / classes
    one_hot = F.one_hot(y, classes).double() * (on - off) + off
    return lam * one_hot + (1 - lam) * one_hot.flip(0)


def soft_step(model, x, t):
    opt = FocalSAM(model.parameters(), torch.optim.SGD, **KW)

    def closure():
        losses, _ = soft_target_losses(model(x), t)
        return losses

    labels = torch.arange(t.shape[1]).repeat(t.shape[0])
    opt.step(closure, labels)
    return [p.detach() for p in model.parameters()]


def reference_step(model, x, t, share_weights: bool = True):
    """One Focal-SAM step (SGD, no momentum) with torch.func, independent of focalsam:
    ``g = grad (1/B) sum_nc a_c t_nc CE_nc (theta) + grad (1/B) sum_nc b_c t_nc CE_nc (theta + eps)``.
    ``share_weights=False``: the other rule, each sample's whole loss times ``sum_c t_nc w_c``."""
    b_class = focal_weights(COUNTS, KW["gamma"], KW["lam"], dtype=torch.float64)
    a_class = 1 - b_class
    theta = {k: v.detach().clone().requires_grad_(True) for k, v in model.named_parameters()}
    names = list(theta)

    def loss(params, w):
        log_p = F.log_softmax(functional_call(model, params, (x,)), dim=1)
        if share_weights:
            return -(t * w * log_p).sum() / x.shape[0]
        return ((t @ w) * -(t * log_p).sum(1)).sum() / x.shape[0]

    g_b = torch.autograd.grad(loss(theta, b_class), [theta[k] for k in names])
    g_a = torch.autograd.grad(loss(theta, a_class), [theta[k] for k in names])
    norm = torch.sqrt(sum((g**2).sum() for g in g_b))
    moved = {
        k: (theta[k] + KW["rho"] * g / (norm + 1e-12)).detach().requires_grad_(True)
        for k, g in zip(names, g_b)
    }
    g_s = torch.autograd.grad(loss(moved, b_class), [moved[k] for k in names])
    return [theta[k].detach() - KW["lr"] * (ga + gs) for k, ga, gs in zip(names, g_a, g_s)]


def test_mixed_targets_are_weighted_class_by_class():
    ((x, y),) = tiny_batches(1)
    t = mixed_targets(y, lam=0.7)
    got = soft_step(tiny_model(batchnorm=False), x, t)
    want = reference_step(tiny_model(batchnorm=False), x, t)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, atol=1e-12, rtol=0)
    # the other candidate rule (one weight per mixed sample) is a different step
    other = reference_step(tiny_model(batchnorm=False), x, t, share_weights=False)
    assert not all(torch.allclose(g, o, atol=1e-6) for g, o in zip(got, other))


def test_one_hot_targets_give_the_hard_label_step():
    ((x, y),) = tiny_batches(1)
    got = soft_step(tiny_model(batchnorm=False), x, F.one_hot(y, 4).double())
    model = tiny_model(batchnorm=False)
    opt = FocalSAM(model.parameters(), torch.optim.SGD, **KW)
    opt.step(lambda: F.cross_entropy(model(x), y, reduction="none"), y)
    for g, w in zip(got, model.parameters()):
        torch.testing.assert_close(g, w.detach(), atol=1e-12, rtol=0)


def test_soft_targets_of_another_shape_are_refused():
    with pytest.raises(LossShapeError, match=r"\(B, C\)"):
        soft_target_losses(torch.zeros(3, 4), torch.zeros(3, 5))
