"""Checks of what the optimizers are given, in one place: hyperparameters when they are
built (``rho``, ``bn_update``, ``max_grad_norm``, the step options, class counts) and, in
every step, the per-sample losses a closure returns and the labels that come with them.
Each raises one error from :mod:`focalsam.optim.errors` naming what was wrong and what was
expected.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from focalsam.class_counts import validate_class_counts as _validate_counts
from focalsam.optim.errors import (
    AccumulationError,
    ClassCountsError,
    InvalidHyperparameterError,
    LabelError,
    LossShapeError,
    NonFiniteLossError,
)

ClassCounts = Sequence[int] | Tensor | np.ndarray
#: One micro-batch of an accumulated step: a closure returning per-sample losses, its labels.
MicroBatch = tuple[Callable[[], Any], Tensor | None]


# ------------------------------------------------------------ hyperparameters
def validate_rho(rho: Any) -> None:
    """``rho`` is a finite number >= 0."""
    if not isinstance(rho, int | float) or not math.isfinite(rho) or rho < 0:
        raise InvalidHyperparameterError(f"rho must be a finite number >= 0, got {rho!r}")


def validate_bn_update(bn_update: Any) -> None:
    """``bn_update`` is ``"both"`` or ``"clean"``."""
    if bn_update not in ("both", "clean"):
        raise InvalidHyperparameterError(f"bn_update must be 'both' or 'clean', got {bn_update!r}")


def validate_max_grad_norm(max_grad_norm: Any) -> None:
    """``max_grad_norm`` is ``None`` or > 0."""
    if max_grad_norm is not None and not max_grad_norm > 0:
        raise InvalidHyperparameterError(f"max_grad_norm must be > 0, got {max_grad_norm}")


def validate_step_options(strict_checks: Any, sam_every: Any) -> None:
    """``strict_checks`` is ``None``, ``True`` or ``False``; ``sam_every`` an integer >= 1."""
    if strict_checks is not None and not isinstance(strict_checks, bool):
        raise InvalidHyperparameterError(
            f"strict_checks must be None (strict on the CPU, sync-free on CUDA), True or "
            f"False, got {strict_checks!r}"
        )
    if isinstance(sam_every, bool) or not isinstance(sam_every, int) or sam_every < 1:
        raise InvalidHyperparameterError(
            f"sam_every must be an integer >= 1 (1: every step is sharpness-aware), "
            f"got {sam_every!r}"
        )


def validate_engine_settings(
    *,
    bn_update: Any,
    model: nn.Module | None,
    max_grad_norm: Any,
    strict_checks: Any,
    sam_every: Any,
) -> None:
    """The step settings both engines take (``WeightedSAM``, ``GroupwiseSAM``):
    ``bn_update`` (``"clean"`` needs the ``model``), ``max_grad_norm``, ``strict_checks``
    and ``sam_every``."""
    validate_bn_update(bn_update)
    if bn_update == "clean" and model is None:
        raise InvalidHyperparameterError(
            "bn_update='clean' freezes BatchNorm statistics of a model: pass model=..."
        )
    validate_max_grad_norm(max_grad_norm)
    validate_step_options(strict_checks, sam_every)


# --------------------------------------------------------------- class counts
def validate_class_counts(
    class_counts: ClassCounts, num_classes: int | None = None, *, min_count: int = 1, why: str = ""
) -> Tensor:
    """``class_counts`` as a 1-D float64 CPU tensor, checked by
    :func:`focalsam.class_counts.validate_class_counts`: whole numbers ``>= min_count``
    (``why``: the reason, for the message), one per class (``num_classes`` of them when
    given). Raises the optimizers' :class:`ClassCountsError`.
    """
    return _validate_counts(
        class_counts, num_classes, min_count=min_count, why=why, error=ClassCountsError
    )


def validate_ccsam_counts(class_counts: ClassCounts, num_classes: int | None = None) -> Tensor:
    """:func:`validate_class_counts` with at least 2 training samples per class
    (CC-SAM's radius divides by ``(n_c - 1) ** (1/4)``)."""
    return validate_class_counts(
        class_counts,
        num_classes,
        min_count=2,
        why="CC-SAM's radius divides by (n_c - 1) ** (1/4): every class needs at least 2 "
        "training samples",
    )


def check_classifier_outputs(classifier: nn.Module | None, class_counts: Tensor) -> int:
    """The number of classes ``C = len(class_counts)``, checked against the classifier's
    ``out_features`` when it has one."""
    num_classes = int(class_counts.numel())
    out_features = getattr(classifier, "out_features", None)
    if isinstance(out_features, int) and out_features != num_classes:
        raise ClassCountsError(
            f"class_counts has {num_classes} entries but the classifier has "
            f"{out_features} outputs (expected one count per output)"
        )
    return num_classes


# --------------------------------------------------------- losses and labels
def losses_of(out: Any) -> Tensor:
    """The per-sample losses a closure returned (alone or first in a tuple)."""
    losses = out[0] if isinstance(out, tuple) else out
    if not isinstance(losses, Tensor):
        raise LossShapeError(
            "the closure must return per-sample losses (a tensor of shape (B,)) or a tuple "
            f"starting with them, got {type(losses).__name__}"
        )
    return losses


def check_losses(losses: Tensor, expected: int | None = None) -> int:
    """Check one floating loss per sample, with autograd; return the batch size ``B``."""
    if not isinstance(losses, Tensor):
        raise LossShapeError(f"losses must be a tensor of shape (B,), got {type(losses).__name__}")
    if losses.ndim != 1:
        hint = " (use reduction='none')" if losses.ndim == 0 else ""
        raise LossShapeError(
            f"losses must hold one value per sample, shape (B,); got shape "
            f"{tuple(losses.shape)}{hint}"
        )
    if not losses.is_floating_point():
        raise LossShapeError(f"losses must be floating point, got {losses.dtype}")
    if not losses.requires_grad:
        raise LossShapeError(
            "losses do not require grad: run the forward pass with autograd enabled"
        )
    batch = losses.shape[0]
    if batch == 0:
        raise LossShapeError("losses are empty: the batch has no samples")
    if expected is not None and batch != expected:
        raise LossShapeError(
            f"the perturbed forward returned {batch} losses, the clean one {expected}"
        )
    return batch


def check_targets(targets: Any, batch: int | None = None) -> Tensor:
    """Class labels as an int64 tensor ``(B,)``, one per loss when ``batch`` is given: any
    signed integer dtype is accepted; floating, complex, bool and unsigned ones (uint8
    indexes as a mask) are refused."""
    dtype = getattr(targets, "dtype", None)
    if (
        not isinstance(targets, Tensor)
        or targets.ndim != 1
        or not targets.dtype.is_signed
        or targets.is_floating_point()
        or targets.is_complex()
    ):
        raise LabelError(
            "targets must be a 1-D integer tensor of class labels (int64), got "
            f"{dtype if dtype is not None else type(targets).__name__} of shape "
            f"{tuple(getattr(targets, 'shape', ()))}"
            + (" (uint8 and bool tensors index as masks)" if dtype in _MASKS else "")
        )
    if batch is not None and targets.shape[0] != batch:
        raise LossShapeError(
            f"got {batch} losses for {targets.shape[0]} labels: the loss must be "
            "per sample (reduction='none')"
        )
    return targets.long()


_MASKS = (torch.uint8, torch.bool)


def label_range_error(targets: Tensor, num_classes: int) -> LabelError:
    """The error for labels outside ``[0, num_classes)``, naming the range found."""
    return LabelError(
        f"labels must lie in [0, {num_classes}) (one per class of class_counts); got values "
        f"in [{int(targets.min())}, {int(targets.max())}]"
    )


def checked_values(
    losses: Tensor | None,
    targets: Tensor | None,
    num_classes: int | None,
    check_finite: bool,
    extra: Sequence[Tensor] = (),
) -> list[int]:
    """Check labels against ``[0, num_classes)`` (when both are known) and losses for
    NaN/inf (when ``check_finite``), and read ``extra`` (flattened, as ints): one host sync."""
    check_range = num_classes is not None and targets is not None
    check_finite = check_finite and losses is not None
    parts: list[Tensor] = []
    if check_range:
        assert targets is not None and num_classes is not None
        parts.append(((targets >= 0) & (targets < num_classes)).all().view(1))
    if check_finite:
        assert losses is not None
        parts.append(torch.isfinite(losses.detach()).all().view(1))
    parts += [e.flatten() for e in extra]
    if not parts:
        return []
    values: list[int] = torch.cat([p.long() for p in parts]).tolist()
    if check_range and not values.pop(0):
        assert targets is not None and num_classes is not None
        raise label_range_error(targets, num_classes)
    if check_finite and not values.pop(0):
        assert losses is not None
        bad = int((~torch.isfinite(losses.detach())).sum())
        raise NonFiniteLossError(
            f"the forward pass returned {bad} non-finite losses out of {losses.numel()}; "
            "no step was taken"
        )
    return values


def ensure_finite(value: Tensor, message: str) -> None:
    """Raise :class:`NonFiniteLossError` with ``message`` unless ``value`` is all finite."""
    if not bool(torch.isfinite(value.detach()).all()):
        raise NonFiniteLossError(message)


def check_micro_batches(micro: Any) -> list[MicroBatch]:
    """``micro`` as a list of ``(closure, targets)`` pairs, or :class:`AccumulationError`."""
    if not isinstance(micro, Sequence) or isinstance(micro, str) or not micro:
        raise AccumulationError(
            "step_accumulated needs a non-empty sequence of (closure, targets) pairs, "
            f"got {type(micro).__name__}"
            + (" (empty)" if isinstance(micro, Sequence) and not micro else "")
        )
    for k, pair in enumerate(micro):
        if not isinstance(pair, tuple) or len(pair) != 2 or not callable(pair[0]):
            raise AccumulationError(
                f"micro-batch {k} must be a (closure, targets) pair with a callable "
                f"closure, got {type(pair).__name__}"
            )
    return list(micro)


def check_perturbed_losses(losses: Tensor, size: int, check_finite: bool) -> None:
    """The losses at ``theta + eps``: one per sample of the clean forward's ``size``, and
    finite when ``check_finite`` (:class:`NonFiniteLossError`: theta is restored, no step)."""
    check_losses(losses, expected=size)
    if check_finite:
        ensure_finite(
            losses,
            "the forward pass at theta + eps returned non-finite losses; "
            "the parameters were restored and no step was taken",
        )


def detached(out: Any, losses: Tensor) -> Any:
    """A closure's output with its losses detached."""
    return (losses.detach(), *out[1:]) if isinstance(out, tuple) else losses.detach()


def check_logits_width(output: Any, num_classes: int | None, owner: str) -> None:
    """Refuse logits whose last dimension is not ``num_classes`` (the length of the class
    counts that weight the samples). ``output`` is what a closure returned; it is checked
    when it is a tuple ``(losses, logits, ...)``. Shapes only: no device sync."""
    if num_classes is None or not isinstance(output, tuple) or len(output) < 2:
        return
    logits = output[1]
    if isinstance(logits, Tensor) and logits.ndim >= 2 and logits.shape[-1] != num_classes:
        raise ClassCountsError(
            f"{owner} was given {num_classes} class counts, but the model's logits have "
            f"{logits.shape[-1]} classes: pass one count per class of the model"
        )
