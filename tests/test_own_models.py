"""timm / torchvision backbones: input config from the pretrained config, weights from a
local file (head keys of another class count ignored), freezing, the cache decision."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from focalsam.data.own_input import own_input
from focalsam.errors import InputError
from focalsam.models.backbones import build_backbone_classifier
from focalsam.train import make_config
from focalsam.train.own_data import use_cache

timm = pytest.importorskip("timm")


def test_input_size_mean_std_from_the_pretrained_config_unless_set() -> None:
    cfg = make_config(overrides={"model": "timm:resnet10t", "dataset": "digits"})
    spec = own_input(cfg)
    pre = timm.models.get_pretrained_cfg("resnet10t")
    assert spec.size == pre.input_size[-1] and spec.mean == pre.mean and spec.std == pre.std
    assert spec.test_resize == round(pre.input_size[-1] / pre.crop_pct)
    cfg = make_config(overrides={"model": "torchvision:resnet18"})
    assert own_input(cfg).size == 224
    cfg.data.image_size = 40
    spec = own_input(cfg)
    assert spec.size == 40 and spec.crop_pct == pytest.approx(224 / 256)
    cfg.data.mean = [0.5, 0.5, 0.5]
    assert own_input(cfg).mean == (0.5, 0.5, 0.5)


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_weights_file_loads_the_backbone_and_ignores_the_old_head(
    tmp_path: Path, suffix: str
) -> None:
    torch.manual_seed(0)
    source = timm.create_model("test_vit", img_size=16)  # 1000-class head
    path = tmp_path / f"w{suffix}"
    if suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(path))
    else:
        torch.save({"state_dict": source.state_dict()}, path)
    torch.manual_seed(1)
    model = build_backbone_classifier("timm:test_vit", 7, image_size=16, weights=str(path))
    x = torch.randn(2, 3, 16, 16)
    source.eval(), model.eval()
    torch.testing.assert_close(
        model.features(x), source.forward_head(source.forward_features(x), pre_logits=True)
    )
    assert model(x).shape == (2, 7)


def test_torchvision_weights_of_another_architecture_are_refused(tmp_path: Path) -> None:
    pytest.importorskip("torchvision")
    from torchvision.models import resnet18

    path = tmp_path / "r18.pt"
    torch.save(resnet18().state_dict(), path)
    model = build_backbone_classifier("torchvision:resnet18", 3, weights=str(path))
    assert model.fc.out_features == 3 and isinstance(model.backbone.fc, torch.nn.Identity)
    with pytest.raises(InputError, match="is not a torchvision:resnet34 state dict: .*missing"):
        build_backbone_classifier("torchvision:resnet34", 3, weights=str(path))


def test_freeze_backbone_trains_the_head_only_and_keeps_batchnorm_statistics() -> None:
    model = build_backbone_classifier("timm:resnet10t", 4, freeze="backbone").train()
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable == ["fc.weight", "fc.bias"]
    before = {k: v.clone() for k, v in model.backbone.state_dict().items() if "running" in k}
    model(torch.randn(4, 3, 32, 32))
    after = model.backbone.state_dict()
    assert all(torch.equal(v, after[k]) for k, v in before.items())


def test_cache_auto_only_on_a_gpu_within_the_limit() -> None:
    assert use_cache("auto", 1000, 64, 4.0, "cuda")
    assert not use_cache("auto", 1000, 64, 4.0, "cpu")
    assert not use_cache("auto", 100_000, 224, 4.0, "cuda")  # 15 GB > 4 GiB
    assert use_cache("ram", 100_000, 224, 4.0, "cpu") and not use_cache("off", 1, 8, 4.0, "cuda")


@pytest.mark.parametrize("name", ["torchvision:resnet18", "timm:test_vit"])
@pytest.mark.parametrize("tuning", ["bias", "layernorm"])
def test_bias_and_norm_tuning_train_only_those_and_the_head(name: str, tuning: str) -> None:
    pytest.importorskip("timm" if name.startswith("timm") else "torchvision")
    from torch import nn

    from focalsam.models.backbones import build_backbone_classifier

    torch.manual_seed(0)
    model = build_backbone_classifier(name, 5, image_size=32, tuning=tuning)
    norms = (nn.LayerNorm, nn.GroupNorm, nn.modules.batchnorm._BatchNorm)
    norm_params = {
        id(p) for m in model.backbone.modules() if isinstance(m, norms) for p in m.parameters()
    }
    expected = {
        n
        for n, p in model.backbone.named_parameters()
        if (n.endswith(".bias") if tuning == "bias" else id(p) in norm_params)
    }
    trainable = {n for n, p in model.backbone.named_parameters() if p.requires_grad}
    assert trainable == expected and expected  # some, and only those
    assert all(p.requires_grad for p in model.fc.parameters())
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    loss = nn.functional.cross_entropy(model(torch.randn(4, 3, 32, 32)), torch.arange(4))
    loss.backward()
    opt.step()
    moved = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert moved <= {f"backbone.{n}" for n in expected} | {"fc.weight", "fc.bias"}
    assert {"fc.weight", "fc.bias"} <= moved


def test_a_frozen_backbone_refuses_partial_tuning() -> None:
    from focalsam.train.config import make_config
    from focalsam.train.errors import ConfigError

    with pytest.raises(ConfigError, match="choose one"):
        make_config(
            "demo",
            overrides={"model": "timm:test_vit", "freeze": "backbone", "model.tuning": "bias"},
        )
