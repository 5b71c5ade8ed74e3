"""The trainer with foundation models and the large-scale presets: trainable-only
checkpoints that name their backbone, exact resume, every preset with every optimizer,
gradient accumulation and the device-side skip of a non-finite step."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import demo_config, silent_trainer
from fake_cifar import make_fake_cifar10, make_fake_cifar100

from focalsam.cli import main
from focalsam.optim import list_optimizers
from focalsam.train import ConfigError, TrainingDiverged, TrainingInterrupted, make_config
from focalsam.train.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from focalsam.train.presets import list_presets

Image = pytest.importorskip("PIL.Image")
#: the CLIP tests need the `clip` extra; the rest of this file does not
needs_clip = pytest.mark.skipif(
    importlib.util.find_spec("open_clip") is None, reason="needs open_clip (the clip extra)"
)

QUIET = {"progress": False, "tensorboard": False}


@pytest.fixture(scope="module")
def cifar_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("cifar")
    make_fake_cifar10(root, per_batch=40)
    make_fake_cifar100(root, n=600)
    return root


@pytest.fixture(scope="module")
def list_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """ImageNet-LT (1000 classes) and iNaturalist (8142) lists whose lines all point at a
    few tiny PNGs (two training images per class, CC-SAM's minimum), and a categories.json."""
    root = tmp_path_factory.mktemp("lists")
    for k in range(3):
        Image.new("RGB", (12, 12), color=(40 * k, 90, 200)).save(root / f"{k}.png")
    for pattern, classes, test_split in (
        ("ImageNet_LT_{}.txt", 1000, "test"),
        ("iNaturalist18_{}.txt", 8142, "val"),
    ):
        train = [f"{c % 3}.png {c}\n{(c + 1) % 3}.png {c}" for c in range(classes)]
        (root / pattern.format("train")).write_text("\n".join(train) + "\n")
        test = [f"{c % 3}.png {c}" for c in range(classes)]
        (root / pattern.format(test_split)).write_text("\n".join(test) + "\n")
    # iNaturalist 2018's categories, listed out of id order
    cats = [{"id": i, "name": f"species {i}"} for i in reversed(range(8142))]
    (root / "categories.json").write_text(json.dumps(cats))
    return root


def _clip_run(cifar_root: Path, run: Path, **extra: Any) -> Any:
    keys = {
        "dataset": "cifar10",
        "data_root": str(cifar_root),
        "model": "clip_tiny",
        "clip_weights": "random",
        "tuning": "adaptformer",
        "optimizer": "focal_sam",
        "epochs": 2,
        "batch_size": 16,
        "eval_every": 1,
        "lr": 0.01,
        "run_dir": str(run),
        "imbalance_ratio": 10,
        **QUIET,
        **extra,
    }
    return make_config(None, overrides=keys)


def _trainable(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.trainable_state_dict().items()}


@needs_clip
def test_a_tuned_clip_run_saves_its_trainable_parameters_and_backbone(cifar_root, tmp_path):
    with silent_trainer(_clip_run(cifar_root, tmp_path / "run", epochs=1)) as t:
        t.fit()
        model = t.model
    ckpt = load_checkpoint(tmp_path / "run" / "last.pt")
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert set(ckpt["model"]) >= trainable
    assert len(ckpt["model"]) < len(model.state_dict())  # the frozen tower is not saved
    assert ckpt["backbone"] == model.backbone_identity()
    counts = json.loads((tmp_path / "run" / "model.json").read_text())
    assert 0 < counts["trainable"] < counts["total"]
    assert counts["trainable"] == sum(p.numel() for p in model.parameters() if p.requires_grad)


@needs_clip
def test_a_clip_run_resumes_exactly_and_refuses_another_backbone(cifar_root, tmp_path):
    with silent_trainer(_clip_run(cifar_root, tmp_path / "whole")) as t:
        t.fit()
        whole = _trainable(t.model)

    def stop(trainer: Any, epoch: int, step: int) -> None:
        if (epoch, step) == (0, 1):
            trainer.request_stop("test")

    cfg = _clip_run(cifar_root, tmp_path / "cut")
    with pytest.raises(TrainingInterrupted), silent_trainer(cfg, on_step=stop) as t:
        t.fit()
    with silent_trainer(_clip_run(cifar_root, tmp_path / "cut"), resume=tmp_path / "cut") as t:
        t.fit()
        resumed = _trainable(t.model)
    assert whole.keys() == resumed.keys()
    assert all(torch.equal(whole[k], resumed[k]) for k in whole)

    path = tmp_path / "cut" / "last.pt"
    ckpt = load_checkpoint(path)
    ckpt["backbone"] = {**ckpt["backbone"], "sha256": "0" * 64, "weights": "ViT-B-16.pt"}
    save_checkpoint(ckpt, path)
    cfg = _clip_run(cifar_root, tmp_path / "cut", epochs=3)
    with pytest.raises(CheckpointError, match="another backbone"):
        silent_trainer(cfg, resume=tmp_path / "cut", resume_changes={"train.epochs": 3})


def _preset_overrides(preset: str, cifar_root: Path, list_root: Path, run: Path) -> dict:
    """Small, fast stand-ins for the data and the 86 M-parameter tower; the preset's
    method settings, loss and schedule are kept."""
    keys: dict[str, Any] = {"epochs": 1, "run_dir": str(run), "eval_every": 1, **QUIET}
    if "clip" in preset:
        keys |= {"model": "clip_tiny", "clip_weights": "random", "batch_size": 8}
    else:
        keys |= {"image_size": 32, "batch_size": 4}
    if preset.startswith("cifar"):
        keys |= {"data_root": str(cifar_root), "imbalance_ratio": 2}
    else:
        keys |= {"data_root": str(list_root), "num_workers": 0, "verify_images": False}
        keys |= {"image_size": 32} if "clip" in preset else {}
    return keys


LARGE = [p for p in list_presets() if p.endswith(("-clip", "-r50"))]


def test_the_six_large_scale_presets_exist_with_their_settings(capsys):
    assert len(LARGE) == 6
    c100 = make_config("cifar100-lt-r100-clip", overrides={"clip_weights": "random"})
    assert (c100.model.name, c100.model.tuning, c100.loss.name, c100.loss.tau) == (
        "clip_vit_b16",
        "adaptformer",
        "logit_adjustment",
        1.0,
    )
    assert (c100.optim.lr, c100.optim.weight_decay, c100.train.batch_size) == (0.01, 5e-4, 128)
    assert (c100.optim.rho, c100.optim.focal_sam.gamma, c100.optim.focal_sam.lam) == (
        0.05,
        5.5,
        0.8,
    )
    inat = make_config("inat2018-clip", overrides={"clip_weights": "random"})
    assert (inat.optim.rho, inat.optim.focal_sam.gamma, inat.optim.focal_sam.lam) == (
        0.02,
        0.2,
        1.0,
    )
    r50 = make_config("imagenet-lt-r50")
    assert (r50.train.batch_size, r50.optim.lr, r50.train.rho_milestones) == (256, 0.1, [160])
    assert r50.optim.rho * r50.train.rho_decay == pytest.approx(0.2)
    assert main(["presets"]) == 0
    out = capsys.readouterr().out
    assert all(p in out for p in LARGE)


def test_a_clip_preset_without_weights_is_one_clear_line(capsys, tmp_path):
    code = main(["train", "--preset", "cifar100-lt-r100-clip", f"run_dir={tmp_path / 'r'}"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "clip_weights=PATH" in err[0]
    code = main(
        [
            "train",
            "--preset",
            "cifar10-lt-r100-clip",
            "--clip-weights",
            str(tmp_path / "nope.pt"),
            f"run_dir={tmp_path / 'r'}",
        ]
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "nope.pt is not a file" in err[0]
    assert not (tmp_path / "r").exists()


@pytest.mark.slow
@pytest.mark.parametrize(
    "preset", [pytest.param(p, marks=needs_clip) if "clip" in p else p for p in LARGE]
)
def test_every_large_preset_runs_with_every_optimizer(preset, cifar_root, list_root, tmp_path):
    for name in list_optimizers():
        keys = _preset_overrides(preset, cifar_root, list_root, tmp_path / name)
        cfg = make_config(preset, overrides={**keys, "optimizer": name})

        def once(trainer: Any, epoch: int, step: int) -> None:
            trainer.request_stop("one step")

        with silent_trainer(cfg, on_step=once) as t:
            trainable = {n for n, p in t.model.named_parameters() if p.requires_grad}
            before = {n: p.detach().clone() for n, p in t.model.named_parameters()}
            with pytest.raises(TrainingInterrupted):
                t.fit()
            after = {n: p.detach() for n, p in t.model.named_parameters()}
        changed = {n for n in before if not torch.equal(before[n], after[n])}
        # the step moved the trainable parameters, and nothing else (a frozen tower stays)
        assert changed, f"{preset} / {name}: one step changed no parameter"
        assert changed <= trainable, f"{preset} / {name}: frozen {sorted(changed - trainable)[:3]}"
        assert (tmp_path / name / "last.pt").is_file()


def test_accumulated_micro_batches_train_like_the_whole_batch(tmp_path):
    """The MLP has no batch-norm, so 4 micro-batches of 16 are one batch of 64."""
    weights = []
    for accum in (1, 4):
        cfg = demo_config(tmp_path / f"a{accum}", model="mlp", epochs=1, accum_steps=accum)
        with silent_trainer(cfg) as t:
            t.fit()
            weights.append({k: v.clone() for k, v in t.model.state_dict().items()})
    one, four = weights
    assert all(torch.allclose(one[k], four[k], atol=1e-5, rtol=1e-4) for k in one)
    assert any(not torch.equal(one[k], four[k]) for k in one)  # really another summation order


def test_accumulation_must_divide_the_batch_and_needs_a_capable_method(tmp_path):
    with pytest.raises(ConfigError, match="accum_steps must be >= 1 and divide"):
        demo_config(tmp_path / "r", accum_steps=3)
    with pytest.raises(ConfigError, match="ccsam does not accumulate"):
        demo_config(tmp_path / "r", optimizer="ccsam", accum_steps=2)
    with pytest.raises(ConfigError, match="sam_every is not supported by plain"):
        demo_config(tmp_path / "r", optimizer="sgd", sam_every=2)


def test_a_non_finite_step_is_skipped_on_the_device_and_stops_the_run(tmp_path, monkeypatch):
    """strict_checks=false: the bad step leaves the weights as they were; the epoch's end
    reports it with its step, and the run stops with the last good checkpoint kept."""
    cfg = demo_config(tmp_path / "r", epochs=2, strict_checks=False)
    seen: dict[str, Any] = {}

    def poison(trainer: Any, epoch: int, step: int) -> None:
        if (epoch, step) == (1, 2):  # the loss of the step after this one is NaN
            loss_fn = trainer.parts.loss_fn
            forward = loss_fn.forward
            seen["before"] = {k: v.clone() for k, v in trainer.model.state_dict().items()}

            def nan_once(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
                loss_fn.forward = forward  # type: ignore[method-assign]
                return forward(logits, y) * float("nan")

            loss_fn.forward = nan_once  # type: ignore[method-assign]
        if (epoch, step) == (1, 3):
            seen["after"] = {k: v.clone() for k, v in trainer.model.state_dict().items()}

    with (
        pytest.raises(TrainingDiverged, match=r"epoch 2, step 4"),
        silent_trainer(cfg, on_step=poison) as t,
    ):
        t.fit()
    before, after = seen["before"], seen["after"]
    floating = [k for k in before if before[k].is_floating_point()]  # weights, BN statistics
    assert floating and all(torch.equal(before[k], after[k]) for k in floating)
    assert load_checkpoint(tmp_path / "r" / "last.pt")["epoch"] == 1


def test_compile_true_trains_like_eager(tmp_path, monkeypatch):
    """run.compile wraps the model in torch.compile (here with the aot_eager backend, to
    keep CI fast; tests/test_compile.py runs inductor): same weights to float32 tolerance."""
    compiled = []
    real = torch.compile

    def compile_aot_eager(model: Any, mode: str = "default", **kw: Any) -> Any:
        compiled.append(mode)
        return real(model, backend="aot_eager", **kw)

    monkeypatch.setattr(torch, "compile", compile_aot_eager)
    weights = []
    for flag in (False, True):
        cfg = demo_config(tmp_path / f"c{flag}", epochs=1, compile=flag)
        with silent_trainer(cfg) as t:
            t.fit()
            weights.append({k: v.clone() for k, v in t.model.state_dict().items()})
    assert compiled == ["default"]
    eager, comp = weights
    assert all(torch.allclose(eager[k].float(), comp[k].float(), atol=1e-5) for k in eager)


@pytest.mark.parametrize(
    ("extra", "why"),
    [
        ("device=cpu", "device=cpu"),
        ("precision=fp16", "precision=fp16"),
        ("optimizer=ccsam", "ccsam"),
        ("sam_every=2", "optim.sam_every > 1"),
        ("strict_checks=true", "optim.strict_checks=true"),
    ],
)
def test_cuda_graph_refuses_what_it_cannot_capture_before_any_run(extra, why, capsys, tmp_path):
    run = tmp_path / "r"
    code = main(["train", "--preset", "demo", "cuda_graph=true", f"run_dir={run}", extra])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1, err
    assert f"run.cuda_graph cannot capture a step with {why}" in err[0]
    assert not run.exists()


def test_a_longer_resume_replays_the_schedule_without_torchs_order_warning(tmp_path):
    import warnings

    with silent_trainer(demo_config(tmp_path / "r", epochs=1)) as t:
        t.fit()
    cfg = demo_config(tmp_path / "r", epochs=2)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with silent_trainer(cfg, resume=tmp_path / "r", resume_changes={"train.epochs": 2}) as t:
            t.fit()
    assert not [w for w in caught if "lr_scheduler" in str(w.message)]
