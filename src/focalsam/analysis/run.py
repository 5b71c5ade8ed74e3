"""``focalsam analyze``: the measures of :mod:`focalsam.analysis` on trained runs, per
class or shot group, side by side, into ``analysis.json`` and figures.

Conventions, stated in every ``analysis.json``: the model is in ``eval()`` mode
(BatchNorm uses the trained running statistics, as Li et al. 2018 do for
landscapes); only trainable parameters are perturbed; the loss is the run's own
training loss (e.g. logit-adjusted), averaged over the samples measured.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import Tensor

from focalsam.analysis.saved import malformed
from focalsam.analysis.targets import Target, resolve_targets, sample_indices
from focalsam.errors import InputError
from focalsam.optim import canonical_name, get_method
from focalsam.train.evaluation import LoadedRun, load_run
from focalsam.train.limits import MAX_TOP_K, check_at_most, read_json
from focalsam.train.paths import check_output_folder
from focalsam.train.resume import run_config_path
from focalsam.train.runlock import refuse_if_held
from focalsam.train.runtime import atomic_write

MEASURES = ("hessian", "trace", "density", "sharpness", "landscape")
CONVENTIONS = (
    "model in eval() mode: BatchNorm uses the trained running statistics (Li et al. 2018); "
    "only trainable parameters are perturbed; the loss is the run's training loss, the mean "
    "over the samples measured"
)


@dataclass
class AnalysisSettings:
    """Every option of an analysis; two analyses with equal settings share results."""

    measures: tuple[str, ...] = MEASURES
    classes: str = "head,tail"
    split: str = "train"
    samples_per_class: int = 128
    seed: int = 0
    checkpoint: str = "last"
    top_k: int = 1
    max_iter: int = 100
    tol: float = 1e-3
    trace_probes: int = 50
    lanczos_steps: int = 40
    density_probes: int = 1
    rhos: tuple[float, ...] = (0.05, 0.1, 0.2)
    grid: int = 11
    span: float = 1.0
    batch_size: int = 128
    device: str | None = field(default=None, metadata={"result": False})

    def validate(self) -> None:
        unknown = [m for m in self.measures if m not in MEASURES]
        if unknown or not self.measures:
            raise InputError(
                f"unknown measure {', '.join(unknown) or '(none given)'}; valid: "
                f"{', '.join(MEASURES)}"
            )
        if self.split not in ("train", "test"):
            raise InputError(f"--split must be train or test, got {self.split!r}")
        for name in (
            "samples_per_class",
            "top_k",
            "max_iter",
            "trace_probes",
            "lanczos_steps",
            "density_probes",
            "batch_size",
        ):
            if getattr(self, name) < 1:
                raise InputError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.grid < 2 or not self.span > 0:
            raise InputError(
                f"the landscape needs grid >= 2 and span > 0, got {self.grid}, {self.span}"
            )
        if not self.tol > 0 or any(not r > 0 for r in self.rhos) or not self.rhos:
            raise InputError(f"tol and every rho must be > 0, got {self.tol}, {list(self.rhos)}")

    def key(self) -> dict[str, Any]:
        """The settings that change results (not where they are computed)."""
        out = dataclasses.asdict(self)
        out.pop("device")
        return json.loads(json.dumps(out))


def _labels(runs: list[LoadedRun]) -> list[str]:
    names = [canonical_name(r.cfg.optim.name) for r in runs]
    return [n if names.count(n) == 1 else f"{n}-{i + 1}" for i, n in enumerate(names)]


def _check_inputs(paths: list[Path], out: Path, settings: AnalysisSettings) -> None:
    settings.validate()
    check_at_most("--top-k", settings.top_k, MAX_TOP_K)
    for path in paths:
        folder = run_config_path(path).parent  # a clear error when it is not a run
        refuse_if_held(folder, "analyze")
    check_output_folder(out, "--out", "analyze")


def _same_architecture(runs: list[LoadedRun], labels: list[str]) -> None:
    shapes = [{k: tuple(v.shape) for k, v in r.model.state_dict().items()} for r in runs]
    for label, other in zip(labels[1:], shapes[1:]):
        if other != shapes[0]:
            raise InputError(
                f"a shared landscape needs runs of one architecture: {label} differs from "
                f"{labels[0]} (drop landscape from --measure, or analyze them apart)"
            )


#: the measures finished so far, kept while analyze runs; analysis.json appears at the end
PARTIAL = ".analysis.partial.json"


def _previous(out: Path, settings: AnalysisSettings, runs: list[str]) -> dict[str, Any]:
    path = out / PARTIAL if (out / PARTIAL).is_file() else out / "analysis.json"
    if not path.is_file():
        return {}
    try:
        old = read_json(path, "analysis")
    except InputError as exc:
        raise InputError(f"{exc}; choose another --out") from None
    problem = malformed(old)
    if problem:
        raise InputError(
            f"{path} is not an analysis.json as focalsam writes it: {problem}; choose another --out"
        )
    if old["settings"] != settings.key() or old["run_dirs"] != runs:
        raise InputError(
            f"{out} holds an analysis with other settings or runs; choose another --out"
        )
    return dict(old["runs"])


def analyze(
    paths: list[str | Path],
    out: str | Path,
    settings: AnalysisSettings | None = None,
    *,
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Measure every run in ``paths`` and write ``out/analysis.json`` and the figures;
    measures already in ``out/analysis.json`` (same settings) are kept, not recomputed."""
    from focalsam.analysis.measures import run_measure  # the measures' own imports are heavy

    settings = settings or AnalysisSettings()
    run_paths, out = [Path(p) for p in paths], Path(out)
    _check_inputs(run_paths, out, settings)
    runs = [load_run(p, settings.checkpoint, settings.device) for p in run_paths]
    labels = _labels(runs)
    if "landscape" in settings.measures and len(runs) > 1:
        _same_architecture(runs, labels)
    run_dirs = [str(r.checkpoint) for r in runs]
    results = _previous(out, settings, run_dirs)
    plan = []
    for label, run in zip(labels, runs):
        counts = run.data.class_counts
        targets = resolve_targets(settings.classes, counts, run.data.shot_preset)
        assert run.data.split is not None
        source = run.data.split(settings.split)
        chosen = [  # drawn before anything is written: an empty class fails here
            (
                t,
                sample_indices(
                    source.labels, t, settings.samples_per_class, settings.seed, settings.split
                ),
            )
            for t in targets
        ]
        plan.append((label, run, chosen, source))
    out.mkdir(parents=True, exist_ok=True)
    document = {
        "settings": settings.key(),
        "run_dirs": run_dirs,
        "conventions": CONVENTIONS,
        "runs": results,
    }
    todo = sum(
        1
        for label, _r, chosen, _s in plan
        for t, _i in chosen
        for m in ("basic", *settings.measures)
        if m not in results.get(label, {}).get("targets", {}).get(t.name, {})
    )
    bar = _bar(todo, progress)
    for label, run, chosen, source in plan:
        entry = results.setdefault(
            label,
            {
                "run_dir": str(run.checkpoint.parent),
                "checkpoint": str(run.checkpoint),
                "optimizer": canonical_name(run.cfg.optim.name),
                "class_counts": run.data.class_counts,
                "shot_preset": run.data.shot_preset,
                "targets": {},
            },
        )
        context = _Context(run, settings)
        for target, idx in chosen:
            slot = entry["targets"].setdefault(
                target.name, {"classes": list(target.classes), "train_count": target.train_count}
            )
            batches = None
            for measure in ("basic", *settings.measures):
                if measure in slot:
                    continue
                if batches is None:
                    batches = source.batches(idx, settings.batch_size)
                    slot["samples"] = int(len(idx))
                t0 = time.perf_counter()
                value = run_measure(measure, context, batches)
                value["seconds"] = round(time.perf_counter() - t0, 4)
                slot[measure] = value
                atomic_write(out / PARTIAL, json.dumps(document, indent=1))
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix_str(f"{label} {target.name} {measure}")
        run.rt.close()
    if bar is not None:
        bar.close()
    from focalsam.analysis.plots import plot_all

    for png in plot_all(document, out):
        log(f"wrote {png}")
    atomic_write(out / "analysis.json", json.dumps(document, indent=1))  # whole, at the end
    (out / PARTIAL).unlink(missing_ok=True)
    return document


class _Context:
    """What the measures of one run need: model (eval), loss, parameters, the run's ascent."""

    def __init__(self, run: LoadedRun, settings: AnalysisSettings) -> None:
        self.run, self.settings = run, settings
        model = run.model.eval()
        self.model = model
        self.params = [p for p in model.parameters() if p.requires_grad]
        per_sample = run.cfg.loss.build(run.data.class_counts).to(run.rt.device)
        per_sample.set_epoch(run.cfg.train.epochs - 1)  # the last epoch's weights
        self.per_sample = per_sample
        self._ascent: list[Tensor] | None | bool = False

    def loss_fn(self, logits: Tensor, y: Tensor) -> Tensor:
        return self.per_sample(logits.float(), y).mean()

    def run_ascent(self) -> tuple[list[Tensor] | None, str]:
        """The run's own perturbation direction over its training set (samples_per_class
        of every class), or None for a method that does not perturb."""
        from focalsam.analysis.sharpness import weighted_ascent

        weights, what = _sharp_weights(self.run)
        if weights is None:
            return None, what
        if self._ascent is False:
            train = self.run.data.split("train") if self.run.data.split else None
            assert train is not None
            every = Target("all", tuple(range(len(self.run.data.class_counts))), 0.0)
            idx = sample_indices(
                train.labels, every, self.settings.samples_per_class, self.settings.seed, "train"
            )
            batches = train.batches(idx, self.settings.batch_size)
            self._ascent = weighted_ascent(
                self.model,
                self.per_sample,
                batches,
                weights.to(self.run.rt.device),
                params=self.params,
            )
        assert not isinstance(self._ascent, bool)
        return self._ascent, what


def _sharp_weights(run: LoadedRun) -> tuple[Tensor | None, str]:
    """The per-class sharp weights ``b`` of the run's method, from its spec
    (:meth:`MethodSpec.class_weights`; ``docs/design.md`` has each rule)."""
    spec = get_method(run.cfg.optim.name)
    weights = spec.class_weights(run.cfg.method_options(), run.data.class_counts)
    if weights is None:
        return None, f"{spec.name} takes no sharpness-aware ascent"
    return weights.sharp, weights.what


def _bar(total: int, enabled: bool) -> Any:
    if not enabled or total == 0:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc="analyze", dynamic_ncols=True)
