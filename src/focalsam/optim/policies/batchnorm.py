"""BatchNorm in a sharpness-aware step: ``bn_update="clean"`` holds the running statistics
during the perturbed forward passes (``"both"``, the published code, lets them update in
both), and a sync-free step puts the model's buffers back where a strict one would not have
run the perturbed forward at all (a micro-batch with no sharp weight, a group with no
sample in the batch)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any, Literal

import torch
from torch import Tensor, nn

BatchNormUpdate = Literal["both", "clean"]
Kept = tuple[list[Tensor], list[Tensor], Tensor]


class BatchNormPolicy:
    """BatchNorm statistics of ``model`` around the perturbed passes.

    ``bn_update``: ``"both"`` or ``"clean"`` (freeze in the perturbed passes);
    ``sharp_can_vanish``: some class has no sharp weight (ImbSAM's head classes), so a
    strict step may skip a batch's perturbed pass that a sync-free step runs.
    """

    def __init__(
        self, model: nn.Module | None, bn_update: BatchNormUpdate, sharp_can_vanish: bool = False
    ) -> None:
        self.model = model
        self.bn_update: BatchNormUpdate = bn_update
        self.sharp_can_vanish = sharp_can_vanish
        self._saved: list[tuple[nn.modules.batchnorm._BatchNorm, Any, Tensor | None]] = []

    def freeze(self) -> None:
        """With ``bn_update="clean"``, hold the running statistics (momentum 0) until
        :meth:`unfreeze`."""
        if self.bn_update != "clean":
            return
        assert self.model is not None
        for m in self.model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats:
                tracked = m.num_batches_tracked
                self._saved.append((m, m.momentum, None if tracked is None else tracked.clone()))
                m.momentum = 0.0

    def unfreeze(self) -> None:
        """Undo :meth:`freeze` (nothing when nothing is frozen)."""
        for m, momentum, tracked in self._saved:
            m.momentum = momentum
            if tracked is not None and m.num_batches_tracked is not None:
                m.num_batches_tracked.copy_(tracked)
        self._saved.clear()

    @contextlib.contextmanager
    def frozen(self) -> Iterator[None]:
        """:meth:`freeze` for the block, :meth:`unfreeze` after it (also on an error)."""
        self.freeze()
        try:
            yield
        finally:
            self.unfreeze()

    @torch.no_grad()
    def keep(self, sharp: Any) -> Kept | None:
        """Sync-free: a micro-batch whose sharp weights are all zero (ImbSAM with no tail
        sample) still runs its perturbed forward, which a strict step skips; its buffers
        are kept here to be :func:`put_back`, so both modes train the same."""
        if not self.sharp_can_vanish or not isinstance(sharp, Tensor):
            return None  # Focal-SAM's sharp weights are never all zero: nothing to keep
        return self.keep_unless(sharp.ne(0).any())

    @torch.no_grad()
    def keep_unless(self, ran: Tensor) -> Kept | None:
        """Sync-free: the model's buffers before a perturbed forward that a strict step
        runs only where the device bool ``ran`` holds (the group-wise engine: the group has
        a sample in the batch); :func:`put_back` selects them back where it does not."""
        if self.model is None:
            return None
        buffers = list(self.model.buffers())
        if not buffers:
            return None
        return buffers, [b.clone() for b in buffers], ran


@torch.no_grad()
def put_back(kept: Kept | None) -> None:
    """Each kept buffer as it is when its pass ran (a device bool), else as it was kept.

    Written through ``.data``: a clean graph still held (the group-wise engine takes the
    next group's gradient from it) saved the running statistics, which a training-mode
    backward does not read, and must stay usable."""
    if kept is None:
        return
    buffers, saved, ran = kept
    for buf, old in zip(buffers, saved):
        buf.data.copy_(torch.where(ran, buf, old))
