"""Seeds on demand: add seeds in rounds until every primary contrast is estimated to a stated precision.

The rule (``SeedRule``): every activation gets ``start`` seeds; after each round the interim analysis computes
the 95% interval half-width of every primary contrast of each targeted metric; if the widest half-width of every
targeted metric is at most its target, the sweep stops ("target met"); otherwise ``step`` more seeds are added,
up to ``max`` ("max seeds reached": the intervals are then as wide as they are, and the report says so).

Only precision stops a sweep, never a test result: the rule looks at interval widths, not at estimates, so it
cannot stop "when the difference looks significant". That alone is not enough for nominal coverage with few
seeds: the width is estimated from the same seeds, so a sweep tends to stop when its variance estimate happens
to be small, and plain t intervals at the stopping time cover less than 95% (about 91% with start 3, step 2 and
a target near the noise; Chow & Robbins 1965 is the large-sample version of this). nanoact therefore widens
every interval, at the interim looks and at the end, by a factor ``kappa`` computed for the rule: the smallest
factor for which the interval covers at least 95% at every ratio of target to noise, under the rule as run
(normal paired differences, simulated; ``calibrate``). Tests then use those intervals (a contrast is decided
when its widened interval excludes 0), so their type-I error is at most 5% per contrast under the same rule;
``tests/analysis/test_sequential.py`` checks coverage and level by simulation for loss and PD contrasts, and
reports the expected number of seeds.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats

from nanoact.sweep.seeds import METRICS, SeedRule  # noqa: F401 - the rule lives with the sweep file that states it

LEVEL = 0.95


def _coverage(z: np.ndarray, sched: tuple[int, ...], ratios: np.ndarray, kappa: float) -> np.ndarray:
    """Coverage at each target/noise ratio of the widened t interval at the stopping time (z: (m, max) N(0,1))."""
    m = z.shape[0]
    ns = np.array(sched)
    csum, csq = np.cumsum(z, axis=1), np.cumsum(z**2, axis=1)
    mean = csum[:, ns - 1] / ns
    sd = np.sqrt(np.maximum(csq[:, ns - 1] - ns * mean**2, 0) / (ns - 1))
    half = kappa * stats.t.ppf(0.5 + LEVEL / 2, ns - 1) * sd / np.sqrt(ns)  # (m, looks)
    covered = np.abs(mean) <= half
    out = np.empty(len(ratios))
    for i, r in enumerate(ratios):
        met = half <= r
        met[:, -1] = True  # max reached
        stop = met.argmax(axis=1)
        out[i] = covered[np.arange(m), stop].mean()
    return out


@functools.lru_cache(maxsize=32)
def calibrate(start: int, step: int, max_seeds: int, m: int = 20000, seed: int = 0) -> float:
    """The factor ``kappa`` (>= 1) that keeps the widened interval's coverage at or above 95% at every ratio of
    target to noise (a grid from 0.02 to 20 noise sds), for this schedule. Deterministic (fixed RNG seed)."""
    sched = SeedRule(start, step, max_seeds, {"final_val_loss": 1.0}).schedule()
    z = np.random.default_rng(seed).standard_normal((m, sched[-1]))
    ratios = np.geomspace(0.02, 20, 60)
    lo, hi = 1.0, 2.0
    if _coverage(z, sched, ratios, lo).min() >= LEVEL:
        return 1.0
    for _ in range(30):
        mid = (lo + hi) / 2
        lo, hi = (lo, mid) if _coverage(z, sched, ratios, mid).min() >= LEVEL else (mid, hi)
    return hi


@functools.lru_cache(maxsize=256)
def _t(df: float) -> float:
    return float(stats.t.ppf(0.5 + LEVEL / 2, df))


def half_width(se: float, df: float, kappa: float) -> float:
    """The widened 95% half-width of an estimate with standard error ``se`` on ``df`` degrees of freedom."""
    if not (df >= 1 and math.isfinite(se)):
        return math.inf
    return kappa * _t(df) * se


@dataclass(frozen=True)
class Interim:
    """One interim look: what was reached, and what happens next."""

    round: int
    n_seeds: int
    widest: Mapping[str, float]  # metric -> widest widened half-width over its primary contrasts
    met: Mapping[str, bool]
    stop: bool
    reason: str  # "target met", "max seeds reached", or "" when going on
    next_seeds: int  # seeds per activation after the next round (n_seeds when stopping)
    projected: Mapping[str, int]  # seeds projected to meet each target (``project``), capped at max


def project(rule: SeedRule, n_seeds: int, widest: Mapping[str, float]) -> dict[str, int]:
    """Seeds per activation projected to meet each target: the fewest n (from ``n_seeds`` to ``rule.max``) whose
    half-width, scaled from the widest one at ``n_seeds`` with the seed-level SD held fixed, is within it: hw(n) =
    hw * (t(n - 1) / sqrt(n)) / (t(n0 - 1) / sqrt(n0)). The t quantile matters at few seeds (t(2) = 4.30 against
    t(8) = 2.31); a half-width known only as infinite projects to the maximum."""
    def shrink(n: int) -> float:
        return _t(n - 1) / math.sqrt(n) / (_t(n_seeds - 1) / math.sqrt(n_seeds))

    out = {}
    for k, target in rule.targets.items():
        w = widest.get(k)
        w = math.inf if w is None else float(w)  # a record stores an infinite half-width as null
        out[k] = next((n for n in range(n_seeds, rule.max + 1) if math.isfinite(w) and w * shrink(n) <= target),
                      rule.max)
    return out


def decide(rule: SeedRule, n_seeds: int, half_widths: Mapping[str, Sequence[float]]) -> Interim:
    """The interim decision after a round with ``n_seeds`` per activation; ``half_widths``: metric -> the
    widened half-widths (``half_width``) of its primary contrasts."""
    sched = rule.schedule()
    if n_seeds not in sched:
        raise ValueError(f"{n_seeds} seeds is not a look of the schedule {sched}")
    widest = {k: max(map(float, half_widths.get(k, ())), default=math.inf) for k in rule.targets}
    met = {k: widest[k] <= t for k, t in rule.targets.items()}
    projected = project(rule, n_seeds, widest)
    rnd = sched.index(n_seeds) + 1
    if all(met.values()):
        return Interim(rnd, n_seeds, widest, met, True, "target met", n_seeds, projected)
    if n_seeds >= rule.max:
        return Interim(rnd, n_seeds, widest, met, True, "max seeds reached", n_seeds, projected)
    return Interim(rnd, n_seeds, widest, met, False, "", sched[rnd], projected)


@dataclass(frozen=True)
class Contrast:
    """One primary contrast at an interim look, with its widened interval."""

    metric: str
    name: str  # e.g. "gelu - relu" or "activation-only gelu vs relu"
    estimate: float
    half_width: float


def primary_contrasts(rule: SeedRule, loss_y: Sequence[Sequence[float]] | None, activations: Sequence[str],
                      pd=None) -> list[Contrast]:
    """The primary contrasts of the targeted metrics, with widened half-widths (``calibrate`` for the rule).

    - ``final_val_loss``: every pair's seed-paired mean difference (``loss_y``: (k activations, n seeds)), t
      interval on n - 1 df, as the report's paired t tests.
    - ``pd_tv``: the report's PD estimands at the final step (``pd``: its ``pdtests.PDResult`` for pd_tv): every
      pair's same-seed activation-only excess and cross-vs-within excess (with 2 activations, the overall ones),
      seed-jackknife t intervals.
    """
    kappa = calibrate(rule.start, rule.step, rule.max)
    out: list[Contrast] = []
    if "final_val_loss" in rule.targets and loss_y is not None:
        y = np.asarray(loss_y, dtype=np.float64)
        n = y.shape[1]
        for a in range(len(activations)):
            for b in range(a + 1, len(activations)):
                d = y[b] - y[a]
                se = float(d.std(ddof=1) / math.sqrt(n)) if n >= 2 else math.inf
                out.append(Contrast("final_val_loss", f"{activations[b]} - {activations[a]}", float(d.mean()),
                                    half_width(se, n - 1, kappa)))
    if "pd_tv" in rule.targets and pd is not None:
        acts = pd.activations
        only = pd.activation_only_pairs or ([pd.activation_only] if pd.activation_only is not None else [])
        cross = pd.pair_cross or ([pd.omnibus] if pd.omnibus is not None else [])
        for what, tests in (("activation-only", only), ("cross-vs-within", cross)):
            for t in tests:
                label = f"{acts[t.a]} vs {acts[t.b]}" if t.a >= 0 else "all activations"
                out.append(Contrast("pd_tv", f"{what} {label}", float(t.estimate), half_width(t.se, t.df, kappa)))
    return out


def decide_on(rule: SeedRule, n_seeds: int, contrasts: Sequence[Contrast]) -> Interim:
    """``decide`` on the contrasts of an interim look."""
    by: dict[str, list[float]] = {}
    for c in contrasts:
        by.setdefault(c.metric, []).append(c.half_width)
    return decide(rule, n_seeds, by)
