"""Focal-SAM in your own training loop, on a long-tailed copy of scikit-learn's digits.

Runs offline in seconds on a CPU:

    python examples/own_loop.py
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from torch import nn

from focalsam.optim import create_optimizer


def long_tailed_digits(ratio: float = 20.0, seed: int = 0):
    """Train: per class n_i = int(n_max * ratio^(-i/9)); test: the rest, balanced by class."""
    data = load_digits()
    x = torch.tensor(data.images, dtype=torch.float32).reshape(-1, 64) / 16.0
    y = torch.tensor(data.target)
    rng = np.random.RandomState(seed)
    train, test = [], []
    for c in range(10):
        idx = np.where(data.target == c)[0]
        rng.shuffle(idx)
        n = int(120 * (1 / ratio) ** (c / 9))
        train += idx[:n].tolist()
        test += idx[120:170].tolist()
    return x[train], y[train], x[test], y[test]


def main() -> None:
    x_tr, y_tr, x_te, y_te = long_tailed_digits()
    counts = torch.bincount(y_tr, minlength=10).tolist()
    print("train counts per class:", counts)
    for name, kw in [
        ("plain", {}),
        ("sam", {"rho": 0.05}),
        ("focal_sam", {"rho": 0.05, "gamma": 2.0, "lam": 0.8, "class_counts": counts}),
    ]:
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 10))
        opt = create_optimizer(
            name, model.parameters(), "sgd", lr=0.05, momentum=0.9, weight_decay=5e-4, **kw
        )
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=30)
        for _epoch in range(30):
            perm = torch.randperm(len(y_tr))
            for i in range(0, len(perm), 32):
                xb, yb = x_tr[perm[i : i + 32]], y_tr[perm[i : i + 32]]
                # The closure runs the forward pass and returns per-sample losses.
                opt.step(
                    lambda xb=xb, yb=yb, m=model: F.cross_entropy(m(xb), yb, reduction="none"), yb
                )
            sched.step()
        with torch.no_grad():
            pred = model(x_te).argmax(1)
        per_class = torch.stack([(pred[y_te == c] == c).float().mean() for c in range(10)])
        print(
            f"{name:>10}: test accuracy {per_class.mean():.3f}, last 3 (tail) classes {per_class[-3:].mean():.3f}"
        )


if __name__ == "__main__":
    main()
