"""Corrupted copies of in-memory uint8 images (Hendrycks & Dietterich, ICLR 2019).

The 15 ImageNet-C corruptions, 5 severities each, are produced by the ``imagecorruptions``
package (the ``corruptions`` extra, imported lazily). Its constants are ImageNet-C's (tuned for
224 px); CIFAR-10-C was made with smaller, CIFAR-specific constants, so images generated here
for 32 px are "ImageNet-C strength", not a copy of CIFAR-10-C.

Every image ``i`` is corrupted with numpy's global RNG seeded by
``crc32(f"{seed}:{corruption}:{severity}:{i}")`` (the caller's global RNG state is restored
afterwards), so the same ``(images, corruption, severity, seed)`` gives the same array in any
process with the same library versions. Severity 0 is the identity (clean images).
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import importlib.resources
import inspect
import json
import os
import sys
import tempfile
import threading
import types
import warnings
import zlib
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from focalsam.errors import InputError
from focalsam.train.paths import file_mode

__all__ = [
    "CORRUPTIONS",
    "EXTRA_CORRUPTIONS",
    "CorruptionCache",
    "available_corruptions",
    "corrupt_images",
    "corrupted",
    "images_digest",
]

#: The 15 ImageNet-C corruptions in the standard order (noise, blur, weather, digital).
CORRUPTIONS: tuple[str, ...] = (
    "gaussian_noise",
    "shot_noise",
    "impulse_noise",
    "defocus_blur",
    "glass_blur",
    "motion_blur",
    "zoom_blur",
    "snow",
    "frost",
    "fog",
    "brightness",
    "contrast",
    "elastic_transform",
    "pixelate",
    "jpeg_compression",
)
#: imagecorruptions' four held-out "validation" corruptions (not part of mCE).
EXTRA_CORRUPTIONS: tuple[str, ...] = ("speckle_noise", "gaussian_blur", "spatter", "saturate")
_KNOWN = CORRUPTIONS + EXTRA_CORRUPTIONS
_INSTALL = "pip install 'focalsam[corruptions]'"
_LOCK = threading.RLock()  # numpy's global RNG and the skimage patch are process-wide
_FUNCTIONS: dict[str, Callable[..., Any]] | None = None
_PROBES: dict[tuple[str, tuple[int, int]], str | None] = {}


def _resource_filename(package: str, resource: str) -> str:
    """``pkg_resources.resource_filename``: ``resource`` next to module / inside package."""
    module = importlib.import_module(package)
    anchor = package if hasattr(module, "__path__") else package.rpartition(".")[0]
    base: Any = importlib.resources.files(anchor) if anchor else Path(str(module.__file__)).parent
    for part in resource.replace("\\", "/").split("/"):
        if part not in ("", "."):
            base = base / part
    return str(base)


def _ensure_pkg_resources() -> None:
    """imagecorruptions 1.1.2 does ``from pkg_resources import resource_filename`` (its only
    use of it, for the frost images); setuptools >= 81 has no ``pkg_resources``, so register
    a one-function stand-in when the real one does not import."""
    if sys.modules.get("pkg_resources") is not None:
        return
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "pkg_resources is deprecated as an API"
            import pkg_resources  # noqa: F401
    except Exception:
        shim = types.ModuleType("pkg_resources", "focalsam's stand-in: resource_filename only")
        shim.resource_filename = _resource_filename  # type: ignore[attr-defined]
        sys.modules["pkg_resources"] = shim


def _functions() -> dict[str, Callable[..., Any]]:
    """imagecorruptions' ``name -> function(PIL image, severity)``, imported once."""
    global _FUNCTIONS
    if _FUNCTIONS is None:
        _ensure_pkg_resources()
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)
                import imagecorruptions
        except Exception as e:
            raise InputError(
                f"generating corruptions needs the imagecorruptions package, which does not "
                f"import ({type(e).__name__}: {e}): {_INSTALL}"
            ) from e
        _FUNCTIONS = dict(imagecorruptions.corruption_dict)
    return _FUNCTIONS


def _check_name(corruption: str) -> str:
    if corruption not in _KNOWN:
        raise InputError(f"unknown corruption {corruption!r}; valid: {', '.join(_KNOWN)}")
    return corruption


def _check_severity(severity: int) -> int:
    if isinstance(severity, bool) or not isinstance(severity, int | np.integer):
        raise InputError(f"severity must be an integer 0..5, got {severity!r}")
    if not 0 <= severity <= 5:
        raise InputError(f"severity must be 0 (clean) .. 5, got {severity}")
    return int(severity)


def _check_images(images: np.ndarray) -> np.ndarray:
    if not isinstance(images, np.ndarray) or images.dtype != np.uint8 or images.ndim != 4:
        shape = getattr(images, "shape", None)
        raise InputError(
            f"images must be a uint8 array (N, H, W, C), got {type(images).__name__} "
            f"{getattr(images, 'dtype', '')} {shape}"
        )
    if images.shape[3] not in (1, 3):
        raise InputError(f"images must have 1 or 3 channels (N, H, W, C), got {images.shape}")
    return images


def _image_seed(seed: int, corruption: str, severity: int, index: int) -> int:
    """The per-image seed: ``crc32("seed:corruption:severity:index")`` (stable across runs)."""
    return zlib.crc32(f"{int(seed)}:{corruption}:{severity}:{index}".encode())


@contextlib.contextmanager
def _seeded_backend() -> Iterator[None]:
    """Hold the lock, keep the caller's global RNG state, and make skimage's ``random_noise``
    (used by impulse_noise, which otherwise draws from a fresh unseeded ``default_rng``) take
    its seed from numpy's global RNG."""
    with _LOCK:
        state = np.random.get_state()
        util = sys.modules.get("skimage.util")
        original = getattr(util, "random_noise", None)
        try:
            params = inspect.signature(original).parameters if original else {}
        except (TypeError, ValueError):
            params = {}
        key = next((k for k in ("rng", "seed") if k in params), None)
        if key is not None:

            def random_noise(*args: Any, **kwargs: Any) -> Any:
                if kwargs.get(key) is None:
                    kwargs[key] = int(np.random.randint(0, 2**31 - 1))
                return original(*args, **kwargs)  # type: ignore[misc]

            setattr(util, "random_noise", random_noise)  # noqa: B010 (a module)
        try:
            yield
        finally:
            if key is not None:
                setattr(util, "random_noise", original)  # noqa: B010
            np.random.set_state(state)


def _apply(fn: Callable[..., Any], image: np.ndarray, corruption: str, severity: int) -> np.ndarray:
    """One ``(H, W, C)`` image; grayscale is repeated to RGB and the first channel kept."""
    from PIL import Image

    rgb = np.repeat(image, 3, axis=2) if image.shape[2] == 1 else image
    h, w = rgb.shape[:2]
    try:
        out = np.asarray(fn(Image.fromarray(rgb), severity))
    except Exception as e:
        first = str(e).splitlines()[0] if str(e) else ""
        raise InputError(
            f"imagecorruptions cannot apply {corruption} (severity {severity}) to {h}x{w} "
            f"images: {type(e).__name__}: {first}"
        ) from e
    if out.shape != rgb.shape:
        raise InputError(
            f"imagecorruptions' {corruption} (severity {severity}) turned a {h}x{w}x3 image "
            f"into shape {out.shape}: it does not support this image size"
        )
    out = np.clip(out, 0, 255).astype(np.uint8)  # truncation, as imagecorruptions' np.uint8()
    return out[..., :1] if image.shape[2] == 1 else out


def corrupt_images(
    images: np.ndarray, corruption: str, severity: int, *, seed: int = 0
) -> np.ndarray:
    """``corruption`` at ``severity`` (1..5; 0 = an unchanged copy) of uint8 ``(N, H, W, C)``.

    ``C`` is 1 or 3. Grayscale images are repeated to 3 channels for the corruption and the
    **first** channel is kept (taking the mean of three independently noised channels would
    divide the noise variance by 3, i.e. weaken the corruption). Images under 32 px, which
    imagecorruptions' own ``corrupt()`` refuses, are passed to its functions directly; check
    ``available_corruptions(size=(H, W))`` first. Seeded per image (see the module doc).

    >>> x = np.zeros((2, 8, 8, 1), np.uint8)
    >>> y = corrupt_images(x, "gaussian_noise", 0)
    >>> bool((y == x).all()) and y is not x
    True
    """
    images = _check_images(images)
    _check_name(corruption)
    severity = _check_severity(severity)
    if severity == 0:
        return images.copy()
    fn = _functions()[corruption]
    out = np.empty_like(images)
    with _seeded_backend():
        for i in range(len(images)):
            np.random.seed(_image_seed(seed, corruption, severity, i))
            out[i] = _apply(fn, images[i], corruption, severity)
    return out


def _probe(corruption: str, size: tuple[int, int]) -> str | None:
    """None when ``corruption`` runs at all 5 severities on a random image of ``size``."""
    image = np.random.default_rng(0).integers(0, 256, (1, *size, 3), dtype=np.uint8)
    try:
        for severity in range(1, 6):
            corrupt_images(image, corruption, severity, seed=0)
    except InputError as e:
        return str(e).removeprefix("imagecorruptions ")
    return None


def available_corruptions(
    names: Sequence[str] = CORRUPTIONS, *, size: tuple[int, int] = (32, 32)
) -> tuple[list[str], dict[str, str]]:
    """``(usable, reasons)``: which of ``names`` the installed libraries produce for ``size``
    ``(H, W)`` images, and a one-line reason for each that they do not.

    Each is probed once per process on a random image at severities 1..5. An unknown name or
    a missing ``imagecorruptions`` raises ``InputError``.
    """
    for name in names:
        _check_name(name)
    hw = tuple(int(v) for v in size)
    if len(hw) != 2 or min(hw) < 1:
        raise InputError(f"size must be (height, width) with positive sides, got {size!r}")
    _functions()
    usable: list[str] = []
    reasons: dict[str, str] = {}
    for name in dict.fromkeys(names):
        key = (name, (hw[0], hw[1]))
        if key not in _PROBES:
            _PROBES[key] = _probe(name, key[1])
        reason = _PROBES[key]
        if reason is None:
            usable.append(name)
        else:
            reasons[name] = reason
    return usable, reasons


def images_digest(images: np.ndarray) -> str:
    """sha256 of dtype, shape and bytes: names the exact image set a cache entry belongs to.

    >>> images_digest(np.zeros((1, 2, 2, 1), np.uint8))[:12]
    '26ad1b27b1b6'
    """
    h = hashlib.sha256(f"{images.dtype.str}{tuple(images.shape)}".encode())
    h.update(np.ascontiguousarray(images).tobytes())
    return h.hexdigest()


def _generator() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return f"imagecorruptions {version('imagecorruptions')}"
    except PackageNotFoundError:
        return "imagecorruptions unknown"


class CorruptionCache:
    """Corrupted arrays on disk: ``folder/<images digest>/<corruption>-s<severity>-seed<seed>.npz``.

    Files hold the uint8 ``images`` and a ``meta`` string (the key and the imagecorruptions
    version), written with ``np.savez`` to a temporary file and moved in place with
    ``os.replace``; read with ``allow_pickle=False``. A file that does not load, or whose key,
    version or dtype does not match, is a miss (and is overwritten by the next :meth:`put`).
    """

    def __init__(self, folder: str | os.PathLike[str]) -> None:
        self.folder = Path(folder)

    def path(self, images_digest: str, corruption: str, severity: int, seed: int) -> Path:
        if not images_digest or not all(c in "0123456789abcdef" for c in images_digest):
            raise InputError(f"images_digest must be a hex digest, got {images_digest!r}")
        name = f"{_check_name(corruption)}-s{_check_severity(severity)}-seed{int(seed)}.npz"
        return self.folder / images_digest / name

    @staticmethod
    def _meta(images_digest: str, corruption: str, severity: int, seed: int) -> str:
        key = [images_digest, corruption, int(severity), int(seed), _generator()]
        return json.dumps(key)

    def get(
        self, images_digest: str, corruption: str, severity: int, seed: int
    ) -> np.ndarray | None:
        """The stored array, or None when absent or not to be trusted."""
        path = self.path(images_digest, corruption, severity, seed)
        if not path.is_file():
            return None
        try:
            with np.load(path, allow_pickle=False) as z:
                meta, images = str(z["meta"][()]), np.asarray(z["images"])
        except Exception:  # truncated, not a zip, missing member, pickled objects, ...
            return None
        ok = meta == self._meta(images_digest, corruption, severity, seed)
        return images if ok and images.dtype == np.uint8 and images.ndim == 4 else None

    def put(
        self, images_digest: str, corruption: str, severity: int, seed: int, images: np.ndarray
    ) -> Path:
        """Store ``images`` atomically; returns the file's path."""
        images = _check_images(images)
        path = self.path(images_digest, corruption, severity, seed)
        path.parent.mkdir(parents=True, exist_ok=True)
        meta = np.array(self._meta(images_digest, corruption, severity, seed))
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=".tmp")
        try:
            os.fchmod(fd, file_mode())  # the user's umask, not mkstemp's 0600
            with os.fdopen(fd, "wb") as f:
                np.savez(f, images=images, meta=meta)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        return path


def corrupted(
    images: np.ndarray,
    corruption: str,
    severity: int,
    *,
    seed: int = 0,
    cache: CorruptionCache | None = None,
) -> np.ndarray:
    """:func:`corrupt_images`, read from / stored in ``cache`` when given (not severity 0)."""
    images = _check_images(images)
    severity = _check_severity(severity)
    if cache is None or severity == 0:
        return corrupt_images(images, corruption, severity, seed=seed)
    digest = images_digest(images)
    hit = cache.get(digest, corruption, severity, seed)
    if hit is not None and hit.shape == images.shape:
        return hit
    out = corrupt_images(images, corruption, severity, seed=seed)
    cache.put(digest, corruption, severity, seed, out)
    return out
