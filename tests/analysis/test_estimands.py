"""Calibration, coverage and power of the report's estimands in the realistic regime (tests/analysis/simulate.py).

Estimands (nanoact.analysis.pdtests): same-seed PD against reseeding (``activation_only``), the relative excess
Δ/W̄ (``relative_excess``), relative reproducibility (``relative_reproducibility``) with its TOST, and Δ; crossed
grids with the two-way jackknife; final val loss in crossed grids (quasi-F, two-way t). Pass/fail bounds:
rejection rate <= α + 3 Monte Carlo SE under a null, coverage >= 95% − 3 Monte Carlo SE, power >= 0.8; with
m = 200 data sets, 3 SE is 0.046 for α = 0.05 and 0.046 for coverage. Fixed RNG seeds throughout.

The true value for a coverage check is the mean of the unbiased pieces over all simulated data sets (same-seed PD
and W are unbiased means over seeds; their ratio is taken of the means), whose Monte Carlo error is a tenth of
an interval's half-width or less.
"""

from __future__ import annotations

import functools

import numpy as np
import pytest
from scipy import stats

from nanoact.analysis import equivalence as eq
from nanoact.analysis import pdtests as pt
from tests.analysis.simulate import bound, coverage_floor, crossed_groupings, crossed_tables, pd_tables

M = 200
SEEDS = [3, 5, pytest.param(10, marks=pytest.mark.slow)]


@functools.lru_cache(maxsize=None)
def tables(kind: str, n: int) -> np.ndarray:
    """Cached (M, 3, n, 3, n) tables per scenario: shared between the tests of this module."""
    rng = np.random.default_rng({"unshared": 1, "shared": 2, "loc": 3, "lessrep": 4, "outlier": 5}[kind] * 100 + n)
    opts = {"unshared": dict(shared_seed=False), "shared": {}, "loc": dict(loc=0.15),
            "lessrep": dict(scale=[0.45, 0.3, 0.3]), "outlier": dict(shared_seed=False, outlier=1.0)}[kind]
    return pd_tables(rng, M, 3, n, **opts)


def _covers(est, se, df, truth) -> float:
    return float(np.mean(np.abs(est - truth) <= stats.t.ppf(0.975, df) * se))


def _rejects(est, se, df) -> np.ndarray:
    return pt.t_test(est, se, df)[1] <= 0.05


@pytest.mark.parametrize("n", SEEDS)
def test_activation_only_null_calibration(n):
    # no shared seed effect, no activation effect: a same-seed pair is distributed like a different-seed pair
    d = tables("unshared", n)
    est, se, df = pt.batch_t(pt.activation_only_overall, d)
    assert np.mean(_rejects(est, se, df)) <= bound(M)
    est, se, df = pt.batch_t(pt.activation_only, d)
    assert np.mean(_rejects(est[:, 0, 1], se[:, 0, 1], df)) <= bound(M)


@pytest.mark.parametrize("n", SEEDS)
def test_activation_only_coverage_and_power(n):
    # a shared seed effect: changing only the activation moves predictions much less than reseeding
    for kind in ("shared", "loc"):
        d = tables(kind, n)
        est, se, df = pt.batch_t(pt.activation_only_overall, d)
        assert _covers(est, se, df, est.mean()) >= coverage_floor(M), kind
        if n >= 5:
            assert np.mean(_rejects(est, se, df) & (est < 0)) >= 0.8, kind


@pytest.mark.parametrize("n", SEEDS)
def test_relative_excess_and_delta_coverage(n):
    for kind in ("shared", "loc"):
        d = tables(kind, n)
        c = pt.cross_minus_within(d)
        w = pt.within_means(d).mean(axis=-1)
        est, se, df = pt.batch_t(pt.relative_excess, d)
        assert _covers(est, se, df, c.mean() / w.mean()) >= coverage_floor(M), kind
        est, se, df = pt.batch_t(pt.cross_minus_within, d)
        assert _covers(est, se, df, c.mean()) >= coverage_floor(M), kind


@pytest.mark.parametrize("n", SEEDS)
def test_relative_reproducibility_null_and_tost_level(n):
    # equally reproducible activations (with and without an activation effect on predictions)
    for kind in ("shared", "loc"):
        est, se, df = pt.batch_t(pt.relative_reproducibility, tables(kind, n))
        assert np.mean(_rejects(est[:, 0, 1], se[:, 0, 1], df)) <= bound(M), kind
    # TOST at a margin equal to the true relative difference: the boundary of its null, so level <= α
    d = tables("lessrep", n)
    w = pt.within_means(d).mean(axis=0)
    truth = (w[0] - w[1]) / ((w[0] + w[1]) / 2)
    est, se, df = pt.batch_t(pt.relative_reproducibility, d)
    p = eq.tost_p_batch(est[:, 0, 1], se[:, 0, 1], df, abs(truth))
    assert np.mean(p <= 0.05) <= bound(M)
    assert _covers(est[:, 0, 1], se[:, 0, 1], df, truth) >= coverage_floor(M)


@pytest.mark.slow
def test_tost_power_on_equally_reproducible_activations_at_10_seeds():
    est, se, df = pt.batch_t(pt.relative_reproducibility, tables("shared", 10))
    p = eq.tost_p_batch(est[:, 0, 1], se[:, 0, 1], df, 0.15)
    assert np.mean(p <= 0.05) >= 0.8


@pytest.mark.slow
def test_outlier_runs_keep_the_level():
    # one run per data set with extra noise on top of the null of the same-seed and reproducibility tests
    d = tables("outlier", 10)
    est, se, df = pt.batch_t(pt.activation_only_overall, d)
    assert np.mean(_rejects(est, se, df)) <= bound(M)
    est, se, df = pt.batch_t(pt.relative_reproducibility, d)
    assert np.mean(_rejects(est[:, 1, 2], se[:, 1, 2], df)) <= bound(M)  # the pair without the outlier run


@pytest.mark.slow
def test_one_activation_only_less_reproducible():
    # 1.5x the run noise for one activation and no effect on what it predicts: a reproducibility difference
    d = tables("lessrep", 10)
    p = pt.cross_vs_within_p_batch(d, np.random.default_rng(6), n_perm=199)
    assert np.mean(p <= 0.05) > 0.2  # the distribution test does fire: that is why it must not be over-read
    est, se, df = pt.batch_t(pt.activation_only_overall, d)
    assert not np.any(_rejects(est, se, df) & (est > 0))  # never "changing the activation moves it more"
    est, se, df = pt.batch_t(pt.relative_reproducibility, d)
    assert np.mean(_rejects(est[:, 0, 1], se[:, 0, 1], df)) >= 0.5  # W_a − W_b is where the difference is


def test_crossed_grid_two_way_jackknife_covers_where_blocks_as_units_are_too_narrow():
    # activation x init interaction: blocks that share an init seed are not independent
    m, ni, nd = 150, 4, 4
    d = crossed_tables(np.random.default_rng(7), m, 2, ni, nd, act_init=0.5)
    for stat in (pt.cross_minus_within, pt.activation_only_overall):
        e2, s2, df2 = pt.batch_t(stat, d, crossed_groupings(ni, nd))
        e1, s1, df1 = pt.batch_t(stat, d)  # every (init, data) block as an independent unit
        truth = e2.mean()
        assert df2 == 3 and df1 == ni * nd - 1
        assert _covers(e2, s2, df2, truth) >= coverage_floor(m), stat.__name__
        assert _covers(e1, s1, df1, truth) < 0.9, stat.__name__


def test_analyse_pd_uses_the_two_way_jackknife_for_crossed_grids():
    ni = nd = 3
    d = crossed_tables(np.random.default_rng(8), 1, 2, ni, nd)[0]
    seeds = [f"i{b // nd}-d{b % nd}" for b in range(ni * nd)]
    units = {s: (s[1], s[-1]) for s in seeds}
    mat = d.reshape(2 * ni * nd, -1)
    acts = ["a"] * len(seeds) + ["b"] * len(seeds)
    res = pt.analyse_pd(mat, acts, seeds * 2, "pd_tv", 1, np.random.default_rng(0), seed_units=units)
    one = pt.analyse_pd(mat, acts, seeds * 2, "pd_tv", 1, np.random.default_rng(0))
    se, df = pt.grouped_jackknife(pt.cross_minus_within, d, crossed_groupings(ni, nd))
    assert res.design == "crossed" and res.df == 2 and one.df == 8
    assert res.omnibus.se == pytest.approx(float(se))
    assert res.reproducibility and res.reproducibility[0].df == 2


def _crossed_loss(rng, m, k, ni, nd, interaction):
    y = (rng.standard_normal((m, 1, ni, 1)) + rng.standard_normal((m, 1, 1, nd))
         + interaction * rng.standard_normal((m, k, ni, 1)) + interaction * rng.standard_normal((m, k, 1, nd))
         + 0.3 * rng.standard_normal((m, k, ni, nd)))
    return y


@pytest.mark.parametrize("ni, nd", [(3, 3), (4, 4)])
def test_crossed_loss_quasi_f_and_pairs_hold_their_level_where_the_rcbd_does_not(ni, nd):
    from nanoact.analysis.stats import crossed_anova, crossed_pairwise, rcbd_anova

    m, k = 1000, 3
    y = _crossed_loss(np.random.default_rng(ni), m, k, ni, nd, interaction=0.5)
    quasi = np.array([crossed_anova(y[i]).p for i in range(m)])
    rcbd = np.array([rcbd_anova(y[i].reshape(k, -1)).p_a for i in range(m)])
    pair = np.array([crossed_pairwise(y[i], ["a", "b", "c"])[0].p for i in range(m)])
    assert np.mean(quasi <= 0.05) <= bound(m) and np.mean(pair <= 0.05) <= bound(m)
    assert np.mean(rcbd <= 0.05) > 2 * 0.05  # blocks treated as independent: far too many false claims


def test_crossed_anova_sums_of_squares_add_up():
    from nanoact.analysis.stats import crossed_anova

    y = np.random.default_rng(9).standard_normal((3, 4, 5))
    c = crossed_anova(y)
    e = y - y.mean(axis=0, keepdims=True)
    ss = c.ms_a * c.df_a + c.ms_ai * c.df_ai + c.ms_ad * c.df_ad + c.ms_aid * c.df_aid
    assert ss == pytest.approx(float(np.sum(e**2)))


@pytest.mark.parametrize("n", [3, 5, 10])
def test_loss_tost_level_at_the_margin_and_power(n):
    # seed-paired differences with SD 0.01 nats: TOST at a true difference equal to the margin rejects <= α
    rng = np.random.default_rng(10 + n)
    m, margin, sd = 4000, 0.01, 0.01
    for true in (margin, -margin):
        x = true + sd * rng.standard_normal((m, n))
        se = x.std(axis=1, ddof=1) / np.sqrt(n)
        assert np.mean(eq.tost_p_batch(x.mean(axis=1), se, n - 1, margin) <= 0.05) <= bound(m)
    if n == 10:
        x = 0.003 * rng.standard_normal((m, n))
        se = x.std(axis=1, ddof=1) / np.sqrt(n)
        assert np.mean(eq.tost_p_batch(x.mean(axis=1), se, n - 1, margin) <= 0.05) >= 0.8


def test_mdd_is_the_difference_found_with_80_percent_power():
    rng = np.random.default_rng(12)
    n, sd, m = 10, 1.0, 4000
    delta = eq.mdd(sd / np.sqrt(n), n - 1)
    x = delta + sd * rng.standard_normal((m, n))
    t = x.mean(axis=1) / (x.std(axis=1, ddof=1) / np.sqrt(n))
    assert abs(np.mean(2 * stats.t.sf(np.abs(t), n - 1) <= 0.05) - 0.8) < 0.04  # normal-shift approximation
    assert eq.seeds_for_margin(delta, sd / np.sqrt(n), n) == n


def test_pairwise_loss_claims_are_gated_on_the_primary_test():
    from nanoact.analysis.hypotheses import Hypothesis, adjust

    def h(fam, p, i=0):
        return Hypothesis(f"{fam}{i}", "paired_t" if fam != "primary" else "rcbd", "final_val_loss", fam, [], "m",
                          "t", 0.0, [], p)

    prim, a, b = adjust([h("primary", 0.2), h("primary_pairwise", 1e-4, 1), h("primary_pairwise", 0.5, 2)])
    assert a.outcome == "gated" and not a.significant and b.outcome == "no_detectable_difference"
    prim, a, b = adjust([h("primary", 0.01), h("primary_pairwise", 1e-4, 1), h("primary_pairwise", 0.5, 2)])
    assert a.outcome == "difference" and a.significant


def test_relabelling_tests_say_whether_they_are_exact_or_monte_carlo():
    rng = np.random.default_rng(13)
    d = tables("unshared", 3)[0]
    t = pt.cross_vs_within_test(d, rng)  # (3!)^2 = 36 relabellings: enumerated
    assert t.exact and t.n_relabellings == 36 and t.p_floor == pytest.approx(1 / 36)
    big = np.tile(tables("unshared", 5)[0], (2, 1, 2, 1))[:, :, :, :]  # 6 activations x 5 seeds: (6!)^4
    t = pt.cross_vs_within_test(big, rng, n_perm=999)
    assert not t.exact and t.n_relabellings == 1000 and t.p_floor == pytest.approx(1 / 1000)
    assert t.p >= 1 / 1000
