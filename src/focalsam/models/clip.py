"""CLIP ViT image towers with parameter-efficient tuning and a text-initialised cosine head.

The published protocol: OpenAI CLIP ViT-B/16's image tower; feature ``x`` = the class token
after the final LayerNorm ``ln_post`` (768-d, before the projection); AdaptFormer in every block
(:mod:`~focalsam.models.tuning`); head ``logits = 25 * cos(x, w_c)`` with ``w_c = P t_c`` from the
text prompt ``"a photo of a {name}."`` (:mod:`~focalsam.models.text_head`). Only the tuning
modules and the head train; the model stays fp32 (autocast is the trainer's job). The text
tower is used once to build the head and then dropped.

``clip_tiny`` is the same code on a tiny randomly initialised open_clip config (2 blocks,
width 64, patch 8, 32 px) for tests, demos and CPU benchmarks.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from focalsam.errors import InputError
from focalsam.models.clip_weights import (
    download_pretrained,
    load_clip_weights,
    sha256_file,
    where_to_get,
)
from focalsam.models.text_head import CosineClassifier, text_head_weights
from focalsam.models.tuning import (
    TUNING_METHODS,
    AdaptFormerAdapter,
    VisualPrompts,
    adapted_block_forward,
    adapter_bottleneck,
    add_qv_lora,
    keep_frozen_in_eval,
    tower_parameters_to_train,
)

#: The cosine head's logit scale of the published protocol.
HEAD_SCALE = 25.0

#: ``clip_tiny``: an open_clip ``CLIP`` config small enough for CPU tests (the text tower keeps
#: CLIP's vocabulary and context so the real tokenizer works).
TINY_CLIP_CONFIG: dict[str, Any] = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "head_width": 16, "patch_size": 8},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}

#: model name -> open_clip architecture name
CLIP_ARCHS = {"clip_vit_b16": "ViT-B-16", "clip_tiny": "clip_tiny"}


def _positive_int(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InputError(f"clip.{name} must be an integer >= 1, got {value!r}")


@dataclass
class ClipOptions:
    """How to build a CLIP image classifier.

    - ``tuning``: one of :data:`~focalsam.models.tuning.TUNING_METHODS`.
    - ``weights``: a weights file (OpenAI's TorchScript ``.pt``, an open_clip state dict /
      ``.safetensors``), or ``"random"`` (random init, for benchmarks and tests).
    - ``pretrained``: an open_clip pretrained tag (``"openai"``), used only when ``weights`` is
      None; open_clip downloads it (needs the internet).
    - ``bottleneck``: AdaptFormer width; None = ``2 ** max(0, int(log2(C / 24)))``.
    - ``lora_rank``: LoRA rank r of the q and v updates ``B A`` (scale 1, i.e. alpha = r).
    - ``vpt_tokens``: VPT prompt tokens (per block for ``vpt_deep``).
    - ``text_init``: initialise the head from the text tower (needs class names).
    - ``quick_gelu``: the activation; None = QuickGELU for OpenAI's weights and ``"random"``
      ViT-B/16 (OpenAI's architecture), the tag's own setting for ``pretrained``, GELU for tiny.
    - ``text_device``: where the text tower encodes the class prompts once (e.g. ``"cuda"``);
      None = the CPU, which takes minutes for thousands of classes with ViT-B/16. The model is
      returned on the CPU either way.
    """

    tuning: str = "adaptformer"
    weights: str | None = None
    pretrained: str | None = None
    bottleneck: int | None = None
    lora_rank: int = 8
    vpt_tokens: int = 10
    text_init: bool = True
    quick_gelu: bool | None = None
    text_device: str | None = None

    def validate(self) -> None:
        if self.tuning not in TUNING_METHODS:
            raise InputError(
                f"clip.tuning must be one of {', '.join(TUNING_METHODS)}, got {self.tuning!r}"
            )
        for name in ("weights", "pretrained"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, str | Path) or not str(value)):
                raise InputError(f"clip.{name} must be a non-empty string or None, got {value!r}")
        if self.bottleneck is not None:
            _positive_int("bottleneck", self.bottleneck)
        _positive_int("lora_rank", self.lora_rank)
        _positive_int("vpt_tokens", self.vpt_tokens)
        if not isinstance(self.text_init, bool):
            raise InputError(f"clip.text_init must be true or false, got {self.text_init!r}")
        if self.quick_gelu is not None and not isinstance(self.quick_gelu, bool):
            raise InputError(
                f"clip.quick_gelu must be true, false or None, got {self.quick_gelu!r}"
            )
        if self.text_device is not None:
            try:
                torch.device(self.text_device)
            except (RuntimeError, TypeError) as exc:
                raise InputError(
                    f"clip.text_device must be a torch device such as 'cuda', "
                    f"got {self.text_device!r}"
                ) from exc


class ClipImageClassifier(nn.Module):
    """A CLIP ViT image tower (open_clip ``VisionTransformer``, projection removed) with one
    tuning method and a cosine head ``fc``: ``forward(x) = fc(features(x))``."""

    def __init__(
        self,
        visual: Any,
        fc: CosineClassifier,
        *,
        tuning: str = "adaptformer",
        bottleneck: int = 1,
        lora_rank: int = 8,
        vpt_tokens: int = 10,
        identity: dict[str, str | None] | None = None,
    ) -> None:
        super().__init__()
        if tuning not in TUNING_METHODS:
            raise InputError(f"tuning must be one of {', '.join(TUNING_METHODS)}, got {tuning!r}")
        self.tuning = tuning
        self.visual = visual
        self.visual.proj = None  # features are read before the projection
        self.visual.requires_grad_(False)
        for p in tower_parameters_to_train(visual, tuning):
            p.requires_grad_(True)
        blocks = list(visual.transformer.resblocks)
        width = int(visual.class_embedding.shape[-1])
        self.adapters: nn.ModuleList | None = None
        self.prompts: VisualPrompts | None = None
        if tuning == "adaptformer":
            self.adapters = nn.ModuleList(AdaptFormerAdapter(width, bottleneck) for _ in blocks)
        elif tuning == "lora":
            for block in blocks:
                add_qv_lora(block.attn, lora_rank)
        elif tuning in ("vpt_shallow", "vpt_deep"):
            layers = len(blocks) if tuning == "vpt_deep" else 1
            patch = int(visual.conv1.kernel_size[0])
            self.prompts = VisualPrompts(layers, vpt_tokens, width, patch)
        self.fc = fc
        self.num_classes = fc.out_features
        self._identity = dict(identity or {"name": "custom", "weights": None, "sha256": None})
        self.train()

    # ---- forward -------------------------------------------------------------------------

    def _check_input(self, x: Tensor) -> None:
        size = tuple(self.visual.image_size)
        if x.ndim != 4 or x.shape[1] != 3 or tuple(x.shape[2:]) != size:
            raise InputError(
                f"CLIP image tower expects images (B, 3, {size[0]}, {size[1]}), got "
                f"{tuple(x.shape)}; resize the inputs to {size[0]} px"
            )

    def _embed(self, x: Tensor) -> Tensor:
        """Patch tokens, class token first, plus positions, then ``ln_pre``: (B, 1 + L, width)."""
        v = self.visual
        x = v.conv1(x).flatten(2).transpose(1, 2)
        cls = v.class_embedding.to(x.dtype).view(1, 1, -1).expand(x.shape[0], -1, -1)
        x = torch.cat([cls, x], dim=1) + v.positional_embedding.to(x.dtype)
        return v.ln_pre(v.patch_dropout(x))

    def features(self, x: Tensor) -> Tensor:
        """The class token after the last block and ``ln_post`` (width-d, before ``proj``)."""
        self._check_input(x)
        x = self._embed(x)
        batch_first = getattr(self.visual.transformer, "batch_first", False)
        for i, block in enumerate(self.visual.transformer.resblocks):
            if self.prompts is not None:
                if i == 0:
                    x = self.prompts.insert(x, 0)
                elif self.tuning == "vpt_deep":
                    x = self.prompts.replace(x, i)
            y = x if batch_first else x.transpose(0, 1)
            if self.adapters is not None:
                if not batch_first:
                    raise InputError("AdaptFormer needs a batch-first open_clip (>= 2.24)")
                y = adapted_block_forward(block, self.adapters[i], y)  # type: ignore[arg-type]
            else:
                y = block(y)
            x = y if batch_first else y.transpose(0, 1)
        return self.visual.ln_post(x[:, 0])

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.features(x))

    def train(self, mode: bool = True) -> ClipImageClassifier:
        """Train mode for the trainable parts; frozen submodules stay in eval mode."""
        super().train(mode)
        if mode:
            keep_frozen_in_eval(self)
        return self

    # ---- bookkeeping ---------------------------------------------------------------------

    def trainable_parameter_count(self) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad)

    def total_parameter_count(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def backbone_identity(self) -> dict[str, str | None]:
        """``{"name": architecture, "weights": file name / tag / "random", "sha256": ...}``."""
        return dict(self._identity)

    def trainable_state_dict(self) -> dict[str, Tensor]:
        """Every parameter with ``requires_grad``, plus the persistent buffers of the modules
        that own one (detached, as in ``state_dict``)."""
        keys = {name for name, p in self.named_parameters() if p.requires_grad}
        for mod_name, module in self.named_modules():
            if any(p.requires_grad for p in module.parameters(recurse=False)):
                skip: set[str] = getattr(module, "_non_persistent_buffers_set", set())
                prefix = f"{mod_name}." if mod_name else ""
                keys.update(
                    prefix + b for b, _ in module.named_buffers(recurse=False) if b not in skip
                )
        return {k: v for k, v in self.state_dict().items() if k in keys}

    def load_trainable_state_dict(self, state: dict[str, Tensor]) -> None:
        """Load what :meth:`trainable_state_dict` saved; refuses missing, unexpected or
        mis-shaped entries (e.g. a state of another tuning method) with one clear line."""
        expected = self.trainable_state_dict()
        missing = sorted(set(expected) - set(state))
        unexpected = sorted(set(state) - set(expected))
        if missing or unexpected:
            raise InputError(
                f"trainable state does not fit this {self.tuning} model: "
                f"{len(missing)} missing (e.g. {missing[:2]}), "
                f"{len(unexpected)} unexpected (e.g. {unexpected[:2]}); "
                "was it saved with another tuning method or backbone?"
            )
        for key, value in state.items():
            if tuple(value.shape) != tuple(expected[key].shape):
                raise InputError(
                    f"trainable state entry {key} has shape {tuple(value.shape)}, "
                    f"expected {tuple(expected[key].shape)}"
                )
        targets = dict(self.named_parameters()) | dict(self.named_buffers())
        with torch.no_grad():
            for key, value in state.items():
                targets[key].copy_(value)


def _open_clip() -> Any:
    try:
        import open_clip
    except ImportError as exc:
        raise ImportError("CLIP models need open_clip: pip install 'focalsam[clip]'") from exc
    return open_clip


def _weights_source(name: str, options: ClipOptions) -> tuple[Path | None, str, str | None]:
    """``(file to load or None, identity weights label, sha256 or None)``; hashes the file once."""
    arch = CLIP_ARCHS[name]
    if options.weights is not None and str(options.weights) != "random":
        path = Path(options.weights)
        if not path.is_file():
            raise InputError(
                f"CLIP weights file {str(path)!r} not found; get {where_to_get()} "
                "and pass clip_weights=PATH"
            )
        return path, path.name, sha256_file(path)
    if options.weights is not None or (name == "clip_tiny" and options.pretrained is None):
        return None, "random", None
    if options.pretrained is not None:
        if name == "clip_tiny":
            raise InputError("clip_tiny has no pretrained tags; use clip_weights=PATH or 'random'")
        path = download_pretrained(arch, options.pretrained)
        return path, options.pretrained, sha256_file(path)
    raise InputError(
        f"{name} needs weights: pass clip_weights=PATH to {where_to_get()} (or an open_clip "
        "pretrained tag such as 'openai' when online); clip_weights=random builds a randomly "
        "initialised tower for benchmarks"
    )


def _quick_gelu(name: str, options: ClipOptions) -> bool:
    if options.quick_gelu is not None:
        return options.quick_gelu
    if name == "clip_tiny":
        return False
    if options.weights is None and options.pretrained is not None:
        import open_clip

        return bool(
            (open_clip.get_pretrained_cfg("ViT-B-16", options.pretrained) or {}).get(
                "quick_gelu", False
            )
        )
    return True  # OpenAI's ViT-B/16 uses QuickGELU


def build_clip_classifier(
    name: str,
    num_classes: int,
    *,
    options: ClipOptions | None = None,
    class_names: Sequence[str] | None = None,
    image_size: int | None = None,
) -> ClipImageClassifier:
    """Build ``clip_vit_b16`` or ``clip_tiny`` (``image_size`` applies to the tiny one; ViT-B/16
    is 224 px) with the tuning method and head of ``options``."""
    if name not in CLIP_ARCHS:
        raise InputError(f"unknown CLIP model {name!r}; valid: {', '.join(CLIP_ARCHS)}")
    options = options or ClipOptions()
    options.validate()
    _positive_int("num_classes", num_classes)
    if class_names is not None and len(class_names) != num_classes:
        raise InputError(f"got {len(class_names)} class names for {num_classes} classes")
    if options.text_init and class_names is None:
        raise InputError(
            f"{name} with text_init needs class_names (one per class, in label order; see "
            "focalsam.data.classnames) or clip.text_init=false"
        )
    open_clip = _open_clip()
    file, label, digest = _weights_source(name, options)
    if name == "clip_tiny":
        cfg = {**TINY_CLIP_CONFIG, "vision_cfg": dict(TINY_CLIP_CONFIG["vision_cfg"])}
        if image_size is not None:
            if image_size % cfg["vision_cfg"]["patch_size"] != 0:
                raise InputError(f"clip_tiny image_size must be a multiple of 8, got {image_size}")
            cfg["vision_cfg"]["image_size"] = image_size
    else:
        cfg = open_clip.get_model_config(CLIP_ARCHS[name])
    clip = open_clip.CLIP(**cfg, quick_gelu=_quick_gelu(name, options)).float()
    if file is not None:
        load_clip_weights(clip, file, CLIP_ARCHS[name])
    width = int(clip.visual.class_embedding.shape[-1])
    fc = CosineClassifier(width, num_classes, scale=HEAD_SCALE)
    if options.text_init:
        assert class_names is not None
        tokenizer = open_clip.get_tokenizer("ViT-B-16")
        if options.text_device is not None:
            clip.to(options.text_device)
        fc.weight.data.copy_(text_head_weights(clip, class_names, tokenizer).cpu())
        clip.cpu()
    visual = clip.visual
    del clip  # the text tower goes with it; no reference is kept
    bottleneck = options.bottleneck or adapter_bottleneck(num_classes)
    return ClipImageClassifier(
        visual,
        fc,
        tuning=options.tuning,
        bottleneck=bottleneck,
        lora_rank=options.lora_rank,
        vpt_tokens=options.vpt_tokens,
        identity={"name": CLIP_ARCHS[name], "weights": label, "sha256": digest},
    )
