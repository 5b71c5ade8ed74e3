"""Offline is fast: a pretrained download that cannot reach its host fails at once with
one line on how to give a local file, after a probe whose wait is bounded."""

from __future__ import annotations

import time

import pytest

from focalsam.errors import InputError
from focalsam.models import offline


def test_the_probe_gives_up_on_a_hanging_lookup(monkeypatch):
    def hang(*_a, **_k):
        time.sleep(30)  # a lookup that hangs, then times out as a real one would
        raise TimeoutError("timed out")

    monkeypatch.setattr(offline.socket, "create_connection", hang)
    assert offline.reachable("example.invalid", timeout=0.2) is False


def test_the_probe_says_unreachable_when_the_connection_fails(monkeypatch):
    def refuse(*_a, **_k):
        raise OSError("Network is unreachable")

    monkeypatch.setattr(offline.socket, "create_connection", refuse)
    assert offline.reachable("huggingface.co") is False


def test_an_offline_pretrained_tag_fails_without_trying_to_download(monkeypatch):
    open_clip = pytest.importorskip("open_clip")
    import focalsam.models.clip_weights as clip_weights

    def no_download(*_a, **_k):
        raise AssertionError("a download was attempted")

    monkeypatch.setattr(open_clip, "download_pretrained", no_download)
    monkeypatch.setattr(clip_weights, "cached_open_clip_file", lambda _cfg: None)
    monkeypatch.setattr(clip_weights, "reachable", lambda _host: False)
    with pytest.raises(InputError) as info:
        clip_weights.download_pretrained("ViT-B-16", "openai")
    message = str(info.value)
    assert "\n" not in message and "cannot be reached" in message
    assert "clip_weights=PATH" in message and "ViT-B-16" in message


def test_a_cached_file_is_used_without_the_network(monkeypatch, tmp_path):
    pytest.importorskip("open_clip")
    import focalsam.models.clip_weights as clip_weights

    weights = tmp_path / "ViT-B-16.pt"
    weights.write_bytes(b"x")
    monkeypatch.setattr(clip_weights, "cached_open_clip_file", lambda _cfg: weights)
    monkeypatch.setattr(clip_weights, "reachable", lambda _host: pytest.fail("probed"))
    assert clip_weights.download_pretrained("ViT-B-16", "openai") == weights


@pytest.mark.parametrize("name", ["timm:resnet10t", "torchvision:resnet18"])
def test_an_offline_pretrained_backbone_fails_in_seconds_naming_a_local_file(
    name, monkeypatch, tmp_path
):
    pytest.importorskip("timm" if name.startswith("timm") else "torchvision")
    import focalsam.models.backbones as backbones

    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))  # nothing cached
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    asked: list[str] = []

    def unreachable(host: str, *_a, **_k) -> bool:
        asked.append(host)
        return False

    def no_download(*_a, **_k):
        raise AssertionError("a download was attempted")

    monkeypatch.setattr(backbones, "reachable", unreachable)
    monkeypatch.setattr("torch.hub.load_state_dict_from_url", no_download)
    start = time.monotonic()
    with pytest.raises(InputError, match="model.weights=PATH") as e:
        backbones.build_backbone_classifier(name, 4, pretrained=True)
    assert time.monotonic() - start < 5
    assert asked and "cannot be reached" in str(e.value) and name in str(e.value)


def test_a_cached_pretrained_backbone_needs_no_network(monkeypatch, tmp_path):
    pytest.importorskip("torchvision")
    from focalsam.models import offline

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    host, cached = offline.backbone_download("torchvision", "resnet18")
    assert host == "download.pytorch.org" and not cached
    (tmp_path / "torch" / "hub" / "checkpoints").mkdir(parents=True)
    (tmp_path / "torch" / "hub" / "checkpoints" / "resnet18-f37072fd.pth").write_bytes(b"")
    assert offline.backbone_download("torchvision", "resnet18") == (host, True)
