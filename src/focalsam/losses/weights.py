"""Per-class weights: class-balanced by effective number (Cui et al. 2019) and DRW (Cao et al.).

Effective number of class ``j``: ``E_j = (1 - beta ** n_j) / (1 - beta)``; the class-balanced
weight is ``w_j = 1 / E_j = (1 - beta) / (1 - beta ** n_j)``, normalized so ``sum_j w_j = C``.
``beta = 0`` gives all ones; ``beta -> 1`` tends to inverse frequency.
"""

from __future__ import annotations

import torch
from torch import Tensor

from focalsam.class_counts import validate_class_counts
from focalsam.losses._checks import CountsLike

__all__ = ["DeferredReweighting", "class_balanced_weights"]


def class_balanced_weights(class_counts: CountsLike, beta: float = 0.9999) -> Tensor:
    """``w_j = (1 - beta) / (1 - beta ** n_j)``, scaled to sum to C (float32, CPU).

    >>> class_balanced_weights([10, 10], beta=0.9).tolist()
    [1.0, 1.0]
    """
    if not 0.0 <= beta < 1.0:
        raise ValueError(f"beta must be in [0, 1), got {beta}")
    n = validate_class_counts(class_counts)
    w = (1.0 - beta) / (1.0 - torch.pow(torch.tensor(beta, dtype=torch.float64), n))
    return (w / w.sum() * n.numel()).to(torch.float32)


class DeferredReweighting:
    """DRW: weights of all ones before ``start_epoch``, class-balanced weights from then on.

    Epochs count from 0, so with 200 epochs and ``start_epoch=160`` the last 40 epochs are
    re-weighted (the LDAM-DRW CIFAR recipe). ``weights(epoch)`` returns a float32 tensor (C,).
    """

    def __init__(self, class_counts: CountsLike, start_epoch: int = 160, beta: float = 0.9999):
        if start_epoch < 0:
            raise ValueError(f"start_epoch must be >= 0, got {start_epoch}")
        self.class_counts = validate_class_counts(class_counts)
        self.start_epoch = int(start_epoch)
        self.beta = beta
        self._late = class_balanced_weights(self.class_counts, beta)

    @property
    def num_classes(self) -> int:
        return int(self.class_counts.numel())

    def weights(self, epoch: int) -> Tensor:
        """Per-class weights to use during ``epoch`` (0-based)."""
        if epoch < self.start_epoch:
            return torch.ones(self.num_classes, dtype=torch.float32)
        return self._late.clone()

    def __call__(self, epoch: int) -> Tensor:
        return self.weights(epoch)

    def __repr__(self) -> str:
        return (
            f"DeferredReweighting(classes={self.num_classes}, start_epoch={self.start_epoch}, "
            f"beta={self.beta})"
        )
