"""The backward pass a caller may replace (e.g. Lightning's ``manual_backward``): every
optimizer here calls ``backward(loss, retain_graph=...)`` instead of ``loss.backward``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import Tensor

BackwardFn = Callable[..., Any]


def default_backward(loss: Tensor, retain_graph: bool = False) -> None:
    """``loss.backward(retain_graph=...)``."""
    loss.backward(retain_graph=retain_graph)
