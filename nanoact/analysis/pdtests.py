"""Tests about prediction differences (PD) that respect that pairs of runs share runs.

PD is a property of a *pair* of runs, and every run appears in many pairs, so pair values are not independent
observations: any test that resamples or permutes pairs (or treats the k(k-1)/2 activation pairs of a seed as k
independent values) understates the error. Everything here works on the full table of one PD metric between every
pair of runs of a complete activation x seed grid,

    D[a, s, b, t] = PD(run(a, s), run(b, t)),    shape (..., k, n, k, n),

and resamples or permutes at the level of *seeds* (the independent units). Leading axes are a batch of data sets
(the calibration tests simulate thousands at once). Functions return numbers only; the report words them.

Comparisons, always like with like (pairs of runs with *different* seeds on both sides, because two runs with the
same seed share their initial weights and their batch order):

* ``cross_vs_within``: does changing the activation move predictions more than reseeding? Statistic
  Δ = C − W, C = mean PD over pairs with different activations and different seeds, W = mean PD over pairs with
  the same activation and different seeds. Exact null: activation labels are exchangeable within each seed
  (no activation effect on predictions). Randomisation test that permutes the labels within each seed
  (Monte Carlo over permutations, or every relabelling for two activations), one-sided (Δ > 0).
* ``reproducibility``: is one activation's seed-to-seed PD W_a larger than another's? W_a − W_b is a U-statistic
  of order 2 over seeds; its standard error is the delete-one-seed jackknife (conservative for U-statistics:
  Efron & Stein, Ann. Stat. 1981), referred to t with n − 1 df.

``tests/analysis/test_pdtests.py`` simulates null data at 3, 5 and 10 seeds and checks the type-I error of each
test, and its power on planted differences.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from itertools import product

import numpy as np
from scipy import stats

ALPHA = 0.05
EXACT_LIMIT = 4096  # enumerate every relabelling when there are at most this many, else Monte Carlo
N_PERM = 4000  # Monte Carlo relabellings


def pd_table(matrix: np.ndarray, act_index: np.ndarray, seed_index: np.ndarray, k: int, n: int) -> np.ndarray:
    """(R, R) PD between runs -> (k, n, k, n) table; run r is (act_index[r], seed_index[r]) of a complete grid."""
    assert len(act_index) == k * n, "the grid must be complete (one run per activation x seed)"
    out = np.full((k, n, k, n), np.nan)
    a, s = np.asarray(act_index), np.asarray(seed_index)
    out[a[:, None], s[:, None], a[None, :], s[None, :]] = np.asarray(matrix, dtype=np.float64)
    return out


def _offdiag(n: int) -> np.ndarray:
    return ~np.eye(n, dtype=bool)


def within_blocks(d: np.ndarray) -> np.ndarray:
    """(..., k, n, n): PD between seeds of each activation (the diagonal of the activation axes)."""
    return np.einsum("...aiaj->...aij", d)


def within_means(d: np.ndarray) -> np.ndarray:
    """(..., k) mean PD over pairs of different seeds of the same activation (W_a)."""
    n = d.shape[-1]
    w = within_blocks(d)
    return np.where(_offdiag(n), w, 0.0).sum(axis=(-1, -2)) / (n * (n - 1))


def _loo_within(d: np.ndarray) -> np.ndarray:
    """(..., n, k): W_a with seed u deleted (needs n >= 3)."""
    n = d.shape[-1]
    w = np.where(_offdiag(n), within_blocks(d), 0.0)  # (..., k, n, n)
    total = w.sum(axis=(-1, -2))  # (..., k)
    row = w.sum(axis=-1)  # (..., k, n): ordered pairs that start at seed u
    loo = (total[..., :, None] - 2 * row) / ((n - 1) * (n - 2))
    return np.swapaxes(loo, -1, -2)


def jackknife_se(theta_loo: np.ndarray) -> np.ndarray:
    """Delete-one jackknife SE over the seed axis (axis -2 of (..., n, m))."""
    n = theta_loo.shape[-2]
    dev = theta_loo - theta_loo.mean(axis=-2, keepdims=True)
    return np.sqrt((n - 1) / n * np.sum(dev**2, axis=-2))


@dataclass
class Estimate:
    """A mean PD with its jackknife SE over seeds and a t interval on ``df`` degrees of freedom.

    ``context_se`` is the SE from resampling evaluation contexts (the bootstrap over contexts, computed exactly:
    the statistic is a mean over contexts). When it is the larger, the interval is widened to ±1.96·context_se.
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


def within_estimates(d: np.ndarray) -> list[Estimate]:
    """Per activation: W_a, its delete-one-seed jackknife SE and a 95% t interval on n − 1 df."""
    n = d.shape[-1]
    w = within_means(d)
    if n < 3:
        return [Estimate(float(x), math.nan, 0, math.nan, math.nan) for x in w]
    se = jackknife_se(_loo_within(d))
    return [t_interval(float(m), float(s), n - 1) for m, s in zip(w, se)]


@dataclass
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


def reproducibility_tests(d: np.ndarray) -> list[PairTest]:
    """W_a − W_b for every pair of activations: jackknife-over-seeds t test on n − 1 df (needs n >= 3)."""
    k, n = d.shape[-4], d.shape[-1]
    w = within_means(d)
    loo = _loo_within(d) if n >= 3 else None
    out = []
    for a in range(k):
        for b in range(a + 1, k):
            diff = float(w[a] - w[b])
            if loo is None:
                out.append(PairTest(a, b, diff, math.nan, math.nan, 0, math.nan, 1.0))
                continue
            se = float(jackknife_se(loo[:, [a]] - loo[:, [b]])[0])
            t = diff / se if se > 0 else math.nan
            p = float(2 * stats.t.sf(abs(t), n - 1)) if math.isfinite(t) else math.nan
            est = t_interval(diff, se, n - 1)
            out.append(PairTest(a, b, diff, se, t, n - 1, p, 0.0, est.lo, est.hi))
    return out


def reproducibility_p_batch(d: np.ndarray, a: int, b: int) -> np.ndarray:
    """Two-sided p of the W_a − W_b jackknife t test for a batch (m, k, n, k, n) of data sets (simulations)."""
    n = d.shape[-1]
    w = within_means(d)
    loo = _loo_within(d)
    se = jackknife_se(loo[..., [a]] - loo[..., [b]])[..., 0]
    t = (w[..., a] - w[..., b]) / se
    return 2 * stats.t.sf(np.abs(t), n - 1)


# ---------------------------------------------------------------------------------------------------------------
# cross-activation vs within-activation, like with like, by relabelling activations within seeds


def _within_sums(d: np.ndarray, inv: np.ndarray) -> np.ndarray:
    """Σ over ordered pairs s ≠ t and labels c of D[inv[s, c], s, inv[t, c], t], for each relabelling.

    d: (k, n, k, n); inv: (P, n, k), inv[p, s, c] = the activation that gets label c at seed s.
    """
    n = d.shape[-1]
    s = np.arange(n)
    vals = d[inv[:, :, None, :], s[None, :, None, None], inv[:, None, :, :], s[None, None, :, None]]
    return np.where(_offdiag(n)[None, :, :, None], vals, 0.0).sum(axis=(1, 2, 3))


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


def cross_minus_within(d: np.ndarray) -> np.ndarray:
    """(...) Δ = C − W over pairs of runs with different seeds (C: different activations, W: the same)."""
    k, n = d.shape[-4], d.shape[-1]
    mask = _offdiag(n)[None, :, None, :]  # (1, n, 1, n) over (a, s, b, t)
    total = np.where(mask, d, 0.0).sum(axis=(-1, -2, -3, -4))
    wsum = within_means(d).sum(axis=-1) * n * (n - 1)
    c = (total - wsum) / (n * (n - 1) * k * (k - 1))
    return c - wsum / (n * (n - 1) * k)


def cross_vs_within_test(d: np.ndarray, rng: np.random.Generator, n_perm: int | None = None) -> PairTest:
    """Randomisation test of Δ = C − W > 0 for all activations of ``d`` (k, n, k, n); a = b = −1."""
    k, n = d.shape[0], d.shape[-1]
    delta = float(cross_minus_within(d))
    inv, _ = _relabellings(k, n, rng, n_perm or N_PERM)
    sums = np.concatenate([_within_sums(d, inv[i:i + 512]) for i in range(0, len(inv), 512)])
    obs = sums[0]
    tol = 1e-12 * max(1.0, abs(obs))
    # Δ decreases as the within-label sum grows; ties count against the claim
    count = int(np.sum(sums <= obs + tol))
    p = count / len(sums)  # the identity is one of the relabellings: exact, or (1 + #) / (B + 1) for Monte Carlo
    floor = 1.0 / math.factorial(k) ** (n - 1)
    return PairTest(-1, -1, delta, math.nan, delta, math.nan, p, floor)


def pairwise_cross_vs_within(d: np.ndarray, rng: np.random.Generator, n_perm: int | None = None) -> list[PairTest]:
    """``cross_vs_within_test`` for each pair of activations alone (two labels: 2^(n−1) relabellings)."""
    k = d.shape[0]
    out = []
    for a in range(k):
        for b in range(a + 1, k):
            sub = d[np.ix_([a, b], range(d.shape[1]), [a, b], range(d.shape[3]))]
            t = cross_vs_within_test(sub, rng, n_perm)
            t.a, t.b = a, b
            out.append(t)
    return out


def cross_vs_within_p_batch(d: np.ndarray, rng: np.random.Generator, n_perm: int = 200) -> np.ndarray:
    """p-values of the relabelling test for a batch (m, k, n, k, n), the same relabellings for every data set."""
    k, n = d.shape[-4], d.shape[-1]
    inv, _ = _relabellings(k, n, rng, n_perm)
    p = np.empty(d.shape[0])
    for i in range(d.shape[0]):
        sums = _within_sums(d[i], inv)
        p[i] = np.mean(sums <= sums[0] + 1e-12 * max(1.0, abs(sums[0])))
    return p


def seeds_for_floor(k: int, m: int, alpha: float = ALPHA) -> int:
    """Fewest seeds at which the relabelling test of k activations can reach p <= alpha / m (Holm's first step)."""
    n = 2
    while 1.0 / math.factorial(k) ** (n - 1) > alpha / m:
        n += 1
    return n


def seeds_for_power(diff: float, se: float, n: int, m: int, alpha: float = ALPHA, power: float = 0.8) -> int | None:
    """Rough number of seeds for a jackknife t test to detect ``diff`` at ``power`` (Holm over m tests).

    Assumes the SE shrinks like 1/√n (a U-statistic); None when the difference or SE is not usable.
    """
    if not (math.isfinite(diff) and math.isfinite(se)) or se <= 0 or diff == 0:
        return None
    cand = np.arange(max(n, 3), 1001)
    need = stats.t.ppf(1 - alpha / (2 * m), cand - 1) + stats.t.ppf(power, cand - 1)
    ok = np.flatnonzero(abs(diff) / (se * np.sqrt(n / cand)) >= need)
    return int(cand[ok[0]]) if len(ok) else None


def cross_estimates(d: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(k, k) mean PD between activations a ≠ b over pairs with different seeds, and its jackknife SE over seeds."""
    n = d.shape[-1]
    x = np.where(_offdiag(n)[None, :, None, :], d, 0.0)  # (k, n, k, n)
    total = x.sum(axis=(1, 3))
    mean = total / (n * (n - 1))
    if n < 3:
        return mean, np.full_like(mean, np.nan)
    row = x.sum(axis=3) + x.sum(axis=1).transpose(0, 2, 1)  # (k, n, k): pairs that touch seed u
    loo = (total[:, None, :] - row) / ((n - 1) * (n - 2))  # (k, n, k)
    dev = loo - loo.mean(axis=1, keepdims=True)
    return mean, np.sqrt((n - 1) / n * np.sum(dev**2, axis=1))


def excess_estimates(d: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(k, k) Δ_ab = C_ab − (W_a + W_b)/2 (different seeds on both sides) and its jackknife SE over seeds."""
    k, n = d.shape[0], d.shape[-1]
    c, _ = cross_estimates(d)
    w = within_means(d)
    delta = c - 0.5 * (w[:, None] + w[None, :])
    if n < 3:
        return delta, np.full_like(delta, np.nan)
    loo = np.empty((n, k, k))
    for u in range(n):
        keep = [s for s in range(n) if s != u]
        sub = d[np.ix_(range(k), keep, range(k), keep)]
        cu, wu = cross_estimates(sub)[0], within_means(sub)
        loo[u] = cu - 0.5 * (wu[:, None] + wu[None, :])
    dev = loo - loo.mean(axis=0)
    return delta, np.sqrt((n - 1) / n * np.sum(dev**2, axis=0))


def same_seed_ratio(d: np.ndarray) -> np.ndarray:
    """(k, k) median over seeds of PD(a, s; b, s), divided by (W_a + W_b)/2: near 0 means near-identical models."""
    n = d.shape[-1]
    s = np.arange(n)
    same = np.median(d[:, s, :, s], axis=0)  # (k, k)
    w = within_means(d) if n >= 2 else np.full(d.shape[0], np.nan)
    den = 0.5 * (w[:, None] + w[None, :])
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(den > 0, same / den, np.where(same > 0, np.inf, 0.0))


def delta_jackknife_se(d: np.ndarray) -> float:
    """Delete-one-seed jackknife SE of Δ = C − W (NaN with fewer than 3 seeds)."""
    k, n = d.shape[0], d.shape[-1]
    if n < 3:
        return math.nan
    theta = np.array([cross_minus_within(d[np.ix_(range(k), keep, range(k), keep)])
                      for keep in ([s for s in range(n) if s != u] for u in range(n))])
    return float(math.sqrt((n - 1) / n * np.sum((theta - theta.mean()) ** 2)))


@dataclass
class PDResult:
    """Every PD number the report states, for one metric at one step, on the complete seeds of the grid."""

    metric: str
    step: int
    activations: list[str]
    seeds: list[str]
    within: list[Estimate]
    cross: np.ndarray  # (k, k) different activations, different seeds
    cross_se: np.ndarray
    excess: np.ndarray  # (k, k) cross − mean within, like with like
    excess_se: np.ndarray
    same_seed_ratio: np.ndarray  # (k, k)
    omnibus: PairTest | None
    pair_cross: list[PairTest]
    reproducibility: list[PairTest]


def with_context_se(est: Estimate, per_context: np.ndarray | None) -> Estimate:
    """Adds the bootstrap-over-contexts SE of a mean over contexts; widens the interval when that is larger."""
    if per_context is None or len(per_context) < 2:
        return est
    est.context_se = float(np.std(per_context, ddof=1) / math.sqrt(len(per_context)))
    half = 1.959963984540054 * est.context_se
    if not (est.hi - est.mean >= half):  # also when the seed interval is undefined (NaN)
        est.lo, est.hi = est.mean - half, est.mean + half
    return est


def analyse_pd(matrix: np.ndarray, run_acts: list[str], run_seeds: list[str], metric: str, step: int,
               rng: np.random.Generator, context_tv: dict[str, np.ndarray] | None = None) -> PDResult | None:
    """All PD tests for runs labelled (run_acts[r], run_seeds[r]); seeds missing any activation are left out.

    ``context_tv``: per activation, the within-activation pd_tv per evaluation context (for the context SE).
    """
    acts = sorted(set(run_acts))
    seeds = [s for s in dict.fromkeys(run_seeds) if all((a, s) in set(zip(run_acts, run_seeds)) for a in acts)]
    if len(acts) < 1 or len(seeds) < 2:
        return None
    pos = {(a, s): r for r, (a, s) in enumerate(zip(run_acts, run_seeds))}
    rows = [pos[(a, s)] for a in acts for s in seeds]
    sub = np.asarray(matrix, dtype=np.float64)[np.ix_(rows, rows)]
    k, n = len(acts), len(seeds)
    d = sub.reshape(k, n, k, n)
    cross, cross_se = cross_estimates(d)
    excess, excess_se = excess_estimates(d)
    omnibus = None
    if k >= 2:
        omnibus = cross_vs_within_test(d, rng)
        omnibus.se = delta_jackknife_se(d)
        est = t_interval(omnibus.estimate, omnibus.se, n - 1)
        omnibus.lo, omnibus.hi = est.lo, est.hi
    pairs = pairwise_cross_vs_within(d, rng) if k >= 3 else []  # with 2 activations the omnibus is the pair
    for t in pairs:
        t.se = float(excess_se[t.a, t.b])
        est = t_interval(t.estimate, t.se, n - 1)
        t.lo, t.hi = est.lo, est.hi
    within = [with_context_se(e, (context_tv or {}).get(a)) for a, e in zip(acts, within_estimates(d))]
    return PDResult(metric, step, acts, seeds, within, cross, cross_se, excess, excess_se,
                    same_seed_ratio(d), omnibus, pairs, reproducibility_tests(d) if k >= 2 else [])
