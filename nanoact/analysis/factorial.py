"""Does the activation's effect depend on another factor (the architecture, the scale, a hyperparameter)?

A grid with an extra categorical axis (``model.name``, ``model.n_layer``, ``train.lr``, ...), or several
experiments reported together, is a factorial design: activation (a levels) x factor (f levels) x seed (n
replicates). ``y`` is a (a, f, n) table of one outcome per run (final val loss, val acc).

How the seeds sit in the design decides the error terms (Montgomery, *Design and Analysis of Experiments*,
ch. 14, and Maxwell & Delaney, *Designing Experiments and Analyzing Data*, ch. 12 and 14):

- **crossed** (the grid of one sweep: seed s is the same block at every activation and every level): seed is a
  random block crossed with both fixed factors, so each fixed term is tested against its own interaction with
  seed. Activation against activation x seed, the factor against factor x seed, and the activation x factor
  interaction against the three-way residual. A pooled residual would treat the seed x factor variation (a seed
  that suits one architecture and not another) as noise of the activation comparisons, and the factor's main
  effect would be tested against the wrong, too small, error.
- **nested** (several experiments: the seeds of one experiment are not the seeds of another, even where their
  numbers agree, since the model, data order and batch differ): seed is nested in the factor (a split-plot
  design). The factor is tested against seeds-within-factor; activation and the interaction against activation
  x seeds-within-factor.

Effect sizes: partial eta^2 of each test, with a 95% interval by inverting the noncentral F (Steiger 2004,
Psychological Methods 9(2):164-182: eta^2 = lambda / (lambda + df + df_error + 1)); the point estimate is on the
same scale, with lambda estimated as df (F - 1) (the plain ratio SS_effect / (SS_effect + SS_error) is biased
upwards by about df / (df + df_error) under the null, a third for a 25-df interaction). And the interaction's share
of the activation effect, SS_AxF / (SS_A + SS_AxF), with a delete-one-seed jackknife interval. Simple effects:
the activation's RCBD F test within each level, Holm-adjusted across levels.

PD across levels: each level's PD estimands (the report's cross-vs-within excess and the same-seed
activation-only excess) are computed from PD between runs *of that level* only, and two levels are compared by
the difference of their estimands, with a delete-one-seed jackknife SE that deletes the seed from every level at
once when seeds are crossed (so the levels' shared seed effects are accounted for) and Welch-combined independent
jackknife SEs when they are nested. Holm across pairs of levels.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from scipy import optimize, stats

from nanoact.analysis.stats import ALPHA, holm, rcbd_anova

CROSSED, NESTED = "crossed", "nested"


@dataclass(frozen=True)
class Term:
    """One F test of the factorial ANOVA."""

    name: str  # "activation", "factor", "activation x factor"
    ss: float
    df: int
    error: str  # the error term's name, e.g. "activation x seed"
    ss_error: float
    df_error: int
    f: float
    p: float
    partial_eta2: float  # bias-adjusted, see the module docstring
    eta2_lo: float
    eta2_hi: float

    @property
    def ms(self) -> float:
        return self.ss / self.df

    @property
    def ms_error(self) -> float:
        return self.ss_error / self.df_error


@dataclass(frozen=True)
class SimpleEffect:
    level: str
    f: float
    df: int
    df_error: int
    p: float
    p_holm: float
    best: str
    worst: str
    gap: float  # |best mean - worst mean|


@dataclass(frozen=True)
class FactorialResult:
    outcome: str
    factor: str
    activations: tuple[str, ...]
    levels: tuple[str, ...]
    n_seeds: int
    seeds: str  # CROSSED or NESTED
    means: tuple[tuple[float, ...], ...]  # (a, f) cell means
    ci_half: tuple[tuple[float, ...], ...]  # (a, f) 95% t half-widths of the cell means over seeds
    activation: Term
    factor_term: Term
    interaction: Term
    share: float  # SS_AxF / (SS_A + SS_AxF)
    share_lo: float
    share_hi: float
    simple: tuple[SimpleEffect, ...]

    def terms(self) -> tuple[Term, Term, Term]:
        return self.activation, self.factor_term, self.interaction


def _eta2_ci(f: float, df1: int, df2: int, level: float = 0.95) -> tuple[float, float]:
    """Interval for partial eta^2 from the noncentral F (Steiger 2004): find the noncentralities whose F
    distributions put the observed F at the upper and lower tail quantiles;
    eta^2 = lambda / (lambda + df1 + df2 + 1)."""
    if not math.isfinite(f) or df2 < 1:
        return math.nan, math.nan
    tail = (1 - level) / 2

    def lam(q: float) -> float:
        g = lambda x: stats.ncf.cdf(f, df1, df2, x) - q  # noqa: E731 - decreasing in x
        if g(0.0) <= 0:
            return 0.0
        hi = max(10.0, 10 * f * df1)
        while g(hi) > 0:
            hi *= 4
            if hi > 1e9:
                return math.inf
        return optimize.brentq(g, 0.0, hi, xtol=1e-10)

    to_eta = lambda x: x / (x + df1 + df2 + 1)  # noqa: E731
    return to_eta(lam(1 - tail)), to_eta(lam(tail))


def _term(name: str, ss: float, df: int, error: str, ss_e: float, df_e: int) -> Term:
    ms, ms_e = ss / df, ss_e / df_e
    f = ms / ms_e if ms_e > 0 else (math.nan if ms == 0 else math.inf)
    p = float(stats.f.sf(f, df, df_e)) if math.isfinite(f) else (0.0 if f == math.inf else math.nan)
    lo, hi = _eta2_ci(f, df, df_e)
    # the point on the interval's scale: lambda estimated as df (F - 1) (the sample SS ratio is biased upwards,
    # by about df / (df + df_error) under the null, which for a 25-df interaction is a third)
    lam = max(0.0, df * (f - 1)) if math.isfinite(f) else math.inf
    eta = lam / (lam + df + df_e + 1) if math.isfinite(lam) else 1.0
    return Term(name, float(ss), df, error, float(ss_e), df_e, float(f), p, float(eta), lo, hi)


def sums_of_squares(y: np.ndarray) -> dict[str, np.ndarray]:
    """The sums of squares of the (..., a, f, n) tables' main effects and interactions (balanced, one run per
    cell); arrays over the leading axes (floats for one table)."""
    y = np.asarray(y, dtype=np.float64)
    a, f, n = y.shape[-3:]
    gm = y.mean(axis=(-3, -2, -1), keepdims=True)
    m_a, m_f, m_s = (y.mean(axis=ax, keepdims=True) for ax in ((-2, -1), (-3, -1), (-3, -2)))
    m_af, m_as, m_fs = (y.mean(axis=ax, keepdims=True) for ax in (-1, -2, -3))
    tot = lambda x: np.sum(x, axis=(-3, -2, -1))  # noqa: E731
    ss = {
        "A": f * n * tot((m_a - gm) ** 2),
        "F": a * n * tot((m_f - gm) ** 2),
        "S": a * f * tot((m_s - gm) ** 2),
        "AF": n * tot((m_af - m_a - m_f + gm) ** 2),
        "AS": f * tot((m_as - m_a - m_s + gm) ** 2),
        "FS": a * tot((m_fs - m_f - m_s + gm) ** 2),
    }
    ss["AFS"] = tot((y - gm) ** 2) - sum(ss.values())
    return ss


def _error_terms(ss: dict[str, np.ndarray], a: int, f: int, n: int, seeds: str) -> list[tuple]:
    """(name, SS, df, error name, error SS, error df) of the activation, factor and interaction tests."""
    da, df_, dn = a - 1, f - 1, n - 1
    if seeds == CROSSED:
        return [("activation", ss["A"], da, "activation x seed", ss["AS"], da * dn),
                ("factor", ss["F"], df_, "factor x seed", ss["FS"], df_ * dn),
                ("activation x factor", ss["AF"], da * df_, "activation x factor x seed", ss["AFS"], da * df_ * dn)]
    if seeds != NESTED:
        raise ValueError(f"seeds must be {CROSSED!r} or {NESTED!r}, not {seeds!r}")
    s_in_f, as_in_f = ss["S"] + ss["FS"], ss["AS"] + ss["AFS"]  # the seed index means nothing across levels
    return [("activation", ss["A"], da, "activation x seed (within level)", as_in_f, f * da * dn),
            ("factor", ss["F"], df_, "seed (within level)", s_in_f, f * dn),
            ("activation x factor", ss["AF"], da * df_, "activation x seed (within level)", as_in_f, f * da * dn)]


def p_values(y: np.ndarray, seeds: str = CROSSED) -> np.ndarray:
    """(..., 3) p values of the activation, factor and interaction tests of (..., a, f, n) tables (no intervals:
    for simulations)."""
    a, f, n = np.shape(y)[-3:]
    rows = _error_terms(sums_of_squares(y), a, f, n, seeds)
    return np.stack([stats.f.sf((s / d) / (se / de), d, de) for _, s, d, _, se, de in rows], axis=-1)


def factorial_terms(y: np.ndarray, seeds: str = CROSSED) -> tuple[Term, Term, Term]:
    """The activation, factor and interaction F tests of an (a, f, n) table, with the error terms of ``seeds``."""
    a, f, n = np.shape(y)
    rows = _error_terms(sums_of_squares(y), a, f, n, seeds)
    return tuple(_term(name, float(s), d, err, float(se), de) for name, s, d, err, se, de in rows)


def _share(y: np.ndarray) -> float:
    ss = sums_of_squares(y)
    total = ss["A"] + ss["AF"]
    return ss["AF"] / total if total > 0 else math.nan


def share_interval(y: np.ndarray, level: float = 0.95) -> tuple[float, float, float]:
    """The interaction's share of the activation effect and a delete-one-seed jackknife t interval (clipped to
    [0, 1]), on n - 1 df. The seed index is deleted from every level at once: with crossed seeds that is the
    block; with nested seeds the groups (seed j of every level) are still independent and exchangeable."""
    y = np.asarray(y, dtype=np.float64)
    est = _share(y)
    n = y.shape[2]
    if n < 3 or not math.isfinite(est):
        return est, math.nan, math.nan
    loo = np.array([_share(np.delete(y, j, axis=2)) for j in range(n)])
    se = math.sqrt((n - 1) / n * np.sum((loo - loo.mean()) ** 2))
    half = stats.t.ppf(0.5 + level / 2, n - 1) * se
    return est, max(0.0, est - half), min(1.0, est + half)


def simple_effects(y: np.ndarray, activations: Sequence[str], levels: Sequence[str],
                   lower_is_better: bool = True) -> list[SimpleEffect]:
    """The activation's RCBD F test within each level (blocked by seed), Holm across levels; ``gap``: the best
    activation's mean minus the worst's, in the direction where positive means better."""
    out = []
    for g, level in enumerate(levels):
        r = rcbd_anova(y[:, g, :])
        means = np.asarray(r.treatment_means)
        best, worst = (np.argmin(means), np.argmax(means)) if lower_is_better else (np.argmax(means), np.argmin(means))
        out.append((level, r.f_a, r.df_a, r.df_e, r.p_a, activations[int(best)], activations[int(worst)],
                    float(means.max() - means.min())))
    adj = holm([o[4] for o in out])
    return [SimpleEffect(lv, float(fv), da, de, p, ph, best, worst, gap)
            for (lv, fv, da, de, p, best, worst, gap), ph in zip(out, adj)]


def analyse_factorial(y: np.ndarray, activations: Sequence[str], levels: Sequence[str], *, outcome: str,
                      factor: str, seeds: str = CROSSED, lower_is_better: bool = True) -> FactorialResult:
    y = np.asarray(y, dtype=np.float64)
    a, f, n = y.shape
    if a < 2 or f < 2 or n < 2:
        raise ValueError(f"a factorial analysis needs 2+ activations, 2+ levels and 2+ seeds, got {a}x{f}x{n}")
    if not np.all(np.isfinite(y)):
        raise ValueError("the table has missing or non-finite outcomes; the grid must be complete")
    act, fac, inter = factorial_terms(y, seeds)
    share, lo, hi = share_interval(y)
    half = stats.t.ppf(0.975, n - 1) * y.std(axis=2, ddof=1) / math.sqrt(n)
    return FactorialResult(
        outcome=outcome, factor=factor, activations=tuple(activations), levels=tuple(map(str, levels)),
        n_seeds=n, seeds=seeds, means=tuple(map(tuple, y.mean(axis=2).tolist())),
        ci_half=tuple(map(tuple, half.tolist())), activation=act, factor_term=fac, interaction=inter,
        share=share, share_lo=lo, share_hi=hi,
        simple=tuple(simple_effects(y, activations, levels, lower_is_better)))


# ---- PD across levels ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LevelContrast:
    """Level ``a`` minus level ``b`` of a PD estimand, with its seed-jackknife interval and t test."""

    estimand: str
    a: str
    b: str
    diff: float
    se: float
    df: float
    lo: float
    hi: float
    p: float
    p_holm: float


def _jack(stat: Callable[[np.ndarray], np.ndarray], d: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    """stat(d), its delete-one-seed jackknife SE and df (``pdtests.grouped_jackknife`` with the seed as the unit);
    ``d`` is (..., k, n, k, n) with the seed on axes -3, -1."""
    from nanoact.analysis import pdtests as pt

    se, dfree = pt.grouped_jackknife(stat, d, pt.seed_groupings(d.shape[-1]))
    return np.asarray(stat(d)), se, dfree


def level_contrasts(tables: Sequence[np.ndarray], levels: Sequence[str], estimand: str,
                    stat: Callable[[np.ndarray], np.ndarray], seeds: str = CROSSED) -> list[LevelContrast]:
    """Every pair of levels' difference in ``stat`` (a scalar PD estimand of one (k, n, k, n) table).

    ``tables``: one PD table per level, each from PD between runs of that level only (same activations in the
    same order). Crossed seeds (same seeds at every level, same order): the jackknife deletes seed j from every
    level at once, so the difference's SE carries the seed effects the levels share; df n - 1. Nested: an
    independent jackknife per level (the levels may have different seed counts), SEs combined, Welch-Satterthwaite
    df. Holm across the pairs of levels.
    """
    f = len(tables)
    pairs = [(i, j) for i in range(f) for j in range(i + 1, f)]
    rows = []
    if seeds == CROSSED:
        d = np.stack(tables)
        diff_stat = lambda t: np.array([stat(t[i]) - stat(t[j]) for i, j in pairs])  # noqa: E731
        est, se, dfree = _jack(diff_stat, d)
        rows = [(i, j, float(e), float(s), float(dfree)) for (i, j), e, s in zip(pairs, est, se)]
    else:
        per = [_jack(stat, t) for t in tables]
        for i, j in pairs:
            (ei, si, di), (ej, sj, dj) = per[i], per[j]
            s = math.sqrt(float(si) ** 2 + float(sj) ** 2)
            dfree = s**4 / (float(si) ** 4 / di + float(sj) ** 4 / dj) if di and dj and s > 0 else 0.0
            rows.append((i, j, float(ei - ej), s, dfree))
    ps = [float(2 * stats.t.sf(abs(e / s), dfree)) if dfree >= 1 and s > 0 and math.isfinite(s) else math.nan
          for i, j, e, s, dfree in rows]
    adj = holm([p if math.isfinite(p) else 1.0 for p in ps])
    out = []
    for (i, j, e, s, dfree), p, ph in zip(rows, ps, adj):
        half = stats.t.ppf(0.975, dfree) * s if dfree >= 1 and math.isfinite(s) else math.nan
        out.append(LevelContrast(estimand, str(levels[i]), str(levels[j]), e, s, dfree, e - half, e + half, p,
                                 ph if math.isfinite(p) else math.nan))
    return out


def any_rejected(contrasts: Sequence[LevelContrast], alpha: float = ALPHA) -> bool:
    return any(c.p_holm < alpha for c in contrasts)


@dataclass(frozen=True)
class PairEffect:
    """Activation b minus activation a within one level: the seed-paired mean difference, its t interval and
    test, Holm-adjusted across every (level, pair) cell of the heatmap."""

    level: str
    a: str
    b: str
    diff: float
    lo: float
    hi: float
    p: float
    p_holm: float


def pair_effects(y: np.ndarray, activations: Sequence[str], levels: Sequence[str]) -> list[PairEffect]:
    y = np.asarray(y, dtype=np.float64)
    a_n, f_n, n = y.shape
    rows = []
    for g in range(f_n):
        for i in range(a_n):
            for j in range(i + 1, a_n):
                d = y[j, g] - y[i, g]
                se = d.std(ddof=1) / math.sqrt(n)
                t = d.mean() / se if se > 0 else (math.inf if d.mean() != 0 else math.nan)
                p = float(2 * stats.t.sf(abs(t), n - 1)) if math.isfinite(t) else (0.0 if math.isinf(t) else math.nan)
                half = stats.t.ppf(0.975, n - 1) * se
                rows.append((str(levels[g]), activations[i], activations[j], float(d.mean()),
                             float(d.mean() - half), float(d.mean() + half), p))
    adj = holm([r[-1] if math.isfinite(r[-1]) else 1.0 for r in rows])
    return [PairEffect(*r, ph) for r, ph in zip(rows, adj)]
