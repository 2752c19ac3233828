"""Tests about prediction differences (PD) that respect that pairs of runs share runs.

PD is a property of a *pair* of runs, and every run appears in many pairs, so pair values are not independent
observations: any test that resamples or permutes pairs (or treats the k(k-1)/2 activation pairs of a seed as k
independent values) understates the error. Everything here works on the full table of one PD metric between every
pair of runs of a complete activation x seed grid,

    D[a, s, b, t] = PD(run(a, s), run(b, t)),    shape (..., k, n, k, n),

and resamples or permutes at the level of *seeds* (the independent units). Leading axes are a batch of data sets
(the calibration tests simulate thousands at once). Functions return numbers only; the report words them.

Estimands (docs/REPORT.md, "PD tests", words each one):

* ``cross_vs_within``: Δ = C − W, C = mean PD over pairs with different activations and different seeds, W = mean
  PD over pairs with the same activation and different seeds. Δ is a two-sample distance between the
  activations' distributions of fitted functions: it is > 0 when they predict differently *or* when one is less
  reproducible than the other (check W_a − W_b before reading it as "what the activation predicts"). Exact null:
  activation labels exchangeable within each seed; randomisation test permuting labels within seeds, exact
  (every relabelling) when there are at most ``EXACT_LIMIT``, else Monte Carlo with p >= 1/(B + 1), one-sided.
  Its interval is a jackknife interval, separate from the test (they can disagree near the boundary).
* ``relative_excess``: Δ / W̄, the effect size: how much further apart runs of different activations are than
  runs of one activation, relative to the seed-to-seed PD.
* ``activation_only``: same-seed PD between a and b (only the activation differs: same initial weights and batch
  order) minus (W_a + W_b)/2. "Does changing only the activation move predictions more or less than reseeding?"
* ``relative_reproducibility``: (W_a − W_b) / ((W_a + W_b)/2).

The last three use the jackknife over the design's random units, t on (units − 1) df, and the interval that
inverts the same t test. Units are seeds, or init seeds and data seeds for crossed grids (two-way jackknife).
W and Δ are U-statistics of order 2 over seeds; the delete-one jackknife overestimates their variance on average
(Efron & Stein, Ann. Stat. 1981).

``tests/analysis/test_pdtests.py`` and ``tests/analysis/test_estimands.py`` check calibration, coverage and power
at 3, 5 and 10 seeds.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from itertools import product

import numpy as np
from scipy import stats

from nanoact.analysis.pdestimands import (
    activation_only,
    activation_only_overall,
    cross_means,
    cross_minus_within,
    excess,
    offdiag,
    relative_excess,
    relative_reproducibility,
    same_seed_means,
    same_seed_ratio,
    within_means,
)

ALPHA = 0.05
EXACT_LIMIT = 20000  # enumerate every relabelling when there are at most this many, else Monte Carlo
N_PERM = 4000  # Monte Carlo relabellings


def jackknife_var(theta: np.ndarray) -> np.ndarray:
    """Delete-one jackknife variance from the leave-one-unit-out estimates ``theta`` (units on axis 0).

    (g − 1)/g · Σ (θ_u − θ̄)² over the g units: the one jackknife formula of the analysis (seeds, init seeds
    and data seeds, pairs of seeds; ``grouped_jackknife``, ``sources.decompose``, ``divergence.pair_mean_jackknife``).
    """
    g = len(theta)
    return (g - 1) / g * np.sum((theta - theta.mean(axis=0)) ** 2, axis=0)


@dataclass(frozen=True)
class Estimate:
    """A mean PD with its jackknife SE over seeds and a t interval on ``df`` degrees of freedom.

    ``context_se`` is the SE from resampling evaluation contexts (the bootstrap over contexts, computed exactly:
    the statistic is a mean over contexts); ``with_context_se`` adds it to the interval, neither source dropped.
    """

    mean: float
    se: float
    df: int
    lo: float
    hi: float
    context_se: float = math.nan


def t_interval(mean: float, se: float, df: int, level: float = 0.95) -> Estimate:
    if df < 1 or not math.isfinite(se):
        return Estimate(mean, se, df, math.nan, math.nan)
    h = float(stats.t.ppf(0.5 + level / 2, df)) * se
    return Estimate(mean, se, df, mean - h, mean + h)


@dataclass(frozen=True)
class PairTest:
    """One test on a pair (a, b) of activations (or on all activations when a = b = -1)."""

    a: int
    b: int
    estimate: float
    se: float
    statistic: float
    df: float
    p: float
    p_floor: float  # the smallest p-value the test can give with this many seeds
    lo: float = math.nan
    hi: float = math.nan
    n_relabellings: int = 0  # relabelling tests: how many were used (every one when exact, else B + 1)
    exact: bool = True  # relabelling tests: every relabelling enumerated (False: Monte Carlo)


# ---------------------------------------------------------------------------------------------------------------
# cross-activation vs within-activation, like with like, by relabelling activations within seeds


def _within_sums(d: np.ndarray, inv: np.ndarray) -> np.ndarray:
    """Σ over ordered pairs s ≠ t and labels c of D[inv[s, c], s, inv[t, c], t], for each relabelling.

    d: (k, n, k, n); inv: (P, n, k), inv[p, s, c] = the activation that gets label c at seed s.
    """
    n = d.shape[-1]
    s = np.arange(n)
    vals = d[inv[:, :, None, :], s[None, :, None, None], inv[:, None, :, :], s[None, None, :, None]]
    return np.where(offdiag(n)[None, :, :, None], vals, 0.0).sum(axis=(1, 2, 3))


def _relabellings(k: int, n: int, rng: np.random.Generator, n_perm: int) -> tuple[np.ndarray, bool]:
    """Within-seed relabellings (P, n, k) with seed 0 fixed (a global relabelling changes nothing).

    Every one of the (k!)^(n-1) when that is at most EXACT_LIMIT (exact test), else the identity plus ``n_perm``
    random ones.
    """
    total = math.factorial(k) ** (n - 1)
    if total <= EXACT_LIMIT:
        from itertools import permutations

        perms = np.array(list(permutations(range(k))))
        combos = np.array(list(product(range(len(perms)), repeat=n - 1))).reshape(-1, n - 1)
        inv = np.empty((len(combos), n, k), dtype=np.int64)
        inv[:, 0] = np.arange(k)
        inv[:, 1:] = perms[combos]
        return inv, True
    inv = np.argsort(rng.random((n_perm, n, k)), axis=2)
    inv[:, 0] = np.arange(k)
    inv = np.concatenate([np.broadcast_to(np.arange(k), (1, n, k)), inv])
    return inv, False


def _perm_p(sums: np.ndarray) -> float:
    """One-sided p of the relabelling test from the within-label sums, the identity (observed) first.

    Δ decreases as the within-label sum grows, so a relabelling counts when its sum is at most the observed one;
    ties count against the claim. The identity is one of the relabellings: the p-value is exact, or
    (1 + #) / (B + 1) for Monte Carlo.
    """
    obs = sums[0]
    return float(np.sum(sums <= obs + 1e-12 * max(1.0, abs(obs)))) / len(sums)


def cross_vs_within_test(d: np.ndarray, rng: np.random.Generator, n_perm: int | None = None, a: int = -1,
                         b: int = -1) -> PairTest:
    """Randomisation test of Δ = C − W > 0 for all activations of ``d`` (k, n, k, n), labelled (a, b).

    SE, df and interval are NaN here: the callers add the jackknife interval (``_with_interval``).
    """
    k, n = d.shape[0], d.shape[-1]
    delta = float(cross_minus_within(d))
    inv, exact = _relabellings(k, n, rng, n_perm or N_PERM)
    sums = np.concatenate([_within_sums(d, inv[i:i + 512]) for i in range(0, len(inv), 512)])
    floor = 1.0 / len(sums)  # exact: 1 / (k!)^(n-1); Monte Carlo: 1 / (B + 1)
    return PairTest(a, b, delta, math.nan, delta, math.nan, _perm_p(sums), floor, n_relabellings=len(sums),
                    exact=exact)


def pairwise_cross_vs_within(d: np.ndarray, rng: np.random.Generator, n_perm: int | None = None) -> list[PairTest]:
    """``cross_vs_within_test`` for each pair of activations alone (two labels: 2^(n−1) relabellings)."""
    k = d.shape[0]
    out = []
    for a in range(k):
        for b in range(a + 1, k):
            sub = d[np.ix_([a, b], range(d.shape[1]), [a, b], range(d.shape[3]))]
            out.append(cross_vs_within_test(sub, rng, n_perm, a, b))
    return out


def cross_vs_within_p_batch(d: np.ndarray, rng: np.random.Generator, n_perm: int = 200) -> np.ndarray:
    """p-values of the relabelling test for a batch (m, k, n, k, n), the same relabellings for every data set."""
    k, n = d.shape[-4], d.shape[-1]
    inv, _ = _relabellings(k, n, rng, n_perm)
    return np.array([_perm_p(_within_sums(d[i], inv)) for i in range(d.shape[0])])


def seeds_for_floor(k: int, m: int, alpha: float = ALPHA) -> int:
    """Fewest seeds at which the relabelling test of k activations can reach p <= alpha / m (Holm's first step)."""
    n = 2
    while 1.0 / math.factorial(k) ** (n - 1) > alpha / m:
        n += 1
    return n


# ---------------------------------------------------------------------------------------------------------------
# estimands with jackknife intervals over the design's random units (seeds, or init and data seeds when crossed)


def sub_table(d: np.ndarray, keep: np.ndarray) -> np.ndarray:
    """(..., k, n', k, n'): the table restricted to the seeds ``keep``."""
    return np.take(np.take(d, keep, axis=-3), keep, axis=-1)


def grouped_jackknife(stat, d: np.ndarray, groupings: list[np.ndarray]) -> tuple[np.ndarray, int]:
    """SE of ``stat(d)`` by deleting whole random units, and its df.

    ``groupings``: per kind of random unit, the unit of each seed (column) of ``d``. One grouping (the seed itself)
    is the delete-one-seed jackknife; two crossed groupings (init seed, data seed of each block) give the two-way
    jackknife (the variances add; Owen, "The pigeonhole bootstrap", Ann. Appl. Stat. 2007). df = fewest units − 1.
    NaN with fewer than 3 units of some kind.
    """
    var, units = 0.0, []
    for lab in groupings:
        uniq = np.unique(lab)
        units.append(len(uniq))
        if len(uniq) < 3:
            return np.full(np.shape(stat(d)), np.nan), 0
        theta = np.stack([stat(sub_table(d, np.flatnonzero(lab != u))) for u in uniq])
        var = var + jackknife_var(theta)
    return np.sqrt(var), min(units) - 1


def t_test(est, se, df):
    """Two-sided t test of 0 and the 95% interval that inverts it: (t, p, lo, hi), arrays or floats."""
    with np.errstate(divide="ignore", invalid="ignore"):
        t = np.asarray(est) / np.asarray(se)
    p = 2 * stats.t.sf(np.abs(t), df) if df >= 1 else np.full(np.shape(t), np.nan)
    h = stats.t.ppf(0.975, df) * np.asarray(se) if df >= 1 else np.nan
    return t, p, np.asarray(est) - h, np.asarray(est) + h


def seed_groupings(n: int) -> list[np.ndarray]:
    """The delete-one-seed jackknife: every seed its own unit."""
    return [np.arange(n)]


def _at(x, a: int, b: int) -> float:
    return float(np.asarray(x)[a, b])


def pair_t_tests(stat, d: np.ndarray, groupings: list[np.ndarray]) -> list[PairTest]:
    """For a (k, k) statistic: per pair a < b, the jackknife t test of 0 and its inverted 95% interval."""
    k = d.shape[0]
    est = stat(d)
    se, df = grouped_jackknife(stat, d, groupings)
    t, p, lo, hi = t_test(est, se, df)
    return [PairTest(a, b, _at(est, a, b), _at(se, a, b), _at(t, a, b), df, _at(p, a, b), 0.0, _at(lo, a, b),
                     _at(hi, a, b)) for a in range(k) for b in range(a + 1, k)]


def scalar_t_test(stat, d: np.ndarray, groupings: list[np.ndarray]) -> PairTest:
    """The jackknife t test of 0 of a scalar statistic, with its inverted 95% interval (a = b = −1)."""
    est = float(stat(d))
    se, df = grouped_jackknife(stat, d, groupings)
    t, p, lo, hi = t_test(est, se, df)
    return PairTest(-1, -1, est, float(se), float(t), df, float(p), 0.0, float(lo), float(hi))


def reproducibility_tests(d: np.ndarray, groupings: list[np.ndarray] | None = None) -> list[PairTest]:
    """(W_a − W_b) / ((W_a + W_b)/2) for every pair: jackknife t on (units − 1) df (needs 3 units)."""
    return pair_t_tests(relative_reproducibility, d, groupings or seed_groupings(d.shape[-1]))


def batch_t(stat, d: np.ndarray, groupings: list[np.ndarray] | None = None) -> tuple[np.ndarray, np.ndarray, int]:
    """Estimate, jackknife SE and df of ``stat`` for a batch (m, k, n, k, n) of data sets (simulations)."""
    groupings = groupings or seed_groupings(d.shape[-1])
    se, df = grouped_jackknife(stat, d, groupings)
    return stat(d), se, df


def reproducibility_p_batch(d: np.ndarray, a: int, b: int) -> np.ndarray:
    """Two-sided p of the relative W_a − W_b jackknife t test for a batch (m, k, n, k, n) of data sets."""
    est, se, df = batch_t(relative_reproducibility, d)
    return t_test(est[..., a, b], se[..., a, b], df)[1]


def within_estimates(d: np.ndarray, groupings: list[np.ndarray] | None = None) -> list[Estimate]:
    """Per activation: W_a, its jackknife SE over the design's units and a 95% t interval."""
    w = within_means(d)
    se, df = grouped_jackknife(within_means, d, groupings or seed_groupings(d.shape[-1]))
    return [t_interval(float(m), float(s), df) if df >= 1 else Estimate(float(m), math.nan, 0, math.nan, math.nan)
            for m, s in zip(w, se)]


@dataclass(frozen=True)
class PDResult:
    """Every PD number the report states, for one metric at one step, on the complete seeds of the grid.

    Intervals are jackknife t intervals over the design's random units: seeds, or, when init and data-order seeds
    are crossed (``design == "crossed"``), the two-way jackknife over init seeds and data seeds (df = fewest − 1).
    """

    metric: str
    step: int
    activations: list[str]
    seeds: list[str]
    design: str  # "seeds" | "crossed"
    df: int  # df of every jackknife interval
    within: list[Estimate]
    cross: np.ndarray  # (k, k) different activations, different seeds
    cross_se: np.ndarray
    excess: np.ndarray  # (k, k) cross − mean within, like with like
    excess_se: np.ndarray
    same_seed: np.ndarray  # (k, k) mean same-seed PD (only the activation differs)
    same_seed_ratio: np.ndarray  # (k, k)
    omnibus: PairTest | None  # Δ = C − W, relabelling test; interval: jackknife (separate from the test)
    relative: PairTest | None  # Δ / W̄ with its jackknife interval (effect size)
    activation_only: PairTest | None  # mean same-seed PD − mean seed-to-seed PD, jackknife t (inverted interval)
    activation_only_pairs: list[PairTest]
    pair_cross: list[PairTest]
    reproducibility: list[PairTest]  # relative W_a − W_b, jackknife t (inverted interval)


def with_context_se(est: Estimate, per_context: np.ndarray | None) -> Estimate:
    """Adds the bootstrap-over-contexts SE of a mean over contexts and combines it with the seed SE.

    Half-width √((t·seed SE)² + (1.96·context SE)²): the two sources add, and neither is dropped.
    """
    if per_context is None or len(per_context) < 2:
        return est
    context_se = float(np.std(per_context, ddof=1) / math.sqrt(len(per_context)))
    t_half = est.hi - est.mean if math.isfinite(est.hi) else 0.0
    half = math.hypot(t_half, 1.959963984540054 * context_se)
    return replace(est, lo=est.mean - half, hi=est.mean + half, context_se=context_se)


def _groupings(seeds: list[str], seed_units: dict[str, tuple[str, str]] | None) -> tuple[str, list[np.ndarray]]:
    if not seed_units:
        return "seeds", seed_groupings(len(seeds))
    return "crossed", [np.array([seed_units[s][0] for s in seeds]), np.array([seed_units[s][1] for s in seeds])]


def _with_interval(t: PairTest, se: float, df: int) -> PairTest:
    """A relabelling test with the jackknife SE and t interval of its estimate (separate from the test)."""
    est = t_interval(t.estimate, se, df)
    return replace(t, se=se, df=df, lo=est.lo, hi=est.hi)


def _omnibus(d: np.ndarray, rng: np.random.Generator, groupings) -> tuple[PairTest, PairTest]:
    se, df = grouped_jackknife(cross_minus_within, d, groupings)
    o = _with_interval(cross_vs_within_test(d, rng), float(se), df)
    rel = scalar_t_test(relative_excess, d, groupings)
    return o, rel


def _pairs_cross(d: np.ndarray, rng: np.random.Generator, groupings, excess_se: np.ndarray, df: int) -> list[PairTest]:
    pairs = pairwise_cross_vs_within(d, rng) if d.shape[0] >= 3 else []  # with 2 activations: the omnibus
    return [_with_interval(t, float(excess_se[t.a, t.b]), df) for t in pairs]


def analyse_pd(matrix: np.ndarray, run_acts: list[str], run_seeds: list[str], metric: str, step: int,
               rng: np.random.Generator, context_tv: dict[str, np.ndarray] | None = None,
               seed_units: dict[str, tuple[str, str]] | None = None) -> PDResult | None:
    """All PD estimates and tests for runs labelled (run_acts[r], run_seeds[r]); incomplete seeds are left out.

    ``context_tv``: per activation, the within-activation pd_tv per evaluation context (for the context SE).
    ``seed_units``: for crossed grids, seed (block) -> (init seed, data seed): intervals use the two-way jackknife.
    """
    acts = sorted(set(run_acts))
    have = set(zip(run_acts, run_seeds))
    seeds = [s for s in dict.fromkeys(run_seeds) if all((a, s) in have for a in acts)]
    if len(acts) < 1 or len(seeds) < 2:
        return None
    pos = {(a, s): r for r, (a, s) in enumerate(zip(run_acts, run_seeds))}
    rows = [pos[(a, s)] for a in acts for s in seeds]
    k, n = len(acts), len(seeds)
    d = np.asarray(matrix, dtype=np.float64)[np.ix_(rows, rows)].reshape(k, n, k, n)
    design, groups = _groupings(seeds, seed_units)
    cross_se, df = grouped_jackknife(cross_means, d, groups)
    excess_se, _ = grouped_jackknife(excess, d, groups)
    omnibus, rel = _omnibus(d, rng, groups) if k >= 2 else (None, None)
    only = scalar_t_test(activation_only_overall, d, groups) if k >= 2 else None
    within = [with_context_se(e, (context_tv or {}).get(a)) for a, e in zip(acts, within_estimates(d, groups))]
    return PDResult(metric, step, acts, seeds, design, df, within, cross_means(d), cross_se, excess(d), excess_se,
                    same_seed_means(d), same_seed_ratio(d), omnibus, rel, only,
                    pair_t_tests(activation_only, d, groups) if k >= 3 else [],
                    _pairs_cross(d, rng, groups, excess_se, df),
                    reproducibility_tests(d, groups) if k >= 2 else [])
