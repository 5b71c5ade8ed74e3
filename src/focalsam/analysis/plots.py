"""The figures of an analysis, drawn from ``analysis.json`` alone."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _series(
    doc: dict[str, Any], measure: str, pick: Any
) -> dict[str, list[tuple[float, str, float]]]:
    """run label -> [(train count, target name, value)] for targets that have ``measure``."""
    out: dict[str, list[tuple[float, str, float]]] = {}
    for label, run in doc["runs"].items():
        rows = []
        for name, slot in run["targets"].items():
            if measure in slot and pick(slot[measure]) is not None:
                rows.append((slot["train_count"], name, float(pick(slot[measure]))))
        if rows:
            out[label] = sorted(rows, key=lambda r: -r[0])
    return out


def _against_size(ax: Any, series: dict[str, list[tuple[float, str, float]]], ylabel: str) -> None:
    for label, rows in series.items():
        ax.plot([r[0] for r in rows], [r[2] for r in rows], marker="o", label=label)
        for count, name, value in rows:
            ax.annotate(name.split(" (")[0], (count, value), fontsize=7, alpha=0.6)
    ax.set_xscale("log")
    ax.invert_xaxis()
    ax.set_xlabel("training images per class (log, head to tail)")
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.legend()


def plot_all(doc: dict[str, Any], out: Path) -> list[Path]:
    """Every figure the measures in ``doc`` allow; returns the files written."""
    plt = _plt()
    written = []
    panels = [
        ("hessian", lambda m: m["values"][0], "top Hessian eigenvalue"),
        ("trace", lambda m: m["mean"], "Hessian trace (Hutchinson)"),
    ]
    present = [(m, f, y) for m, f, y in panels if _series(doc, m, f)]
    if present:
        fig, axes = plt.subplots(1, len(present), figsize=(6 * len(present), 4.2), squeeze=False)
        for ax, (measure, pick, ylabel) in zip(axes[0], present):
            _against_size(ax, _series(doc, measure, pick), ylabel)
        fig.suptitle("Curvature against class size")
        written.append(_save(fig, out / "curvature_vs_class_size.png", plt))
    sharp = _series(doc, "sharpness", lambda m: m["own"][0])
    if sharp:
        fig, ax = plt.subplots(figsize=(6.5, 4.2))
        rho = _first(doc, "sharpness")["rho"][0]
        _against_size(ax, sharp, f"SAM sharpness at rho {rho:g} (own ascent)")
        written.append(_save(fig, out / "sharpness_vs_class_size.png", plt))
    if _has(doc, "density"):
        written.append(_density(doc, out, plt))
    if _has(doc, "landscape"):
        written.append(_landscapes(doc, out, plt))
    return written


def _has(doc: dict[str, Any], measure: str) -> bool:
    return any(measure in slot for r in doc["runs"].values() for slot in r["targets"].values())


def _first(doc: dict[str, Any], measure: str) -> dict[str, Any]:
    for run in doc["runs"].values():
        for slot in run["targets"].values():
            if measure in slot:
                return dict(slot[measure])
    raise KeyError(measure)


def _density(doc: dict[str, Any], out: Path, plt: Any) -> Path:
    from focalsam.analysis.density import density_from_dict

    names = sorted(
        {n for r in doc["runs"].values() for n in r["targets"]}, key=lambda n: -_count(doc, n)
    )
    fig, axes = plt.subplots(1, len(names), figsize=(5 * len(names), 3.8), squeeze=False)
    for ax, name in zip(axes[0], names):
        for label, run in doc["runs"].items():
            slot = run["targets"].get(name, {})
            if "density" in slot:
                grid, dens = density_from_dict(slot["density"])
                ax.semilogy(grid, np.maximum(dens, 1e-12), label=label)
        ax.set_title(name)
        ax.set_xlabel("eigenvalue")
        ax.grid(alpha=0.3)
        ax.legend()
    axes[0][0].set_ylabel("spectral density")
    fig.suptitle("Hessian eigenvalue density (stochastic Lanczos quadrature)")
    return _save(fig, out / "spectral_density.png", plt)


def _count(doc: dict[str, Any], name: str) -> float:
    return max(
        r["targets"][name]["train_count"] for r in doc["runs"].values() if name in r["targets"]
    )


def _landscapes(doc: dict[str, Any], out: Path, plt: Any) -> Path:
    cells = [
        (label, name, slot["landscape"])
        for label, run in doc["runs"].items()
        for name, slot in run["targets"].items()
        if "landscape" in slot
    ]
    labels = list(dict.fromkeys(c[0] for c in cells))
    names = sorted(dict.fromkeys(c[1] for c in cells), key=lambda n: -_count(doc, n))
    low = min(float(np.min(c[2]["loss"])) for c in cells)
    high = max(float(np.max(c[2]["loss"])) for c in cells)
    levels = np.linspace(low, high, 21)
    fig, axes = plt.subplots(
        len(labels), len(names), figsize=(4.2 * len(names), 3.8 * len(labels)), squeeze=False
    )
    mappable = None
    for label, name, land in cells:
        ax = axes[labels.index(label)][names.index(name)]
        # loss[j][i] = L(theta + alphas[i] d1 + betas[j] d2)
        mappable = ax.contourf(
            land["alphas"], land["betas"], np.asarray(land["loss"]), levels=levels, cmap="viridis"
        )
        ax.plot([0], [0], "r+")
        ax.set_title(f"{label}: {name}", fontsize=9)
    fig.colorbar(mappable, ax=axes.ravel().tolist(), label="loss (one colour scale)")
    fig.suptitle("2-D loss landscapes, filter-normalised directions shared by all panels")
    return _save(fig, out / "loss_landscapes.png", plt, tight=False)


def _save(fig: Any, path: Path, plt: Any, tight: bool = True) -> Path:
    if tight:
        fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
