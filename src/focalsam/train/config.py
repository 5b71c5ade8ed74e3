"""The training configuration: one typed object in sections, validated whole.

Layering, one rule: schema defaults, then a preset (``--preset`` or the YAML's
``preset:`` key), then the YAML file, then flags and ``key=value`` overrides.
Keys are dotted (``optim.focal_sam.gamma``, ``loss.tau``); the short names in
:data:`SHORT_KEYS` (``lr``, ``epochs``, ``optimizer``, ...) stand for theirs.

Every section is validated by its owner (the optimizer options by their own
dataclass, the loss by :class:`~focalsam.losses.registry.LossOptions`, the rest by
:func:`~focalsam.train.validation.validate_config`), each setting in one place, and all
of it before any directory or file is created. Names (dataset, model, method, base
optimizer) are normalised once, here, when the config is made.

The schema is static, so mypy checks ``cfg.optim.focal_sam.gamma``: each built-in
method's options are a typed field of :class:`OptimConfig`. A method registered later
(a plugin, or a test's toy method) gets its section in the typed mapping
``optim.methods`` (``optim.methods.<name>.<field>``), filled from the registry with
its options dataclass when the config is made, so its keys are checked like the others.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from focalsam.errors import ConfigError, InputError
from focalsam.losses.registry import LossOptions
from focalsam.names import normalize_name
from focalsam.optim import BASE_OPTIMIZERS, canonical_name, get_method, list_optimizers
from focalsam.optim.method_options import CCSAMOptions, FocalSAMOptions, ImbSAMOptions
from focalsam.optim.sse_sam import SSESAMOptions
from focalsam.train.limits import load_yaml_text, read_text_limited
from focalsam.train.presets import get_preset
from focalsam.train.validation import validate_config


def _f(default: Any, help: str) -> Any:
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata={"help": help})
    return field(default=default, metadata={"help": help})


@dataclass
class DataConfig:
    name: str = _f(
        "digits", "digits | cifar10 | cifar100 | imagenet_lt | inat2018 | folder | table | hf"
    )
    root: str = _f("data", "folder holding the dataset (CIFAR: cifar-10-batches-py inside)")
    download: bool = _f(False, "download CIFAR when missing (needs the internet)")
    imbalance_ratio: float = _f(100.0, "n_max / n_min of the long-tailed training set")
    profile: str = _f("exp", "long-tail profile: exp | step")
    train_list: str | None = _f(None, "ImageNet-LT / iNaturalist: training list file")
    test_list: str | None = _f(None, "ImageNet-LT / iNaturalist: test list file")
    num_workers: int = _f(4, "DataLoader workers for image-file datasets")
    shot_preset: str | None = _f(
        None,
        "many/medium/few thresholds: a preset, or relative:M,F (fractions of the largest "
        "class; default: by dataset)",
    )
    verify_images: bool = _f(True, "image lists: check every image opens before training")
    image_size: int | None = _f(None, "input resolution (default: the model's, e.g. 224 for CLIP)")
    transform: str = _f("auto", "auto | standard | clip | imagenet_r50 | inat_r50")
    categories: str | None = _f(None, "iNaturalist categories.json (default ROOT/categories.json)")
    train: str | None = _f(
        None, "data.name=table: the training table (CSV, TSV or JSONL: path,label)"
    )
    test: str | None = _f(
        None, "data.name=table: the test table (default: split off the training one)"
    )
    val: str | None = _f(None, "data.name=table: a validation table (the test split when no test)")
    class_names: str | None = _f(None, "data.name=table: a file of class names, one a line")
    test_fraction: float = _f(0.2, "folder/table/hf without a test split: the share held out")
    split_seed: int = _f(0, "folder/table/hf: seed of that stratified split (not run.seed)")
    image_column: str = _f("image", "data.name=hf: the image column")
    label_column: str = _f("label", "data.name=hf: the ClassLabel column")
    cache: str = _f("auto", "folder/table/hf: auto | ram | off (decode the training set once)")
    cache_limit_gb: float = _f(4.0, "data.cache=auto: cache when the decoded set fits in this")
    mean: list[float] | None = _f(None, "folder/table/hf: input mean (default: the model's)")
    std: list[float] | None = _f(None, "folder/table/hf: input std (default: the model's)")


@dataclass
class ModelConfig:
    name: str = _f(
        "resnet32", "resnet32 | resnet50 | small_cnn | mlp | timm:<name> | torchvision:<name>"
    )
    weights: str | None = _f(None, "timm/torchvision: a local state dict or .safetensors file")
    pretrained: bool = _f(False, "timm/torchvision: the library's pretrained weights (downloads)")
    freeze: str = _f("none", "timm/torchvision: none | backbone (train the head only)")
    normed_linear: bool = _f(False, "cosine classifier head (LDAM)")
    tuning: str = _f(
        "adaptformer", "CLIP: adaptformer | lora | vpt_shallow | vpt_deep | bias | layernorm | full"
    )
    clip_weights: str | None = _f(
        None, "CLIP: a local weights file (OpenAI's ViT-B-16.pt or open_clip's), or 'random'"
    )
    clip_pretrained: str | None = _f(None, "CLIP: an open_clip pretrained tag (downloads)")
    adapter_bottleneck: int | None = _f(None, "AdaptFormer width (default 2**int(log2(C/24)))")
    lora_rank: int = _f(8, "LoRA rank on the attention q and v projections")
    vpt_tokens: int = _f(10, "VPT prompt tokens")


def _section(options: type[Any], help: str) -> Any:
    return field(default_factory=options, metadata={"help": help, "method_section": True})


def later_method_sections() -> dict[str, Any]:
    """The default options of every registered method with options that has no typed
    field of its own in :class:`OptimConfig` (registered after the schema was written)."""
    static = {f.name for f in dataclasses.fields(OptimConfig) if f.metadata.get("method_section")}
    out: dict[str, Any] = {}
    for name in list_optimizers():
        spec = get_method(name)
        if spec.options is not None and name not in static:
            out[name] = spec.options()
    return out


@dataclass
class OptimConfig:
    """``optim.*``: the method, the base optimizer, the settings every method shares, and
    one typed section per method with options."""

    name: str = _f("focal_sam", "the method: " + " | ".join(list_optimizers()))
    base: str = _f("sgd", "base optimizer: " + " | ".join(sorted(BASE_OPTIMIZERS)))
    lr: float = _f(0.1, "peak learning rate")
    momentum: float = _f(0.9, "SGD momentum")
    nesterov: bool = _f(False, "SGD Nesterov momentum")
    weight_decay: float = _f(2e-4, "weight decay (coupled for SGD)")
    rho: float = _f(0.05, "SAM radius (SAM-family methods)")
    adaptive: bool = _f(False, "ASAM's scale-invariant ascent")
    bn_update: str = _f("both", "BatchNorm statistics in: both passes | clean pass only")
    ascent_all_reduce: bool = _f(False, "DDP: average the ascent gradient (= one process)")
    max_grad_norm: float | None = _f(None, "clip the final gradient to this norm")
    strict_checks: bool | None = _f(
        None,
        "eager label/NaN checks with host syncs (default: on "
        "the CPU; a GPU step checks on the device and never syncs)",
    )
    sam_every: int = _f(
        1, "sharpness-aware step every k-th step, plain steps between (an approximation; 1 = exact)"
    )
    focal_sam: FocalSAMOptions = _section(FocalSAMOptions, "Focal-SAM's options")
    imbsam: ImbSAMOptions = _section(ImbSAMOptions, "ImbSAM's options")
    ccsam: CCSAMOptions = _section(CCSAMOptions, "CC-SAM's options (and its stage 2)")
    sse_sam: SSESAMOptions = _section(SSESAMOptions, "SSE-SAM's options (head/tail radii, cut)")
    methods: dict[str, Any] = field(
        default_factory=later_method_sections,
        metadata={"help": "the options of methods registered later (plugins), by name"},
    )

    def section(self, method: str) -> Any:
        """The options of the registered method ``method`` (None if it has none)."""
        spec = get_method(method)
        if spec.options is None:
            return None
        typed = {f.name for f in dataclasses.fields(self) if f.metadata.get("method_section")}
        if spec.name in typed:
            return getattr(self, spec.name)
        if spec.name not in self.methods:
            self.methods[spec.name] = spec.options()
        return self.methods[spec.name]


@dataclass
class ScheduleConfig:
    epochs: int = _f(200, "training epochs (of the optimizer's own stage)")
    batch_size: int = _f(64, "batch size (per process)")
    accum_steps: int = _f(1, "micro-batches per step: batch_size / accum_steps samples per pass")
    lr_schedule: str = _f("cosine", "cosine | step | constant (per step)")
    lr_milestones: list[int] = _f([160, 180], "step schedule: epochs where lr *= lr_decay")
    lr_decay: float = _f(0.1, "step schedule factor (> 0)")
    warmup_epochs: float = _f(0.0, "linear warm-up epochs")
    rho_schedule: str = _f("constant", "constant | step (scales each group's initial rho)")
    rho_milestones: list[int] = _f([], "step rho schedule: epochs where rho *= rho_decay")
    rho_decay: float = _f(0.5, "step rho schedule factor (>= 0)")
    eval_every: int = _f(10, "evaluate every N epochs (and at the end)")
    select: str = _f("last", "reported model: last epoch | best test epoch (as published code)")


@dataclass
class RunConfig:
    precision: str = _f(
        "fp32",
        "fp32 | bf16 | fp16 (fp16 uses a GradScaler) | auto (bf16 "
        "autocast on a GPU that has it, else fp32)",
    )
    channels_last: bool = _f(False, "channels_last memory format (GPU)")
    compile: bool = _f(False, "run the model under torch.compile")
    compile_mode: str = _f(
        "default", "torch.compile mode: default | reduce-overhead | max-autotune-no-cudagraphs"
    )
    cuda_graph: bool = _f(False, "CUDA: capture the whole optimizer step in a CUDA graph")
    device: str = _f("auto", "auto | cpu | cuda | cuda:N")
    seed: int = _f(0, "seed of model init and data order")
    dir: str | None = _f(None, "the run directory (default runs/NAME-TIME)")
    tensorboard: bool = _f(True, "also log to TensorBoard when it is installed")
    progress: bool = _f(True, "show a progress bar")


@dataclass
class TrainConfig:
    """Every setting of a training run, in sections (``focalsam train --help``)."""

    preset: str | None = _f(None, "the preset applied under the YAML and flags")
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossOptions = field(default_factory=LossOptions)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: ScheduleConfig = field(default_factory=ScheduleConfig)
    run: RunConfig = field(default_factory=RunConfig)

    def method_options(self) -> Any:
        """The options section of the configured method (``None`` if it has none)."""
        return self.optim.section(self.optim.name)


#: short names that are not simply a leaf's own unique name (those work too: ``tau``)
_NAMED_SHORT_KEYS: dict[str, str] = {
    "dataset": "data.name",
    "data_root": "data.root",
    "model": "model.name",
    "loss": "loss.name",
    "optimizer": "optim.name",
    "base_optimizer": "optim.base",
    "rho": "optim.rho",
    "gamma": "optim.focal_sam.gamma",
    "eta": "optim.imbsam.eta",  # SSE-SAM has one too: optim.sse_sam.eta
    "run_dir": "run.dir",
}


def leaf_fields(cls: type = TrainConfig, prefix: str = "") -> dict[str, dataclasses.Field[Any]]:
    """Every dotted key of the schema -> its dataclass field (the sections of methods
    registered later: ``optim.methods.<name>.<field>``)."""
    out: dict[str, dataclasses.Field[Any]] = {}
    instance = cls()
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        value = getattr(instance, f.name)
        if dataclasses.is_dataclass(value):
            out.update(leaf_fields(type(value), f"{prefix}{f.name}."))
        elif cls is OptimConfig and f.name == "methods":
            for name, options in value.items():
                out.update(leaf_fields(type(options), f"{prefix}methods.{name}."))
        else:
            out[prefix + f.name] = f
    return out


def _short_keys() -> dict[str, str]:
    leaves = list(leaf_fields())
    last = [k.rsplit(".", 1)[-1] for k in leaves]
    unique = {n: k for n, k in zip(last, leaves) if last.count(n) == 1 and n != "preset"}
    return {**unique, **_NAMED_SHORT_KEYS}


#: short names for keys (``lr`` for ``optim.lr``): flags and ``key=value`` both take them
SHORT_KEYS: dict[str, str] = _short_keys()


def to_dict(cfg: TrainConfig) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``."""
    out: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict) and value:
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[prefix + key] = value
    return out


def expand_key(key: str) -> str:
    """A short key (``lr``) -> its dotted key (``optim.lr``); dashes are underscores."""
    key = key.strip().replace("-", "_")
    return SHORT_KEYS.get(key, key)


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """``["lr=0.05", "optim.focal_sam.gamma=2"]`` -> ``{"optim.lr": 0.05, ...}`` (YAML values)."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"overrides must be KEY=VALUE, got {item!r}")
        try:
            value = load_yaml_text(raw) if raw.strip() else None
        except yaml.YAMLError:
            value = raw
        out[expand_key(key)] = value
    return out


def read_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    try:
        loaded = load_yaml_text(read_text_limited(path, "config file")) or {}
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        first = str(exc).splitlines()[0]
        raise ConfigError(f"config file {path} is not valid YAML: {first}") from None
    except OSError as exc:
        raise ConfigError(f"config file {path} cannot be read: {exc.strerror or exc}") from None
    if not isinstance(loaded, dict):
        raise ConfigError(f"config file {path} must hold a mapping of keys to values")
    return loaded


def make_config(
    preset: str | None = None,
    yaml_file: str | Path | None = None,
    overrides: list[str] | dict[str, Any] | None = None,
    *,
    apply_preset_key: bool = True,
) -> TrainConfig:
    """Schema defaults <- preset <- ``yaml_file`` <- ``overrides``, validated whole.

    ``preset``: a preset name (else the YAML's ``preset:`` key, if any).
    ``overrides``: ``key=value`` strings or a dict of (short or dotted) keys.

    >>> cfg = make_config("cifar10-lt-r100", overrides=["lr=0.05", "optim.focal_sam.gamma=2"])
    >>> cfg.optim.lr, cfg.optim.focal_sam.gamma, cfg.optim.focal_sam.lam
    (0.05, 2.0, 0.5)
    """
    loaded = read_yaml(yaml_file) if yaml_file is not None else {}
    if isinstance(overrides, dict):
        flat = {expand_key(k): v for k, v in overrides.items()}
    else:
        flat = parse_overrides(list(overrides or []))
    name = preset or (loaded.get("preset") if apply_preset_key else None)
    if "preset" in flat:
        raise ConfigError("choose a preset with --preset NAME, not preset=NAME")
    layers: list[Any] = [OmegaConf.structured(TrainConfig)]
    try:
        if name:
            layers.append(OmegaConf.create({**get_preset(name), "preset": name}))
        layers.append(OmegaConf.create({k: v for k, v in loaded.items() if k != "_meta"}))
        dotted = OmegaConf.create()
        for key, value in flat.items():
            OmegaConf.update(dotted, key, value, force_add=True)
        layers.append(dotted)
        cfg = OmegaConf.to_object(OmegaConf.merge(*layers))
    except OmegaConfBaseException as exc:
        raise ConfigError(_explain(exc)) from None
    assert isinstance(cfg, TrainConfig)
    normalize_names(cfg)
    validate_config(cfg)
    return cfg


def normalize_names(cfg: TrainConfig) -> None:
    """The names users type, once: ``data.name``, ``model.name`` and ``optim.base`` to
    their normal spelling (``"CIFAR-10"`` -> ``"cifar10"``), ``optim.name`` to the
    method's registered name (``"sgd"`` -> ``"plain"``)."""
    cfg.data.name = normalize_name(cfg.data.name)
    prefix, sep, rest = cfg.model.name.partition(":")  # timm:<name> keeps timm's spelling
    cfg.model.name = normalize_name(prefix) + sep + rest.strip()
    cfg.optim.base = normalize_name(cfg.optim.base)
    try:
        cfg.optim.name = canonical_name(cfg.optim.name)
    except InputError as exc:
        raise ConfigError(str(exc)) from None


def _explain(exc: OmegaConfBaseException) -> str:
    key = getattr(exc, "full_key", None) or getattr(exc, "key", None)
    msg = str(exc).strip().splitlines()[0]
    if "not in struct" in msg or "Key '" in msg and "not in" in msg:
        import difflib

        section = key.rsplit(".", 1)[0] + "." if key and "." in key else ""
        near = sorted(k for k in leaf_fields() if k.startswith(section))
        if section and len(near) <= 12:
            return f"unknown config key {key!r}; valid keys here: {', '.join(near)}"
        close = difflib.get_close_matches(str(key), [*leaf_fields(), *SHORT_KEYS], n=3)
        hint = f"did you mean {', '.join(close)}? " if close else ""
        return f"unknown config key {key!r}; {hint}(focalsam train --help lists every key)"
    return f"bad value for config key {key!r}: {msg}"


def config_yaml(cfg: TrainConfig) -> str:
    """The whole config as YAML (what ``config.yaml`` and ``--print-config`` hold)."""
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)
