"""Parameter-efficient tuning of a CLIP ViT image tower: the modules and the freezing rule.

- AdaptFormer (Chen et al. 2022), parallel to the MLP of every block:
  ``x = x_attn + mlp(h) + s * up(relu(down(h)))`` with ``h = ln_2(x_attn)`` (the block's own
  ``ln_2`` output, computed once and shared by the MLP and the adapter), ``up`` zero-initialised,
  ``s`` a learnable scalar starting at 1.
- LoRA (Hu et al. 2022) on the query and value projections only:
  ``W_q <- W_q + B_q A_q``, ``W_v <- W_v + B_v A_v`` (scale 1), ``B = 0`` at the start.
- VPT (Jia et al. 2022): learnable prompt tokens after the class token; shallow inserts them
  once before the first block, deep replaces them before every block.
- bias-only (BitFit), LayerNorm-only, full fine-tuning: a choice of which tower parameters train.

Every method leaves the tower's output unchanged at step 0 except VPT (its prompts are random).
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils import parametrize

from focalsam.errors import InputError

#: The tuning methods, by name.
TUNING_METHODS = ("adaptformer", "lora", "vpt_shallow", "vpt_deep", "bias", "layernorm", "full")


def adapter_bottleneck(num_classes: int) -> int:
    """AdaptFormer's bottleneck width for ``C`` classes: ``2 ** max(0, int(log2(C / 24)))``.

    >>> [adapter_bottleneck(c) for c in (10, 100, 1000, 8142)]
    [1, 4, 32, 256]
    """
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise InputError(f"num_classes must be an integer >= 1, got {num_classes!r}")
    return 2 ** max(0, int(math.log2(num_classes / 24)))


class AdaptFormerAdapter(nn.Module):
    """``s * up(relu(down(h)))`` with ``down: width -> bottleneck``, ``up`` zero-initialised,
    ``s`` a learnable scalar starting at 1 (so the adapter outputs exactly 0 at step 0)."""

    def __init__(self, width: int, bottleneck: int) -> None:
        super().__init__()
        self.down = nn.Linear(width, bottleneck)
        self.up = nn.Linear(bottleneck, width)
        self.scale = nn.Parameter(torch.ones(()))
        nn.init.kaiming_uniform_(self.down.weight, a=math.sqrt(5))
        nn.init.zeros_(self.down.bias)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, h: Tensor) -> Tensor:
        return self.scale * self.up(F.relu(self.down(h)))


def adapted_block_forward(block: Any, adapter: AdaptFormerAdapter, x: Tensor) -> Tensor:
    """One open_clip ``ResidualAttentionBlock`` with a parallel adapter (batch-first ``x``):
    ``x_attn = x + ls_1(attn(ln_1(x)))``; ``h = ln_2(x_attn)``;
    ``out = x_attn + ls_2(mlp(h)) + adapter(h)``."""
    x_attn = x + block.ls_1(block.attention(q_x=block.ln_1(x)))
    h = block.ln_2(x_attn)
    return x_attn + block.ls_2(block.mlp(h)) + adapter(h)


class QVLoRA(nn.Module):
    """A parametrization of a fused ``in_proj_weight`` (rows: q, k, v; each ``width x width``):
    ``W -> W + [B_q A_q; 0; B_v A_v]``. ``A ~ kaiming-uniform``, ``B = 0``; the key rows and
    ``W`` itself never change."""

    def __init__(self, width: int, rank: int) -> None:
        super().__init__()
        self.width = width
        self.a_q = nn.Parameter(torch.empty(rank, width))
        self.b_q = nn.Parameter(torch.zeros(width, rank))
        self.a_v = nn.Parameter(torch.empty(rank, width))
        self.b_v = nn.Parameter(torch.zeros(width, rank))
        nn.init.kaiming_uniform_(self.a_q, a=math.sqrt(5))
        nn.init.kaiming_uniform_(self.a_v, a=math.sqrt(5))

    def forward(self, weight: Tensor) -> Tensor:
        zeros = weight.new_zeros(self.width, self.width)
        delta = torch.cat([self.b_q @ self.a_q, zeros, self.b_v @ self.a_v], dim=0)
        return weight + delta.to(weight.dtype)


def add_qv_lora(attn: nn.MultiheadAttention, rank: int) -> QVLoRA:
    """Put a :class:`QVLoRA` on ``attn.in_proj_weight`` (a parametrization: the module's own
    forward then sees ``W + delta``); returns the LoRA module."""
    if not getattr(attn, "_qkv_same_embed_dim", False) or attn.in_proj_weight is None:
        raise InputError("LoRA needs attention with one fused q/k/v in_proj_weight")
    lora = QVLoRA(attn.embed_dim, rank).to(attn.in_proj_weight.device)
    parametrize.register_parametrization(attn, "in_proj_weight", lora, unsafe=False)
    return lora


class VisualPrompts(nn.Module):
    """VPT prompt tokens: ``layers`` sets of ``tokens`` learnable ``width``-d vectors (1 set for
    shallow, one per block for deep), uniform in ``+-sqrt(6 / (3 * patch**2 + width))``
    (Xavier over the patch embedding's fan, as VPT does)."""

    def __init__(self, layers: int, tokens: int, width: int, patch_size: int) -> None:
        super().__init__()
        bound = math.sqrt(6.0 / (3 * patch_size * patch_size + width))
        self.prompts = nn.Parameter(torch.empty(layers, tokens, width).uniform_(-bound, bound))

    @property
    def tokens(self) -> int:
        return self.prompts.shape[1]

    def insert(self, x: Tensor, layer: int) -> Tensor:
        """Tokens ``[cls, patches]`` -> ``[cls, prompts[layer], patches]``."""
        p = self.prompts[layer].to(x.dtype).expand(x.shape[0], -1, -1)
        return torch.cat([x[:, :1], p, x[:, 1:]], dim=1)

    def replace(self, x: Tensor, layer: int) -> Tensor:
        """Tokens ``[cls, old prompts, patches]`` -> ``[cls, prompts[layer], patches]``."""
        return self.insert(torch.cat([x[:, :1], x[:, 1 + self.tokens :]], dim=1), layer)


def tower_parameters_to_train(tower: nn.Module, tuning: str) -> list[nn.Parameter]:
    """The tower's own parameters that train under ``tuning``: biases (``bias``), LayerNorm
    weights and biases (``layernorm``), all (``full``); none for the added-module methods."""
    if tuning == "full":
        return list(tower.parameters())
    if tuning == "bias":
        return [
            p for name, p in tower.named_parameters() if name.rsplit(".", 1)[-1].endswith("bias")
        ]
    if tuning == "layernorm":
        return [p for m in tower.modules() if isinstance(m, nn.LayerNorm) for p in m.parameters()]
    return []


def keep_frozen_in_eval(root: nn.Module) -> None:
    """Put every largest frozen subtree of ``root`` (one with parameters, none trainable) in
    eval mode, so dropout / patch dropout / BatchNorm of the frozen parts stay deterministic in
    training; parameter-free modules elsewhere follow their parent's mode."""
    for child in root.children():
        params = list(child.parameters())
        if params and not any(p.requires_grad for p in params):
            child.eval()
        else:
            keep_frozen_in_eval(child)
