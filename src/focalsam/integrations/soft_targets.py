"""Class weights with soft targets (Mixup, CutMix, label smoothing): class by class.

A soft target ``t_n`` (a row of ``B x C`` that sums to 1) makes the soft cross-entropy
``l_n = sum_c t_{n,c} * (-log p_{n,c})``, a sum of one share per class. The class-weighted
rules weight each share by its own class::

    (1/B) sum_n w_n l_n   becomes   (1/B) sum_n sum_c w_c t_{n,c} (-log p_{n,c})

so Focal-SAM's class-wise loss ``L^c`` is, as with hard labels, everything the batch asks
of class ``c``. For one-hot targets this is the hard-label rule exactly; for a Mixup of
classes ``i`` and ``j`` with shares ``lam`` and ``1 - lam`` a sample contributes
``lam * w_i * CE_i + (1 - lam) * w_j * CE_j``.

:func:`soft_target_losses` writes this in the form every optimizer's ``step`` takes (one
loss per entry with a class label), so the engine needs nothing new.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from focalsam.optim.errors import LabelError, LossShapeError


def soft_target_losses(logits: Tensor, soft_targets: Tensor) -> tuple[Tensor, Tensor]:
    """Losses and labels of a soft-target batch, one pair per (sample, class).

    Returns ``losses`` of shape ``(B * C,)`` with entries ``C * t_{n,c} * (-log p_{n,c})``
    and ``labels`` ``(B * C,)`` with entries ``c``: for an optimizer that averages over its
    ``B * C`` losses, ``(1/(B C)) sum w_c C t_{n,c} (-log p_{n,c})`` is the class-by-class
    weighted soft cross-entropy above. Pass both to ``optimizer.step(closure, labels)``
    (the closure returns ``losses``).

    >>> logits = torch.tensor([[2.0, 0.0], [0.0, 1.0]], requires_grad=True)
    >>> targets = torch.tensor([[1.0, 0.0], [0.3, 0.7]])
    >>> losses, labels = soft_target_losses(logits, targets)
    >>> labels.tolist()
    [0, 1, 0, 1]
    >>> bool(torch.isclose(losses.mean(), F.cross_entropy(logits, targets)))  # unweighted
    True
    """
    if logits.ndim != 2 or soft_targets.shape != logits.shape:
        raise LossShapeError(
            f"soft targets must have the logits' shape (B, C); got logits "
            f"{tuple(logits.shape)} and targets {tuple(soft_targets.shape)}"
        )
    if not soft_targets.is_floating_point():
        raise LabelError(
            f"soft targets must be floating point (B, C) rows of class shares, got "
            f"{soft_targets.dtype}: pass hard labels to the optimizer directly"
        )
    batch, classes = logits.shape
    log_p = F.log_softmax(logits, dim=1, dtype=torch.promote_types(logits.dtype, torch.float32))
    shares = soft_targets.to(log_p.dtype)
    losses = (-classes * shares * log_p).reshape(batch * classes)
    labels = torch.arange(classes, device=logits.device).repeat(batch)
    return losses, labels
