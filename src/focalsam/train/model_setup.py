"""The run's model from its config, and the model part of a checkpoint.

A CLIP model tuned with adapters, LoRA, prompts or a subset of its parameters
is saved as its trainable parameters (and the head) plus the identity of its
frozen backbone (name and a hash of the weights file), not the ~150 M frozen
weights; loading it into another backbone is refused.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from focalsam.models import create_model
from focalsam.models.backbones import (
    BACKBONE_TUNING,
    build_backbone_classifier,
    is_backbone_name,
)
from focalsam.names import normalize_name
from focalsam.train.checkpoint import CheckpointError
from focalsam.train.config import TrainConfig
from focalsam.train.data_setup import TrainData


def is_clip(cfg: TrainConfig) -> bool:
    return normalize_name(cfg.model.name).startswith("clip")


def build_model(
    cfg: TrainConfig, data: TrainData, device: torch.device, *, text_init: bool = True
) -> nn.Module:
    """The configured model on ``device``; a CLIP head starts from the class names' text
    features when ``text_init`` (a model whose head a checkpoint replaces skips that)."""
    m = cfg.model
    extra: dict[str, Any] = {}
    if is_backbone_name(m.name):  # timm:/torchvision:; a checkpoint replaces the weights
        backbone = build_backbone_classifier(
            m.name,
            data.num_classes,
            image_size=data.image_size,
            weights=m.weights if text_init else None,
            pretrained=m.pretrained and text_init,
            freeze=m.freeze,
            tuning=m.tuning if m.tuning in BACKBONE_TUNING else "full",  # default: every weight
        ).to(device)
        if cfg.run.channels_last:
            backbone = backbone.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
        return backbone
    if is_clip(cfg):
        from focalsam.models.clip import ClipOptions

        extra["clip"] = ClipOptions(
            tuning=m.tuning,
            weights=m.clip_weights,
            pretrained=m.clip_pretrained,
            bottleneck=m.adapter_bottleneck,
            lora_rank=m.lora_rank,
            vpt_tokens=m.vpt_tokens,
            text_init=text_init,
            text_device=str(device),  # prompts encoded where we train
        )
        if text_init:
            names = data.class_names() if callable(data.class_names) else data.class_names
            extra["class_names"] = names
    model = create_model(
        m.name,
        data.num_classes,
        data.in_channels,
        data.image_size,
        normed_linear=m.normed_linear,
        **extra,
    ).to(device)
    if cfg.run.channels_last:
        model = model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    return model


def parameter_counts(model: nn.Module) -> dict[str, Any]:
    """Trainable and total parameters, and the backbone's identity when it is frozen."""
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    out: dict[str, Any] = {"trainable": trainable, "total": total}
    identity = getattr(model, "backbone_identity", None)
    if identity is not None:
        out["backbone"] = identity()
    return out


def describe_counts(counts: dict[str, Any]) -> str:
    share = 100.0 * counts["trainable"] / max(counts["total"], 1)
    return f"{counts['trainable']:,} of {counts['total']:,} parameters trainable ({share:.2f}%)"


def model_state(model: nn.Module) -> dict[str, Any]:
    """The model part of a checkpoint: ``model`` (all weights, or a tuned model's trainable
    ones) and, for a tuned model, ``backbone`` (what the rest must be)."""
    if hasattr(model, "trainable_state_dict"):
        tuned: Any = model
        return {"model": tuned.trainable_state_dict(), "backbone": tuned.backbone_identity()}
    return {"model": model.state_dict()}


def load_model_state(model: nn.Module, payload: dict[str, Any], where: str) -> None:
    """Load :func:`model_state`'s output; refuses another backbone or another model."""
    if "backbone" in payload or hasattr(model, "trainable_state_dict"):
        saved: Any = payload.get("backbone")
        ours: Any = getattr(model, "backbone_identity", dict)()
        if saved != ours:
            raise CheckpointError(
                f"{where} was trained on another backbone ({_identity(saved)}); this run "
                f"builds {_identity(ours)}: give the same weights file"
            )
        try:
            model.load_trainable_state_dict(payload["model"])  # type: ignore[operator]
        except (RuntimeError, KeyError, TypeError, ValueError) as exc:
            raise CheckpointError(f"{where} does not match this model: {_first(exc)}") from None
        return
    try:
        model.load_state_dict(payload["model"])
    except (RuntimeError, KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{where} does not match this model: {_first(exc)}") from None


def _identity(value: Any) -> str:
    if not isinstance(value, dict):
        return "no backbone record"
    sha = value.get("sha256")
    return f"{value.get('name')} from {value.get('weights')}" + (
        f", sha256 {sha[:12]}" if sha else ""
    )


def _first(exc: BaseException) -> str:
    return str(exc).strip().splitlines()[0][:240] if str(exc).strip() else type(exc).__name__
