"""Focal-SAM inside the Hugging Face ``Trainer``, on a long-tailed copy of digits.

Needs the ``hf`` extra: ``pip install 'focalsam[hf]'``. Runs offline on a CPU in about two
minutes of CPU time (a small ViT built from a config, nothing downloaded):

    python examples/hf_trainer.py

Under DDP, launch the same script with ``torchrun --nproc-per-node 2 examples/hf_trainer.py``
(or ``accelerate launch``). ``gradient_accumulation_steps``, ``bf16``/``fp16``, the lr
schedule, ``max_grad_norm`` and checkpoints are the Trainer's usual arguments.
"""

from __future__ import annotations

import tempfile

import torch
from transformers import TrainingArguments, ViTConfig, ViTForImageClassification

from focalsam.data import digits_lt
from focalsam.integrations.transformers import SharpnessAwareTrainer
from focalsam.metrics import LongTailAccuracy


def as_images(x: torch.Tensor) -> torch.Tensor:
    """Digits' 1x8x8 images as the 3-channel images a ViT takes."""
    return x.reshape(-1, 1, 8, 8).expand(-1, 3, 8, 8).contiguous()


def main(epochs: int = 10, seed: int = 0) -> dict:
    data = digits_lt()
    counts = data.class_counts.tolist()
    print("train counts per class:", counts)
    train = [
        {"pixel_values": x, "labels": int(y)} for x, y in zip(as_images(data.x_train), data.y_train)
    ]
    torch.manual_seed(seed)
    config = ViTConfig(
        image_size=8,
        patch_size=2,
        num_channels=3,
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=4,
        intermediate_size=64,
        num_labels=len(counts),
    )
    model = ViTForImageClassification(config)
    args = TrainingArguments(
        output_dir=tempfile.mkdtemp(prefix="focalsam-hf-"),
        num_train_epochs=epochs,
        per_device_train_batch_size=32,
        learning_rate=3e-3,
        weight_decay=0.05,
        lr_scheduler_type="cosine",
        warmup_steps=20,
        seed=seed,
        report_to="none",
        save_strategy="no",
        logging_steps=20,
        disable_tqdm=True,
        dataloader_pin_memory=False,
    )
    trainer = SharpnessAwareTrainer(
        model=model,
        args=args,
        train_dataset=train,
        optimizer="focal_sam",  # class counts come from the training labels
        optimizer_options={"rho": 0.05, "gamma": 2.0, "lam": 0.8},
    )
    trainer.train()
    accuracy = LongTailAccuracy(len(counts), class_counts=counts, thresholds=(70, 25))
    model.eval()
    with torch.no_grad():
        accuracy.update(model(pixel_values=as_images(data.x_test)).logits, data.y_test)
    r = accuracy.compute()
    print(
        f"test accuracy {r['overall']:.3f}: many {r['many']:.3f}, "
        f"medium {r['medium']:.3f}, few {r['few']:.3f}"
    )
    return r


if __name__ == "__main__":
    main()
