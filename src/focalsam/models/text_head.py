"""A cosine classifier and its initialisation from CLIP's text tower.

With ``t_c`` the L2-normalised text embedding of the prompt ``"a photo of a {name}."`` and
``P`` the image projection (``x P`` is the image embedding of the tower feature ``x``), class
``c``'s weight is ``w_c = P t_c`` (then normalised): ``x . w_c = (x P) . t_c``, the zero-shot
dot product, read in the tower's feature space before its projection.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from focalsam.errors import InputError

#: The prompt of the published protocol; ``{}`` is the class name with ``_`` as spaces.
PROMPT_TEMPLATE = "a photo of a {}."


class CosineClassifier(nn.Module):
    """``logits = scale * cos(x, w_c) = scale * normalize(x) . normalize(w_c)``; ``weight`` is
    ``(classes, features)`` like :class:`torch.nn.Linear`."""

    def __init__(self, in_features: int, out_features: int, scale: float = 25.0) -> None:
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        self.scale = scale
        self.weight = nn.Parameter(torch.empty(out_features, in_features))
        nn.init.kaiming_uniform_(self.weight, a=5**0.5)

    def forward(self, x: Tensor) -> Tensor:
        return self.scale * F.normalize(x, dim=-1) @ F.normalize(self.weight, dim=-1).t()

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, scale={self.scale:g}"


def class_prompts(class_names: Sequence[str]) -> list[str]:
    """``"a photo of a {name}."`` per class, underscores as spaces."""
    if isinstance(class_names, str) or not all(isinstance(n, str) for n in class_names):
        raise InputError(f"class_names must be a sequence of strings, got {class_names!r:.80}")
    return [PROMPT_TEMPLATE.format(name.replace("_", " ").strip()) for name in class_names]


@torch.no_grad()
def text_head_weights(
    clip: Any,
    class_names: Sequence[str],
    tokenizer: Callable[[list[str]], Tensor],
    *,
    normalize: bool = True,
    batch_size: int = 256,
) -> Tensor:
    """Rows ``w_c = P t_c`` with ``t_c = normalize(encode_text(prompt_c))`` and ``P`` the image
    projection ``clip.visual.proj`` (``features x proj -> embedding``); normalised when
    ``normalize``. ``clip`` is an open_clip ``CLIP`` (its text tower and ``visual.proj``).
    Returns ``(classes, features)`` in the dtype of ``proj``."""
    proj = clip.visual.proj
    if proj is None:
        raise InputError("the image tower has no projection: cannot map text into its features")
    prompts = class_prompts(class_names)
    device = proj.device
    rows = []
    for start in range(0, len(prompts), batch_size):
        tokens = tokenizer(prompts[start : start + batch_size]).to(device)
        text = clip.encode_text(tokens).to(proj.dtype)
        rows.append(F.normalize(text, dim=-1) @ proj.t())
    weights = torch.cat(rows)
    return F.normalize(weights, dim=-1) if normalize else weights
