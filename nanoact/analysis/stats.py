"""Statistics for "every activation runs with the same seeds": a randomized complete block design (FACTS.md §5).

Activation is the treatment (k levels, rows of ``y``), seed is the block (n levels, columns). Nothing here uses
``f_oneway``, ``kruskal`` or ``tukey_hsd``: they assume independent groups and move the seed variance into the
error term.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from scipy import optimize, stats

ALPHA = 0.05


@dataclass
class RcbdResult:
    """Two-way ANOVA without interaction: y_ij = μ + τ_i (activation) + β_j (seed) + ε_ij."""

    k: int
    n: int
    grand_mean: float
    treatment_means: list[float]
    block_means: list[float]
    ss_a: float
    ss_s: float
    ss_e: float
    df_a: int
    df_s: int
    df_e: int
    ms_a: float
    ms_s: float
    ms_e: float
    f_a: float
    p_a: float
    f_s: float
    p_s: float
    partial_eta2: float
    partial_omega2: float
    var_activation: float
    var_seed: float
    var_residual: float


def _ratio(a: float, b: float) -> float:
    # 0/0 stays NaN (no information), x/0 is inf; never a silent 0
    if b > 0:
        return a / b
    return math.nan if a == 0 else math.inf


def rcbd_anova(y: np.ndarray) -> RcbdResult:
    """RCBD ANOVA of a (k activations, n seeds) table with the sums of squares of FACTS.md §5."""
    y = np.asarray(y, dtype=np.float64)
    k, n = y.shape
    assert k >= 2 and n >= 2, f"RCBD needs at least 2 activations and 2 seeds, got {k}x{n}"
    gm = y.mean()
    tm, bm = y.mean(axis=1), y.mean(axis=0)
    ss_a = float(n * np.sum((tm - gm) ** 2))
    ss_s = float(k * np.sum((bm - gm) ** 2))
    ss_e = float(np.sum((y - tm[:, None] - bm[None, :] + gm) ** 2))
    df_a, df_s, df_e = k - 1, n - 1, (k - 1) * (n - 1)
    ms_a, ms_s, ms_e = ss_a / df_a, ss_s / df_s, ss_e / df_e
    f_a, f_s = _ratio(ms_a, ms_e), _ratio(ms_s, ms_e)
    p_a = float(stats.f.sf(f_a, df_a, df_e)) if math.isfinite(f_a) else (0.0 if f_a == math.inf else math.nan)
    p_s = float(stats.f.sf(f_s, df_s, df_e)) if math.isfinite(f_s) else (0.0 if f_s == math.inf else math.nan)
    eta = _ratio(ss_a, ss_a + ss_e)
    omega = _ratio(df_a * (ms_a - ms_e), df_a * ms_a + (k * n - df_a) * ms_e)
    return RcbdResult(
        k=k, n=n, grand_mean=float(gm), treatment_means=tm.tolist(), block_means=bm.tolist(),
        ss_a=ss_a, ss_s=ss_s, ss_e=ss_e, df_a=df_a, df_s=df_s, df_e=df_e, ms_a=ms_a, ms_s=ms_s, ms_e=ms_e,
        f_a=f_a, p_a=p_a, f_s=f_s, p_s=p_s, partial_eta2=eta, partial_omega2=omega,
        var_activation=max(0.0, (ms_a - ms_e) / n), var_seed=max(0.0, (ms_s - ms_e) / k), var_residual=ms_e,
    )


@dataclass
class FriedmanResult:
    q: float
    p: float
    f_id: float  # Iman–Davenport F on (k−1, (k−1)(n−1)) df
    p_id: float
    kendall_w: float
    mean_ranks: list[float]


def friedman(y: np.ndarray) -> FriedmanResult:
    """Friedman's rank test over blocks (``scipy.stats.friedmanchisquare`` for k ≥ 3), Iman–Davenport F, Kendall's W.

    scipy refuses k = 2, so there the same tie-corrected statistic is computed by hand.
    """
    y = np.asarray(y, dtype=np.float64)
    k, n = y.shape
    ranks = stats.rankdata(y, axis=0)  # rank the activations within each seed
    if all(np.all(col == col[0]) for col in y.T):
        q = p = math.nan  # every seed ties every activation: ranks carry no information (and scipy divides by 0)
    elif k >= 3:
        res = stats.friedmanchisquare(*y)
        q, p = float(res.statistic), float(res.pvalue)
    else:
        r = ranks.sum(axis=1)
        ties = sum(float(np.sum(c**3 - c)) for c in (np.unique(col, return_counts=True)[1] for col in y.T))
        corr = 1 - ties / (n * k * (k * k - 1))
        q = _ratio(12 / (n * k * (k + 1)) * float(np.sum(r**2)) - 3 * n * (k + 1), corr)
        p = float(stats.chi2.sf(q, k - 1)) if math.isfinite(q) else math.nan
    den = n * (k - 1) - q
    if not math.isfinite(q):
        f_id = p_id = math.nan
    elif den <= 1e-12 * n * (k - 1):
        f_id, p_id = math.inf, 0.0  # every seed ranks the activations the same way
    else:
        f_id = (n - 1) * q / den
        p_id = float(stats.f.sf(f_id, k - 1, (k - 1) * (n - 1)))
    return FriedmanResult(q=q, p=p, f_id=f_id, p_id=p_id, kendall_w=_ratio(q, n * (k - 1)),
                          mean_ranks=ranks.mean(axis=1).tolist())


@dataclass
class PairwiseRow:
    a: str
    b: str
    diff: float  # mean_a − mean_b
    q: float  # studentized range statistic with the RCBD error, |diff| / sqrt(MS_E / n)
    p_range: float  # family-wise (Tukey-type) p from the studentized range distribution
    t: float  # seed-paired t statistic
    p_t: float  # unadjusted two-sided paired-t p
    p_holm: float  # Holm-adjusted over all pairs


def holm(p: Sequence[float]) -> list[float]:
    """Holm step-down adjusted p-values (NaN stays NaN and is not counted)."""
    p = np.asarray(p, dtype=np.float64)
    out = np.full(len(p), np.nan)
    ok = np.flatnonzero(~np.isnan(p))
    order = ok[np.argsort(p[ok], kind="stable")]
    m, running = len(order), 0.0
    for rank, idx in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p[idx]))
        out[idx] = running
    return out.tolist()


def pairwise(y: np.ndarray, labels: Sequence[str], ms_e: float, df_e: int) -> list[PairwiseRow]:
    """Block-respecting comparisons of every pair of treatments.

    Primary: q_ij = |ȳ_i − ȳ_j| / sqrt(MS_E/n) against the studentized range with (k, df_E) (family-wise).
    Secondary: seed-paired t-tests, Holm-adjusted.
    """
    y = np.asarray(y, dtype=np.float64)
    k, n = y.shape
    means = y.mean(axis=1)
    rows: list[PairwiseRow] = []
    se = math.sqrt(ms_e / n) if ms_e > 0 else 0.0
    for i in range(k):
        for j in range(i + 1, k):
            diff = float(means[i] - means[j])
            q = _ratio(abs(diff), se)
            p_range = float(stats.studentized_range.sf(q, k, df_e)) if math.isfinite(q) else (
                0.0 if q == math.inf else math.nan)
            d = y[i] - y[j]
            sd = float(d.std(ddof=1)) if n > 1 else math.nan
            t = _ratio(float(d.mean()) * math.sqrt(n), sd) if n > 1 else math.nan
            p_t = float(2 * stats.t.sf(abs(t), n - 1)) if math.isfinite(t) else (
                0.0 if abs(t) == math.inf else math.nan)
            rows.append(PairwiseRow(labels[i], labels[j], diff, q, p_range, t, p_t, math.nan))
    for row, ph in zip(rows, holm([r.p_t for r in rows])):
        row.p_holm = ph
    return rows


def rcbd_power(k: int, n: int, f_effect: float, alpha: float = ALPHA) -> float:
    """Power of the RCBD F test for Cohen's f = σ_τ/σ_e: λ = n·Στ²/σ²_e = n·k·f²."""
    df_e = (k - 1) * (n - 1)
    if df_e < 1:
        return math.nan
    crit = stats.f.isf(alpha, k - 1, df_e)
    return float(stats.ncf.sf(crit, k - 1, df_e, n * k * f_effect**2))


def min_detectable_gap(k: int, n: int, power: float = 0.8, alpha: float = ALPHA) -> float:
    """Smallest best-to-worst gap, in units of σ_e, detectable with the given power: Δ_min = f_min·√(2k).

    The least favourable configuration for a given range Δ puts two means at ±Δ/2 and the rest in the middle,
    so Στ² = Δ²/2 and f = Δ / (σ_e √(2k)).
    """
    if k < 2 or (k - 1) * (n - 1) < 1:
        return math.nan
    f_min = optimize.brentq(lambda f: rcbd_power(k, n, f, alpha) - power, 1e-6, 100.0, xtol=1e-10)
    return float(f_min * math.sqrt(2 * k))


def _fmt(x: float, digits: int = 4) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "n/a"
    if isinstance(x, float) and math.isinf(x):
        return "∞"
    return f"{x:.{digits}g}"


def _fmt_p(p: float) -> str:
    if p is None or math.isnan(p):
        return "n/a"
    return "< 0.0001" if p < 1e-4 else f"= {p:.4f}"


@dataclass
class OutcomeStats:
    """Everything the report says about one per-run outcome."""

    outcome: str
    label: str
    lower_is_better: bool
    activations: list[str]
    seeds: list[str]  # the complete blocks used
    excluded_seeds: list[str]
    y: list[list[float]]
    rcbd: RcbdResult | None = None
    friedman: FriedmanResult | None = None
    pairwise: list[PairwiseRow] = field(default_factory=list)
    mde_sigma: float = math.nan  # minimum detectable best-to-worst gap, in σ_e units
    mde: float = math.nan  # the same in outcome units (σ_e = sqrt(MS_E))
    sentences: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def analyse_outcome(
    outcome: str,
    label: str,
    values: Mapping[tuple[str, str], float],
    activations: Sequence[str],
    seeds: Sequence[str],
    *,
    lower_is_better: bool,
) -> OutcomeStats:
    """RCBD, Friedman, pairwise comparisons, effect sizes, variance components and power for one outcome.

    Only complete blocks enter (seeds with a finite value for every activation); dropped seeds are listed.
    """
    complete = [s for s in seeds if all(math.isfinite(values.get((a, s), math.nan)) for a in activations)]
    res = OutcomeStats(outcome=outcome, label=label, lower_is_better=lower_is_better,
                       activations=list(activations), seeds=complete,
                       excluded_seeds=[s for s in seeds if s not in complete],
                       y=[[values[(a, s)] for s in complete] for a in activations])
    k, n = len(activations), len(complete)
    lab = label[0].upper() + label[1:]
    if k < 2 or n < 2:
        res.sentences.append(
            f"{lab}: no blocked test is possible with {k} activation(s) and {n} complete seed block(s); "
            "it needs at least 2 of each."
        )
        return res
    y = np.asarray(res.y)
    r = res.rcbd = rcbd_anova(y)
    fr = res.friedman = friedman(y)
    res.pairwise = pairwise(y, activations, r.ms_e, r.df_e)
    res.mde_sigma = min_detectable_gap(k, n)
    res.mde = res.mde_sigma * math.sqrt(r.ms_e) if r.ms_e >= 0 else math.nan

    order = np.argsort(r.treatment_means)
    best, worst = (order[0], order[-1]) if lower_is_better else (order[-1], order[0])
    verdict = "differs between activations" if r.p_a < ALPHA else "shows no detectable difference between activations"
    res.sentences.append(
        f"{lab} {verdict}: RCBD F({r.df_a}, {r.df_e}) = {_fmt(r.f_a)}, p {_fmt_p(r.p_a)}, "
        f"partial η² = {_fmt(r.partial_eta2, 3)}, partial ω² = {_fmt(r.partial_omega2, 3)}; "
        f"best {activations[best]} ({_fmt(r.treatment_means[best])}), "
        f"worst {activations[worst]} ({_fmt(r.treatment_means[worst])}), over {n} seeds."
    )
    agree = (fr.p_id < ALPHA) == (r.p_a < ALPHA) if math.isfinite(fr.p_id) and math.isfinite(r.p_a) else None
    res.sentences.append(
        f"Friedman's rank test {'agrees' if agree else 'does not agree' if agree is False else 'is inconclusive'}: "
        f"Q = {_fmt(fr.q)}, p {_fmt_p(fr.p)}; Iman–Davenport F({k - 1}, {r.df_e}) = {_fmt(fr.f_id)}, "
        f"p {_fmt_p(fr.p_id)}; Kendall's W = {_fmt(fr.kendall_w, 3)} "
        "(1 means every seed ranks the activations the same way)."
    )
    sig = [p for p in res.pairwise if p.p_range < ALPHA]
    if sig:
        parts = []
        for p in sig:
            lo, hi = (p.a, p.b) if p.diff < 0 else (p.b, p.a)
            parts.append(f"{lo} < {hi} (Δ = {_fmt(abs(p.diff))}, p {_fmt_p(p.p_range)})")
        res.sentences.append(
            "Pairs that differ at p < 0.05 (studentized range with the RCBD error, family-wise): "
            + "; ".join(parts) + "."
        )
    else:
        res.sentences.append(
            "No pair of activations differs at p < 0.05 (studentized range with the RCBD error, family-wise)."
        )
    res.sentences.append(
        f"Variance components: activation {_fmt(r.var_activation)}, seed {_fmt(r.var_seed)}, "
        f"residual {_fmt(r.var_residual)} (σ_e = {_fmt(math.sqrt(r.ms_e))})."
    )
    res.sentences.append(
        f"With {k} activations and {n} seeds the smallest best-to-worst difference detectable at 80% power "
        f"(α = 0.05) is {_fmt(res.mde_sigma, 3)} σ_e ≈ {_fmt(res.mde, 3)}"
        + (f"; the observed gap is {_fmt(abs(r.treatment_means[worst] - r.treatment_means[best]), 3)}."
           if math.isfinite(res.mde) else ".")
    )
    if res.excluded_seeds:
        res.sentences.append(
            f"Seeds {', '.join(res.excluded_seeds)} were left out: not every activation has a value there."
        )
    return res
