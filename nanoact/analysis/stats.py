"""Statistics for "every activation runs with the same seeds": a randomized complete block design (RCBD).

Activation is the treatment (k levels, rows of ``y``), seed is the block (n levels, columns); see
Montgomery, *Design and Analysis of Experiments*, ch. 4, and docs/REPORT.md. Nothing here uses ``f_oneway``,
``kruskal`` or ``tukey_hsd``: they assume independent groups and move the seed variance into the error term.

Pairwise comparisons: the primary procedure is the seed-paired t test with Holm's adjustment, which uses each
pair's own variance and so stays valid when variances differ between activations. The studentized range with the
pooled RCBD error assumes every paired difference has the same variance (sphericity); it is computed as a
secondary check and reported only when the variances of the paired differences pass a homogeneity check.

Everything here returns numbers; ``outcome.analyse_outcome`` gathers them for one outcome and the report's
rendering modules turn them into sentences.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

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
    """RCBD ANOVA of a (k activations, n seeds) table (two-way ANOVA without interaction)."""
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
    f_id: float  # Iman–Davenport F on (k−1, (k−1)(n−1)) df; NaN when undefined (Q at its maximum)
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
        # every seed ranks the activations the same way: Q is at its maximum n(k-1) and F_F divides by zero.
        # The F approximation says nothing here (with 2 seeds this happens by chance with probability 1/k!-ish),
        # so it is left undefined rather than printed as infinity; Friedman's chi-square p still stands.
        f_id = p_id = math.nan
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

    Primary: seed-paired t tests on n − 1 df, Holm-adjusted (valid under unequal variances).
    Secondary: q_ij = |ȳ_i − ȳ_j| / sqrt(MS_E/n) against the studentized range with (k, df_E), which pools the
    error and is meaningful only when ``homogeneity`` passes.
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


VARIANCE_RATIO_LIMIT = 4.0  # rule of thumb for pooling: largest variance at most 4x the smallest


@dataclass
class Homogeneity:
    """Variances of the seed-paired differences y_i − y_j: pooling one error (the studentized range) needs them
    equal."""

    min_var: float
    max_var: float
    ratio: float  # max / min
    passed: bool


def homogeneity(y: np.ndarray) -> Homogeneity:
    """Checks that every paired difference has about the same variance (ratio <= VARIANCE_RATIO_LIMIT)."""
    y = np.asarray(y, dtype=np.float64)
    k, n = y.shape
    v = [float(np.var(y[i] - y[j], ddof=1)) for i in range(k) for j in range(i + 1, k)] if n > 1 else []
    if not v:
        return Homogeneity(math.nan, math.nan, math.nan, False)
    lo, hi = min(v), max(v)
    ratio = _ratio(hi, lo)
    return Homogeneity(lo, hi, ratio, bool(math.isfinite(ratio) and ratio <= VARIANCE_RATIO_LIMIT))


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


@dataclass
class CrossedResult:
    """Activation (fixed) × init seed × data seed (random, crossed), one run per cell.

    The activation effect is tested against the activation × init and activation × data interactions, not the
    residual alone: E[MS_A] = σ² + n_d σ²_AI + n_i σ²_AD + n_i n_d θ_A. Cochran's quasi-F
    F'' = (MS_A + MS_AID) / (MS_AI + MS_AD) has the same expectation under H0 in numerator and denominator and
    is always positive; its df are Satterthwaite's (Satterthwaite, Biometrics Bull. 1946).
    """

    k: int
    n_init: int
    n_data: int
    ms_a: float
    ms_ai: float
    ms_ad: float
    ms_aid: float
    df_a: int
    df_ai: int
    df_ad: int
    df_aid: int
    f: float
    df_num: float
    df_den: float
    p: float


def _satterthwaite(ms: Sequence[float], df: Sequence[float]) -> float:
    den = sum(m * m / d for m, d in zip(ms, df) if d > 0)
    return sum(ms) ** 2 / den if den > 0 else math.nan


def _two_way_ms(x: np.ndarray) -> tuple[float, float, float]:
    """Mean squares of rows, columns and residual of a two-way table without replication."""
    r, c = x.shape
    gm, rm, cm = x.mean(), x.mean(axis=1), x.mean(axis=0)
    ms_r = c * float(np.sum((rm - gm) ** 2)) / (r - 1)
    ms_c = r * float(np.sum((cm - gm) ** 2)) / (c - 1)
    ms_e = float(np.sum((x - rm[:, None] - cm[None, :] + gm) ** 2)) / ((r - 1) * (c - 1))
    return ms_r, ms_c, ms_e


def crossed_anova(y: np.ndarray) -> CrossedResult:
    """Quasi-F test of activation in a (k, n_init, n_data) table (see ``CrossedResult``)."""
    y = np.asarray(y, dtype=np.float64)
    k, ni, nd = y.shape
    e = y - y.mean(axis=0, keepdims=True)  # activation deviations, with the init, data and init x data terms out
    am = y.mean(axis=(1, 2))
    ms_a = ni * nd * float(np.sum((am - am.mean()) ** 2)) / (k - 1)
    ai = e.mean(axis=2) - (am - am.mean())[:, None]  # (k, ni) activation x init
    ad = e.mean(axis=1) - (am - am.mean())[:, None]
    aid = e - ai[:, :, None] - ad[:, None, :] - (am - am.mean())[:, None, None]
    df_a, df_ai, df_ad = k - 1, (k - 1) * (ni - 1), (k - 1) * (nd - 1)
    df_aid = (k - 1) * (ni - 1) * (nd - 1)
    ms_ai, ms_ad = nd * float(np.sum(ai**2)) / df_ai, ni * float(np.sum(ad**2)) / df_ad
    ms_aid = float(np.sum(aid**2)) / df_aid
    num, den = ms_a + ms_aid, ms_ai + ms_ad
    f = _ratio(num, den)
    df1, df2 = _satterthwaite([ms_a, ms_aid], [df_a, df_aid]), _satterthwaite([ms_ai, ms_ad], [df_ai, df_ad])
    p = float(stats.f.sf(f, df1, df2)) if math.isfinite(f) and math.isfinite(df1 * df2) else math.nan
    return CrossedResult(k, ni, nd, ms_a, ms_ai, ms_ad, ms_aid, df_a, df_ai, df_ad, df_aid, f, df1, df2, p)


@dataclass
class CrossedPair:
    """Mean difference a − b over the (init, data) cells, with SE √((MS_init + MS_data)/(n_i n_d)).

    That SE is the two-way jackknife of the mean (init-seed and data-seed variances added); it includes the
    activation × init and activation × data interactions, and is conservative by MS_resid/(n_i n_d).
    df: Satterthwaite.
    """

    a: str
    b: str
    diff: float
    se: float
    df: float
    t: float
    p: float


def crossed_pairwise(y: np.ndarray, labels: Sequence[str]) -> list[CrossedPair]:
    y = np.asarray(y, dtype=np.float64)
    k, ni, nd = y.shape
    out = []
    for i in range(k):
        for j in range(i + 1, k):
            dd = y[i] - y[j]
            ms_r, ms_c, _ = _two_way_ms(dd)
            se = math.sqrt((ms_r + ms_c) / (ni * nd))
            df = _satterthwaite([ms_r, ms_c], [ni - 1, nd - 1])
            diff = float(dd.mean())
            t = _ratio(diff, se)
            p = float(2 * stats.t.sf(abs(t), df)) if math.isfinite(t) and math.isfinite(df) else math.nan
            out.append(CrossedPair(labels[i], labels[j], diff, se, df, t, p))
    return out
