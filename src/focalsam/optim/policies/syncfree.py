"""Checks of a step that never wait for the device: one device code per step, the update
undone by selection where a check failed, and skip counters read only on request.

A sync-free step reads no device value on the host. Its checks (labels in ``[0, C)``,
finite losses at ``theta`` and ``theta + eps``, a finite ascent direction and final
gradient) fold into one integer code on the device: 0 when all passed, else the first
check that failed. After the base step, every tensor the step may change (parameters,
the base optimizer's state, the model's buffers) is put back where the code is not 0::

    t <- where(code == 0, t_after, t_before)

a selection, not a blend (``0 * NaN`` is NaN, so ``keep * a + (1 - keep) * b`` would not
do). The skipped steps are counted on the device; :meth:`StepGuard.report` reads the
counts with one sync and resets them.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.optim import Optimizer

from focalsam.optim.errors import (
    InvalidHyperparameterError,
    LabelError,
    NonFiniteLossError,
    OptimizerInputError,
)
from focalsam.optim.policies.ddp import distributed
from focalsam.optim.sharded import is_sharded

#: Codes of the checks, in the order a step runs them (0: all passed).
LABELS, LOSS, ASCENT, PERTURBED_LOSS, GRADIENT, REPLICA = 1, 2, 3, 4, 5, 6
_REASONS = {
    LOSS: "non-finite loss at theta",
    ASCENT: "non-finite gradient (the ascent direction g_b at theta)",
    PERTURBED_LOSS: "non-finite loss at theta + eps",
    GRADIENT: "non-finite gradient",
    REPLICA: "a check failed on another replica",
}


@dataclass(frozen=True)
class SkipReport:
    """Steps skipped on the device since the last report.

    ``count``: how many; ``first_index``: the first one, counted in ``step`` /
    ``step_accumulated`` calls since the previous report (0-based); ``reason``: the check
    that failed first in that step (a label out of range ``[0, C)`` with the labels
    seen, a non-finite loss, a non-finite gradient).
    """

    count: int
    first_index: int
    reason: str

    def error(self) -> LabelError | NonFiniteLossError:
        """The error a strict step would have raised (:class:`LabelError` for labels out
        of range, :class:`NonFiniteLossError` otherwise), to stop a run with."""
        message = (
            f"{self.count} optimizer step(s) were skipped (parameters, optimizer state and "
            f"buffers left as they were), the first at step call {self.first_index} since "
            f"the last report: {self.reason}"
        )
        if self.reason.startswith("label"):
            return LabelError(message)
        return NonFiniteLossError(message)


def reason_of(code: int, low: int, high: int, num_classes: int | None) -> str:
    """The text of check ``code`` (labels: with the range ``[low, high]`` they spanned)."""
    if code == LABELS:
        return f"label out of range [0, {num_classes}): got labels in [{low}, {high}]"
    return _REASONS.get(code, f"unknown check {code}")


def strict_now(strict_checks: bool | None, optimizer: Optimizer, params: list[Tensor]) -> bool:
    """Whether a step checks on the host: ``strict_checks`` when given, else on the CPU, or
    when the base optimizer keeps state on the host that a skipped step could not roll back."""
    if not params:
        return True
    if strict_checks is not None:
        return strict_checks
    if is_sharded(params):
        return True  # FSDP2: a sync-free step cannot roll back DTensor shards
    if params[0].device.type != "cuda":
        return True
    return host_state_reason(optimizer, params[0].device) is not None


def host_state_reason(optimizer: Optimizer, device: torch.device) -> str | None:
    """Why the base optimizer's state cannot be rolled back on ``device`` without a sync
    (a step count kept on the host: torch's Adam family without ``capturable=True`` or
    ``fused=True``), or ``None``."""
    if device.type == "cpu":
        return None
    for group in optimizer.param_groups:
        if "capturable" in group and not group["capturable"] and not group.get("fused"):
            return (
                f"{type(optimizer).__name__} keeps its step count on the host "
                "(capturable=False): build it with capturable=True"
            )
    return None


def refuse_unrollbackable(optimizer: Optimizer, params: list[Tensor]) -> None:
    """Raise :class:`InvalidHyperparameterError` when ``strict_checks=False`` was asked
    for but a skipped step could not be rolled back (:func:`host_state_reason`)."""
    reason = params and host_state_reason(optimizer, params[0].device)
    if reason:
        raise InvalidHyperparameterError(
            f"strict_checks=False cannot roll back a skipped step: {reason}, "
            "or use strict_checks=True"
        )


class Watched(NamedTuple):
    """What a step may change: parameters, ``(param, key)`` of tensor state, buffers."""

    params: list[Tensor]
    entries: list[tuple[Tensor, str]]
    buffers: list[Tensor]

    def tensors(self, state: dict[Any, Any]) -> list[Tensor]:
        """The tensors now (state entries are looked up again: an optimizer may replace them)."""
        return [*self.params, *(state[p][k] for p, k in self.entries), *self.buffers]


def watch(
    optimizer: Optimizer, params: list[Tensor], model: nn.Module | None, device: torch.device
) -> Watched:
    """The tensors on ``device`` a step over ``params`` may change."""
    entries = [
        (p, k)
        for p in params
        for k, v in optimizer.state.get(p, {}).items()
        if isinstance(v, Tensor) and v.device == device
    ]
    buffers = [] if model is None else [b for b in model.buffers() if b.device == device]
    return Watched([p for p in params if p.device == device], entries, buffers)


class _Flat(NamedTuple):
    members: list[int]
    saved: Tensor
    scratch: Tensor
    saved_views: list[Tensor]
    scratch_views: list[Tensor]


class Snapshot:
    """Copies of a list of tensors in one flat buffer per device and dtype (reused while
    the list keeps its layout); :meth:`restore_unless` selects old or new values."""

    def __init__(self) -> None:
        self._layout: list[tuple[torch.Size, torch.dtype, torch.device]] = []
        self._flats: list[_Flat] = []

    @torch.no_grad()
    def save(self, tensors: list[Tensor]) -> None:
        layout = _layout(tensors)
        if layout != self._layout:
            self._build(tensors, layout)
        for f in self._flats:
            torch._foreach_copy_(f.saved_views, [tensors[i] for i in f.members])

    @torch.no_grad()
    def restore_unless(self, keep: Tensor, tensors: list[Tensor]) -> None:
        """``t <- where(keep, t, saved)`` for every tensor (all on ``keep``'s device)."""
        if _layout(tensors) != self._layout:
            raise OptimizerInputError(
                "the base optimizer changed the shape or dtype of its state during a step; "
                "a sync-free step cannot roll it back: use strict_checks=True"
            )
        for f in self._flats:
            now = [tensors[i] for i in f.members]
            torch._foreach_copy_(f.scratch_views, now)
            torch.where(keep, f.scratch, f.saved, out=f.scratch)
            torch._foreach_copy_(now, f.scratch_views)

    def _build(
        self, tensors: list[Tensor], layout: list[tuple[torch.Size, torch.dtype, torch.device]]
    ) -> None:
        groups: dict[tuple[torch.dtype, torch.device], list[int]] = {}
        for i, (_, dtype, device) in enumerate(layout):
            groups.setdefault((dtype, device), []).append(i)
        self._flats = []
        for (dtype, device), index in groups.items():
            sizes = [tensors[i].numel() for i in index]
            saved = torch.empty(sum(sizes), dtype=dtype, device=device)
            scratch = torch.empty_like(saved)
            shapes = [tensors[i].shape for i in index]
            self._flats.append(
                _Flat(
                    index,
                    saved,
                    scratch,
                    _views(saved, sizes, shapes),
                    _views(scratch, sizes, shapes),
                )
            )
        self._layout = layout


def _layout(tensors: Iterable[Tensor]) -> list[tuple[torch.Size, torch.dtype, torch.device]]:
    return [(t.shape, t.dtype, t.device) for t in tensors]


def _views(flat: Tensor, sizes: list[int], shapes: list[torch.Size]) -> list[Tensor]:
    return [v.view(s) for v, s in zip(flat.split(sizes), shapes)]


class StepGuard:
    """The device-side checks of sync-free steps and their skip counters.

    Per step: :meth:`begin` saves what the step may change, :meth:`require` and
    :meth:`require_labels` fold checks into the step's code, :meth:`end` undoes the
    update where a check failed (or ``also_skip`` holds) and counts the skip.
    """

    def __init__(self) -> None:
        #: strict ``step`` / ``step_accumulated`` calls since the last report (host side;
        #: sync-free calls are counted on the device, so a replayed CUDA graph counts too)
        self.calls = 0
        # count, first index, first code, its labels' low and high, sync-free calls
        self._counters: Tensor | None = None
        self._code: Tensor | None = None
        self._labels: Tensor | None = None
        self._snapshot = Snapshot()
        self._watched: Watched | None = None
        self._state_size = 0
        self._warned_host = False

    @torch.no_grad()
    def begin(self, optimizer: Optimizer, params: list[Tensor], model: nn.Module | None) -> None:
        """Save the tensors a step over ``params`` may change (on the parameters' device)."""
        self._code = self._labels = None
        device = params[0].device
        self._watched = watch(optimizer, params, model, device)
        if not self._warned_host and _has_host_state(optimizer, params, device):
            self._warned_host = True
            warnings.warn(
                f"{type(optimizer).__name__} keeps state on another device than the "
                "parameters: a skipped sync-free step cannot roll it back",
                stacklevel=4,
            )
        self._state_size = _state_size(optimizer, params)
        self._snapshot.save(self._watched.tensors(optimizer.state))

    def require(self, good: Tensor, code: int) -> None:
        """Fail the step with ``code`` where the device bool ``good`` is False (unless an
        earlier check failed already)."""
        bad = good.logical_not()
        if self._code is None:
            self._code = torch.where(bad, code, 0)
        else:
            self._code = torch.where(bad & (self._code == 0), code, self._code)

    def require_labels(self, targets: Tensor, num_classes: int) -> None:
        """Fail the step unless every label lies in ``[0, num_classes)``."""
        low, high = torch.aminmax(targets)
        self.require((low >= 0) & (high < num_classes), LABELS)
        pair = torch.stack([low, high])
        if self._labels is None:
            self._labels = pair
        else:
            self._labels = torch.stack(
                [torch.minimum(self._labels[0], low), torch.maximum(self._labels[1], high)]
            )

    def require_inputs(
        self, losses: Tensor, targets: Tensor | None, num_classes: int | None, check_finite: bool
    ) -> None:
        """Labels in ``[0, num_classes)`` (when both are known) and, with ``check_finite``,
        finite losses at ``theta``."""
        if num_classes is not None and targets is not None:
            self.require_labels(targets, num_classes)
        if check_finite:
            self.require(torch.isfinite(losses.detach()).all(), LOSS)

    def require_finite_grads(self, params: list[Tensor]) -> None:
        """The final gradient of ``params`` is finite (one max-norm per tensor)."""
        grads = [p.grad for p in params if p.grad is not None]
        if grads:
            peak = torch.stack(torch._foreach_norm(grads, float("inf")))
            self.require(torch.isfinite(peak).all(), GRADIENT)

    @torch.no_grad()
    def end(self, optimizer: Optimizer, like: Tensor, also_skip: Tensor | None = None) -> None:
        """Undo the step where a check failed or ``also_skip`` holds; count the step and,
        if a check failed, the skip."""
        assert self._watched is not None
        code = self._code if self._code is not None else like.new_zeros((), dtype=torch.long)
        if distributed():  # every replica takes or skips the step alike
            failed = (code != 0).to(torch.int32)
            dist.all_reduce(failed, op=dist.ReduceOp.MAX)
            code = torch.where((code == 0) & (failed != 0), REPLICA, code)
        keep = code == 0
        if also_skip is not None:
            keep = keep & also_skip.logical_not()
        self._snapshot.restore_unless(keep, self._watched.tensors(optimizer.state))
        if _state_size(optimizer, self._watched.params) != self._state_size:
            # state the base optimizer created in this step: zero (as new) when skipped
            known = {(id(p), k) for p, k in self._watched.entries}
            for p in self._watched.params:
                for k, v in optimizer.state.get(p, {}).items():
                    if isinstance(v, Tensor) and (id(p), k) not in known:
                        torch.where(keep, v, v.new_zeros(()), out=v)
        self._count(code)
        self._watched = None

    def _count(self, code: Tensor) -> None:
        """On the device: this step's index is the sync-free calls counted so far plus
        the strict ones (``calls``, 0 in a run that is all sync-free)."""
        if self._counters is None:
            self._counters = code.new_zeros(6, dtype=torch.long)
        c = self._counters
        bad = code != 0
        labels = self._labels if self._labels is not None else c.new_zeros(2)
        index = c[5:6] + self.calls
        info = torch.cat([c.new_zeros(1), index, code.view(1).long(), labels, c[5:6]])
        c.copy_(torch.where(bad & (c[0] == 0), info, c))
        c[0] += bad.long()
        c[5] += 1

    def report(self, num_classes: int | None) -> SkipReport | None:
        """The skips counted since the last report (one sync), and reset the counts."""
        self.calls = 0
        if self._counters is None:
            return None
        count, first, code, low, high, _ = self._counters.tolist()
        self._counters.zero_()
        if count == 0:
            return None
        return SkipReport(count, first, reason_of(code, low, high, num_classes))


def _state_size(optimizer: Optimizer, params: list[Tensor]) -> int:
    return sum(len(optimizer.state.get(p, ())) for p in params)


def _has_host_state(optimizer: Optimizer, params: list[Tensor], device: torch.device) -> bool:
    return any(
        isinstance(v, Tensor) and v.device != device
        for p in params
        for v in optimizer.state.get(p, {}).values()
    )
