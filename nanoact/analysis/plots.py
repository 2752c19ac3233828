"""Report figures. Each function returns a ``matplotlib.figure.Figure`` on an Agg canvas.

No pyplot: figures are built directly, so nothing leaks into global state and nothing is shown. Save with
``save(fig, path)``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from scipy import stats

from nanoact.tracking import schema

Curve = tuple[Sequence[int], Sequence[float]]  # (steps, values)


def _figure(w: float, h: float) -> Figure:
    fig = Figure(figsize=(w, h), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _colors(labels: Sequence[str]) -> dict[str, tuple]:
    from matplotlib import colormaps

    cmap = colormaps["tab10" if len(labels) <= 10 else "tab20"]
    return {a: cmap(i % cmap.N) for i, a in enumerate(labels)}


def save(fig: Figure, path: str | Path, dpi: int = 110) -> Path:
    """Write ``fig`` as PNG and return the path."""
    path = Path(path)
    fig.savefig(path, dpi=dpi, format="png")
    return path


def _mean_band(curves: Sequence[Curve]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    # align curves on the steps all of them have
    common = sorted(set.intersection(*(set(s) for s, _ in curves))) if curves else []
    vals = np.array([[dict(zip(s, v))[t] for t in common] for s, v in curves], dtype=float)
    if len(common) == 0:
        return np.array([]), np.array([]), np.array([])
    sd = vals.std(axis=0, ddof=1) if len(curves) > 1 else np.zeros(len(common))
    return np.asarray(common), vals.mean(axis=0), sd


def loss_curves(curves: Mapping[str, Mapping[str, Mapping[str, Curve]]], title: str = "") -> Figure:
    """Train and val loss per activation: mean ± 1 s.d. over seeds, thin lines per seed.

    ``curves[activation][metric][seed] = (steps, values)``, metric in {"train/loss", "val/loss"}.
    """
    acts = list(curves)
    colors = _colors(acts)
    fig = _figure(11, 4.2)
    axes = fig.subplots(1, 2, sharey=True)
    for ax, metric in zip(axes, (schema.TRAIN_LOSS, schema.VAL_LOSS)):
        for a in acts:
            per_seed = [c for c in curves[a].get(metric, {}).values() if len(c[0])]
            for s, v in per_seed:
                ax.plot(s, v, color=colors[a], lw=0.6, alpha=0.45)
            steps, mean, sd = _mean_band(per_seed)
            if len(steps):
                ax.plot(steps, mean, color=colors[a], lw=2, label=f"{a} (n={len(per_seed)})")
                ax.fill_between(steps, mean - sd, mean + sd, color=colors[a], alpha=0.18, lw=0)
        ax.set_title(metric)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("loss (nats)")
    axes[1].legend(fontsize=8)
    fig.suptitle(title or "Loss curves: mean ± 1 s.d. over seeds, thin lines = single seeds")
    return fig


def final_metrics(
    values: Mapping[str, Mapping[str, Mapping[str, float]]], labels: Mapping[str, str] | None = None, title: str = ""
) -> Figure:
    """Final metrics by activation: one point per seed, mean with a 95% t-interval over seeds.

    ``values[metric][activation][seed] = value``.
    """
    metrics = list(values)
    acts = sorted({a for m in metrics for a in values[m]})
    colors = _colors(acts)
    fig = _figure(3.6 * max(1, len(metrics)), 4.0)
    axes = np.atleast_1d(fig.subplots(1, max(1, len(metrics))))
    for ax, m in zip(axes, metrics):
        for x, a in enumerate(acts):
            pts = np.array([v for v in values[m].get(a, {}).values() if math.isfinite(v)], dtype=float)
            if len(pts) == 0:
                continue
            jitter = np.linspace(-0.12, 0.12, len(pts)) if len(pts) > 1 else np.zeros(1)
            ax.scatter(x + jitter, pts, s=14, color=colors[a], alpha=0.7, zorder=3)
            mean = pts.mean()
            if len(pts) > 1:
                half = stats.t.ppf(0.975, len(pts) - 1) * pts.std(ddof=1) / math.sqrt(len(pts))
                ax.errorbar(x + 0.28, mean, yerr=half, fmt="o", color="black", capsize=4, ms=4, zorder=4)
            else:
                ax.plot(x + 0.28, mean, "o", color="black", ms=4)
        ax.set_xticks(range(len(acts)), acts, rotation=30, ha="right")
        ax.set_title((labels or {}).get(m, m), fontsize=10)
        ax.grid(alpha=0.3, axis="y")
    fig.suptitle(title or "Final metrics by activation (dots: seeds; black: mean with 95% CI)")
    return fig


def pd_heatmap(matrix: np.ndarray, labels: Sequence[str], groups: Sequence[str], step: int, title: str = "") -> Figure:
    """Runs × runs pd_tv at one step, runs ordered by activation then seed, activation blocks outlined."""
    r = len(labels)
    size = min(12.0, 3.0 + 0.28 * r)
    fig = _figure(size + 1.2, size)
    ax = fig.subplots()
    im = ax.imshow(matrix, cmap="viridis", vmin=0, interpolation="nearest")
    fig.colorbar(im, ax=ax, shrink=0.8, label="pd_tv")
    if r <= 40:
        ax.set_xticks(range(r), labels, rotation=90, fontsize=7)
        ax.set_yticks(range(r), labels, fontsize=7)
    else:  # too many runs for per-run labels: label the activation blocks
        ax.set_xticks([]), ax.set_yticks([])
    start = 0
    for i in range(1, r + 1):
        if i == r or groups[i] != groups[start]:
            ax.add_patch(_rect(start - 0.5, i - start))
            if r > 40:
                ax.text(-1, (start + i - 1) / 2, groups[start], ha="right", va="center", fontsize=8)
            start = i
    ax.set_title(title or f"pd_tv between runs at step {step}")
    return fig


def _rect(origin: float, width: int):
    from matplotlib.patches import Rectangle

    return Rectangle((origin, origin), width, width, fill=False, ec="white", lw=1.2)


def within_pd_over_steps(
    steps: Sequence[int], within: Mapping[str, Mapping[str, tuple[Sequence[float], Sequence[float]]]],
    metrics: Sequence[str], title: str = "",
) -> Figure:
    """Mean within-activation PD (between seeds) across steps, ± jackknife SE.

    ``within[activation][metric] = (means per step, jackknife SEs per step)``.
    """
    acts = list(within)
    colors = _colors(acts)
    ncol = 3
    nrow = math.ceil(len(metrics) / ncol)
    fig = _figure(4.0 * ncol, 3.3 * nrow)
    axes = np.atleast_1d(fig.subplots(nrow, ncol)).ravel()
    for ax, m in zip(axes, metrics):
        for a in acts:
            mean, se = (np.asarray(x, dtype=float) for x in within[a][m])
            ax.plot(steps, mean, marker="o", ms=3, color=colors[a], label=a)
            ok = np.isfinite(se)
            if ok.any():
                ax.fill_between(np.asarray(steps)[ok], (mean - se)[ok], (mean + se)[ok], color=colors[a], alpha=0.2,
                                lw=0)
        ax.set_title(m)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    for ax in axes[len(metrics):]:
        ax.axis("off")
    axes[0].legend(fontsize=8)
    fig.suptitle(title or "Mean within-activation PD between seeds (± jackknife SE over seeds)")
    return fig


def accuracy_vs_pd(
    acc: Sequence[float], score: Sequence[float], activations: Sequence[str], title: str = "",
    xlabel: str = "PD score: pd_tv vs leave-one-out mean of its activation (final step)",
    ylabel: str = "final val acc",
) -> Figure:
    """Per-run accuracy against the per-run PD score; large markers are activation means."""
    acts = sorted(set(activations))
    colors = _colors(acts)
    acc, score = np.asarray(acc, dtype=float), np.asarray(score, dtype=float)
    fig = _figure(6.5, 4.8)
    ax = fig.subplots()
    for a in acts:
        sel = np.array([x == a for x in activations])
        ax.scatter(score[sel], acc[sel], s=18, color=colors[a], alpha=0.6)
        ok = sel & np.isfinite(score) & np.isfinite(acc)
        if ok.any():
            ax.scatter(score[ok].mean(), acc[ok].mean(), s=120, color=colors[a], edgecolor="black", label=a, zorder=4)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(title or "Accuracy against prediction difference")
    return fig


def interaction_plot(levels: Sequence[str], activations: Sequence[str], means: np.ndarray, half: np.ndarray,
                     factor: str, outcome: str) -> Figure:
    """Mean outcome per activation (one line each) across the factor's levels, ± the 95% t interval over seeds.
    Parallel lines: the activation effect is the same at every level; crossing or diverging lines: it is not."""
    colors = _colors(list(activations))
    fig = _figure(max(6.0, 1.3 * len(levels) + 3), 4.2)
    ax = fig.subplots()
    x = np.arange(len(levels))
    width = 0.25 / max(1, len(activations) - 1)
    for i, a in enumerate(activations):
        xs = x + (i - (len(activations) - 1) / 2) * width  # dodge, so the intervals do not hide each other
        ax.errorbar(xs, means[i], yerr=half[i], marker="o", ms=4, capsize=3, lw=1.4, color=colors[a], label=a)
    ax.set_xticks(x, list(levels), rotation=20 if max(map(len, levels)) > 8 else 0)
    ax.set_xlabel(factor)
    ax.set_ylabel(outcome)
    ax.set_title(f"{outcome} by activation and {factor} (mean ± 95% CI over seeds)", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, ncol=2)
    return fig


def effect_heatmap(levels: Sequence[str], pairs: Sequence[str], diff: np.ndarray, significant: np.ndarray,
                   factor: str, outcome: str) -> Figure:
    """The activation effect per level (rows) and pair of activations (columns): the seed-paired mean difference,
    ``*`` where it survives Holm across every cell."""
    from matplotlib import colormaps

    fig = _figure(max(6.0, 0.9 * len(pairs) + 2.5), max(3.0, 0.45 * len(levels) + 1.8))
    ax = fig.subplots()
    lim = float(np.nanmax(np.abs(diff))) if np.isfinite(diff).any() else 1.0
    im = ax.imshow(diff, cmap=colormaps["RdBu_r"], vmin=-lim, vmax=lim, aspect="auto")
    ax.set_xticks(range(len(pairs)), list(pairs), rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(len(levels)), list(levels), fontsize=8)
    for i in range(len(levels)):
        for j in range(len(pairs)):
            if np.isfinite(diff[i, j]):
                ax.text(j, i, f"{diff[i, j]:+.3g}{'*' if significant[i, j] else ''}", ha="center", va="center",
                        fontsize=7, color="white" if abs(diff[i, j]) > 0.6 * lim else "black")
    ax.set_ylabel(factor)
    ax.set_title(f"{outcome}: b − a per {factor} (seed-paired; * Holm-significant)", fontsize=10)
    fig.colorbar(im, ax=ax, shrink=0.8)
    return fig
