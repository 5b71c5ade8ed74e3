"""The offline demo: a small compare of plain SGD, SAM and Focal-SAM on long-tailed
digits (the ``demo`` preset, logit-adjusted loss), three seeds each."""

from __future__ import annotations

import time
from pathlib import Path

#: the demo's rows (the first is the baseline) and seeds
DEMO_OPTIMIZERS = ("plain", "sam", "focal_sam")
DEMO_SEEDS = (0, 1, 2)


def run_demo(epochs: int | None = None, root: Path | None = None) -> int:
    """Run the demo compare into ``root`` (default ``runs/demo-TIME``) and print its
    table: mean ± std over seeds, with differences within noise marked."""
    from focalsam.compare import CompareSpec, default_out, run_compare, terminal

    overrides = ["tensorboard=false"] + ([f"epochs={epochs}"] if epochs is not None else [])
    spec = CompareSpec.create("demo", DEMO_OPTIMIZERS, DEMO_SEEDS, overrides)
    out = Path(root) if root is not None else default_out("demo")
    print(
        "focalsam demo: SGD vs SAM vs Focal-SAM on long-tailed digits (offline, logit-adjusted "
        f"loss), seeds {', '.join(map(str, DEMO_SEEDS))}"
    )
    t0 = time.perf_counter()
    doc, failed = run_compare(spec, out, flag="the demo folder")
    print(terminal(doc))
    print(f"figures: {out / 'accuracy_vs_throughput.png'}, {out / 'per_class.png'}")
    print(f"table: {out / 'compare.md'}; total {time.perf_counter() - t0:.1f} s")
    return 1 if failed else 0
