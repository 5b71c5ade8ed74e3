"""Parameters sharded by FSDP2 (``torch.distributed.fsdp.fully_shard``): DTensors.

Every step of the rule works on the local shards: ``torch._foreach_norm`` of DTensor
gradients gives partial norms whose stacked norm is the exact global ``||g_b||``, and
eps, the backup of theta and the base step stay sharded. Only the copies need care:
torch has no DTensor rule for a foreach copy, so shards are copied one by one.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.distributed as dist
from torch import Tensor

_DTENSOR: type | None = None
if dist.is_available():
    from torch.distributed.tensor import DTensor as _DTENSOR


def is_sharded(tensors: Sequence[Tensor]) -> bool:
    """Whether ``tensors`` are DTensors (parameters sharded by FSDP2's ``fully_shard``)."""
    return _DTENSOR is not None and bool(tensors) and isinstance(tensors[0], _DTENSOR)


def copy_all(dst: Sequence[Tensor], src: Sequence[Tensor]) -> None:
    """``dst[i] <- src[i]``: one foreach copy, or one ``copy_`` per tensor for DTensors
    (a shard copies into a shard; nothing is gathered)."""
    if is_sharded(dst):
        for d, s in zip(dst, src):
            d.copy_(s)
        return
    torch._foreach_copy_(dst, src)  # type: ignore[arg-type]
