"""Run a compare: every (optimizer, seed) run, resumably, one or ``parallel`` at a time;
then ``compare.json``, ``compare.md`` and the figures.

Each run is exactly ``focalsam train ... optimizer=O seed=S run_dir=OUT/O-seedS`` with
``OMP_NUM_THREADS=threads``: on the CPU the intra-op thread count changes results in
the last bits (reductions are split per thread), so every run of a compare uses the
same count (default 1) whatever ``parallel`` is, and a run made alone with that count
is bitwise the same.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from focalsam.compare import plots
from focalsam.compare.reports import read_report
from focalsam.compare.spec import RECORD, CompareError, CompareSpec, check_out
from focalsam.compare.table import label, markdown, summarize
from focalsam.errors import InputError
from focalsam.train.limits import read_json
from focalsam.train.paths import OutputPathError, check_output_folder
from focalsam.train.runlock import RunLock, refuse_if_held
from focalsam.train.runtime import atomic_write

#: the lock file of a compare folder (not ``lock``: a compare folder is not a run folder)
COMPARE_LOCK = "compare.lock"

Log = Callable[[str], None]


@dataclass
class RunOutcome:
    """How one (optimizer, seed) run ended in this invocation."""

    optimizer: str
    seed: int
    status: str  # "kept" | "done" | "failed"
    seconds: float = 0.0
    detail: str = ""


def run_state(run_dir: Path) -> str:
    """``done`` (report.json), ``interrupted`` (last.pt, no report), ``partial`` (a folder
    without a checkpoint: set-up or the first epoch was cut) or ``missing``."""
    if (run_dir / "report.json").is_file():
        return "done"
    if (run_dir / "last.pt").is_file():
        return "interrupted"
    return "partial" if run_dir.exists() else "missing"


@contextlib.contextmanager
def _threads(n: int) -> Iterator[None]:
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def _run_in_process(spec: CompareSpec, opt: str, seed: int, out: Path) -> None:
    """One run in this process, started or resumed (what ``focalsam train`` does)."""
    from focalsam.train import Trainer, TrainingInterrupted
    from focalsam.train.resume import resume_config

    run_dir = out / spec.run_name(opt, seed)
    quiet: Log = lambda _m: None
    if torch.cuda.is_available():  # each run's own peak, not the process's so far
        torch.cuda.reset_peak_memory_stats()
    try:
        with _threads(spec.threads):
            if run_state(run_dir) == "interrupted":
                cfg, changes = resume_config(run_dir, {"progress": False})
                with Trainer(cfg, resume=run_dir, resume_changes=changes, log=quiet) as trainer:
                    trainer.fit()
            else:
                cfg = spec.run_config(opt, seed, out)
                with Trainer(cfg, log=quiet) as trainer:
                    trainer.fit()
    except TrainingInterrupted as exc:  # the compare, not the single run, is what to re-run
        saved = str(exc).split("; continue with")[0]
        raise TrainingInterrupted(
            f"{saved}; run the same compare command (with --out {out}) to continue"
        ) from None


def _child_argv(spec: CompareSpec, opt: str, seed: int, out: Path) -> list[str]:
    run_dir = out / spec.run_name(opt, seed)
    if run_state(run_dir) == "interrupted":
        args = ["train", "--resume", str(run_dir), "progress=false"]
    else:
        args = spec.train_argv(opt, seed, out)
    return [sys.executable, "-m", "focalsam", *args]


def _die_with_parent(parent: int) -> Callable[[], None]:
    """A ``preexec_fn`` asking Linux to send the child SIGTERM when its parent dies (a
    killed compare leaves no orphans: each child saves its checkpoint and stops)."""

    def preexec() -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
        if os.getppid() != parent:  # the parent died before prctl took effect
            os._exit(130)

    return preexec


_PR_SET_PDEATHSIG = 1


def _child_env(threads: int) -> dict[str, str]:
    n = str(threads)
    return {**os.environ, "OMP_NUM_THREADS": n, "MKL_NUM_THREADS": n}


def _last_error(log_file: Path) -> str:
    lines = [ln for ln in log_file.read_text(errors="replace").splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("focalsam: ")]
    return (errors or lines or ["no output"])[-1].removeprefix("focalsam: error: ")


class _Pool:
    """Up to ``size`` child processes of ``python -m focalsam train``."""

    def __init__(self, size: int, logs: Path, threads: int) -> None:
        self.size, self.logs, self.env = size, logs, _child_env(threads)
        self.running: dict[subprocess.Popen[bytes], tuple[str, int, float, Path]] = {}

    def start(self, argv: list[str], opt: str, seed: int, name: str) -> None:
        self.logs.mkdir(parents=True, exist_ok=True)
        log_file = self.logs / f"{name}.log"
        linux = sys.platform.startswith("linux")
        with open(log_file, "wb") as f:
            proc = subprocess.Popen(
                argv,
                stdout=f,
                stderr=subprocess.STDOUT,
                env=self.env,
                preexec_fn=_die_with_parent(os.getpid()) if linux else None,
            )
        self.running[proc] = (opt, seed, time.perf_counter(), log_file)

    def wait_one(self) -> tuple[RunOutcome, int]:
        while True:
            for proc, (opt, seed, t0, log_file) in list(self.running.items()):
                rc = proc.poll()
                if rc is not None:
                    del self.running[proc]
                    seconds = time.perf_counter() - t0
                    if rc == 0:
                        return RunOutcome(opt, seed, "done", seconds), rc
                    detail = f"exit {rc}: {_last_error(log_file)} (log: {log_file})"
                    return RunOutcome(opt, seed, "failed", seconds, detail), rc
            time.sleep(0.1)

    def stop(self) -> None:
        """Ask every child to save and stop (SIGTERM), then wait for them."""
        for proc in self.running:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
        for proc in self.running:
            proc.wait()
        self.running.clear()


def _finished_line(o: RunOutcome, k: int, total: int, out: Path, spec: CompareSpec) -> str:
    name = spec.run_name(o.optimizer, o.seed)
    head = f"  [{k}/{total}] {name:<18}"
    if o.status == "failed":
        return f"{head} FAILED {o.detail}"
    report = read_json(out / name / "report.json", "report")
    acc = (report.get("last_epoch") or {}).get("overall")
    shown = "n/a" if acc is None else f"{100 * acc:.2f}%"
    when = "kept (finished before)" if o.status == "kept" else f"{o.seconds:.1f} s"
    return f"{head} overall {shown}  {when}"


def _run_all(
    spec: CompareSpec, out: Path, todo: list[tuple[str, int]], log: Log, done_before: int
) -> list[RunOutcome]:
    total = len(spec.pairs())
    outcomes: list[RunOutcome] = []
    k = done_before

    def finish(o: RunOutcome, rc: int) -> None:
        nonlocal k
        if rc == 2:  # bad input (data, ...): every other run would fail the same way
            raise CompareError(f"run {spec.run_name(o.optimizer, o.seed)}: {o.detail}")
        k += 1
        outcomes.append(o)
        log(_finished_line(o, k, total, out, spec))

    for opt, seed in todo:  # clear folders a cut set-up left without a checkpoint
        run_dir = out / spec.run_name(opt, seed)
        if run_state(run_dir) == "partial":
            refuse_if_held(run_dir, "compare")  # never delete what a live process writes
            shutil.rmtree(run_dir)
    if spec.parallel == 1:
        for opt, seed in todo:
            t0 = time.perf_counter()
            try:
                _run_in_process(spec, opt, seed, out)
            except InputError as exc:
                o = RunOutcome(opt, seed, "failed", time.perf_counter() - t0, str(exc))
                finish(o, 2)
            except Exception as exc:  # diverged: record it, the other runs go on
                from focalsam.train import TrainingDiverged

                if not isinstance(exc, TrainingDiverged):
                    raise
                finish(RunOutcome(opt, seed, "failed", time.perf_counter() - t0, str(exc)), 1)
            else:
                finish(RunOutcome(opt, seed, "done", time.perf_counter() - t0), 0)
        return outcomes
    pool = _Pool(spec.parallel, out / "logs", spec.threads)
    queue = list(todo)
    try:
        while queue or pool.running:
            while queue and len(pool.running) < pool.size:
                opt, seed = queue.pop(0)
                pool.start(_child_argv(spec, opt, seed, out), opt, seed, spec.run_name(opt, seed))
            finish(*pool.wait_one())
    except KeyboardInterrupt:
        pool.stop()
        from focalsam.train import TrainingInterrupted

        raise TrainingInterrupted(
            f"interrupted: the runs saved a checkpoint; run the same command to continue {out}"
        ) from None
    except BaseException:
        pool.stop()
        raise
    return outcomes


def load_reports(spec: CompareSpec, out: Path) -> dict[str, list[dict[str, Any]]]:
    """optimizer -> the report.json of each finished seed, in seed order."""
    reports: dict[str, list[dict[str, Any]]] = {}
    for opt in spec.optimizers:
        reports[opt] = []
        for seed in spec.seeds:
            path = out / spec.run_name(opt, seed) / "report.json"
            if path.is_file():
                reports[opt].append(read_report(path, seed))
    return reports


def write_outputs(spec: CompareSpec, out: Path, parallel: int) -> dict[str, Any]:
    """``compare.json``, ``compare.md``, ``accuracy_vs_throughput.png``, ``per_class.png``
    from the finished runs' reports; returns the compare document."""
    reports = load_reports(spec, out)
    base = spec.run_config(spec.optimizers[0], spec.seeds[0], out).optim.base
    record = {**spec.record(), "base_optimizer": base, "parallel": parallel}
    doc = summarize(reports, record)
    atomic_write(out / "compare.json", json.dumps(doc, indent=2))
    atomic_write(out / "compare.md", markdown(doc))
    plots.accuracy_vs_throughput(doc, out / "accuracy_vs_throughput.png")
    plots.per_class(doc, out / "per_class.png")
    return doc


def _remove_new(out: Path, existed: bool) -> None:
    """Remove what this call wrote into ``out`` (a new or empty folder)."""
    if not existed:
        shutil.rmtree(out, ignore_errors=True)
        return
    for child in out.iterdir():
        if child.is_dir():
            shutil.rmtree(child, ignore_errors=True)
        else:
            child.unlink(missing_ok=True)


def _create(out: Path, flag: str) -> None:
    """Create ``out`` (and its parents); the OS refusing it (no permission in the working
    directory, a read-only disk) is one line naming the path, as for a run directory."""
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        at = f" at {Path(exc.filename).absolute()}" if exc.filename else ""
        raise OutputPathError(
            f"{flag} {out} cannot be created: {exc.strerror or exc}{at}"
        ) from None


def run_compare(
    spec: CompareSpec, out: Path, log: Log = print, *, flag: str = "--out"
) -> tuple[dict[str, Any], int]:
    """Run (or resume) every run of ``spec`` in ``out`` and write the outputs (``flag``:
    how an error names ``out``).

    Finished runs (report.json) are kept, interrupted ones (last.pt) resumed, missing
    ones started. Returns the compare document and the number of failed runs. A bad
    input met by a run (missing data, ...) raises :class:`InputError`; a folder this
    call created is then removed when no run in it got a checkpoint.
    """
    check_output_folder(out, flag, "compare")
    resuming = check_out(spec, out)
    existed = out.exists()
    refuse_if_held(out, "compare", COMPARE_LOCK)
    pending = [p for p in spec.pairs() if run_state(out / spec.run_name(*p)) != "done"]
    for opt, seed in spec.pairs():  # the kept runs' reports, before anything is written
        if (opt, seed) not in pending:
            read_report(out / spec.run_name(opt, seed) / "report.json", seed)
    for pair in pending:  # a run still written by a process of an earlier compare
        refuse_if_held(out / spec.run_name(*pair), "compare")
    kept = len(spec.pairs()) - len(pending)
    _create(out, flag)
    log(
        f"compare in {out}: {', '.join(label(o) for o in spec.optimizers)} x seeds "
        f"{', '.join(map(str, spec.seeds))}; {len(pending)} run(s) to do"
        + (f", {kept} kept" if resuming and kept else "")
        + f" ({spec.parallel} at a time, {spec.threads} CPU thread(s) each)"
    )
    lock = RunLock(out, COMPARE_LOCK)
    try:
        lock.acquire()
        if not resuming:
            import yaml

            atomic_write(out / RECORD, yaml.safe_dump(spec.record(), sort_keys=False))
        outcomes = _run_all(spec, out, pending, log, kept)
        doc = write_outputs(spec, out, spec.parallel)
    except InputError:
        lock.release()
        if not resuming and not any(out.glob("*/last.pt")):  # leave nothing behind
            _remove_new(out, existed)
        raise
    finally:
        lock.release()
    return doc, sum(o.status == "failed" for o in outcomes)
