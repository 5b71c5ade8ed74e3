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
