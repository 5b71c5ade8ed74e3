"""``focalsam make-example DIR``: a small long-tailed image folder, offline.

The images are scikit-learn's handwritten digits (:func:`~focalsam.data.digits.digits_lt`:
long-tailed train split, balanced test split), upscaled to ``size`` px RGB PNGs in
torchvision's ImageFolder layout, ``DIR/train/<class>/`` and ``DIR/test/<class>/``, with
the digits' names (``zero`` ... ``nine``) as class names.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from focalsam.data.digits import digits_lt
from focalsam.errors import InputError

__all__ = ["DIGIT_NAMES", "make_example"]

DIGIT_NAMES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")


def make_example(
    folder: str | Path,
    imbalance_ratio: float = 20.0,
    test_per_class: int = 20,
    size: int = 32,
    *,
    with_test: bool = True,
    force: bool = False,
    seed: int = 0,
) -> dict[str, list[int]]:
    """Write the folder; returns the images per class of each split written.

    Refuses a folder that exists and is not empty unless ``force``.
    """
    from PIL import Image

    folder = Path(folder)
    if folder.exists() and (not folder.is_dir() or any(folder.iterdir())) and not force:
        raise InputError(f"{folder} exists and is not empty: choose a new folder (or --force)")
    if size < 8:
        raise InputError(f"size must be >= 8 px, got {size}")
    d = digits_lt(imbalance_ratio, "exp", test_per_class, seed)
    counts: dict[str, list[int]] = {}
    splits = [("train", d.x_train, d.y_train)]
    if with_test:
        splits.append(("test", d.x_test, d.y_test))
    for split, x, y in splits:
        pixels = (x[:, 0].numpy() * 255).round().astype(np.uint8)
        labels = y.numpy()
        seen = [0] * 10
        for image, label in zip(pixels, labels):
            target = folder / split / DIGIT_NAMES[label]
            target.mkdir(parents=True, exist_ok=True)
            gray = Image.fromarray(image, mode="L").resize((size, size), Image.Resampling.BILINEAR)
            gray.convert("RGB").save(target / f"{seen[label]:04d}.png")
            seen[label] += 1
        counts[split] = seen
    return counts
