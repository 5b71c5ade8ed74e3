"""Every check of a whole config, before any run starts: ranges and names, the image
size and transform recipe a dataset offers, a CLIP model's settings, and what a
captured CUDA-graph step cannot hold. (Apart from the schema, so the data set-up uses
the recipe without importing the config.)"""

from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import Any

from focalsam.data.own import OWN_DATASETS, check_own_data_config
from focalsam.data.transforms import RECIPES
from focalsam.errors import InputError
from focalsam.metrics import check_shot_preset
from focalsam.models import MODELS
from focalsam.models.backbones import check_backbone_name, is_backbone_name
from focalsam.models.tuning import TUNING_METHODS
from focalsam.optim import BASE_OPTIMIZERS, get_method, list_optimizers
from focalsam.train.errors import ConfigError
from focalsam.train.presets import list_presets

DATASETS = ("digits", "cifar10", "cifar100", "imagenet_lt", "inat2018")
NATIVE_SIZE = {"digits": 8, "cifar10": 32, "cifar100": 32, "imagenet_lt": 224, "inat2018": 224}
MODEL_INPUT_SIZE = {"clip_vit_b16": 224}
#: the smallest input resolution (the digits' own 8 px)
MIN_IMAGE_SIZE = 8


def data_recipe(cfg: Any) -> tuple[str, int]:
    """``(transform, image_size)`` of a run: ``data.transform`` with ``auto`` resolved, and
    ``data.image_size`` or, when unset, the model's input size (224 for ``clip_vit_b16``) or
    else the dataset's own (digits 8, CIFAR 32, ImageNet-LT / iNaturalist 224).

    ``auto``: ``clip`` for a ``clip_*`` model; ``imagenet_r50`` / ``inat_r50`` for resnet50 on
    ImageNet-LT / iNaturalist; else ``standard``. Raises :class:`ConfigError` for a recipe the
    dataset does not offer: digits only ``standard`` at 8 px (CLIP needs 3 channels), CIFAR
    ``standard`` (32 px only) or ``clip`` (any size).
    """
    name = cfg.data.name
    if name in OWN_DATASETS:
        return _own_recipe(cfg)
    model = cfg.model.name
    transform = cfg.data.transform
    if transform == "auto":
        if model.startswith("clip_"):
            transform = "clip"
        elif model == "resnet50" and name in ("imagenet_lt", "inat2018"):
            transform = "imagenet_r50" if name == "imagenet_lt" else "inat_r50"
        else:
            transform = "standard"
    if transform not in RECIPES:
        raise ConfigError(
            f"data.transform must be auto or one of {', '.join(RECIPES)}, got {transform!r}"
        )
    if name not in NATIVE_SIZE:
        raise ConfigError(f"unknown dataset {cfg.data.name!r}; valid: {', '.join(DATASETS)}")
    size = cfg.data.image_size
    if size is None:
        size = MODEL_INPUT_SIZE.get(model, NATIVE_SIZE[name])
    if size < MIN_IMAGE_SIZE:
        raise ConfigError(f"data.image_size must be >= {MIN_IMAGE_SIZE}, got {size}")
    native = NATIVE_SIZE[name]
    if name == "digits" and (transform != "standard" or size != native):
        raise ConfigError(
            f"digits (1 channel, {native} px) takes data.transform=standard at "
            f"data.image_size={native}, got {transform} at {size} (CLIP needs 3-channel images: "
            "use cifar10/cifar100/imagenet_lt/inat2018)"
        )
    if name in ("cifar10", "cifar100"):
        if transform not in ("standard", "clip"):
            raise ConfigError(
                f"{name} takes data.transform=standard or clip, got {transform} (the ResNet-50 "
                "recipes are for imagenet_lt / inat2018)"
            )
        if transform == "standard" and size != native:
            raise ConfigError(
                f"data.transform=standard on {name} is the {native}-px padding crop, got "
                f"data.image_size={size}: use data.transform=clip (RandomResizedCrop) or "
                f"data.image_size={native}"
            )
    return transform, int(size)


def _own_recipe(cfg: Any) -> tuple[str, int]:
    """Your own data: RandomResizedCrop + flip at the model's input size (``data.image_size``
    when set); mean and std come from :func:`focalsam.data.own_input.own_input`."""
    from focalsam.data.own_input import own_input

    if cfg.data.transform not in ("auto", "standard"):
        raise ConfigError(
            f"data.name={cfg.data.name} takes data.transform=auto (RandomResizedCrop at the "
            f"model's input size, its mean/std), got {cfg.data.transform!r}"
        )
    return "standard", own_input(cfg).size


def check_cuda_graph(cfg: Any) -> None:
    """What a captured step cannot hold, refused before any run starts."""
    o, r = cfg.optim, cfg.run
    spec = get_method(o.name)
    bad = [
        (r.precision == "fp16", "precision=fp16 (its GradScaler syncs with the host)"),
        (o.strict_checks is True, "optim.strict_checks=true (eager checks sync)"),
        (o.sam_every != 1, "optim.sam_every > 1"),
        (cfg.train.accum_steps != 1, "train.accum_steps > 1"),
        (not spec.capturable, f"{spec.name} ({spec.not_capturable_because})"),
        (r.compile, "run.compile (choose one of compile and cuda_graph)"),
        (r.device == "cpu", "device=cpu"),
    ]
    for hit, what in bad:
        if hit:
            raise ConfigError(f"run.cuda_graph cannot capture a step with {what}")


def check_model(cfg: Any) -> None:
    m = cfg.model
    clip = m.name.startswith("clip")
    backbone = is_backbone_name(m.name)
    if not backbone:
        for key, default in (("weights", None), ("pretrained", False), ("freeze", "none")):
            if getattr(m, key) != default:
                raise ConfigError(
                    f"model.{key} is for timm:<name> / torchvision:<name> models; "
                    f"model.name is {m.name!r}"
                )
    else:
        check_backbone_name(m.name)
        _choice("model.freeze", m.freeze, ("none", "backbone"))
        if m.freeze == "backbone" and m.tuning in ("bias", "layernorm"):
            raise ConfigError(
                f"model.freeze=backbone trains the head only; model.tuning={m.tuning} would "
                "train part of the backbone: choose one"
            )
        if m.weights is not None and m.pretrained:
            raise ConfigError("choose one of model.weights=PATH and model.pretrained=true")
        if m.weights is not None and not Path(m.weights).is_file():
            raise ConfigError(f"model.weights: {m.weights} is not a file")
    if m.tuning not in TUNING_METHODS:
        raise ConfigError(
            f"model.tuning must be one of {', '.join(TUNING_METHODS)}; got {m.tuning!r}"
        )
    for key in ("adapter_bottleneck", "lora_rank", "vpt_tokens"):
        value = getattr(m, key)
        if value is not None and value < 1:
            raise ConfigError(f"model.{key} must be >= 1, got {value}")
    if not clip:
        for key in ("clip_weights", "clip_pretrained"):
            if getattr(m, key) is not None:
                raise ConfigError(f"model.{key} is for CLIP models; model.name is {m.name!r}")
        return
    if cfg.data.name == "digits":
        raise ConfigError(f"{m.name} takes 3-channel images; digits has 1 (use cifar10/100, ...)")
    if m.name == "clip_vit_b16" and cfg.data.image_size not in (None, 224):
        raise ConfigError(
            f"clip_vit_b16 takes 224-px images; got data.image_size={cfg.data.image_size}"
        )
    if m.name == "clip_vit_b16" and not (m.clip_weights or m.clip_pretrained):
        raise ConfigError(
            "clip_vit_b16 needs its weights: clip_weights=PATH to OpenAI's ViT-B-16.pt "
            "(README: foundation models), clip_pretrained=openai when online, or "
            "clip_weights=random for benchmarks"
        )
    if m.clip_weights not in (None, "random") and not Path(m.clip_weights).is_file():
        raise ConfigError(
            f"model.clip_weights: {m.clip_weights} is not a file; get OpenAI's ViT-B-16.pt "
            "(see the README's foundation-model section) and give its path"
        )


def _number(key: str, value: Any, *, low: float | None = None, above: float | None = None) -> None:
    ok = isinstance(value, int | float) and math.isfinite(value)
    ok = ok and (low is None or value >= low) and (above is None or value > above)
    if not ok:
        bound = f" >= {low:g}" if low is not None else f" > {above:g}" if above is not None else ""
        raise ConfigError(f"{key} must be a finite number{bound}, got {value!r}")


def _choice(key: str, value: Any, choices: tuple[str, ...] | list[str]) -> None:
    if value not in choices:
        raise ConfigError(f"{key} must be one of {', '.join(choices)}; got {value!r}")


def validate_config(cfg: Any) -> None:
    """Every range, name and capability check of a config made by ``make_config`` (names
    already normalised); raises :class:`ConfigError`. Each setting is checked once: the
    method options by their own dataclass, the loss by its options, the rest here."""
    from focalsam.optim import OptimizerInputError

    d, m, o, t, r = cfg.data, cfg.model, cfg.optim, cfg.train, cfg.run
    if cfg.preset is not None:
        _choice("preset", cfg.preset, list_presets())
    _choice("data.name", d.name, DATASETS + OWN_DATASETS)
    if d.name in OWN_DATASETS:
        check_own_data_config(d)
    _choice("data.profile", d.profile, ("exp", "step"))
    _number("data.imbalance_ratio", d.imbalance_ratio, low=1)
    if d.num_workers < 0:
        raise ConfigError(f"data.num_workers must be >= 0, got {d.num_workers}")
    if d.shot_preset is not None:
        try:
            check_shot_preset(d.shot_preset)
        except ValueError as exc:
            raise ConfigError(f"data.shot_preset: {exc}") from None
    if not is_backbone_name(m.name):
        _choice("model.name", m.name, MODELS)
    try:
        cfg.loss.validate()
        spec = get_method(o.name)
        options = cfg.method_options()
        later = [n for n in o.methods if n not in list_optimizers() or n in _typed_sections(o)]
        if later:
            raise ConfigError(
                f"optim.methods.{later[0]} is not the section of a method registered later; "
                f"those are: {', '.join(sorted(o.methods)) or 'none'}"
            )
        for name in list_optimizers():  # every method's section, warnings for the chosen one
            section = o.section(name)
            if section is None:
                continue
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                section.validate()
            for w in caught if name == spec.name else []:
                warnings.warn(str(w.message), UserWarning, stacklevel=3)
    except (InputError, OptimizerInputError) as exc:
        raise ConfigError(str(exc)) from None
    _choice("optim.base", o.base, sorted(BASE_OPTIMIZERS))
    _number("optim.lr", o.lr, above=0)
    _number("optim.momentum", o.momentum, low=0)
    if o.momentum >= 1:
        raise ConfigError(f"optim.momentum must be < 1, got {o.momentum}")
    _number("optim.weight_decay", o.weight_decay, low=0)
    _number("optim.rho", o.rho, low=0)
    if o.max_grad_norm is not None:
        _number("optim.max_grad_norm", o.max_grad_norm, above=0)
    _choice("optim.bn_update", o.bn_update, ("both", "clean"))
    if o.nesterov and (o.base != "sgd" or o.momentum == 0):
        raise ConfigError("optim.nesterov needs optim.base=sgd and optim.momentum > 0")
    for key in ("epochs", "batch_size", "eval_every"):
        if getattr(t, key) < 1:
            raise ConfigError(f"train.{key} must be >= 1, got {getattr(t, key)}")
    _choice("train.lr_schedule", t.lr_schedule, ("cosine", "step", "constant"))
    _choice("train.rho_schedule", t.rho_schedule, ("constant", "step"))
    _choice("train.select", t.select, ("last", "best"))
    _number("train.lr_decay", t.lr_decay, above=0)
    _number("train.rho_decay", t.rho_decay, low=0)
    _number("train.warmup_epochs", t.warmup_epochs, low=0)
    if t.warmup_epochs > t.epochs:
        raise ConfigError(f"train.warmup_epochs must be <= train.epochs, got {t.warmup_epochs}")
    for key in ("lr_milestones", "rho_milestones"):
        values = getattr(t, key)
        if any(v < 1 for v in values) or list(values) != sorted(set(values)):
            raise ConfigError(f"train.{key} must be increasing epochs >= 1, got {list(values)}")
    _choice("run.precision", r.precision, ("fp32", "bf16", "fp16", "auto"))
    _choice(
        "run.compile_mode",
        r.compile_mode,
        ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"),
    )
    _choice("data.transform", d.transform, ("auto", "standard", "clip", "imagenet_r50", "inat_r50"))
    check_model(cfg)
    data_recipe(cfg)  # the image size and transform the dataset offers
    if o.sam_every < 1:
        raise ConfigError(f"optim.sam_every must be >= 1, got {o.sam_every}")
    if o.sam_every != 1 and not spec.every_k:
        raise ConfigError(f"optim.sam_every is not supported by {spec.name}: leave it at 1")
    if t.accum_steps > 1 and not spec.accumulates:
        raise ConfigError(
            f"train.accum_steps={t.accum_steps}: {spec.name} does not accumulate gradients "
            "(its passes depend on the whole batch's classes); leave it at 1"
        )
    if r.cuda_graph:
        check_cuda_graph(cfg)
    if t.accum_steps < 1 or t.batch_size % t.accum_steps:
        raise ConfigError(
            f"train.accum_steps must be >= 1 and divide train.batch_size={t.batch_size}, "
            f"got {t.accum_steps}"
        )
    _check_device(r.device)
    # capabilities
    stages = [s for s in spec.later_stages if s.epochs(options) > 0]
    if stages and d.name in ("imagenet_lt", "inat2018", *OWN_DATASETS):
        raise ConfigError(
            f"{spec.name}'s {stages[0].kind} stage needs class-balanced batches, which "
            f"{d.name} does not offer yet: set optim.{spec.name}.{stages[0].epochs_setting}=0"
        )
    channels = {"digits": 1}.get(d.name, 3)
    if m.name == "resnet50" and channels != 3:
        raise ConfigError(f"model resnet50 takes 3-channel images; {d.name} has {channels}")


def _typed_sections(optim: Any) -> set[str]:
    import dataclasses

    return {f.name for f in dataclasses.fields(optim) if f.metadata.get("method_section")}


def _check_device(device: str) -> None:
    import torch

    if device == "auto":
        return
    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError):
        raise ConfigError(f"run.device must be auto, cpu, cuda or cuda:N; got {device!r}") from None
    if dev.type not in ("cpu", "cuda", "mps"):
        raise ConfigError(f"run.device must be auto, cpu, cuda or cuda:N; got {device!r}")
