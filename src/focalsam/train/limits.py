"""Documented bounds on sizes and on the files focalsam reads, checked before anything is
written.

The maxima are set far above any published recipe and low enough that a typo (an extra
zero, ``10**9``) is refused in one line instead of exhausting memory or hanging:

=========================  =======  ==============================================
setting                    maximum  why
=========================  =======  ==============================================
``run.seed``               2**32-1  the range numpy's and torch's generators accept
``data.image_size``        1024     a ViT-B/16 at 1024 px already needs 4096 tokens
``model.adapter_bottleneck`` 4096   wider than any CLIP tower's own width (768-1024)
``model.lora_rank``        1024     a rank above the layer's width changes nothing
``model.vpt_tokens``       1024     four times a ViT-B/16's 196 image tokens
``analyze --top-k``        1000     eigenpairs held at once, one copy of the model each
YAML / JSON file           16 MiB   configs, reports and records are a few KiB
YAML / JSON nesting        64       the schema is 4 levels deep
=========================  =======  ==============================================

YAML aliases (``*name``) are refused: they can expand a few lines into gigabytes.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import yaml

from focalsam.errors import FileLimitError
from focalsam.models.backbones import BACKBONE_TUNING, is_backbone_name
from focalsam.train.errors import ConfigError

MAX_SEED = 2**32 - 1
MAX_IMAGE_SIZE = 1024
MAX_ADAPTER_BOTTLENECK = 4096
MAX_LORA_RANK = 1024
MAX_VPT_TOKENS = 1024
MAX_TOP_K = 1000
MAX_FILE_BYTES = 16 * 2**20
MAX_DEPTH = 64

#: model.tuning values a model without parameter-efficient tuning accepts (the default
#: and ``full``: both train every weight)
PLAIN_TUNING = ("adaptformer", "full")


def check_at_most(name: str, value: Any, maximum: int, minimum: int = 1) -> None:
    """Refuse ``value`` outside ``[minimum, maximum]`` naming the setting and the bound."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{name} must be an integer, got {value!r}")
    if not minimum <= value <= maximum:
        raise ConfigError(f"{name} must lie in {minimum}..{maximum}, got {value}")


def check_config_limits(cfg: Any, *, clip: bool) -> None:
    """Seeds, sizes and tuning of a whole config (``clip``: the model is a CLIP tower)."""
    check_at_most("run.seed", cfg.run.seed, MAX_SEED, minimum=0)
    if cfg.data.image_size is not None:
        check_at_most("data.image_size", cfg.data.image_size, MAX_IMAGE_SIZE)
    m = cfg.model
    if m.adapter_bottleneck is not None:
        check_at_most("model.adapter_bottleneck", m.adapter_bottleneck, MAX_ADAPTER_BOTTLENECK)
    check_at_most("model.lora_rank", m.lora_rank, MAX_LORA_RANK)
    check_at_most("model.vpt_tokens", m.vpt_tokens, MAX_VPT_TOKENS)
    backbone_tuning = is_backbone_name(m.name) and m.tuning in BACKBONE_TUNING
    if not clip and m.tuning not in PLAIN_TUNING and not backbone_tuning:
        raise ConfigError(
            f"model.tuning={m.tuning} is parameter-efficient tuning of a CLIP tower; "
            f"{m.name} has none and would train every weight (use a clip_* model, or drop it)"
        )
    if not clip:
        for key in ("clip_weights", "clip_pretrained"):
            if getattr(m, key) is not None:
                raise ConfigError(f"model.{key} is for CLIP models; {m.name} does not use it")


def check_batch_fits(batch_size: int, images: int, world: int, what: str) -> None:
    """Refuse a batch larger than each process's share of ``images`` (it would train one
    short step per epoch while the config says otherwise)."""
    share = images // max(world, 1)
    if batch_size > share:
        per = f" ({images} over {world} processes)" if world > 1 else ""
        raise ConfigError(
            f"train.batch_size={batch_size} is larger than the {share} images of {what}{per}; "
            f"choose a batch of at most {share}"
        )


class LimitedLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses aliases and nesting deeper than :data:`MAX_DEPTH`."""

    _depth = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            mark = self.peek_event().start_mark
            raise yaml.composer.ComposerError(
                None, None, "aliases (*name) are not accepted in focalsam files", mark
            )
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                raise yaml.composer.ComposerError(
                    None,
                    None,
                    f"nested deeper than {MAX_DEPTH} levels",
                    self.peek_event().start_mark,
                )
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


def load_yaml_text(text: str) -> Any:
    """Parse YAML with :class:`LimitedLoader` (raises ``yaml.YAMLError``)."""
    return yaml.load(text, Loader=LimitedLoader)  # noqa: S506 - a SafeLoader subclass


def read_text_limited(path: Path, what: str) -> str:
    """The text of ``path``, refused in one line when over :data:`MAX_FILE_BYTES`."""
    size = os.stat(path).st_size
    if size > MAX_FILE_BYTES:
        raise FileLimitError(
            f"{what} {path} is {size} bytes, over the limit of {MAX_FILE_BYTES} for such a file"
        )
    return Path(path).read_text(encoding="utf-8")


def read_json(path: Path, what: str) -> Any:
    """A JSON file of focalsam's (a report, an analysis), refused in one line when it is
    too large, too deep, not UTF-8, unreadable or not JSON."""
    try:
        text = read_text_limited(path, what)
        return loads_json(text, f"{what} {path}")
    except (OSError, UnicodeDecodeError) as exc:
        reason = getattr(exc, "strerror", None) or type(exc).__name__
        raise FileLimitError(f"{what} {path} cannot be read: {reason}") from None


def loads_json(text: str, what: str) -> Any:
    """``json.loads`` with a depth limit, its errors as one line naming ``what``."""
    depth = deepest = 0
    in_string = escaped = False
    for ch in text:  # nesting depth, outside strings
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif ch in "]}":
            depth -= 1
    if deepest > MAX_DEPTH:
        raise FileLimitError(f"{what} is nested {deepest} levels deep (at most {MAX_DEPTH})")
    try:
        return json.loads(text)
    except ValueError as exc:
        raise FileLimitError(f"{what} is not valid JSON: {exc}") from None
