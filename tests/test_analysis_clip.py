"""Second-order analysis of a ViT: the Hessian-vector product runs attention through the
math kernel (the fused ones have no double backward) and matches finite differences."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from focalsam.analysis._closure import dataset_gradient, hvp

pytest.importorskip("open_clip")


@pytest.mark.parametrize("method", ["double_backward", "func"])
def test_hvp_of_a_tuned_vit_matches_finite_differences(method):
    from focalsam.models import create_model
    from focalsam.models.clip import ClipOptions

    torch.manual_seed(0)
    clip = ClipOptions(weights="random", text_init=False, tuning="lora")
    model = create_model("clip_tiny", 4, clip=clip).eval().double()
    x = torch.randn(6, 3, 32, 32, dtype=torch.float64)
    batches = [(x, torch.tensor([0, 1, 2, 3, 0, 1]))]
    params = [p for p in model.parameters() if p.requires_grad]
    v = [torch.randn_like(p) for p in params]
    hv = hvp(model, F.cross_entropy, batches, None, v, method=method)

    def gradient_at(step: float) -> list[torch.Tensor]:
        with torch.no_grad():
            for p, d in zip(params, v):
                p.add_(step * d)
        try:
            return dataset_gradient(model, F.cross_entropy, batches)[1]
        finally:
            with torch.no_grad():
                for p, d in zip(params, v):
                    p.sub_(step * d)

    h = 1e-5
    fd = [(a - b) / (2 * h) for a, b in zip(gradient_at(h), gradient_at(-h))]
    scale = max(float(f.abs().max()) for f in fd)
    assert scale > 0
    assert max(float((a - b).abs().max()) for a, b in zip(hv, fd)) < 1e-5 * scale
