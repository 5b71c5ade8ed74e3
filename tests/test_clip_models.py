"""CLIP image towers with parameter-efficient tuning (on ``clip_tiny``, CPU, seconds)."""

from __future__ import annotations

import gc
import hashlib
import warnings
import weakref
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

open_clip = pytest.importorskip("open_clip")

from focalsam.errors import InputError  # noqa: E402
from focalsam.models import MODELS, ClipOptions, create_model  # noqa: E402
from focalsam.models.clip import TINY_CLIP_CONFIG  # noqa: E402
from focalsam.models.text_head import class_prompts, text_head_weights  # noqa: E402
from focalsam.models.tuning import TUNING_METHODS, adapter_bottleneck  # noqa: E402
from focalsam.optim import create_optimizer  # noqa: E402

NAMES = ["apple", "sea_turtle", "maple tree", "tractor"]
WIDTH = TINY_CLIP_CONFIG["vision_cfg"]["width"]
BLOCKS = TINY_CLIP_CONFIG["vision_cfg"]["layers"]


def clip_model(tuning: str = "adaptformer", seed: int = 0, classes: int = 4, **options: Any) -> Any:
    torch.manual_seed(seed)
    names = NAMES if classes == len(NAMES) else [f"class_{i}" for i in range(classes)]
    return create_model(
        "clip_tiny", classes, clip=ClipOptions(tuning=tuning, **options), class_names=names
    )


def images(n: int = 3, seed: int = 1) -> Tensor:
    return torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


def tiny_open_clip(seed: int = 0) -> nn.Module:
    """The open_clip CLIP that ``clip_model(seed=seed)`` starts from (same RNG draws)."""
    torch.manual_seed(seed)
    return open_clip.CLIP(**TINY_CLIP_CONFIG, quick_gelu=False).float().eval()


def test_registered_names() -> None:
    assert "clip_vit_b16" in MODELS and "clip_tiny" in MODELS
    assert {"resnet32", "resnet50", "small_cnn", "mlp"} <= set(MODELS)


# ---- which parameters train ----------------------------------------------------------------


def _expected_trainable(model: nn.Module, tuning: str) -> set[str]:
    names = {n for n, _ in model.named_parameters()}
    head = {n for n in names if n.startswith("fc.")}
    visual = {n for n in names if n.startswith("visual.")}
    if tuning == "full":
        return names
    if tuning == "adaptformer":
        return head | {n for n in names if n.startswith("adapters.")}
    if tuning == "lora":
        return head | {n for n in visual if ".attn.parametrizations.in_proj_weight.0." in n}
    if tuning in ("vpt_shallow", "vpt_deep"):
        return head | {"prompts.prompts"}
    if tuning == "bias":
        return head | {n for n in visual if n.endswith(".bias") or n.endswith("in_proj_bias")}
    ln = {
        f"visual.{m}.{p}"
        for m, mod in model.visual.named_modules()
        if isinstance(mod, nn.LayerNorm)
        for p in ("weight", "bias")
    }
    return head | ln


@pytest.mark.parametrize("tuning", TUNING_METHODS)
def test_only_tuning_parameters_and_head_train(tuning: str) -> None:
    model = clip_model(tuning)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == _expected_trainable(model, tuning)
    assert "fc.weight" in trainable
    assert not any(p.dtype != torch.float32 for p in model.parameters())
    model(images()).logsumexp(1).sum().backward()
    for name, p in model.named_parameters():
        if name not in trainable:
            assert p.grad is None, name
    # gradients reach every trainable tensor (the zero-initialised up/B get them through s, A)
    reached = {n for n, p in model.named_parameters() if p.grad is not None}
    assert reached == trainable
    text_sized = [p for p in model.parameters() if p.ndim and p.shape[0] == 49408]
    assert not text_sized and not any(isinstance(m, nn.Embedding) for m in model.modules())


@pytest.mark.parametrize(
    ("tuning", "added"),
    [
        ("adaptformer", BLOCKS * (WIDTH * 1 + 1 + 1 * WIDTH + WIDTH + 1)),  # bottleneck 1
        ("lora", BLOCKS * 4 * WIDTH * 8),
        ("vpt_shallow", 10 * WIDTH),
        ("vpt_deep", BLOCKS * 10 * WIDTH),
    ],
)
def test_trainable_counts(tuning: str, added: int) -> None:
    model = clip_model(tuning)
    assert model.trainable_parameter_count() == added + len(NAMES) * WIDTH
    frozen = sum(p.numel() for p in model.visual.parameters() if not p.requires_grad)
    assert model.total_parameter_count() == frozen + model.trainable_parameter_count()


def test_train_mode_keeps_frozen_parts_in_eval() -> None:
    model = clip_model("adaptformer").train()
    assert model.training and model.adapters.training and model.fc.training
    assert not model.visual.training and not model.visual.transformer.resblocks[0].training
    full = clip_model("full").train()
    assert all(m.training for m in full.modules())
    model.eval()
    assert not any(m.training for m in model.modules())


# ---- step 0 ------------------------------------------------------------------------------


def test_untuned_features_match_open_clip() -> None:
    model = clip_model("bias").eval()
    with torch.no_grad():
        ours = model.features(images())
        theirs = model.visual(images())  # open_clip's own forward; proj is None
    assert ours.shape == (3, WIDTH)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-6)


@pytest.mark.parametrize("tuning", ["adaptformer", "lora"])
def test_zero_initialised_methods_leave_features_unchanged(tuning: str) -> None:
    reference = clip_model("bias").eval()
    model = clip_model(tuning).eval()
    torch.testing.assert_close(model.fc.weight, reference.fc.weight, rtol=0, atol=0)
    with torch.no_grad():
        torch.testing.assert_close(
            model.features(images()), reference.visual(images()), rtol=0, atol=1e-6
        )


@pytest.mark.parametrize("tuning", ["vpt_shallow", "vpt_deep"])
def test_vpt_prompts(tuning: str) -> None:
    model = clip_model(tuning, vpt_tokens=5)
    layers = BLOCKS if tuning == "vpt_deep" else 1
    assert model.prompts.prompts.shape == (layers, 5, WIDTH)
    feats = model.features(images(2))
    assert feats.shape == (2, WIDTH)
    # a random readout: ln_post's output sums to 0 per sample (weight 1, bias 0), so
    # feats.sum() has a zero gradient and would test only rounding noise
    readout = torch.randn(WIDTH, generator=torch.Generator().manual_seed(3))
    (feats * readout).sum().backward()
    assert model.prompts.prompts.grad is not None
    assert all(g.abs().sum() > 0 for g in model.prompts.prompts.grad)  # every layer's set is used


def test_adaptformer_branch_reads_the_blocks_ln2_output() -> None:
    """Reference, block by block: x_attn = x + attn(ln_1 x); h = ln_2(x_attn) (the block's own
    LayerNorm, no adapter LayerNorm); out = x_attn + mlp(h) + s * up(relu(down(h)))."""
    model = clip_model("adaptformer", bottleneck=3).eval()
    with torch.no_grad():
        for adapter in model.adapters:  # leave step 0: non-zero up and s
            adapter.up.weight.normal_()
            adapter.up.bias.normal_()
            adapter.scale.fill_(0.7)
    assert not any(isinstance(m, nn.LayerNorm) for m in model.adapters.modules())
    seen: dict[str, list[Tensor]] = {"x": [], "h": []}
    hooks = []
    for block, adapter in zip(model.visual.transformer.resblocks, model.adapters):
        hooks.append(block.ln_1.register_forward_pre_hook(lambda m, a: seen["x"].append(a[0])))
        hooks.append(adapter.register_forward_pre_hook(lambda m, a: seen["h"].append(a[0])))
    with torch.no_grad():
        feats = model.features(images())
    for h in hooks:
        h.remove()
    outs = []
    for i, (block, a) in enumerate(zip(model.visual.transformer.resblocks, model.adapters)):
        x = seen["x"][i]
        q = F.layer_norm(x, (WIDTH,), block.ln_1.weight, block.ln_1.bias, block.ln_1.eps)
        x_attn = x + block.attn(q, q, q, need_weights=False)[0]
        h = F.layer_norm(x_attn, (WIDTH,), block.ln_2.weight, block.ln_2.bias, block.ln_2.eps)
        torch.testing.assert_close(seen["h"][i], h, rtol=0, atol=1e-5)
        branch = a.scale * F.linear(
            F.relu(F.linear(h, a.down.weight, a.down.bias)), a.up.weight, a.up.bias
        )
        outs.append(x_attn + block.mlp(h) + branch)
        if i + 1 < BLOCKS:
            torch.testing.assert_close(seen["x"][i + 1], outs[-1], rtol=0, atol=1e-5)
    ln = model.visual.ln_post
    expected = F.layer_norm(outs[-1][:, 0], (WIDTH,), ln.weight, ln.bias, ln.eps)
    torch.testing.assert_close(feats, expected, rtol=0, atol=1e-5)


def test_bottleneck_rule() -> None:
    assert [adapter_bottleneck(c) for c in (10, 100, 1000, 8142)] == [1, 4, 32, 256]
    assert [adapter_bottleneck(c) for c in (1, 23, 47, 48, 95, 96)] == [1, 1, 1, 2, 2, 4]
    assert (
        clip_model("adaptformer", classes=100, text_init=False).adapters[0].down.out_features == 4
    )
    assert clip_model("adaptformer", bottleneck=6).adapters[1].up.in_features == 6
    with pytest.raises(InputError):
        adapter_bottleneck(0)


# ---- the text-initialised head -------------------------------------------------------------


def test_prompts() -> None:
    assert class_prompts(["sea_turtle", "apple"]) == [
        "a photo of a sea turtle.",
        "a photo of a apple.",
    ]


def test_text_head_gives_zero_shot_dot_products_in_float64() -> None:
    clip = tiny_open_clip().double()
    tokenizer = open_clip.get_tokenizer("ViT-B-16")
    w = text_head_weights(clip, NAMES, tokenizer, normalize=False)
    assert w.dtype == torch.float64 and w.shape == (len(NAMES), WIDTH)
    x = torch.randn(5, WIDTH, dtype=torch.float64)
    with torch.no_grad():  # one prompt at a time, the image embedding x P, then the dot product
        t = torch.cat([clip.encode_text(tokenizer([p])) for p in class_prompts(NAMES)])
        t = t / t.norm(dim=1, keepdim=True)
        zero_shot = (x @ clip.visual.proj) @ t.t()
    torch.testing.assert_close(x @ w.t(), zero_shot, rtol=1e-12, atol=1e-12)
    normed = text_head_weights(clip, NAMES, tokenizer)
    torch.testing.assert_close(normed.norm(dim=1), torch.ones(len(NAMES), dtype=torch.float64))


def test_text_device_cpu_gives_the_same_head() -> None:
    torch.testing.assert_close(clip_model(text_device="cpu").fc.weight, clip_model().fc.weight)


def test_model_head_is_text_initialised_and_text_tower_dropped(monkeypatch: Any) -> None:
    made: list[weakref.ref[nn.Module]] = []
    original = open_clip.CLIP

    class Recorded(original):  # type: ignore[misc, valid-type]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            made.append(weakref.ref(self))

    monkeypatch.setattr(open_clip, "CLIP", Recorded)
    model = clip_model("adaptformer")
    gc.collect()
    assert len(made) == 1 and made[0]() is None  # no reference to the CLIP (text tower) kept
    clip = tiny_open_clip()
    expected = text_head_weights(clip, NAMES, open_clip.get_tokenizer("ViT-B-16"))
    torch.testing.assert_close(model.fc.weight, expected, rtol=0, atol=1e-6)
    assert model.fc.scale == 25.0
    feats = model.features(images())
    cos = F.normalize(feats, dim=1) @ F.normalize(model.fc.weight, dim=1).t()
    torch.testing.assert_close(model(images()), 25.0 * cos)


# ---- training ------------------------------------------------------------------------------


def test_focal_sam_steps_lower_the_training_loss() -> None:
    model = clip_model("adaptformer", classes=4, bottleneck=4)
    g = torch.Generator().manual_seed(3)
    y = torch.arange(4).repeat_interleave(6)
    prototypes = 2 * torch.randn(4, 3, 32, 32, generator=g)
    x = prototypes[y] + 0.5 * torch.randn(24, 3, 32, 32, generator=g)
    frozen = {k: v.clone() for k, v in model.visual.state_dict().items()}
    params = [p for p in model.parameters() if p.requires_grad]
    opt = create_optimizer(
        "focal_sam", params, "sgd", class_counts=[12, 6, 4, 2], rho=0.05, lr=0.01
    )

    def loss() -> float:
        with torch.no_grad():
            return F.cross_entropy(model.eval()(x), y).item()

    before = loss()
    for _ in range(8):
        model.train()
        opt.step(lambda: F.cross_entropy(model(x), y, reduction="none"), y)
    after = loss()
    assert after < 0.9 * before, (before, after)
    for key, value in model.visual.state_dict().items():
        assert torch.equal(value, frozen[key]), key  # the frozen tower never moved


# ---- trainable state -----------------------------------------------------------------------


def test_trainable_state_dict_round_trip() -> None:
    model = clip_model("adaptformer")
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.1 * torch.randn_like(p))
    state = model.trainable_state_dict()
    assert set(state) == {n for n, p in model.named_parameters() if p.requires_grad}
    fresh = clip_model("adaptformer")
    assert not torch.equal(fresh(images()), model(images()))
    fresh.load_trainable_state_dict({k: v.clone() for k, v in state.items()})
    torch.testing.assert_close(fresh.eval()(images()), model.eval()(images()), rtol=0, atol=0)


@pytest.mark.parametrize(("saved", "target"), [("adaptformer", "lora"), ("bias", "layernorm")])
def test_trainable_state_of_another_method_is_refused(saved: str, target: str) -> None:
    state = clip_model(saved).trainable_state_dict()
    with pytest.raises(InputError, match="another tuning method"):
        clip_model(target).load_trainable_state_dict(state)


def test_trainable_state_shape_mismatch_is_refused() -> None:
    state = clip_model("adaptformer", bottleneck=2).trainable_state_dict()
    with pytest.raises(InputError, match="shape"):
        clip_model("adaptformer", bottleneck=3).load_trainable_state_dict(state)


# ---- weights -------------------------------------------------------------------------------


def _one_line(exc: pytest.ExceptionInfo[InputError]) -> str:
    text = str(exc.value)
    assert "\n" not in text
    return text


def test_missing_weights_file_error(tmp_path: Path) -> None:
    path = tmp_path / "ViT-B-16.pt"
    with pytest.raises(InputError) as exc:
        create_model("clip_vit_b16", 4, clip=ClipOptions(weights=str(path)), class_names=NAMES)
    text = _one_line(exc)
    assert str(path) in text and "not found" in text
    assert "openaipublic" in text and "huggingface.co" in text and "clip_weights=PATH" in text


def test_no_weights_error_names_the_options() -> None:
    with pytest.raises(InputError) as exc:
        create_model("clip_vit_b16", 4, clip=ClipOptions(), class_names=NAMES)
    text = _one_line(exc)
    assert "clip_weights=PATH" in text and "random" in text and "pretrained" in text


def test_unreadable_weights_file_error(tmp_path: Path) -> None:
    path = tmp_path / "broken.pt"
    path.write_bytes(b"not a checkpoint" * 10)
    with pytest.raises(InputError) as exc:
        create_model("clip_tiny", 4, clip=ClipOptions(weights=str(path)), class_names=NAMES)
    assert str(path) in _one_line(exc)


def _check_loaded(model: Any, clip: nn.Module, path: Path) -> None:
    source = dict(clip.visual.named_parameters())
    for name, p in model.visual.named_parameters():
        if ".parametrizations.in_proj_weight.0." in name:  # LoRA's own
            continue
        name = name.replace(".parametrizations.in_proj_weight.original", ".in_proj_weight")
        assert p.dtype == torch.float32
        torch.testing.assert_close(p, source[name].float(), rtol=0, atol=0)
    identity = model.backbone_identity()
    assert identity["weights"] == path.name
    assert identity["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    expected = text_head_weights(clip.float(), NAMES, open_clip.get_tokenizer("ViT-B-16"))
    torch.testing.assert_close(model.fc.weight, expected, rtol=0, atol=1e-6)  # text tower loaded


@pytest.mark.parametrize("fmt", ["bin", "wrapped", "safetensors"])
def test_load_state_dict_files(tmp_path: Path, fmt: str) -> None:
    clip = tiny_open_clip(seed=7)
    path = tmp_path / f"tiny.{'safetensors' if fmt == 'safetensors' else 'bin'}"
    if fmt == "safetensors":
        safetensors = pytest.importorskip("safetensors.torch")
        safetensors.save_file({k: v.contiguous() for k, v in clip.state_dict().items()}, str(path))
    else:
        state = clip.state_dict()
        torch.save({"state_dict": state, "epoch": 3} if fmt == "wrapped" else state, path)
    model = clip_model("lora", seed=0, weights=str(path))  # seed 0: a different random init
    _check_loaded(model, clip, path)


def test_load_torchscript_fp16_archive(tmp_path: Path) -> None:
    """OpenAI's file is a TorchScript archive of fp16 tensors; the model comes out fp32."""
    clip = tiny_open_clip(seed=7).half()
    path = tmp_path / "ViT-tiny.pt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(
            clip,
            (torch.randn(1, 3, 32, 32).half(), torch.zeros(1, 77, dtype=torch.long)),
            check_trace=False,
        )
        traced.save(str(path))
    model = clip_model("adaptformer", seed=0, weights=str(path))
    _check_loaded(model, clip, path)


def test_wrong_architecture_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "other.bin"
    state = tiny_open_clip().state_dict()
    state.pop("visual.ln_post.weight")
    torch.save(state, path)
    with pytest.raises(InputError) as exc:
        clip_model(weights=str(path))
    assert "other.bin" in _one_line(exc)


# ---- bad input -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "options",
    [
        {"tuning": "prefix"},
        {"lora_rank": 0},
        {"vpt_tokens": 1.5},
        {"bottleneck": -1},
        {"text_init": "yes"},
        {"weights": ""},
        {"text_device": "gpu0"},
    ],
)
def test_bad_options(options: dict[str, Any]) -> None:
    with pytest.raises(InputError) as exc:
        ClipOptions(**options).validate()
    assert next(iter(options)) in _one_line(exc)


def test_bad_build_inputs() -> None:
    with pytest.raises(InputError, match="class_names"):
        create_model("clip_tiny", 4, clip=ClipOptions())
    with pytest.raises(InputError, match="3 class names for 4"):
        create_model("clip_tiny", 4, class_names=NAMES[:3])
    with pytest.raises(InputError, match="in_channels"):
        create_model("clip_tiny", 4, in_channels=1, class_names=NAMES)
    with pytest.raises(InputError, match="pretrained"):
        create_model("clip_tiny", 4, clip=ClipOptions(pretrained="openai"), class_names=NAMES)
    with pytest.raises(InputError, match=r"\(B, 3, 32, 32\)"):
        clip_model().features(torch.randn(2, 3, 64, 64))


def test_clip_tiny_image_size() -> None:
    model = create_model("clip_tiny", 4, image_size=16, class_names=NAMES)
    assert model(torch.randn(2, 3, 16, 16)).shape == (2, 4)
