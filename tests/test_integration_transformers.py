"""The Hugging Face Trainer integration equals our own loop: steps, accumulation, resume, DDP.

A tiny randomly initialised ViTForImageClassification built from a config (nothing is
downloaded), float32, no dropout, long-tailed labels.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F
from conftest import run_gloo
from torch.utils.data import SequentialSampler

transformers = pytest.importorskip("transformers")
pytest.importorskip("accelerate")

from focalsam.integrations.transformers import (  # noqa: E402
    SharpnessAwareTrainer,
    TakenStep,
    dataset_class_counts,
)
from focalsam.optim import FocalSAM  # noqa: E402

COUNTS = [24, 12, 8, 4]  # 48 images: 6 steps of 8
OPTIONS = {"rho": 0.2, "gamma": 2.0, "lam": 0.6, "momentum": 0.9}
LR, WEIGHT_DECAY, MAX_GRAD_NORM, STEPS = 0.1, 0.01, 1.0, 6


def tiny_vit(seed: int = 0) -> torch.nn.Module:
    config = transformers.ViTConfig(
        image_size=8,
        patch_size=4,
        num_channels=3,
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        num_labels=len(COUNTS),
    )
    torch.manual_seed(seed)
    return transformers.ViTForImageClassification(config)


def long_tailed_images(seed: int = 1) -> list[dict]:
    g = torch.Generator().manual_seed(seed)
    y = torch.cat([torch.full((n,), c) for c, n in enumerate(COUNTS)])
    y = y[torch.randperm(len(y), generator=g)]
    x = torch.randn(len(y), 3, 8, 8, generator=g)
    return [{"pixel_values": x[i], "labels": int(y[i])} for i in range(len(y))]


class InOrderTrainer(SharpnessAwareTrainer):
    """Batches in dataset order, so our own loop can take the same ones."""

    def _get_train_sampler(self, train_dataset=None):
        return SequentialSampler(train_dataset or self.train_dataset)


def training_args(out: Path, **overrides) -> transformers.TrainingArguments:
    kw = dict(
        output_dir=str(out),
        per_device_train_batch_size=8,
        max_steps=STEPS,
        learning_rate=LR,
        weight_decay=WEIGHT_DECAY,
        max_grad_norm=MAX_GRAD_NORM,
        lr_scheduler_type="linear",
        warmup_steps=0,
        seed=0,
        use_cpu=True,
        report_to="none",
        save_strategy="no",
        logging_strategy="no",
        disable_tqdm=True,
        dataloader_num_workers=0,
    )
    kw.update(overrides)
    return transformers.TrainingArguments(**kw)


def fit_trainer(out: Path, trainer_class=InOrderTrainer, model_seed=0, resume=None, **overrides):
    model = tiny_vit(model_seed)
    trainer = trainer_class(
        model=model,
        args=training_args(out, **overrides),
        train_dataset=long_tailed_images(),
        optimizer="focal_sam",
        optimizer_options=OPTIONS,
        base_optimizer="sgd",
    )
    trainer.train(resume_from_checkpoint=resume)
    return model, trainer


def own_loop(
    model: torch.nn.Module, batches, decay_names, rank_model=None, steps: int = STEPS
) -> torch.nn.Module:
    """Focal-SAM by hand on the same parameter groups, schedule and clipping."""
    trained = rank_model if rank_model is not None else model
    named = [(n, p) for n, p in model.named_parameters()]
    groups = [
        {"params": [p for n, p in named if n in decay_names], "weight_decay": WEIGHT_DECAY},
        {"params": [p for n, p in named if n not in decay_names], "weight_decay": 0.0},
    ]
    opt = FocalSAM(
        groups,
        torch.optim.SGD,
        class_counts=COUNTS,
        lr=LR,
        max_grad_norm=MAX_GRAD_NORM,
        model=rank_model,
        **OPTIONS,
    )
    sched = transformers.get_linear_schedule_with_warmup(opt, 0, steps)
    trained.train()
    for x, y in batches:
        opt.step(
            lambda x=x, y=y: F.cross_entropy(
                trained(pixel_values=x).logits.float(), y, reduction="none"
            ),
            y,
        )
        sched.step()
    return model


def batches_of(data: list[dict], size: int):
    for i in range(0, len(data), size):
        chunk = data[i : i + size]
        yield (
            torch.stack([d["pixel_values"] for d in chunk]),
            torch.tensor([d["labels"] for d in chunk]),
        )


def assert_same_weights(a: torch.nn.Module, b: torch.nn.Module, atol: float = 1e-6) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        torch.testing.assert_close(sa[k], sb[k], atol=atol, rtol=0, msg=k)


def test_class_counts_come_from_the_training_labels():
    assert dataset_class_counts(long_tailed_images(), len(COUNTS)) == COUNTS


def test_six_trainer_steps_equal_our_own_loop(tmp_path):
    model, trainer = fit_trainer(tmp_path / "hf")
    assert trainer.state.global_step == STEPS
    assert isinstance(trainer.sam, FocalSAM) and trainer.sam.max_grad_norm == MAX_GRAD_NORM
    assert trainer.sam.class_counts.tolist() == COUNTS
    assert isinstance(trainer.optimizer.optimizer, TakenStep)  # what accelerate wraps
    decay = set(trainer.get_decay_parameter_names(model))
    own = own_loop(tiny_vit(0), batches_of(long_tailed_images(), 8), decay)
    assert_same_weights(model, own)
    start = tiny_vit(0).state_dict()
    moved = max((model.state_dict()[k] - v).abs().max() for k, v in start.items())
    assert moved > 1e-2
    # the schedule ran in both: the Trainer's lr reached 0 after its 6 steps
    assert trainer.sam.param_groups[0]["lr"] == pytest.approx(0.0, abs=1e-12)


def test_trainer_with_another_rho_differs_from_our_own_loop(tmp_path):
    """The comparison above can fail."""
    model, trainer = fit_trainer(tmp_path / "hf")
    decay = set(trainer.get_decay_parameter_names(model))
    OPTIONS_SAVED = dict(OPTIONS)
    try:
        OPTIONS["rho"] = 0.1
        own = own_loop(tiny_vit(0), batches_of(long_tailed_images(), 8), decay)
    finally:
        OPTIONS.clear()
        OPTIONS.update(OPTIONS_SAVED)
    with pytest.raises(AssertionError):
        assert_same_weights(model, own)


def test_accumulating_two_half_batches_equals_one_batch(tmp_path):
    whole, _ = fit_trainer(tmp_path / "whole")
    halves, trainer = fit_trainer(
        tmp_path / "halves", per_device_train_batch_size=4, gradient_accumulation_steps=2
    )
    assert trainer.state.global_step == STEPS
    assert_same_weights(halves, whole)


def test_resume_from_the_trainers_checkpoint_equals_the_uninterrupted_run(tmp_path):
    # the Trainer's own shuffled sampler: resume must also replay the data order
    out = tmp_path / "run"
    saving = dict(save_strategy="steps", save_steps=3)
    whole, _ = fit_trainer(out, trainer_class=SharpnessAwareTrainer, **saving)
    resumed, trainer = fit_trainer(
        tmp_path / "resumed",
        trainer_class=SharpnessAwareTrainer,
        model_seed=5,  # overwritten by the checkpoint
        resume=str(out / "checkpoint-3"),
        **saving,
    )
    assert trainer.state.global_step == STEPS
    assert_same_weights(resumed, whole)
    assert any(v.abs().sum() > 0 for v in trainer.sam.state_dict()["state"][0].values())


def _ddp_worker(rank: int, world: int, out: str) -> None:
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world))
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT="29531")
    model, trainer = fit_trainer(Path(out) / "hf", per_device_train_batch_size=4)
    assert trainer.args.world_size == world
    assert trainer.accelerator.num_processes == world
    decay = set(trainer.get_decay_parameter_names(model))
    mine = tiny_vit(0)
    ddp = torch.nn.parallel.DistributedDataParallel(mine)
    shards = [
        (x.chunk(world)[rank], y.chunk(world)[rank]) for x, y in batches_of(long_tailed_images(), 8)
    ]
    own_loop(mine, shards, decay, rank_model=ddp)
    torch.save({"hf": model.state_dict(), "own": mine.state_dict()}, f"{out}/result.{rank}")
    dist.barrier()


def test_ddp_trainer_equals_our_own_ddp(tmp_path):
    run_gloo(_ddp_worker, 2, tmp_path / "store", str(tmp_path))
    results = [torch.load(tmp_path / f"result.{r}", weights_only=True) for r in range(2)]
    for r in results:
        for k, v in r["own"].items():
            torch.testing.assert_close(r["hf"][k], v, atol=1e-6, rtol=0, msg=k)
    for k, v in results[0]["hf"].items():
        assert torch.equal(v, results[1]["hf"][k]), k


def test_bf16_trainer_equals_our_own_bf16_loop(tmp_path):
    """The Trainer's bf16 autocast (CPU here) wraps both forward passes of a step."""
    model, trainer = fit_trainer(tmp_path / "hf", bf16=True, max_steps=2)
    decay = set(trainer.get_decay_parameter_names(model))
    mine = tiny_vit(0)
    forward = mine.forward
    mine.forward = lambda *a, **k: _autocast_bf16(forward, *a, **k)
    own_loop(mine, list(batches_of(long_tailed_images(), 8))[:2], decay, steps=2)
    assert_same_weights(model, mine)


def _autocast_bf16(forward, *args, **kwargs):
    with torch.autocast("cpu", dtype=torch.bfloat16):
        return forward(*args, **kwargs)
