"""The per-class weights of an optimizer against the width of the logits it is given."""

from __future__ import annotations

from typing import Any

from torch import Tensor

from focalsam.errors import InputError


class ClassWidthError(InputError):
    """An optimizer's class counts disagree with the number of classes of the logits."""


def check_logits_width(output: Any, num_classes: int | None, owner: str) -> None:
    """Refuse logits whose last dimension is not ``num_classes`` (the length of the class
    counts that weight the samples); ``output`` is what the closure returned, checked
    when it is a tuple ``(losses, logits, ...)``."""
    if num_classes is None or not isinstance(output, tuple) or len(output) < 2:
        return
    logits = output[1]
    if isinstance(logits, Tensor) and logits.ndim >= 2 and logits.shape[-1] != num_classes:
        raise ClassWidthError(
            f"{owner} was given {num_classes} class counts, but the model's logits have "
            f"{logits.shape[-1]} classes: pass one count per class of the model"
        )
