"""The training configuration: one typed dataclass, YAML files and ``key=value`` overrides.

Merging is done by OmegaConf against the dataclass schema, so a key that does
not exist or a value of the wrong type is an error naming the key.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException


class ConfigError(ValueError):
    """A configuration key or value is not valid."""


def _f(default: Any, help: str, **kw: Any) -> Any:
    if isinstance(default, list | dict):
        return field(default_factory=lambda: type(default)(default), metadata={"help": help})
    return field(default=default, metadata={"help": help, **kw})


@dataclass
class TrainConfig:
    """Every setting of a training run (see ``focalsam train --help``)."""

    # data
    dataset: str = _f(
        "digits", "digits | cifar10 | cifar100 | imagenet_lt | inat2018 | image_folder"
    )
    data_root: str = _f("data", "folder holding the dataset (CIFAR: cifar-10-batches-py inside)")
    download: bool = _f(False, "download CIFAR when missing (needs the internet)")
    imbalance_ratio: float = _f(100.0, "n_max / n_min of the long-tailed training set")
    profile: str = _f("exp", "long-tail profile: exp | step")
    train_list: str | None = _f(None, "ImageNet-LT / iNaturalist: training list file")
    test_list: str | None = _f(None, "ImageNet-LT / iNaturalist: test list file")
    num_workers: int = _f(4, "DataLoader workers for image-file datasets")
    # model
    model: str = _f("resnet32", "resnet32 | resnet50 | mlp | small_cnn")
    normed_linear: bool = _f(False, "cosine classifier head (LDAM)")
    # loss
    loss: str = _f("ce", "ce | logit_adjustment | ldam | ldam_drw | vs | balanced_softmax | focal")
    loss_options: dict[str, Any] = _f({}, "extra loss arguments, e.g. loss_options.tau=1.0")
    # optimizer
    optimizer: str = _f("focal_sam", "sgd | sam | asam | imbsam | focal_sam | ccsam")
    base_optimizer: str = _f("sgd", "sgd | adam | adamw | rmsprop")
    lr: float = _f(0.1, "peak learning rate")
    momentum: float = _f(0.9, "SGD momentum")
    nesterov: bool = _f(False, "SGD Nesterov momentum")
    weight_decay: float = _f(2e-4, "weight decay (coupled for SGD)")
    rho: float = _f(0.05, "SAM radius")
    adaptive: bool = _f(False, "ASAM's scale-invariant ascent")
    gamma: float = _f(2.0, "Focal-SAM focusing exponent")
    lam: float = _f(0.5, "Focal-SAM weight of the class-wise sharpness")
    eta: float = _f(100.0, "ImbSAM: classes with fewer training images are tail")
    kappa: float = _f(1.0, "ImbSAM: weight of the tail sharpness (paper 1, code 2)")
    bn_update: str = _f("both", "BatchNorm statistics in: both passes | clean pass only")
    ascent_all_reduce: bool = _f(False, "DDP: average the ascent gradient (= one process)")
    max_grad_norm: float | None = _f(None, "clip the final gradient to this norm")
    ccsam_rho: float = _f(1e-6, "CC-SAM: radius scale (the public code's noise_ratio)")
    ccsam_flat_ratio: float = _f(0.5, "CC-SAM: weight of the perturbed loss in stage 1")
    ccsam_mode: str = _f("classifier", "CC-SAM: classifier (public code) | network (paper)")
    ccsam_stage2_epochs: int = _f(30, "CC-SAM: epochs of stage 2 (classifier, balanced batches)")
    ccsam_stage2_lr: float = _f(0.01, "CC-SAM: constant lr of stage 2")
    ccsam_rho2: float = _f(1.0, "CC-SAM: stage-2 feature perturbation scale")
    ccsam_up_limit: float = _f(1.0, "CC-SAM: cap of stage 2's perturbed-loss weight")
    # schedules
    epochs: int = _f(200, "training epochs")
    batch_size: int = _f(64, "batch size (per process)")
    lr_schedule: str = _f("cosine", "cosine | step | constant")
    lr_milestones: list[int] = _f([160, 180], "step schedule: epochs where lr *= lr_decay")
    lr_decay: float = _f(0.1, "step schedule factor")
    warmup_epochs: float = _f(0.0, "linear warm-up epochs")
    rho_schedule: str = _f("constant", "constant | step")
    rho_milestones: list[int] = _f([], "step rho schedule: epochs where rho *= rho_decay")
    rho_decay: float = _f(0.5, "step rho schedule factor")
    # evaluation and reports
    eval_every: int = _f(10, "evaluate every N epochs (and at the end)")
    select: str = _f("last", "reported model: last epoch | best test epoch (as published code)")
    shot_preset: str | None = _f(None, "many/medium/few thresholds (default: by dataset)")
    # run
    precision: str = _f("fp32", "fp32 | bf16 | fp16 (fp16 uses a GradScaler)")
    channels_last: bool = _f(False, "channels_last memory format (GPU)")
    device: str = _f("auto", "auto | cpu | cuda | cuda:N")
    seed: int = _f(0, "seed of model init and data order")
    run_dir: str | None = _f(None, "where logs and checkpoints go (default runs/NAME-TIME)")
    tensorboard: bool = _f(True, "also log to TensorBoard when it is installed")
    progress: bool = _f(True, "show a progress bar")
    preset: str | None = _f(None, "the preset this config came from (recorded)")


FIELDS = {f.name: f for f in dataclasses.fields(TrainConfig)}

CHOICES: dict[str, tuple[str, ...]] = {
    "profile": ("exp", "step"),
    "lr_schedule": ("cosine", "step", "constant"),
    "rho_schedule": ("constant", "step"),
    "select": ("last", "best"),
    "precision": ("fp32", "bf16", "fp16"),
    "bn_update": ("both", "clean"),
    "ccsam_mode": ("classifier", "network"),
}


def make_config(
    base: dict[str, Any] | None = None,
    yaml_file: str | Path | None = None,
    overrides: list[str] | dict[str, Any] | None = None,
) -> TrainConfig:
    """Schema defaults <- ``base`` (a preset) <- ``yaml_file`` <- ``overrides``.

    ``overrides`` are ``key=value`` strings (YAML values) or a dict.
    """
    schema = OmegaConf.structured(TrainConfig)
    layers = [schema]
    try:
        if base:
            layers.append(OmegaConf.create(base))
        if yaml_file is not None:
            path = Path(yaml_file)
            if not path.is_file():
                raise ConfigError(f"config file {path} does not exist")
            try:
                loaded = yaml.safe_load(path.read_text()) or {}
            except yaml.YAMLError as exc:
                raise ConfigError(f"config file {path} is not valid YAML: {exc}") from exc
            if not isinstance(loaded, dict):
                raise ConfigError(f"config file {path} must hold a mapping of keys to values")
            loaded.pop("_meta", None)
            layers.append(OmegaConf.create(loaded))
        if isinstance(overrides, dict):
            layers.append(OmegaConf.create(overrides))
        elif overrides:
            bad = [o for o in overrides if "=" not in o]
            if bad:
                raise ConfigError(f"overrides must be key=value, got {bad}")
            layers.append(OmegaConf.from_dotlist(list(overrides)))
        merged = OmegaConf.merge(*layers)
        cfg = OmegaConf.to_object(merged)
    except OmegaConfBaseException as exc:
        raise ConfigError(_explain(exc)) from None
    assert isinstance(cfg, TrainConfig)
    validate_config(cfg)
    return cfg


def _explain(exc: OmegaConfBaseException) -> str:
    key = getattr(exc, "full_key", None) or getattr(exc, "key", None)
    msg = str(exc).splitlines()[0]
    if "not in" in msg or "Key '" in msg and "is not in struct" in msg:
        return f"unknown config key {key!r}; valid keys: {', '.join(sorted(FIELDS))}"
    return f"bad value for config key {key!r}: {msg}"


def validate_config(cfg: TrainConfig) -> None:
    """Range and choice checks that the schema's types cannot express."""
    for key, choices in CHOICES.items():
        value = getattr(cfg, key)
        if value not in choices:
            raise ConfigError(f"{key} must be one of {', '.join(choices)}; got {value!r}")
    if cfg.ccsam_stage2_epochs < 0:
        raise ConfigError(f"ccsam_stage2_epochs must be >= 0, got {cfg.ccsam_stage2_epochs}")
    positive = ("epochs", "batch_size", "eval_every")
    for key in positive:
        if getattr(cfg, key) < 1:
            raise ConfigError(f"{key} must be >= 1, got {getattr(cfg, key)}")
    if cfg.lr <= 0:
        raise ConfigError(f"lr must be > 0, got {cfg.lr}")
    if cfg.rho < 0:
        raise ConfigError(f"rho must be >= 0, got {cfg.rho}")
    if cfg.imbalance_ratio < 1:
        raise ConfigError(f"imbalance_ratio must be >= 1, got {cfg.imbalance_ratio}")
    if cfg.warmup_epochs < 0 or cfg.warmup_epochs > cfg.epochs:
        raise ConfigError(f"warmup_epochs must be in [0, epochs], got {cfg.warmup_epochs}")


def config_to_dict(cfg: TrainConfig) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def save_config(cfg: TrainConfig, path: Path) -> None:
    path.write_text(yaml.safe_dump(config_to_dict(cfg), sort_keys=False))
