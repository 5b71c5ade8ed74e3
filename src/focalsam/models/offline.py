"""Downloads that fail fast offline: a bounded reachability probe before any download, and
the local caches a download would have filled."""

from __future__ import annotations

import os
import socket
import threading
from pathlib import Path
from typing import Any

#: seconds the probe waits for a name lookup and a TCP connection, together
PROBE_SECONDS = 3.0


def reachable(host: str, port: int = 443, timeout: float = PROBE_SECONDS) -> bool:
    """Whether a TCP connection to ``host:port`` opens within ``timeout`` seconds (the name
    lookup included: it runs in a daemon thread that is abandoned when it hangs)."""
    result: list[bool] = []

    def probe() -> None:
        try:
            with socket.create_connection((host, port), timeout=timeout):
                result.append(True)
        except OSError:
            result.append(False)

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(timeout)
    return bool(result and result[0])


def cached_open_clip_file(cfg: dict[str, Any]) -> Path | None:
    """The file open_clip's download of ``cfg`` would use, when it is already cached
    (Hugging Face hub cache, or open_clip's URL cache ``~/.cache/clip``)."""
    hub = str(cfg.get("hf_hub") or "")
    if hub:
        found = _hub_cached(*os.path.split(hub))
        if found is not None:
            return found
    url = str(cfg.get("url") or "")
    if url:
        path = Path(os.path.expanduser("~/.cache/clip")) / os.path.basename(url)
        if path.is_file():
            return path
    return None


def download_host(cfg: dict[str, Any]) -> str:
    """The host a download of ``cfg`` contacts first."""
    if cfg.get("hf_hub"):
        return "huggingface.co"
    from urllib.parse import urlparse

    return urlparse(str(cfg.get("url") or "")).hostname or "huggingface.co"


def _hub_cached(model_id: str, filename: str) -> Path | None:
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return None
    for name in ("open_clip_model.safetensors", filename or "open_clip_pytorch_model.bin"):
        found = try_to_load_from_cache(model_id, name)
        if isinstance(found, str):
            return Path(found)
    return None


def backbone_download(library: str, arch: str) -> tuple[str, bool]:
    """Where the pretrained weights of a ``timm`` / ``torchvision`` backbone ``arch`` come
    from: ``(host, cached)``, ``cached`` when the library's own cache already holds them."""
    from urllib.parse import urlparse

    if library == "timm":
        import timm

        cfg = timm.models.get_pretrained_cfg(arch)
        hub = str(getattr(cfg, "hf_hub_id", "") or "")
        if hub:
            return "huggingface.co", _timm_hub_cached(hub)
        url = str(getattr(cfg, "url", "") or "")
    else:
        from torchvision.models import get_model_weights

        url = str(get_model_weights(arch).DEFAULT.url)  # type: ignore[attr-defined]
    import torch

    cached = (Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(url)).is_file()
    return urlparse(url).hostname or "huggingface.co", cached


def _timm_hub_cached(model_id: str) -> bool:
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return False
    names = ("model.safetensors", "pytorch_model.bin", "open_clip_pytorch_model.bin")
    return any(isinstance(try_to_load_from_cache(model_id, n), str) for n in names)
