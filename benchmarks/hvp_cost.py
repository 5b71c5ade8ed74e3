"""Cost of one Hessian-vector product relative to one gradient (forward + backward) pass.

ResNet-32 on CIFAR-shaped random data (3x32x32, 10 classes), eval mode, one batch.
Timed, interleaved round by round in one process (these machines are noisy), medians
of per-call wall times:

- ``forward``: the loss alone, no graph;
- ``gradient``: ``focalsam.analysis._closure.dataset_gradient`` (forward + backward),
  the unit of the ratios;
- ``hvp_double_backward``: ``hvp(..., method="double_backward")``: forward, backward
  with ``create_graph=True``, backward of ``g . v``;
- ``hvp_func``: ``hvp(..., method="func")``: ``torch.func.jvp`` of ``torch.func.grad``
  (forward-over-reverse).

An HVP is often quoted as about 2 gradient passes (Pearlmutter 1994). Counting
convolutions, double backward does 9 where a gradient does 3 (forward 1, backward 2,
and 2 for each of those 3 in the second backward), so 3 is the floor here; on a 2-core
CPU it measures about 4 (BatchNorm's generic double-backward formula and element-wise
products add the rest), torch.func about 5.

    python benchmarks/hvp_cost.py                       # CPU, batch 128, 5 rounds
    python benchmarks/hvp_cost.py --device cuda --batch-size 512 --rounds 20 --json
"""

from __future__ import annotations

import argparse
import json
import platform
from collections.abc import Callable

import torch
import torch.nn.functional as F
from _timing import interleaved_medians

from focalsam.analysis._closure import dataset_gradient, hvp, trainable_params
from focalsam.models import resnet32


def main(argv: list[str] | None = None) -> dict[str, object]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1, help="untimed rounds first")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)

    device = torch.device(args.device)
    torch.manual_seed(args.seed)
    model = resnet32(num_classes=10).to(device).eval()
    gen = torch.Generator().manual_seed(args.seed)
    x = torch.randn(args.batch_size, 3, 32, 32, generator=gen).to(device)
    y = torch.randint(0, 10, (args.batch_size,), generator=gen).to(device)
    batches = [(x, y)]
    params = trainable_params(model)
    vector = [torch.randn(p.shape, generator=gen).to(device) for p in params]

    def forward() -> None:
        with torch.no_grad():
            F.cross_entropy(model(x), y)

    steps: dict[str, Callable[[], object]] = {
        "forward": forward,
        "gradient": lambda: dataset_gradient(model, F.cross_entropy, batches, params),
        "hvp_double_backward": lambda: hvp(model, F.cross_entropy, batches, params, vector),
        "hvp_func": lambda: hvp(model, F.cross_entropy, batches, params, vector, method="func"),
    }
    if args.warmup:
        interleaved_medians(steps, device, args.warmup)
    medians = interleaved_medians(steps, device, args.rounds)
    unit = medians["gradient"]
    report: dict[str, object] = {
        "model": "resnet32",
        "params": sum(p.numel() for p in params),
        "device": str(device),
        "device_name": (
            torch.cuda.get_device_name(device)
            if device.type == "cuda"
            else platform.processor() or platform.machine()
        ),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "batch_size": args.batch_size,
        "rounds": args.rounds,
        "seconds": medians,
        "ratio_to_gradient": {name: t / unit for name, t in medians.items()},
    }
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(
            f"ResNet-32, batch {args.batch_size}, {device} ({torch.get_num_threads()} threads), "
            f"eval mode, median of {args.rounds} interleaved rounds"
        )
        for name, t in medians.items():
            print(f"  {name:<22} {t * 1000:9.1f} ms   {t / unit:5.2f} x gradient")
    return report


if __name__ == "__main__":
    main()
