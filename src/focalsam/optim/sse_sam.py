"""SSE-SAM (Lyu et al., AAAI 2025): stage-wise SAM on the head and the tail apart.

The classes split into a head and a tail by their training counts; each has its own
perturbation and radius (the group-wise rule of :mod:`focalsam.optim.groupwise`)::

    L_head = (1/B) sum_{i: y_i head} l_i,   L_tail = (1/B) sum_{i: y_i tail} l_i
    g      = grad L_head(theta + eps_head) + grad L_tail(theta + eps_tail)
    eps_k  = rho_k grad L_k(theta) / ||grad L_k(theta)||

From epoch ``ceil(gamma * epochs)`` on (0-based), ``rho_head = 0``: the head's term is
its clean gradient and only the tail is perturbed (then the step is ImbSAM's with
``kappa = 1`` and ``rho = rho_tail``).

The definitions match the public code (repository ``Zemdalk/SSE-SAM``, files
``scripts/train.py``, ``utils/trainval.py`` and ``ssesam.py``):

* a tail class has **fewer than** ``eta`` training images, ``n_c < eta`` (strict), on
  the counts of the whole long-tailed training set (``train_few_classes`` there);
* both group losses are sums over the group divided by the whole batch size ``B``,
  and each ``eps_k`` is normalized as one vector over all parameters;
* the head radius drops to 0 once ``epoch_count >= gamma * epochs``, where the count
  is advanced after each training epoch: the first epoch without a head perturbation
  is ``ceil(gamma * epochs)`` (0-based). The public code reaches this only for
  ``0 < gamma < 1``; here ``gamma = 1`` means no cut and ``gamma = 0`` a cut from
  the start.

Where ours differs: the public code runs a fresh forward pass for each group's clean
gradient (4 forward and 4 backward passes per step); ours takes both clean gradients
from one forward pass at ``theta`` (3 forward and 4 backward passes while both groups
are present and perturbed; 2 forward and 3 backward after the cut). With BatchNorm its
running statistics see 4 forward passes per step there, 3 (or 2) here. A strict step
skips a group with no sample in the batch (there its zero gradient gives ``eps = 0``
and its passes add nothing). A sync-free step (``strict_checks=False``, the default on
CUDA) reads no count on the host: it runs both groups' passes before the cut and the
tail's after it, whatever the batch holds; an absent group's add exactly 0 and the
BatchNorm statistics of its perturbed forward are put back, so it trains as the strict
step does.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from torch.optim import Optimizer

from focalsam.optim.class_weights import ClassCounts, validate_class_counts
from focalsam.optim.errors import InvalidHyperparameterError, StateDictError
from focalsam.optim.groupwise import FixedRadii, GroupwiseSAM

#: The state-dict key of SSE-SAM's stage schedule.
SCHEDULE_KEY = "sse_sam"
HEAD, TAIL = 0, 1


def sse_sam_groups(class_counts: ClassCounts, eta: float) -> Tensor:
    """The group of each class: 1 (tail) when ``n_c < eta``, else 0 (head).

    >>> sse_sam_groups([500, 100, 99, 5], eta=100).tolist()
    [0, 0, 1, 1]
    """
    counts = validate_class_counts(class_counts)
    return (counts < eta).long()


def cut_epoch(gamma: float, epochs: int) -> int:
    """The first (0-based) epoch without a head perturbation: ``ceil(gamma * epochs)``.

    >>> cut_epoch(0.7, 200), cut_epoch(0.7, 3), cut_epoch(1.0, 5)
    (140, 3, 5)
    """
    return math.ceil(gamma * epochs)


class SSESAM(GroupwiseSAM):
    """SSE-SAM: SAM on the head and on the tail, each with its own radius; the head's
    perturbation stops at epoch ``ceil(gamma * epochs)``.

    ``g = grad L_head(theta + eps_head) + grad L_tail(theta + eps_tail)``,
    ``eps_k = rho_k grad L_k / ||grad L_k||`` (see the module docstring).

    Args:
        params, base_optimizer: as :class:`~focalsam.optim.groupwise.GroupwiseSAM`.
        class_counts: training images per class (the whole training set).
        eta: tail classes have ``n_c < eta`` training images.
        rho_head, rho_tail: the radii (>= 0).
        gamma: the fraction of the epochs with a head perturbation, in ``[0, 1]``.
        epochs: the run's length, if known here (else from :meth:`set_epoch`).
        **kwargs: the group-wise engine's options (``model``, ``bn_update``,
            ``ascent_all_reduce``, ``max_grad_norm``, ``strict_checks``, ``sam_every``)
            and the base optimizer's (``lr``, ``momentum``, ...).

    Call :meth:`set_epoch` at the start of each epoch (the trainer does): the stage
    schedule lives in the optimizer and its state dict, so a resumed run continues it.
    With ``strict_checks=False`` (or ``None`` on CUDA) steps are sync-free: no host read,
    the same update and BatchNorm statistics as a strict step, failed checks rolled back
    on the device and told by :meth:`take_skip_report` (the group-wise engine's
    ``strict_checks``). :meth:`step_accumulated` takes one step on micro-batches, equal
    to :meth:`step` on their concatenation, with one extra gradient buffer per
    perturbed group (two before the cut, one after).

    Example:
        >>> model = torch.nn.Linear(4, 3)
        >>> opt = SSESAM(model.parameters(), class_counts=[500, 50, 5], eta=100,
        ...              rho_head=0.05, rho_tail=0.1, gamma=0.5, lr=0.1)
        >>> opt.set_epoch(0, 4)["rho_head"], opt.set_epoch(2, 4)["rho_head"]
        (0.05, 0.0)
    """

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]] | None,
        base_optimizer: type[Optimizer] | Optimizer = torch.optim.SGD,
        *,
        class_counts: ClassCounts,
        num_classes: int | None = None,
        eta: float = 100.0,
        rho_head: float = 0.05,
        rho_tail: float = 0.1,
        gamma: float = 0.7,
        epochs: int | None = None,
        **kwargs: Any,
    ) -> None:
        SSESAMOptions(eta=eta, rho_head=rho_head, rho_tail=rho_tail, gamma=gamma).validate()
        if epochs is not None:
            _check_epoch("epochs", epochs, 1)
        self.class_counts = validate_class_counts(class_counts, num_classes)
        self.eta, self.gamma = float(eta), float(gamma)
        self.rho_head, self.rho_tail = float(rho_head), float(rho_tail)
        self.epoch, self.epochs = 0, epochs
        super().__init__(
            params,
            base_optimizer,
            group_of=sse_sam_groups(self.class_counts, eta),
            radius=FixedRadii([rho_head, rho_tail]),
            **kwargs,
        )
        self.num_groups = 2  # the tail group exists even when no class is in it
        self._apply_schedule()

    @property
    def tail_classes(self) -> list[int]:
        """The tail classes (``n_c < eta``)."""
        return [int(c) for c in torch.nonzero(self.group_of == TAIL).flatten()]

    def set_epoch(self, epoch: int, epochs: int | None = None) -> dict[str, float]:
        """Enter 0-based ``epoch`` of ``epochs`` (default: the one given before):
        ``rho_head`` is 0 from ``ceil(gamma * epochs)`` on. Returns the radii in use."""
        _check_epoch("epoch", epoch, 0)
        if epochs is not None:
            _check_epoch("epochs", epochs, 1)
            self.epochs = epochs
        self.epoch = epoch
        return self._apply_schedule()

    def _apply_schedule(self) -> dict[str, float]:
        cut = self.epochs is not None and self.epoch >= cut_epoch(self.gamma, self.epochs)
        assert isinstance(self.radii, FixedRadii)
        self.radii.set(HEAD, 0.0 if cut else self.rho_head)
        self.radii.set(TAIL, self.rho_tail)
        return {"rho_head": self.radii.values[HEAD], "rho_tail": self.rho_tail}

    def state_dict(self) -> dict[str, Any]:
        """The group-wise engine's state and the stage schedule (epoch, epochs)."""
        state = super().state_dict()
        state[SCHEDULE_KEY] = {"epoch": self.epoch, "epochs": self.epochs}
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load a :meth:`state_dict`, the stage schedule included."""
        schedule = None
        if isinstance(state_dict, dict) and SCHEDULE_KEY in state_dict:
            state_dict = dict(state_dict)
            schedule = state_dict.pop(SCHEDULE_KEY)
            epoch = schedule.get("epoch") if isinstance(schedule, dict) else None
            epochs = schedule.get("epochs") if isinstance(schedule, dict) else None
            valid_epoch = isinstance(epoch, int) and not isinstance(epoch, bool) and epoch >= 0
            valid_epochs = epochs is None or (
                isinstance(epochs, int) and not isinstance(epochs, bool) and epochs >= 1
            )
            if not (valid_epoch and valid_epochs):
                raise StateDictError(
                    f"the state dict's {SCHEDULE_KEY!r} must hold 'epoch' >= 0 and 'epochs' "
                    f"(None or >= 1), got {schedule!r}"
                )
        super().load_state_dict(state_dict)
        if schedule is not None:
            self.epoch, self.epochs = schedule["epoch"], schedule["epochs"]
            self._apply_schedule()


@dataclass
class SSESAMOptions:
    """SSE-SAM: tail classes have fewer than ``eta`` training images; radii ``rho_head``
    and ``rho_tail``; the head radius is 0 from epoch ``ceil(gamma * epochs)``."""

    eta: float = 100.0
    rho_head: float = 0.05
    rho_tail: float = 0.1
    gamma: float = 0.7

    def validate(self) -> None:
        for name in ("eta", "rho_head", "rho_tail", "gamma"):
            value = getattr(self, name)
            if (
                isinstance(value, bool)
                or not isinstance(value, int | float)
                or not math.isfinite(value)
                or value < 0
            ):
                raise InvalidHyperparameterError(
                    f"sse_sam.{name} must be a finite number >= 0, got {value!r}"
                )
        if self.gamma > 1:
            raise InvalidHyperparameterError(
                f"sse_sam.gamma must lie in [0, 1] (the fraction of epochs with a head "
                f"perturbation), got {self.gamma!r}"
            )

    def optimizer_kwargs(self) -> dict[str, Any]:
        return {
            "eta": self.eta,
            "rho_head": self.rho_head,
            "rho_tail": self.rho_tail,
            "gamma": self.gamma,
        }


def _check_epoch(name: str, value: Any, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise InvalidHyperparameterError(f"{name} must be an integer >= {low}, got {value!r}")


__all__ = ["SSESAM", "SSESAMOptions", "cut_epoch", "sse_sam_groups"]
