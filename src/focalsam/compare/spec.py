"""What a compare is: a preset (and YAML, overrides), optimizers and seeds; validated
whole, and recorded in ``compare.yaml`` so the same command resumes it."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml

from focalsam.errors import CompareError
from focalsam.optim import canonical_name
from focalsam.train.config import TrainConfig, make_config, parse_overrides, read_yaml
from focalsam.train.limits import load_yaml_text, read_text_limited

FORMAT = "focalsam-compare-1"
RECORD = "compare.yaml"
#: keys the compare sets for each run itself
OWN_KEYS = {"optim.name": "--optimizers", "run.seed": "--seeds", "run.dir": "--out"}


def parse_optimizers(text: str) -> tuple[str, ...]:
    """``"sgd,sam,focal_sam"`` -> registered names ``("plain", "sam", "focal_sam")``."""
    names = [n.strip() for n in text.split(",") if n.strip()]
    if not names:
        raise CompareError(f"--optimizers must be a comma list of optimizer names, got {text!r}")
    out = tuple(canonical_name(n) for n in names)  # raises naming the valid ones
    dup = sorted({n for n in out if out.count(n) > 1})
    if dup:
        raise CompareError(f"--optimizers lists {', '.join(dup)} twice (aliases count): {text!r}")
    return out


def parse_seeds(text: str) -> tuple[int, ...]:
    """``"0,1,2"`` -> ``(0, 1, 2)``: distinct integers >= 0."""
    parts = [p.strip() for p in text.split(",") if p.strip()]
    try:
        seeds = tuple(int(p) for p in parts)
    except ValueError:
        raise CompareError(f"--seeds must be a comma list of integers, got {text!r}") from None
    if not seeds or any(s < 0 for s in seeds) or len(set(seeds)) != len(seeds):
        raise CompareError(f"--seeds must be distinct integers >= 0, got {text!r}")
    return seeds


@dataclass(frozen=True)
class CompareSpec:
    """One compare: every (optimizer, seed) pair is an ordinary run of
    ``focalsam train --preset PRESET [--config YAML] OVERRIDES optimizer=O seed=S``.

    ``threads``: CPU intra-op threads of every run, whatever ``parallel`` is (results on
    the CPU depend on it); ``parallel``: runs at once (does not change any result).
    """

    preset: str | None
    optimizers: tuple[str, ...]
    seeds: tuple[int, ...]
    overrides: tuple[str, ...] = ()
    config_file: str | None = None
    threads: int = 1
    parallel: int = 1
    parsed: dict[str, Any] = field(default_factory=dict, compare=False)

    @classmethod
    def create(
        cls,
        preset: str | None,
        optimizers: str | tuple[str, ...],
        seeds: str | tuple[int, ...],
        overrides: tuple[str, ...] | list[str] = (),
        *,
        config_file: str | Path | None = None,
        threads: int = 1,
        parallel: int = 1,
    ) -> CompareSpec:
        """Parse and validate the whole command (every run's config) before anything
        is created; raises :class:`InputError` naming what is wrong."""
        opts = parse_optimizers(optimizers) if isinstance(optimizers, str) else optimizers
        seed_list = parse_seeds(seeds) if isinstance(seeds, str) else tuple(seeds)
        for name, value in (("--parallel", parallel), ("--threads", threads)):
            if not isinstance(value, int) or value < 1:
                raise CompareError(f"{name} must be an integer >= 1, got {value!r}")
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
        if threads > (cores or 1):
            raise CompareError(f"--threads {threads} is more than the {cores} CPU cores here")
        if preset is None and config_file is None:
            raise CompareError("compare needs --preset NAME or --config YAML")
        parsed = parse_overrides(list(overrides))
        for key, flag in OWN_KEYS.items():
            if key in parsed:
                raise CompareError(f"{key} is set by the compare for each run: use {flag}")
        path = str(Path(config_file).resolve()) if config_file is not None else None
        spec = cls(
            preset, tuple(opts), seed_list, tuple(overrides), path, threads, parallel, parsed
        )
        for opt in spec.optimizers:
            for seed in spec.seeds:
                spec.run_config(opt, seed, Path("compare-check"))
        return spec

    def run_name(self, optimizer: str, seed: int) -> str:
        return f"{optimizer}-seed{seed}"

    def pairs(self) -> list[tuple[str, int]]:
        """Every (optimizer, seed), seed-major so the first finished runs cover every row."""
        return [(o, s) for s in self.seeds for o in self.optimizers]

    def run_items(self, optimizer: str, seed: int, out: Path) -> list[str]:
        """The ``KEY=VALUE`` items of one run (after the compare's own overrides)."""
        run_dir = out / self.run_name(optimizer, seed)
        return [
            *self.overrides,
            f"optimizer={optimizer}",
            f"seed={seed}",
            f"run_dir={run_dir}",
            "progress=false",
        ]

    def run_config(self, optimizer: str, seed: int, out: Path) -> TrainConfig:
        return make_config(self.preset, self.config_file, self.run_items(optimizer, seed, out))

    def train_argv(self, optimizer: str, seed: int, out: Path) -> list[str]:
        """``focalsam train`` arguments of one run, made alone."""
        argv = ["train"]
        argv += ["--preset", self.preset] if self.preset else []
        argv += ["--config", self.config_file] if self.config_file else []
        return argv + self.run_items(optimizer, seed, out)

    def record(self) -> dict[str, Any]:
        """What ``compare.yaml`` holds: the experiment (``parallel`` is not part of it)."""
        return {
            "format": FORMAT,
            "preset": self.preset,
            "config": read_yaml(self.config_file) if self.config_file else None,
            "overrides": dict(sorted(self.parsed.items())),
            "optimizers": list(self.optimizers),
            "seeds": list(self.seeds),
            "threads": self.threads,
        }


def default_out(prefix: str) -> Path:
    """``runs/PREFIX-TIME``, with ``-2``, ``-3``, ... when that folder exists."""
    base = Path("runs") / f"{prefix}-{datetime.now().strftime('%Y%m%d-%H%M%S')}"
    path, n = base, 1
    while path.exists():
        n += 1
        path = base.with_name(f"{base.name}-{n}")
    return path


def check_out(spec: CompareSpec, out: Path) -> bool:
    """Whether ``out`` already holds this compare (resume); refuses a folder that holds
    another compare or anything else. Returns False for a new (absent or empty) folder."""
    if out.exists() and not out.is_dir():
        raise CompareError(f"--out {out} is a file, not a folder")
    if not out.exists() or not any(c.name != "compare.lock" for c in out.iterdir()):
        return False
    path = out / RECORD
    if not path.is_file():
        raise CompareError(f"--out {out} is not empty and holds no {RECORD}: not a compare folder")
    try:
        old = load_yaml_text(read_text_limited(path, "compare record"))
    except yaml.YAMLError as exc:
        reason = getattr(exc, "problem", None) or type(exc).__name__
        raise CompareError(f"{path} cannot be read as a compare record: {reason}") from None
    except UnicodeDecodeError:
        raise CompareError(f"{path} cannot be read as a compare record: not UTF-8") from None
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise CompareError(f"{path} cannot be read as a compare record: {reason}") from None
    new = spec.record()
    if not isinstance(old, dict):
        kind = "empty" if old is None else f"a YAML {type(old).__name__}"
        raise CompareError(
            f"{path} is not a compare record (a mapping of {', '.join(new)}): it is {kind}"
        )
    missing = [k for k in new if k not in old]
    if missing:
        raise CompareError(f"{path} is not a compare record: it lacks {', '.join(missing)}")
    changed = [k for k in new if old[k] != new[k]]
    if changed:
        shown = "; ".join(f"{k}: {old[k]!r} -> {new[k]!r}" for k in changed[:3])
        raise CompareError(
            f"{out} holds a different compare ({shown}, by its {RECORD}); re-run its own "
            "command to resume it, or choose another --out"
        )
    return True
