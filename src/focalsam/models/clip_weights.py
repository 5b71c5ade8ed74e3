"""Reading CLIP weights into an open_clip ``CLIP``: OpenAI's TorchScript archive (``.pt``),
open_clip's own formats (``.bin`` / ``.pth`` state dicts, ``.safetensors``), or a pretrained
tag that open_clip downloads. Weights are always loaded into fp32 parameters (OpenAI's file
holds fp16 tensors; they are widened, never kept in fp16)."""

from __future__ import annotations

import hashlib
import warnings
import zipfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from focalsam.errors import InputError
from focalsam.models.offline import cached_open_clip_file, download_host, reachable

#: Keys of OpenAI's archive that are not parameters of open_clip's ``CLIP``.
_OPENAI_EXTRA_KEYS = ("input_resolution", "context_length", "vocab_size")


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    """SHA-256 hex digest of a file, read in ``chunk``-byte pieces (1 MB by default)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def where_to_get(arch: str = "ViT-B-16", tag: str = "openai") -> str:
    """Where open_clip's registry says the ``arch`` / ``tag`` weights live (URL, HF hub)."""
    try:
        import open_clip

        cfg = open_clip.get_pretrained_cfg(arch, tag) or {}
    except ImportError:
        cfg = {}
    places = []
    if cfg.get("url"):
        places.append(str(cfg["url"]))
    if cfg.get("hf_hub"):
        places.append(f"https://huggingface.co/{str(cfg['hf_hub']).rstrip('/')}")
    found = " or ".join(places) if places else "open_clip's pretrained registry"
    return f"open_clip's {arch!r} {tag!r} weights ({found})"


def is_torchscript_archive(path: Path) -> bool:
    """A TorchScript archive is a zip with ``constants.pkl`` and ``code/`` (torch.save's lacks them)."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
    return any(n.endswith("/constants.pkl") or n == "constants.pkl" for n in names)


def _non_persistent_buffers(module: nn.Module) -> set[str]:
    names = set()
    for prefix, sub in module.named_modules():
        for name in getattr(sub, "_non_persistent_buffers_set", ()):
            names.add(f"{prefix}.{name}" if prefix else name)
    return names


def _torchscript_state_dict(path: Path, clip: nn.Module) -> dict[str, Any]:
    """The tensors of a TorchScript archive, less OpenAI's non-parameter entries and whatever
    ``clip`` holds as non-persistent buffers (a traced model saves them all)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit.load is deprecated
        module = torch.jit.load(str(path), map_location="cpu")
    drop = set(_OPENAI_EXTRA_KEYS) | _non_persistent_buffers(clip)
    return {k: v for k, v in module.state_dict().items() if k not in drop}


def load_clip_weights(clip: nn.Module, path: str | Path, arch: str = "ViT-B-16") -> None:
    """Load ``path`` into the open_clip ``CLIP`` ``clip`` (strict: every key must match).

    TorchScript archives (OpenAI's ``ViT-B-16.pt``) are read with ``torch.jit.load``; anything
    else goes through ``open_clip.load_checkpoint`` (state dicts, ``{"state_dict": ...}``,
    ``.safetensors``, ``module.`` prefixes). Errors are :class:`InputError` naming the file."""
    import open_clip

    file = Path(path)
    how = f"get {where_to_get(arch)} and pass clip_weights=PATH"
    if not file.is_file():
        raise InputError(f"CLIP weights file {str(file)!r} not found; {how}")
    try:
        if is_torchscript_archive(file):
            state = _torchscript_state_dict(file, clip)
            clip.load_state_dict(state, strict=True)
        else:
            open_clip.load_checkpoint(clip, str(file), strict=True, weights_only=True)
    except Exception as exc:  # unpickling, zip, safetensors and key errors: all a bad file
        reason = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        raise InputError(
            f"CLIP weights file {str(file)!r} could not be loaded into {arch} ({reason}); "
            f"expected {how}"
        ) from exc


def download_pretrained(arch: str, tag: str) -> Path:
    """The local path of open_clip's ``arch`` / ``tag`` weights, downloading them if needed."""
    import open_clip

    cfg = open_clip.get_pretrained_cfg(arch, tag)
    if not cfg:
        tags = ", ".join(open_clip.list_pretrained_tags_by_model(arch))
        raise InputError(f"unknown open_clip pretrained tag {tag!r} for {arch}; valid: {tags}")
    cached = cached_open_clip_file(cfg)
    if cached is not None:
        return cached
    host = download_host(cfg)
    if not reachable(host):  # fail in seconds, not after a minute of retries
        raise InputError(
            f"clip_pretrained={tag} needs to download weights, but {host} cannot be reached "
            f"(offline?); give a local file instead: clip_weights=PATH to {where_to_get(arch, tag)}"
        )
    try:
        return Path(open_clip.download_pretrained(cfg))
    except Exception as exc:  # network errors come in many types
        raise InputError(
            f"could not download open_clip {arch} {tag!r} weights ({type(exc).__name__}: "
            f"{str(exc)[:120]}); without internet pass clip_weights=PATH to "
            f"{where_to_get(arch, tag)}"
        ) from exc
