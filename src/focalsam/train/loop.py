"""The training loop: one run of one config, with evaluation, logs, checkpoints and resume."""

from __future__ import annotations

import contextlib
import csv
import itertools
import json
import math
import os
import signal
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

from focalsam.losses import create_loss, list_losses
from focalsam.metrics import LongTailAccuracy
from focalsam.models import create_model
from focalsam.optim import NonFiniteLossError, create_optimizer, list_optimizers
from focalsam.train.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from focalsam.train.config import ConfigError, TrainConfig, config_to_dict, save_config
from focalsam.train.data_setup import TrainData, build_data

OPTIMIZER_ALIASES = {"sgd": "plain", "focalsam": "focal_sam", "cc_sam": "ccsam"}
CSV_COLUMNS = (
    "epoch", "lr", "rho", "train_loss", "train_acc", "epoch_seconds", "images_per_second",
    "test_overall", "test_many", "test_medium", "test_few",
)  # fmt: skip


class TrainingDiverged(RuntimeError):
    """A forward pass returned a NaN/inf loss; the last good checkpoint was kept."""


class TrainingInterrupted(RuntimeError):
    """SIGINT/SIGTERM: a checkpoint was saved and the run stopped."""


def optimizer_name(name: str) -> str:
    """The registry name for a config's optimizer (``sgd`` is the plain base optimizer)."""
    key = name.strip().lower().replace("-", "_")
    key = OPTIMIZER_ALIASES.get(key, key)
    if key not in list_optimizers():
        valid = sorted({*list_optimizers(), "sgd"})
        raise ConfigError(f"unknown optimizer {name!r}; valid: {', '.join(valid)}")
    return key


def _distributed_env() -> tuple[int, int, int]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    return rank, local, world


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", local_rank % torch.cuda.device_count())
        return torch.device("cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {name!r} asked for, but CUDA is not available here")
    return device


def default_run_dir(cfg: TrainConfig) -> Path:
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    return Path("runs") / f"{cfg.preset or cfg.dataset}-{cfg.optimizer}-{stamp}"


def prepare_run_dir(path: Path) -> Path:
    """Create the run directory, or explain why it cannot be written."""
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / ".write-test"
        probe.write_text("ok")
        probe.unlink()
    except OSError as exc:
        raise ConfigError(f"run directory {path} is not writable: {exc.strerror or exc}") from None
    return path


class Trainer:
    """Train ``cfg`` end to end: ``Trainer(cfg).fit()`` returns the final report.

    ``resume``: a run directory (or checkpoint file) to continue from; the run
    continues exactly where the checkpoint left it, mid-epoch included.
    ``on_step(trainer, epoch, step)`` is called after every optimizer step.

    Under torchrun the trainer starts the process group; use it as a context
    manager (``with Trainer(cfg) as t: t.fit()``) or call :meth:`close`, so the
    group is ended while the interpreter is whole.
    """

    def __init__(
        self,
        cfg: TrainConfig,
        *,
        resume: str | Path | None = None,
        on_step: Callable[[Trainer, int, int], None] | None = None,
        log: Callable[[str], None] = print,
    ) -> None:
        self.rank, self.local_rank, self.world = _distributed_env()
        # A group we start is ours to end (close()); one the caller started is theirs.
        self._owns_process_group = False
        if self.world > 1 and not dist.is_initialized():
            backend = "nccl" if cfg.device != "cpu" and torch.cuda.is_available() else "gloo"
            dist.init_process_group(backend)
            self._owns_process_group = True
        self.device = resolve_device(cfg.device, self.local_rank)
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)
        self.is_main = self.rank == 0
        self._log = log
        self.on_step = on_step
        self._stop: str | None = None

        self._tb: Any = None
        try:
            self._setup(cfg, resume)
        except BaseException:
            self.close(clean=False)  # a failed set-up must not leave the group to die at exit
            raise

    def _setup(self, cfg: TrainConfig, resume: str | Path | None) -> None:
        checkpoint = None
        if resume is not None:
            resume = Path(resume)
            ckpt_path = resume / "last.pt" if resume.is_dir() else resume
            checkpoint = load_checkpoint(ckpt_path, map_location=self.device)
            if cfg.run_dir is None:
                cfg.run_dir = str(ckpt_path.parent)
        self.cfg = cfg
        self.opt_name = optimizer_name(cfg.optimizer)
        if cfg.loss.lower().replace("-", "_") not in list_losses():
            raise ConfigError(f"unknown loss {cfg.loss!r}; valid: {', '.join(list_losses())}")
        self.run_dir = Path(cfg.run_dir) if cfg.run_dir else default_run_dir(cfg)
        if self.world > 1 and cfg.run_dir is None:  # all ranks must agree on the folder
            names = [str(self.run_dir)]
            dist.broadcast_object_list(names, src=0)
            self.run_dir = Path(names[0])
        cfg.run_dir = str(self.run_dir)
        if self.is_main:
            prepare_run_dir(self.run_dir)
            save_config(cfg, self.run_dir / "config.yaml")

        self.data: TrainData = build_data(cfg, self.device, self.rank, self.world)
        torch.manual_seed(cfg.seed)
        model = create_model(
            cfg.model, self.data.num_classes, self.data.in_channels, self.data.image_size,
            normed_linear=cfg.normed_linear,
        )  # fmt: skip
        model = model.to(self.device)
        if cfg.channels_last:
            model = model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
        self.model: nn.Module = model
        self.train_model: nn.Module = model
        if self.world > 1:
            from torch.nn.parallel import DistributedDataParallel

            ids = [self.device.index] if self.device.type == "cuda" else None
            self.train_model = DistributedDataParallel(model, device_ids=ids)
        self.loss_fn = create_loss(
            cfg.loss, class_counts=self.data.class_counts, reduction="none", **cfg.loss_options
        ).to(self.device)
        self.optimizer = self._build_optimizer()
        self.steps_per_epoch = self.data.steps_per_epoch()
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, self._lr_factor)
        self.scaler = torch.amp.GradScaler(self.device.type) if cfg.precision == "fp16" else None
        self._epoch_steps = self.steps_per_epoch
        self.stage2_optimizer: torch.optim.Optimizer | None = None
        self.stage2: Any = None
        self._balanced: Any = None
        stage2_epochs = cfg.ccsam_stage2_epochs if self.opt_name == "ccsam" else 0
        if stage2_epochs:
            if self.world > 1:
                raise ConfigError(
                    "CC-SAM's second stage runs in one process: set ccsam_stage2_epochs=0 "
                    "under torchrun, or run stage 2 without it"
                )
            self.stage2_optimizer = torch.optim.SGD(
                self._classifier().parameters(), lr=cfg.ccsam_stage2_lr,
                momentum=cfg.momentum, weight_decay=cfg.weight_decay,
            )  # fmt: skip
            self.stage2 = self.optimizer.second_stage(
                self.stage2_optimizer, rho=cfg.ccsam_rho2, max_grad_norm=cfg.max_grad_norm
            )
        self.total_epochs = cfg.epochs + stage2_epochs

        self.epoch = 0  # completed epochs
        self.step_in_epoch = 0  # completed steps of the current epoch
        self.best: dict[str, Any] | None = None
        self.history: list[dict[str, Any]] = []
        if checkpoint is not None:
            self._restore(checkpoint)
        self._tb = self._tensorboard()

    # ---------------------------------------------------------------- set-up
    def _build_optimizer(self) -> Any:
        cfg = self.cfg
        base: dict[str, Any] = {"lr": cfg.lr, "weight_decay": cfg.weight_decay}
        if cfg.base_optimizer.lower() == "sgd":
            base.update(momentum=cfg.momentum, nesterov=cfg.nesterov)
        common: dict[str, Any] = {
            "model": self.train_model,
            "max_grad_norm": cfg.max_grad_norm,
        }
        sam: dict[str, Any] = {
            "rho": cfg.rho,
            "bn_update": cfg.bn_update,
            "ascent_all_reduce": cfg.ascent_all_reduce,
        }
        per_method: dict[str, dict[str, Any]] = {
            "plain": {},
            "sam": {**sam, "adaptive": cfg.adaptive},
            "asam": sam,
            "imbsam": {**sam, "class_counts": self.data.class_counts, "eta": cfg.eta,
                       "kappa": cfg.kappa, "adaptive": cfg.adaptive},
            "focal_sam": {**sam, "class_counts": self.data.class_counts, "gamma": cfg.gamma,
                          "lam": cfg.lam, "adaptive": cfg.adaptive},
        }  # fmt: skip
        if self.opt_name == "ccsam":
            per_method["ccsam"] = {
                "class_counts": self.data.class_counts,
                "classifier": self._classifier(),
                "rho": cfg.ccsam_rho,
                "flat_ratio": cfg.ccsam_flat_ratio,
                "mode": cfg.ccsam_mode,
                "bn_update": cfg.bn_update,
            }
        kwargs = per_method.get(self.opt_name)
        if kwargs is None:
            raise ConfigError(f"optimizer {self.opt_name!r} is not supported by the trainer")
        return create_optimizer(
            self.opt_name, self.model.parameters(), cfg.base_optimizer, **kwargs, **common, **base
        )

    def _lr_factor(self, step: int) -> float:
        """lr / peak lr after ``step`` optimizer steps: linear warm-up, then the schedule."""
        cfg = self.cfg
        total = cfg.epochs * self.steps_per_epoch
        warm = int(round(cfg.warmup_epochs * self.steps_per_epoch))
        if step < warm:
            return (step + 1) / warm
        if cfg.lr_schedule == "cosine":
            progress = (step - warm) / max(1, total - warm)
            return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
        if cfg.lr_schedule == "step":
            epoch = step // self.steps_per_epoch
            return float(cfg.lr_decay ** sum(epoch >= m for m in cfg.lr_milestones))
        return 1.0

    def rho_at(self, epoch: int) -> float:
        cfg = self.cfg
        if cfg.rho_schedule == "step":
            return float(cfg.rho * cfg.rho_decay ** sum(epoch >= m for m in cfg.rho_milestones))
        return cfg.rho

    def _tensorboard(self) -> Any:
        if not (self.is_main and self.cfg.tensorboard):
            return None
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            return None
        return SummaryWriter(str(self.run_dir / "tensorboard"))

    def log(self, msg: str) -> None:
        if self.is_main:
            self._log(msg)

    # ------------------------------------------------------------ checkpoints
    def _payload(self) -> dict[str, Any]:
        return {
            "format": "focalsam-checkpoint-1",
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
            "stage2_optimizer": (
                self.stage2_optimizer.state_dict() if self.stage2_optimizer is not None else None
            ),
            "epoch": self.epoch,
            "step_in_epoch": self.step_in_epoch,
            "best": self.best,
            "history": self.history,
            "config": config_to_dict(self.cfg),
        }

    def save(self, name: str = "last.pt") -> Path | None:
        if not self.is_main:
            return None
        return save_checkpoint(self._payload(), self.run_dir / name)

    def _restore(self, ckpt: dict[str, Any]) -> None:
        try:
            self.model.load_state_dict(ckpt["model"])
            self.optimizer.load_state_dict(ckpt["optimizer"])
            self.scheduler.load_state_dict(ckpt["scheduler"])
            if self.scaler is not None and ckpt.get("scaler"):
                self.scaler.load_state_dict(ckpt["scaler"])
            if self.stage2_optimizer is not None and ckpt.get("stage2_optimizer"):
                self.stage2_optimizer.load_state_dict(ckpt["stage2_optimizer"])
        except (KeyError, RuntimeError, ValueError) as exc:
            raise CheckpointError(
                f"checkpoint does not match this run's model or optimizer: {str(exc)[:300]}"
            ) from None
        self.epoch = int(ckpt["epoch"])
        self.step_in_epoch = int(ckpt.get("step_in_epoch", 0))
        self.best = ckpt.get("best")
        self.history = list(ckpt.get("history", []))

    # --------------------------------------------------------------- training
    def request_stop(self, reason: str = "stop requested") -> None:
        """Finish the current step, save a checkpoint and stop (what SIGINT/SIGTERM do)."""
        self._stop = reason

    def _autocast(self) -> contextlib.AbstractContextManager[Any]:
        if self.cfg.precision == "fp32":
            return contextlib.nullcontext()
        dtype = torch.bfloat16 if self.cfg.precision == "bf16" else torch.float16
        return torch.autocast(self.device.type, dtype=dtype)

    def train_epoch(self, epoch: int) -> dict[str, Any]:
        """One epoch of the optimizer's (first) stage, from ``step_in_epoch`` on."""
        model = self.train_model
        model.train()
        self.data.set_epoch(epoch)
        self.loss_fn.set_epoch(epoch)
        rho = self.rho_at(epoch)
        for group in self.optimizer.param_groups:
            group["rho"] = rho

        def step(x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
            def closure() -> tuple[Tensor, Tensor]:
                with self._autocast():
                    logits = model(x)
                return self.loss_fn(logits.float(), y), logits.detach()

            losses, logits = self.optimizer.step(closure, y, scaler=self.scaler)
            self.scheduler.step()
            return losses, logits

        row = self._run_epoch(epoch, self.data.train, step)
        row.update(lr=self.optimizer.param_groups[0]["lr"], rho=rho)
        return row

    def stage2_epoch(self, epoch: int) -> dict[str, Any]:
        """One epoch of CC-SAM's second stage: the classifier alone, on class-balanced
        batches of features from the frozen backbone (kept in train mode, as published)."""
        from focalsam.optim import ccsam_mix_weight

        assert self.stage2 is not None
        stage_epoch = epoch - self.cfg.epochs
        if self._balanced is None:
            assert self.data.make_balanced is not None
            self._balanced = self.data.make_balanced()
        self._balanced.set_epoch(stage_epoch)
        alpha = ccsam_mix_weight(stage_epoch, self.cfg.ccsam_stage2_epochs, self.cfg.ccsam_up_limit)
        self.model.train()
        captured: dict[str, Tensor] = {}
        classifier = self._classifier()
        hook = classifier.register_forward_pre_hook(lambda _m, a: captured.update(f=a[0]))

        def step(x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
            with torch.no_grad(), self._autocast():
                logits = self.model(x)
            losses = self.stage2.step(captured["f"].float(), y, alpha=alpha, scaler=self.scaler)  # type: ignore[union-attr]
            return losses, logits

        try:
            row = self._run_epoch(epoch, self._balanced, step)
        finally:
            hook.remove()
        row.update(lr=self.cfg.ccsam_stage2_lr, rho=self.cfg.ccsam_rho2, stage=2, alpha=alpha)
        return row

    def _run_epoch(
        self, epoch: int, loader: Any, step_fn: Callable[[Tensor, Tensor], tuple[Tensor, Tensor]]
    ) -> dict[str, Any]:
        """Run ``step_fn(x, y) -> (losses, logits)`` over the batches left in this epoch."""
        loss_sum = torch.zeros((), device=self.device)
        correct = torch.zeros((), device=self.device, dtype=torch.int64)
        seen = 0
        start_step = self.step_in_epoch
        self._epoch_steps = len(loader)
        bar = self._progress(epoch, start_step)
        t0 = time.perf_counter()
        for step, (x, y) in enumerate(itertools.islice(iter(loader), start_step, None), start_step):
            try:
                losses, logits = step_fn(x, y)
            except NonFiniteLossError as exc:
                last = self.run_dir / "last.pt"
                kept = (
                    f"the last good checkpoint {last} was kept"
                    if last.exists()
                    else "no checkpoint was written"
                )
                raise TrainingDiverged(
                    f"non-finite loss at epoch {epoch + 1}, step {step + 1}: {exc}. {kept}."
                ) from None
            loss_sum += losses.sum()
            correct += (logits.argmax(1) == y).sum()
            seen += y.shape[0]
            self.step_in_epoch = step + 1
            if bar is not None:
                bar.update(1)
                if step % 10 == 0 or step + 1 == self._epoch_steps:
                    elapsed = time.perf_counter() - t0
                    bar.set_postfix(
                        loss=f"{loss_sum.item() / seen:.3f}",
                        acc=f"{correct.item() / seen:.3f}",
                        img_s=f"{seen * self.world / max(elapsed, 1e-9):.0f}",
                    )
            if self.on_step is not None:
                self.on_step(self, epoch, step)
            if self._stop is not None:
                break
        if bar is not None:
            bar.close()
        elapsed = time.perf_counter() - t0
        stats = torch.stack(
            [loss_sum, correct.to(loss_sum.dtype), torch.tensor(float(seen), device=self.device)]
        )
        if self.world > 1:
            dist.all_reduce(stats)
        total = max(stats[2].item(), 1.0)
        return {
            "epoch": epoch + 1,
            "train_loss": stats[0].item() / total,
            "train_acc": stats[1].item() / total,
            "epoch_seconds": elapsed,
            "images_per_second": stats[2].item() / max(elapsed, 1e-9),
        }

    def _classifier(self) -> nn.Module:
        head = getattr(self.model, "fc", None)
        if not isinstance(head, nn.Module):
            raise ConfigError(
                f"CC-SAM needs a model with a classifier head `fc`; {self.cfg.model} has none"
            )
        return head

    def _progress(self, epoch: int, initial: int) -> Any:
        if not (self.is_main and self.cfg.progress):
            return None
        from tqdm.auto import tqdm

        return tqdm(
            total=self._epoch_steps, initial=initial, leave=False,
            desc=f"epoch {epoch + 1}/{self.total_epochs}", dynamic_ncols=True,
        )  # fmt: skip

    @torch.no_grad()
    def evaluate(self) -> dict[str, Any]:
        """Overall, many/medium/few and per-class test accuracy (summed over ranks)."""
        self.model.eval()
        metric = LongTailAccuracy(
            self.data.num_classes, self.data.class_counts, preset=self.data.shot_preset
        )
        for x, y in self.data.test:
            with self._autocast():
                logits = self.model(x)
            metric.update(logits.float(), y)
        self.model.train()
        return metric.compute()

    def fit(self) -> dict[str, Any]:
        """Train to ``cfg.epochs``, evaluating every ``eval_every`` epochs and at the end."""
        cfg = self.cfg
        handlers = self._install_signal_handlers()
        try:
            if self.epoch == 0 and self.step_in_epoch == 0:
                self.log(
                    f"run {self.run_dir}: {cfg.dataset} (ratio {cfg.imbalance_ratio:g}), "
                    f"{cfg.model}, {self.opt_name}/{cfg.base_optimizer}, loss {cfg.loss}, "
                    f"{cfg.epochs} epochs"
                    + (
                        f" + {self.total_epochs - cfg.epochs} of stage 2"
                        if self.total_epochs > cfg.epochs
                        else ""
                    )
                    + f" on {self.device}"
                    + (f" x {self.world} processes" if self.world > 1 else "")
                )
            else:
                self.log(
                    f"resuming {self.run_dir} at epoch {self.epoch + 1}, step {self.step_in_epoch + 1}"
                )
            while self.epoch < self.total_epochs:
                epoch = self.epoch
                row = self.train_epoch(epoch) if epoch < cfg.epochs else self.stage2_epoch(epoch)
                if self._stop is not None and self.step_in_epoch < self._epoch_steps:
                    self.save()
                    raise TrainingInterrupted(
                        f"{self._stop}: saved {self.run_dir / 'last.pt'} at epoch {epoch + 1}, "
                        f"step {self.step_in_epoch}; continue with "
                        f"focalsam train --resume {self.run_dir}"
                    )
                self.epoch, self.step_in_epoch = epoch + 1, 0
                if self.epoch % cfg.eval_every == 0 or self.epoch in (
                    cfg.epochs,
                    self.total_epochs,
                ):
                    result = self.evaluate()
                    row.update(
                        {f"test_{k}": result[k] for k in ("overall", "many", "medium", "few")}
                    )
                    row["test_per_class"] = result["per_class"]
                    if self.best is None or result["overall"] > self.best["overall"]:
                        self.best = {"epoch": self.epoch, **result}
                        if cfg.select == "best":
                            self.save("best.pt")
                self.history.append(row)
                self._write_row(row)
                self.save()
                if self._stop is not None:
                    raise TrainingInterrupted(
                        f"{self._stop}: saved {self.run_dir / 'last.pt'} after epoch {self.epoch}; "
                        f"continue with focalsam train --resume {self.run_dir}"
                    )
            return self.report()
        finally:
            self._restore_signal_handlers(handlers)
            if self._tb is not None:
                self._tb.flush()

    def close(self, *, clean: bool = True) -> None:
        """End the process group this trainer started (under torchrun); safe to call twice.

        With ``clean`` every rank first waits at a barrier, so no rank tears its
        connections down while a peer still has a collective in flight. After a
        failure pass ``clean=False``: a peer that died would leave the barrier waiting.
        """
        if self._tb is not None:
            self._tb.close()
            self._tb = None
        if self._owns_process_group and dist.is_initialized():
            if clean:
                dist.barrier()
            dist.destroy_process_group()
        self._owns_process_group = False

    def __enter__(self) -> Trainer:
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        self.close(clean=exc_type is None)

    def report(self) -> dict[str, Any]:
        """The final figures: last epoch and best test epoch, each labelled."""
        evaluated = [r for r in self.history if "test_overall" in r]
        last = evaluated[-1] if evaluated else None
        out: dict[str, Any] = {
            "run_dir": str(self.run_dir),
            "optimizer": self.opt_name,
            "shot_preset": self.data.shot_preset,
            "select": self.cfg.select,
            "class_counts": self.data.class_counts,
            "seconds_per_epoch": sum(r["epoch_seconds"] for r in self.history)
            / max(1, len(self.history)),
        }
        if last is not None:
            out["last_epoch"] = {
                "epoch": last["epoch"],
                **{k: last[f"test_{k}"] for k in ("overall", "many", "medium", "few")},
                "per_class": last["test_per_class"],
            }
        if self.best is not None:
            out["best_test_epoch"] = {k: v for k, v in self.best.items() if k != "preset"}
        out["selected"] = out.get("best_test_epoch" if self.cfg.select == "best" else "last_epoch")
        if self.is_main:
            (self.run_dir / "report.json").write_text(json.dumps(out, indent=2))
        return out

    def _write_row(self, row: dict[str, Any]) -> None:
        if not self.is_main:
            return
        with open(self.run_dir / "metrics.jsonl", "a") as f:
            f.write(json.dumps(row) + "\n")
        path = self.run_dir / "metrics.csv"
        new = not path.exists()
        with open(path, "a", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=CSV_COLUMNS, extrasaction="ignore")
            if new:
                writer.writeheader()
            writer.writerow(row)
        if self._tb is not None:
            for key, value in row.items():
                if isinstance(value, int | float) and key != "epoch":
                    self._tb.add_scalar(key, value, row["epoch"])
        msg = (
            f"epoch {row['epoch']:>4}/{self.total_epochs}  loss {row['train_loss']:.4f}  "
            f"acc {row['train_acc']:.3f}  lr {row['lr']:.4g}  {row['images_per_second']:.0f} img/s"
        )
        if "test_overall" in row:
            msg += "  test " + "  ".join(
                f"{k} {_pct(row[f'test_{k}'])}" for k in ("overall", "many", "medium", "few")
            )
        self.log(msg)

    def _install_signal_handlers(self) -> dict[int, Any]:
        import threading

        if threading.current_thread() is not threading.main_thread():
            return {}
        old: dict[int, Any] = {}
        for sig in (signal.SIGINT, signal.SIGTERM):
            old[sig] = signal.getsignal(sig)
            signal.signal(sig, lambda s, _f: self.request_stop(signal.Signals(s).name))
        return old

    @staticmethod
    def _restore_signal_handlers(old: dict[int, Any]) -> None:
        for sig, handler in old.items():
            signal.signal(sig, handler)


def _pct(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "  n/a"
    return f"{100 * value:5.1f}"
