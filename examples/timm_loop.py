"""Focal-SAM in a timm-style training loop: timm's model and data config, bf16 autocast,
Mixup/CutMix, a timm cosine schedule; on a long-tailed copy of digits.

Needs timm (``pip install timm``). Runs offline; on a GPU in seconds, on a CPU in minutes:

    python examples/timm_loop.py            # bf16 autocast on the GPU, or on the CPU
    python examples/timm_loop.py --no-bf16  # fp32: faster on a CPU without bf16 units

Mixup and CutMix give soft targets. The class weights then apply class by class: each
class's share ``t_{n,c}`` of a sample's soft cross-entropy is weighted by that class's
weight (:mod:`focalsam.integrations.soft_targets`). The loop hands the optimizer one loss
per (sample, class) with the class as its label, so the step is the one rule of the
library, exact for any mix.
"""

from __future__ import annotations

import argparse

import numpy as np
import timm
import torch
from PIL import Image
from timm.data import Mixup, create_transform, resolve_data_config
from timm.scheduler import CosineLRScheduler
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from focalsam.data import digits_lt
from focalsam.integrations.soft_targets import soft_target_losses
from focalsam.metrics import LongTailAccuracy
from focalsam.optim import FocalSAM


class DigitImages(Dataset):
    """Digits' 8x8 grey images as RGB PIL images through a timm transform."""

    def __init__(self, x: Tensor, y: Tensor, transform) -> None:
        pixels = (x.squeeze(1).numpy() * 255).astype(np.uint8)
        self.images = [Image.fromarray(p).convert("RGB") for p in pixels]
        self.labels = y.tolist()
        self.transform = transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[Tensor, int]:
        return self.transform(self.images[i]), self.labels[i]


def main(
    model_name: str = "resnet10t",
    epochs: int = 8,
    batch_size: int = 64,
    bf16: bool = True,
    max_batches: int | None = None,
    seed: int = 0,
) -> dict:
    """Train ``model_name`` for ``epochs`` (at most ``max_batches`` steps an epoch) and
    return the many/medium/few test accuracy."""
    torch.manual_seed(seed)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    data = digits_lt()
    counts = data.class_counts.tolist()
    classes = len(counts)
    print("train counts per class:", counts)

    model = timm.create_model(model_name, pretrained=False, num_classes=classes).to(device)
    # timm's data config of the model, at the 32-px size this data calls for
    config = resolve_data_config({"input_size": (3, 32, 32)}, model=model)
    train_tf = create_transform(**config, is_training=True, hflip=0.0, scale=(0.7, 1.0))
    test_tf = create_transform(**config, is_training=False)
    train = DataLoader(
        DigitImages(data.x_train, data.y_train, train_tf),
        batch_size=batch_size,
        shuffle=True,
        drop_last=True,  # Mixup pairs a batch with its flip: an even batch size
    )
    test = DataLoader(DigitImages(data.x_test, data.y_test, test_tf), batch_size=256)
    mixup = Mixup(mixup_alpha=0.8, cutmix_alpha=1.0, label_smoothing=0.1, num_classes=classes)

    opt = FocalSAM(
        model.parameters(),
        torch.optim.SGD,
        class_counts=counts,
        rho=0.05,
        gamma=2.0,
        lam=0.8,
        lr=0.1,
        momentum=0.9,
        weight_decay=5e-4,
    )
    sched = CosineLRScheduler(opt, t_initial=epochs, warmup_t=1, warmup_lr_init=0.01)
    # the class of each (sample, class) loss
    labels = torch.arange(classes, device=device).repeat(batch_size)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16)

    for epoch in range(epochs):
        model.train()
        total = 0.0
        for i, (x, y) in enumerate(train):
            if max_batches is not None and i == max_batches:
                break
            x, soft = mixup(x.to(device), y.to(device))

            def closure(x: Tensor = x, soft: Tensor = soft) -> Tensor:
                with autocast:
                    logits = model(x)
                return soft_target_losses(logits.float(), soft)[0]

            losses = opt.step(closure, labels)
            total += float(losses.mean()) / min(len(train), max_batches or len(train))
        sched.step(epoch + 1)
        print(f"epoch {epoch + 1}: train loss {total:.4f}")

    accuracy = LongTailAccuracy(classes, class_counts=counts, thresholds=(70, 25))
    model.eval()
    with torch.no_grad(), autocast:
        for x, y in test:
            accuracy.update(model(x.to(device)).float().cpu(), y)
    r = accuracy.compute()
    print(
        f"test accuracy {r['overall']:.3f}: many {r['many']:.3f}, "
        f"medium {r['medium']:.3f}, few {r['few']:.3f}"
    )
    return r


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet10t", help="a timm model name")
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--no-bf16", dest="bf16", action="store_false", help="fp32, no autocast")
    args = parser.parse_args()
    main(args.model, args.epochs, bf16=args.bf16)
