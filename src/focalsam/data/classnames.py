"""Class names in label order, for text-initialised heads (CLIP prompts ``"a photo of a {}."``).

- CIFAR-10 / CIFAR-100: the datasets' own label order (read from a ``meta`` file when a
  root is given, else the public lists written here; CIFAR-100's fine labels are
  alphabetical in its ``meta``).
- ImageNet: the 1,000 names torchvision ships with its ImageNet weights' metadata (no download),
  or open_clip's names curated by OpenAI for zero-shot prompts.
- iNaturalist 2018: ``categories.json``, indexed by category id (``names[i]`` is the category
  whose ``id == i``; its labels are those ids, not an alphabetical rank).
"""

from __future__ import annotations

import json
from os import PathLike
from pathlib import Path
from typing import Any

from focalsam.data.errors import DataError, DataNotFoundError

CIFAR10_CLASSES = (
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
)

CIFAR100_CLASSES = (
    "apple",
    "aquarium_fish",
    "baby",
    "bear",
    "beaver",
    "bed",
    "bee",
    "beetle",
    "bicycle",
    "bottle",
    "bowl",
    "boy",
    "bridge",
    "bus",
    "butterfly",
    "camel",
    "can",
    "castle",
    "caterpillar",
    "cattle",
    "chair",
    "chimpanzee",
    "clock",
    "cloud",
    "cockroach",
    "couch",
    "crab",
    "crocodile",
    "cup",
    "dinosaur",
    "dolphin",
    "elephant",
    "flatfish",
    "forest",
    "fox",
    "girl",
    "hamster",
    "house",
    "kangaroo",
    "keyboard",
    "lamp",
    "lawn_mower",
    "leopard",
    "lion",
    "lizard",
    "lobster",
    "man",
    "maple_tree",
    "motorcycle",
    "mountain",
    "mouse",
    "mushroom",
    "oak_tree",
    "orange",
    "orchid",
    "otter",
    "palm_tree",
    "pear",
    "pickup_truck",
    "pine_tree",
    "plain",
    "plate",
    "poppy",
    "porcupine",
    "possum",
    "rabbit",
    "raccoon",
    "ray",
    "road",
    "rocket",
    "rose",
    "sea",
    "seal",
    "shark",
    "shrew",
    "skunk",
    "skyscraper",
    "snail",
    "snake",
    "spider",
    "squirrel",
    "streetcar",
    "sunflower",
    "sweet_pepper",
    "table",
    "tank",
    "telephone",
    "television",
    "tiger",
    "tractor",
    "train",
    "trout",
    "tulip",
    "turtle",
    "wardrobe",
    "whale",
    "willow_tree",
    "wolf",
    "woman",
    "worm",
)

_CIFAR = {"cifar10": CIFAR10_CLASSES, "cifar100": CIFAR100_CLASSES}


def cifar_class_names(
    dataset: str = "cifar10", root: str | PathLike[str] | None = None
) -> list[str]:
    """CIFAR-10 / CIFAR-100 (fine) class names in label order; from ``root``'s ``meta`` file
    when ``root`` is given (see :func:`focalsam.data.cifar.cifar_class_names`), else built in."""
    key = str(dataset).strip().lower().replace("-", "")
    if key not in _CIFAR:
        raise DataError(f"unknown CIFAR dataset {dataset!r}; valid: cifar10, cifar100")
    if root is not None:
        from focalsam.data.cifar import cifar_class_names as from_meta

        return from_meta(root, key)
    return list(_CIFAR[key])


def imagenet_class_names(source: str = "torchvision") -> list[str]:
    """The 1,000 ImageNet-1k class names in label (synset-sorted) order, from a package already
    installed: ``"torchvision"`` (its ImageNet weights' ``meta["categories"]``) or ``"openai"``
    (open_clip's copy of the names OpenAI curated for CLIP's zero-shot prompts)."""
    if source == "torchvision":
        try:
            from torchvision.models import ResNet50_Weights
        except ImportError as exc:
            raise ImportError(
                "ImageNet class names come from torchvision: pip install 'focalsam[vision]'"
            ) from exc
        names = list(ResNet50_Weights.IMAGENET1K_V1.meta["categories"])
    elif source == "openai":
        try:
            from open_clip import IMAGENET_CLASSNAMES
        except ImportError as exc:
            raise ImportError(
                "OpenAI's ImageNet class names come from open_clip: pip install 'focalsam[clip]'"
            ) from exc
        names = list(IMAGENET_CLASSNAMES)
    else:
        raise DataError(
            f"unknown ImageNet class-name source {source!r}; valid: torchvision, openai"
        )
    if len(names) != 1000:
        raise DataError(f"{source} lists {len(names)} ImageNet class names, expected 1000")
    return names


def _category(entry: Any, path: Path, index: int) -> tuple[int, str]:
    if not isinstance(entry, dict) or "id" not in entry or "name" not in entry:
        raise DataError(
            f"{path}: entry {index} is not an object with 'id' and 'name': {entry!r:.80}"
        )
    cid, name = entry["id"], entry["name"]
    if isinstance(cid, bool) or not isinstance(cid, int) or not isinstance(name, str):
        raise DataError(
            f"{path}: entry {index} needs an integer 'id' and a string 'name', got "
            f"id={cid!r}, name={name!r:.60}"
        )
    return cid, name


def inat_class_names(
    categories_json: str | PathLike[str], num_classes: int | None = None
) -> list[str]:
    """iNaturalist 2018 class names indexed by category id: ``names[i]`` is the ``name`` of
    the entry of ``categories.json`` (a list of ``{"id": int, "name": str, ...}``) whose
    ``id == i``. The ids must be exactly ``0 .. N - 1`` (``N = num_classes`` when given)."""
    path = Path(categories_json)
    if not path.is_file():
        raise DataNotFoundError(
            f"iNaturalist categories file {path} not found; it ships with the iNaturalist 2018 "
            "annotations (categories.json)"
        )
    try:
        entries = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"{path} is not readable JSON ({exc})") from exc
    if not isinstance(entries, list) or not entries:
        raise DataError(f"{path}: expected a non-empty JSON list of categories")
    by_id: dict[int, str] = {}
    for index, entry in enumerate(entries):
        cid, name = _category(entry, path, index)
        if cid in by_id:
            raise DataError(f"{path}: category id {cid} appears twice ({by_id[cid]!r}, {name!r})")
        by_id[cid] = name
    expected = len(by_id) if num_classes is None else num_classes
    missing = sorted(set(range(expected)) - set(by_id))
    extra = sorted(set(by_id) - set(range(expected)))
    if missing or extra:
        raise DataError(
            f"{path}: category ids must be exactly 0..{expected - 1}; missing {missing[:5]}"
            f"{' ...' if len(missing) > 5 else ''}, outside {extra[:5]}"
            f"{' ...' if len(extra) > 5 else ''}"
        )
    return [by_id[i] for i in range(expected)]
