"""``focalsam export RUN --format torchscript|onnx|safetensors --out FILE``: a trained model
for deployment, with a sidecar ``FILE.json``.

The model is the run's checkpoint in eval mode; LoRA is merged into the attention weights
(``W + B A``, plain tensors), AdaptFormer adapters stay modules. ``torchscript`` and
``onnx`` trace ``logits = model(x)`` for ``x`` of shape ``(N, 3, size, size)`` (any ``N``);
``safetensors`` holds the merged state dict (rebuild the model with focalsam). The sidecar
holds the class names, the input size, mean and std, the test resize, the model name and
the sha256 of the run's ``config.yaml``.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from focalsam.errors import InputError
from focalsam.train.paths import check_output_folder

__all__ = ["FORMATS", "export_run", "merged_model", "sidecar_path"]

FORMATS = ("torchscript", "onnx", "safetensors")


def sidecar_path(out: Path) -> Path:
    """``model.onnx`` -> ``model.onnx.json``."""
    return out.with_name(out.name + ".json")


def merged_model(model: nn.Module) -> nn.Module:
    """``model`` in eval mode with every parametrization (LoRA: ``W + B A``) folded into
    plain weights, in place (a parametrized module does not survive ``deepcopy``)."""
    from torch.nn.utils import parametrize

    plain = model.eval()
    for module in list(plain.modules()):
        if parametrize.is_parametrized(module):
            held: Any = module.parametrizations
            for name in list(held.keys()):
                parametrize.remove_parametrizations(module, name, leave_parametrized=True)
    for p in plain.parameters():
        p.requires_grad_(False)
    return plain


def _check(run: Path, fmt: str, out: Path, force: bool) -> None:
    if fmt not in FORMATS:
        raise InputError(f"--format must be one of {', '.join(FORMATS)}; got {fmt!r}")
    for path in (out, sidecar_path(out)):
        if path.exists() and not force:
            raise InputError(f"{path} exists: choose another --out, or --force to replace it")
    check_output_folder(out.parent, "--out", "export")  # never inside any run folder
    if not out.parent.is_dir():
        raise InputError(f"--out {out}: the folder {out.parent} does not exist")
    if fmt == "onnx":
        try:
            import onnx  # noqa: F401
        except ImportError:
            raise InputError("--format onnx needs onnx: pip install 'focalsam[export]'") from None


def export_run(
    run: str | Path,
    fmt: str,
    out: str | Path,
    *,
    checkpoint: str = "last",
    force: bool = False,
) -> dict[str, Any]:
    """Write ``out`` and its sidecar; returns the sidecar's content."""
    from focalsam.train.evaluation import load_run
    from focalsam.train.resume import run_config_path

    run, out = Path(run), Path(out)
    _check(run, fmt, out, force)
    loaded = load_run(run, checkpoint, "cpu")
    try:
        data, cfg = loaded.data, loaded.cfg
        model = merged_model(loaded.model)
        size = data.image_size
        spec = data.input_spec or {"image_size": size, "mean": None, "std": None}
        names = (
            data.class_names() if data.class_names else [str(i) for i in range(data.num_classes)]
        )
    finally:
        loaded.rt.close()
    example = torch.randn(2, data.in_channels, size, size)
    tmp = out.with_name(f".{out.name}.tmp")
    fastpath = torch.backends.mha.get_fastpath_enabled()
    # the fused attention kernel of nn.MultiheadAttention has no ONNX form: trace the plain ops
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        if fmt == "torchscript":
            with torch.no_grad():
                traced = torch.jit.trace(model, example, check_trace=False)
            traced.save(str(tmp))
        elif fmt == "onnx":
            torch.onnx.export(
                model,
                (example,),
                str(tmp),
                input_names=["images"],
                output_names=["logits"],
                dynamic_axes={"images": {0: "batch"}, "logits": {0: "batch"}},
                dynamo=False,
            )
        else:
            from safetensors.torch import save_file

            state = {k: v.contiguous() for k, v in model.state_dict().items()}
            save_file(state, str(tmp), metadata={"model": cfg.model.name})
        tmp.replace(out)
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)
        tmp.unlink(missing_ok=True)
    side = {
        "format": fmt,
        "model": cfg.model.name,
        "class_names": names,
        "num_classes": len(names),
        "input": {"channels": data.in_channels, **spec},
        "input_name": "images",
        "output": "logits (N, num_classes); softmax gives the class probabilities",
        "config_sha256": hashlib.sha256(run_config_path(run).read_bytes()).hexdigest(),
        "checkpoint": str(loaded.checkpoint),
        "epoch": loaded.payload.get("epoch"),
    }
    sidecar_path(out).write_text(json.dumps(side, indent=2) + "\n")
    return side
