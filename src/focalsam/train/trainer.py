"""The trainer: orchestrates one run of one config; every job lives elsewhere."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from focalsam.errors import TrainingDiverged, TrainingInterrupted
from focalsam.train.checkpoint import load_checkpoint, save_checkpoint
from focalsam.train.config import TrainConfig, to_dict
from focalsam.train.epoch import evaluate, train_one_epoch
from focalsam.train.report import build_report, epoch_line
from focalsam.train.resume import check_resume_agrees
from focalsam.train.runtime import Runtime
from focalsam.train.setup import RunParts, build_run, restore, to_payload


class Trainer:
    """Train ``cfg`` end to end: ``with Trainer(cfg) as t: report = t.fit()``.

    ``resume``: a run directory (or its checkpoint) to continue exactly, mid-epoch
    included; ``resume_changes`` are recorded in its ``resumes.jsonl``.
    ``on_step(trainer, epoch, step)`` runs after every optimizer step. Everything is
    built and checked before the run directory is created. Under torchrun the
    trainer starts the process group and :meth:`close` (or ``with``) ends it.
    """

    def __init__(
        self,
        cfg: TrainConfig,
        *,
        resume: str | Path | None = None,
        resume_changes: dict[str, Any] | None = None,
        on_step: Callable[[Trainer, int, int], None] | None = None,
        log: Callable[[str], None] = print,
    ) -> None:
        self.rt = Runtime(cfg.run.device, cfg.run.precision)
        self.on_step, self._log = on_step, log
        try:
            ckpt_path = _checkpoint_path(Path(resume)) if resume else None
            ckpt = load_checkpoint(ckpt_path) if ckpt_path is not None else None
            if ckpt_path is not None and ckpt is not None:
                check_resume_agrees(ckpt_path, ckpt, cfg, resume_changes or {})
            self.parts: RunParts = build_run(cfg, self.rt, resume=resume, checkpoint=ckpt)
            self.cfg, self.run_dir, self.model = cfg, self.parts.run_dir.path, self.parts.model
            self.epoch, self.step_in_epoch = 0, 0
            self.best: dict[str, Any] | None = None
            self.history: list[dict[str, Any]] = []
            #: an interrupted epoch's row so far (its start and running sums), or None
            self.epoch_partial: dict[str, Any] | None = None
            if ckpt is not None:
                restore(self, ckpt)
            resumed = None if ckpt is None else (self.epoch, self.step_in_epoch, self.history)
            self.parts.open_run_dir(resumed, resume_changes or {})
        except BaseException:
            if hasattr(self, "parts"):
                self.parts.run_dir.close()  # drops the run folder's lock
            self.rt.close(clean=False)  # a failed set-up must not leave the group to die at exit
            raise

    @property
    def total_epochs(self) -> int:
        return sum(s.epochs for s in self.parts.stages)

    def log(self, msg: str) -> None:
        if self.rt.is_main:
            self._log(msg)

    def request_stop(self, reason: str = "stop requested") -> None:
        """Finish the current step, save a checkpoint and stop (what SIGINT/SIGTERM do)."""
        self.rt.request_stop(reason)

    def _after_step(self, step: int) -> bool:
        self.step_in_epoch = step + 1
        if self.on_step is not None:
            self.on_step(self, self.epoch, step)
        return self.rt.stop_reason is not None

    def fit(self) -> dict[str, Any]:
        """Train every stage to its end, evaluating every ``eval_every`` epochs and at the end."""
        p = self.parts
        p.run_dir.create()  # the lock is held from set-up to the end of fit (again if re-run)
        try:
            return self._fit()
        finally:
            p.run_dir.lock.release()

    def _fit(self) -> dict[str, Any]:
        p, cfg = self.parts, self.cfg
        self.log(p.describe(self.epoch, self.step_in_epoch))
        with self.rt.signals():
            while self.epoch < self.total_epochs:
                stage, stage_epoch = p.stage_at(self.epoch)
                row: dict[str, Any] = {"epoch": self.epoch + 1, **stage.start_epoch(stage_epoch)}
                partial = self.epoch_partial if self.step_in_epoch > 0 else None
                if partial is not None:  # the row as it began, not as of the resume
                    row |= partial["row"]
                start_row = dict(row)
                loader = p.loader(stage.loader_name, stage_epoch)
                self.steps_in_epoch = len(loader)
                try:
                    with p.progress(
                        self.epoch, self.total_epochs, len(loader), self.step_in_epoch
                    ) as bar:
                        row |= train_one_epoch(
                            stage.step_fn(stage_epoch),
                            loader,
                            start_step=self.step_in_epoch,
                            after_step=self._after_step,
                            progress=bar,
                            all_sum=self.rt.all_sum,
                            skipped=stage.skipped_steps,
                            initial=partial if self.rt.is_main else None,
                        )
                    sums = row.pop("sums")
                except TrainingDiverged as exc:  # the one error, told where it happened
                    exc.epoch, exc.kept = self.epoch + 1, p.kept_checkpoint()
                    raise
                if self.rt.stop_reason is not None and self.step_in_epoch < len(loader):
                    self.epoch_partial = {**sums, "row": start_row}
                    self._save(f"epoch {self.epoch + 1}")
                    self._interrupted(f"at epoch {self.epoch + 1}, step {self.step_in_epoch}")
                self.epoch, self.step_in_epoch = self.epoch + 1, 0
                self.epoch_partial = None
                if self.epoch % cfg.train.eval_every == 0 or self.epoch in p.eval_epochs():
                    result = evaluate(
                        self.model, p.data.test, p.data.new_metric(), self.rt.autocast
                    )
                    row |= {f"test_{k}": result[k] for k in ("overall", "many", "medium", "few")}
                    row["test_per_class"] = result["per_class"]
                    improved = self.best is None or result["overall"] > self.best["overall"]
                    self.best = {"epoch": self.epoch, **result} if improved else self.best
                else:
                    improved = False
                self.history.append(row)
                self._save(f"epoch {self.epoch}")  # the checkpoint, then the row that follows it
                if improved and cfg.train.select == "best":
                    self._save(f"epoch {self.epoch}", "best.pt")
                p.run_dir.write_metrics(self.history)
                p.run_dir.tensorboard(row, cfg.run.tensorboard)
                self.log(epoch_line(row, self.total_epochs))
                if self.rt.stop_reason is not None:
                    self._interrupted(f"after epoch {self.epoch}")
        try:
            return self.report()
        except KeyboardInterrupt:  # SIGINT/SIGTERM after the loop, while writing the report
            raise TrainingInterrupted(
                f"interrupted after the last epoch: {self.run_dir / 'last.pt'} holds all "
                f"{self.epoch} epochs, report.json was not written; write it with "
                f"focalsam train --resume {self.run_dir}"
            ) from None

    def _save(self, when: str, name: str = "last.pt") -> None:
        bad = self.parts.non_finite_weights()
        if bad:
            raise TrainingDiverged(
                f"weights became NaN/inf by {when} ({', '.join(bad[:3])}); not saved",
                kept=self.parts.kept_checkpoint(),
            )
        if self.rt.is_main:
            save_checkpoint(to_payload(self), self.run_dir / name)

    def _interrupted(self, where: str) -> None:
        raise TrainingInterrupted(
            f"{self.rt.stop_reason}: saved {self.run_dir / 'last.pt'} {where}; continue with "
            f"focalsam train --resume {self.run_dir}"
        )

    def report(self) -> dict[str, Any]:
        """The final figures (last epoch and best test epoch, each labelled), in report.json."""
        import torch

        p, device = self.parts, self.rt.device
        peak = None  # this process's peak (a resumed run: since the resume)
        if device.type == "cuda":
            peak = torch.cuda.max_memory_allocated(device) / 2**20
        out = build_report(
            self.history,
            self.best,
            run_dir=str(self.run_dir),
            method=p.method,
            shot_preset=p.data.shot_preset,
            select=self.cfg.train.select,
            class_counts=p.data.class_counts,
            config=to_dict(self.cfg),
            class_names=p.data.names(),
            passes_per_step=self._passes_per_step(),
            peak_gpu_memory_mb=peak,
        )
        p.run_dir.write_text("report.json", json.dumps(out, indent=2))
        return out

    def _passes_per_step(self) -> tuple[float, float] | None:
        """(forward, backward) passes per step of the method: its spec's, or, for a rule
        whose passes depend on the batch, the mean its optimizer measured."""
        from focalsam.optim import get_method

        fixed = get_method(self.parts.method).passes_per_step(self.cfg.optim.sam_every)
        if fixed is not None:
            return fixed
        measured = getattr(self.parts.stages[0], "passes_per_step", None)
        mean = measured() if callable(measured) else None
        return None if mean is None else (round(mean[0], 2), round(mean[1], 2))

    def close(self, *, clean: bool = True) -> None:
        """End the process group this trainer started; safe to call twice."""
        if hasattr(self, "parts"):  # absent when set-up failed
            self.parts.run_dir.close()
        self.rt.close(clean=clean)

    def __enter__(self) -> Trainer:
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        self.close(clean=exc_type is None)


def _checkpoint_path(resume: Path) -> Path:
    return resume / "last.pt" if resume.is_dir() else resume
