"""Any timm or torchvision classifier as a backbone: ``timm:<name>`` / ``torchvision:<name>``.

The library's own classifier head is removed and a new ``fc`` of the run's classes put on
its pooled features, so ``model(x) = fc(features(x))`` as for every focalsam model.
Weights come from a local file (``weights=PATH``: a state dict of that architecture, as
timm or torchvision save it, or a ``.safetensors`` file) or from the library's own download
(``pretrained=True``); the input size, mean and std come from the pretrained config
(:func:`backbone_input`).
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from focalsam.errors import InputError, RunError
from focalsam.models.offline import backbone_download, reachable

__all__ = [
    "BACKBONE_LIBRARIES",
    "BackboneClassifier",
    "BackboneInput",
    "backbone_input",
    "build_backbone_classifier",
    "check_backbone_name",
    "is_backbone_name",
    "read_state_dict",
]

BACKBONE_LIBRARIES = ("timm", "torchvision")
FREEZE = ("none", "backbone")
#: ``model.tuning`` of a backbone: every weight, the biases only (BitFit), or the
#: normalization layers only (LayerNorm, GroupNorm, BatchNorm); the new head always trains
BACKBONE_TUNING = ("full", "bias", "layernorm")
_NORMS = (nn.LayerNorm, nn.GroupNorm, nn.modules.batchnorm._BatchNorm)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def is_backbone_name(name: str) -> bool:
    """``timm:<arch>`` or ``torchvision:<arch>``."""
    library, sep, _ = name.strip().partition(":")
    return bool(sep) and library.lower() in BACKBONE_LIBRARIES


def _split(name: str) -> tuple[str, str]:
    library, _, arch = name.strip().partition(":")
    return library.lower(), arch.strip()


def _known(library: str) -> list[str]:
    if library == "timm":
        import timm

        return list(timm.list_models())
    from torchvision.models import list_models

    return list(list_models())


def check_backbone_name(name: str) -> None:
    """Refuse an architecture the library does not have, listing the close names."""
    library, arch = _split(name)
    try:
        known = _known(library)
    except ImportError:
        extra = "timm" if library == "timm" else "vision"
        raise InputError(
            f"model {name!r} needs {library}: pip install 'focalsam[{extra}]'"
        ) from None
    if arch in known:
        return
    close = difflib.get_close_matches(arch, known, n=5, cutoff=0.6)
    if not close:
        close = [k for k in known if arch and arch in k][:5]
    hint = (
        f"close names: {', '.join(f'{library}:{c}' for c in close)}"
        if close
        else (
            f"list them with python -c 'import {library}"
            + (
                ".models; print(torchvision.models.list_models())'"
                if library == "torchvision"
                else "; print(timm.list_models())'"
            )
        )
    )
    raise InputError(f"model.name={name!r}: {library} has no model {arch!r}; {hint}")


@dataclass(frozen=True)
class BackboneInput:
    """What the backbone's pretrained weights expect: ``size`` px, ``crop_pct`` (test resize
    = ``size / crop_pct``), per-channel ``mean`` / ``std``."""

    size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    crop_pct: float = 0.875


def backbone_input(name: str) -> BackboneInput:
    """The input config of ``timm:``/``torchvision:`` ``name`` without building it: timm's
    pretrained config, or the transforms of torchvision's default weights (else ImageNet
    statistics at 224 px)."""
    library, arch = _split(name)
    if library == "timm":
        import timm

        cfg = timm.models.get_pretrained_cfg(arch)
        if cfg is None:
            return BackboneInput(224, IMAGENET_MEAN, IMAGENET_STD)
        return BackboneInput(
            int(cfg.input_size[-1]),
            tuple(float(v) for v in cfg.mean),  # type: ignore[arg-type]
            tuple(float(v) for v in cfg.std),  # type: ignore[arg-type]
            float(cfg.crop_pct or 0.875),
        )
    from torchvision.models import get_model_weights

    try:
        tf = get_model_weights(arch).DEFAULT.transforms()  # type: ignore[attr-defined]
    except (ValueError, AttributeError, KeyError):
        return BackboneInput(224, IMAGENET_MEAN, IMAGENET_STD)
    size = int(tf.crop_size[0])
    return BackboneInput(
        size,
        tuple(float(v) for v in tf.mean),  # type: ignore[arg-type]
        tuple(float(v) for v in tf.std),  # type: ignore[arg-type]
        size / float(tf.resize_size[0]) if tf.resize_size else 0.875,
    )


class BackboneClassifier(nn.Module):
    """``fc(features(x))``: a library model without its head, and a linear head.

    ``freeze="backbone"`` trains only ``fc``: the backbone's parameters do not require
    gradients and its BatchNorm statistics stay as loaded (the backbone stays in eval mode).
    ``tuning`` (:data:`BACKBONE_TUNING`): ``"bias"`` trains the backbone's biases only,
    ``"layernorm"`` its normalization layers' weights and biases only, ``"full"`` all.
    """

    def __init__(
        self,
        backbone: nn.Module,
        num_features: int,
        num_classes: int,
        freeze: str,
        tuning: str = "full",
    ) -> None:
        super().__init__()
        if freeze not in FREEZE:
            raise InputError(f"model.freeze must be one of {', '.join(FREEZE)}; got {freeze!r}")
        if tuning not in BACKBONE_TUNING:
            raise InputError(
                f"model.tuning of a backbone must be one of {', '.join(BACKBONE_TUNING)}; "
                f"got {tuning!r}"
            )
        self.backbone = backbone
        self.fc = nn.Linear(num_features, num_classes)
        self.frozen = freeze == "backbone"
        if self.frozen:
            self.backbone.requires_grad_(False)
        elif tuning == "bias":
            for name, p in self.backbone.named_parameters():
                p.requires_grad_(name.rsplit(".", 1)[-1] == "bias")
        elif tuning == "layernorm":
            self.backbone.requires_grad_(False)
            for m in self.backbone.modules():
                if isinstance(m, _NORMS):
                    m.requires_grad_(True)

    def features(self, x: Tensor) -> Tensor:
        return self.backbone(x)  # type: ignore[no-any-return]

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.features(x))  # type: ignore[no-any-return]

    def train(self, mode: bool = True) -> BackboneClassifier:
        super().train(mode)
        if self.frozen:
            self.backbone.eval()
        return self


def read_state_dict(path: str | Path) -> dict[str, Tensor]:
    """A state dict from a ``.safetensors`` file or a ``torch.save`` file (a state dict, or
    one under a ``state_dict`` / ``model`` key), read without running pickled code."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"model.weights: {path} is not a file")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # a damaged or foreign file
        raise InputError(f"model.weights: cannot read {path}: {type(e).__name__}: {e}") from None
    for key in ("state_dict", "model"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not all(isinstance(v, Tensor) for v in obj.values()):
        raise InputError(f"model.weights: {path} does not hold a state dict of tensors")
    return obj


def _load_weights(
    model: nn.Module, state: dict[str, Tensor], head: str, name: str, path: Any
) -> None:
    """Load ``state`` into ``model`` (head keys may be absent or of another class count)."""
    ours = model.state_dict()
    is_head = lambda k: k == head or k.startswith(head + ".")
    state = {k: v for k, v in state.items() if not is_head(k)}
    missing = [k for k in ours if k not in state and not is_head(k)]
    unexpected = [k for k in state if k not in ours]
    wrong = [k for k in state if k in ours and state[k].shape != ours[k].shape]
    problems = []
    for label, keys in (
        ("missing", missing),
        ("unexpected", unexpected),
        ("mismatched shapes", wrong),
    ):
        if keys:
            more = ", ..." if len(keys) > 3 else ""
            problems.append(f"{len(keys)} {label} ({', '.join(keys[:3])}{more})")
    if problems:
        raise InputError(
            f"model.weights: {path} is not a {name} state dict: " + "; ".join(problems)
        )
    model.load_state_dict(state, strict=False)


def _download_failed(name: str, exc: BaseException) -> RunError:
    first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
    return RunError(
        f"model.pretrained: could not get the pretrained weights of {name} ({first}); offline, "
        "give a local file with model.weights=PATH"
    )


def _require_download(name: str, library: str, arch: str) -> None:
    """Refuse, in seconds, a download of pretrained weights that cannot happen (offline and
    not in the library's cache), before the library's own retries."""
    host, cached = backbone_download(library, arch)
    if not cached and not reachable(host):
        raise InputError(
            f"model.pretrained=true needs to download {name}'s weights, but {host} cannot be "
            "reached (offline?); give a local file instead: model.weights=PATH"
        )


def build_backbone_classifier(
    name: str,
    num_classes: int,
    *,
    image_size: int | None = None,
    weights: str | None = None,
    pretrained: bool = False,
    freeze: str = "none",
    tuning: str = "full",
) -> BackboneClassifier:
    """``timm:<arch>`` or ``torchvision:<arch>`` with a new ``num_classes`` head; weights from
    ``weights`` (a local file) or the library's download (``pretrained``), else random.
    ``image_size`` is passed to timm models that take it (ViTs)."""
    check_backbone_name(name)
    library, arch = _split(name)
    if pretrained:
        _require_download(name, library, arch)
    if library == "timm":
        import timm

        try:
            kwargs: dict[str, Any] = {"img_size": image_size} if image_size else {}
            try:
                model = timm.create_model(arch, pretrained=pretrained, **kwargs)
            except TypeError:  # a model without img_size (a CNN)
                model = timm.create_model(arch, pretrained=pretrained)
        except (OSError, RuntimeError, ValueError) as e:
            if pretrained:
                raise _download_failed(name, e) from None
            raise
        timm_model: Any = model
        head = str(timm_model.pretrained_cfg.get("classifier") or "fc")
        if weights:
            _load_weights(model, read_state_dict(weights), head, name, weights)
        timm_model.reset_classifier(0)
        return BackboneClassifier(model, int(timm_model.num_features), num_classes, freeze, tuning)
    from torchvision.models import get_model

    try:
        model = get_model(arch, weights="DEFAULT" if pretrained else None)
    except (OSError, RuntimeError, ValueError) as e:
        if pretrained:
            raise _download_failed(name, e) from None
        raise
    linears = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise InputError(f"model {name!r} has no linear classifier head to replace")
    head, last = linears[-1]
    if weights:
        _load_weights(model, read_state_dict(weights), head, name, weights)
    parent = model.get_submodule(head.rpartition(".")[0]) if "." in head else model
    setattr(parent, head.rpartition(".")[2], nn.Identity())
    return BackboneClassifier(model, int(last.in_features), num_classes, freeze, tuning)
