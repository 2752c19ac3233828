"""Calibration and power of the PD tests (nanoact.analysis.pdtests) on simulated runs, at 3, 5 and 10 seeds.

Each simulated run is a softmax over V classes on N contexts, with logits

    truth + loc · A_a + seed_scale · S_s + run_scale_a · E_as

A_a: the activation's effect on predictions; S_s: the seed's (shared by every activation at that seed, as initial
weights and batch order are); E_as: run noise. PD is pd_tv between runs, computed for every pair of runs, so the
tests see the same dependence between pairs that real reports do. Type-I error must stay at or below
α + 3 Monte Carlo standard errors; planted differences must be found. Fixed RNG seeds throughout.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest

from nanoact.analysis import pdestimands as pe
from nanoact.analysis import pdtests as pt

ALPHA = 0.05
N_CTX, V = 6, 5


def simulate(rng, m, k, n, *, loc=0.0, run_scale=1.0, seed_scale=1.0, relabel=False):
    """(m, k, n, k, n) pd_tv tables of m simulated experiments.

    ``relabel``: the activation effect is a per-activation permutation of the classes of (truth + seed effect)
    instead of an additive offset, so every activation's own runs have the same distribution up to class names:
    the activations differ in what they predict but are equally reproducible (the null of the W_a test).
    """
    run_scale = np.broadcast_to(np.asarray(run_scale, dtype=float), (k,))
    truth = rng.standard_normal((N_CTX, V))
    seed = seed_scale * rng.standard_normal((m, 1, n, N_CTX, V))
    noise = run_scale[None, :, None, None, None] * rng.standard_normal((m, k, n, N_CTX, V))
    if relabel:
        base = np.broadcast_to(truth + seed, (m, k, n, N_CTX, V))
        perm = np.argsort(rng.random((m, k, 1, N_CTX, V)), axis=-1)
        z = np.take_along_axis(base, np.broadcast_to(perm, base.shape), axis=-1) + noise
    else:
        z = truth + loc * rng.standard_normal((m, k, 1, N_CTX, V)) + seed + noise
    p = np.exp(z - z.max(axis=-1, keepdims=True))
    p /= p.sum(axis=-1, keepdims=True)
    p = p.reshape(m, k * n, N_CTX, V)
    out = np.empty((m, k * n, k * n))
    for lo in range(0, m, 50):
        blk = p[lo:lo + 50]
        out[lo:lo + 50] = 0.5 * np.abs(blk[:, :, None] - blk[:, None, :]).sum(axis=-1).mean(axis=-1)
    return out.reshape(m, k, n, k, n)


def bound(m: int) -> float:
    return ALPHA + 3 * math.sqrt(ALPHA * (1 - ALPHA) / m)


def test_pd_table_and_within_means_by_hand():
    rng = np.random.default_rng(0)
    d = simulate(rng, 1, 2, 4)[0]
    w = [np.mean([d[a, s, a, t] for s in range(4) for t in range(4) if s < t]) for a in range(2)]
    assert pt.within_means(d) == pytest.approx(w)
    cross = np.mean([d[0, s, 1, t] for s in range(4) for t in range(4) if s != t])
    assert float(pt.cross_minus_within(d)) == pytest.approx(cross - np.mean(w))
    # the (R, R) matrix in run order -> table
    acts, seeds = np.repeat(np.arange(2), 4), np.tile(np.arange(4), 2)
    mat = d.reshape(8, 8)
    assert np.array_equal(pe.pd_table(mat, acts, seeds, 2, 4), d)


def test_jackknife_se_matches_a_direct_leave_one_seed_out():
    d = simulate(np.random.default_rng(1), 1, 2, 5)[0]
    theta = []
    for u in range(5):
        keep = [s for s in range(5) if s != u]
        sub = d[np.ix_([0, 1], keep, [0, 1], keep)]
        w = pt.within_means(sub)
        theta.append((w[0] - w[1]) / ((w[0] + w[1]) / 2))  # the relative difference
    theta = np.array(theta)
    se = math.sqrt(4 / 5 * np.sum((theta - theta.mean()) ** 2))
    (t,) = pt.reproducibility_tests(d)
    assert t.se == pytest.approx(se) and t.df == 4


@pytest.mark.parametrize("n", [3, 5, 10])
def test_cross_vs_within_null_calibration(n):
    # no activation effect at all, strong seed effect (same-seed pairs are much closer: excluded by design)
    rng = np.random.default_rng(10 + n)
    m = 800
    d = simulate(rng, m, 3, n, loc=0.0, seed_scale=1.5)
    p = pt.cross_vs_within_p_batch(d, rng, n_perm=199)
    assert np.mean(p <= ALPHA) <= bound(m)


@pytest.mark.parametrize("n, loc", [(3, 1.2), (5, 0.6), (10, 0.4)])
def test_cross_vs_within_power(n, loc):
    # three activations: (3!)^(n-1) relabellings, so even 3 seeds can reach p = 1/36
    rng = np.random.default_rng(20 + n)
    d = simulate(rng, 200, 3, n, loc=loc)
    p = pt.cross_vs_within_p_batch(d, rng, n_perm=199)
    assert np.mean(p <= ALPHA) >= 0.8


@pytest.mark.parametrize("n", [3, 5, 10])
def test_pairwise_cross_vs_within_null_and_floor(n):
    # two activations: 2^(n-1) relabellings, an exact test with a p-value floor
    rng = np.random.default_rng(30 + n)
    m = 800
    d = simulate(rng, m, 2, n, seed_scale=1.0)
    p = pt.cross_vs_within_p_batch(d, rng)
    assert p.min() >= 1 / 2 ** (n - 1) - 1e-12
    assert np.mean(p <= ALPHA) <= bound(m)
    if n == 10:  # enough seeds: a planted effect is found
        planted = pt.cross_vs_within_p_batch(simulate(rng, 200, 2, n, loc=0.5), rng)
        assert np.mean(planted <= ALPHA) >= 0.8
    assert pt.seeds_for_floor(2, 1) == 6 and pt.seeds_for_floor(2, 10) == 9 and pt.seeds_for_floor(5, 10) == 3


@pytest.mark.parametrize("n", [3, 5, 10])
def test_reproducibility_null_calibration(n):
    # equal reproducibility, but the activations differ in location: the test must not mistake one for the other
    rng = np.random.default_rng(40 + n)
    m = 2000
    d = simulate(rng, m, 2, n, relabel=True, seed_scale=0.7)
    p = pt.reproducibility_p_batch(d, 0, 1)
    assert np.mean(p <= ALPHA) <= bound(m)


def test_reproducibility_power_at_10_seeds():
    rng = np.random.default_rng(50)
    d = simulate(rng, 400, 2, 10, relabel=True, run_scale=[0.5, 1.2], seed_scale=0.3)
    p = pt.reproducibility_p_batch(d, 0, 1)
    assert np.mean(p <= ALPHA) >= 0.8


def test_old_loo_score_rcbd_was_anti_conservative_and_the_new_test_is_not():
    # the per-run leave-one-out PD score fed to an RCBD (the old report) against the jackknife test, same data
    from nanoact.analysis.stats import rcbd_anova

    rng = np.random.default_rng(60)
    m, k, n = 300, 5, 3
    d = simulate(rng, m, k, n, seed_scale=0.5)
    # with 3 seeds, the LOO score of run (a, s) is monotone in the mean PD to the other two runs of a
    w = pe.within_blocks(d)
    score = (w.sum(axis=-1)) / (n - 1)
    old = np.array([rcbd_anova(score[i]).p_a for i in range(m)])
    assert np.mean(old <= ALPHA) > 2 * ALPHA  # the flaw this module replaces
    new = np.array([min(1.0, min(t.p for t in pt.reproducibility_tests(d[i])) * 10) for i in range(m)])
    assert np.mean(new <= ALPHA) <= bound(m)


def test_seeds_for_margin_is_monotone_and_mdd_shrinks():
    from nanoact.analysis import equivalence as eq

    assert eq.seeds_for_margin(0.01, 0.005, 3, 1) is not None
    assert eq.seeds_for_margin(0.01, 0.005, 3, 1) <= eq.seeds_for_margin(0.01, 0.005, 3, 10)
    assert eq.seeds_for_margin(0.02, 0.005, 3, 1) <= eq.seeds_for_margin(0.01, 0.005, 3, 1)
    assert eq.mdd(0.005, 9) < eq.mdd(0.005, 2) and eq.mdd(0.005, 9, m=10) > eq.mdd(0.005, 9)


def test_context_se_is_the_bootstrap_over_contexts_and_widens_the_interval():
    rng = np.random.default_rng(70)
    per_ctx = rng.gamma(2.0, 0.05, size=400)
    boot = [per_ctx[rng.integers(0, 400, 400)].mean() for _ in range(4000)]
    est = pt.with_context_se(pt.Estimate(per_ctx.mean(), 1e-6, 4, per_ctx.mean() - 1e-5, per_ctx.mean() + 1e-5),
                             per_ctx)
    assert est.context_se == pytest.approx(np.std(boot), rel=0.05)
    assert est.hi - est.mean == pytest.approx(math.hypot(1e-5, 1.96 * est.context_se), rel=1e-3)  # both sources
    wide = pt.with_context_se(pt.Estimate(0.1, 1.0, 4, -2.0, 2.2), per_ctx)
    assert wide.hi - 0.1 == pytest.approx(math.hypot(2.1, 1.96 * wide.context_se)) and wide.hi > 2.2


def test_pd_results_are_built_once_with_their_intervals():
    # result objects are frozen: the relabelling tests get their jackknife interval on construction
    rng = np.random.default_rng(5)
    k, n = 3, 4
    d = simulate(rng, 1, k, n, loc=0.5)[0]
    acts, seeds = [f"a{i}" for i in range(k)], [str(s) for s in range(n)]
    res = pt.analyse_pd(d.reshape(k * n, k * n), [a for a in acts for _ in seeds], seeds * k, "pd_tv", 1, rng)
    for obj in (res, res.omnibus, res.within[0], res.pair_cross[0]):
        with pytest.raises(dataclasses.FrozenInstanceError):
            obj.df = 0
    se, df = pt.grouped_jackknife(pt.cross_minus_within, d, pt.seed_groupings(n))
    ci = pt.t_interval(res.omnibus.estimate, float(se), df)
    assert (res.omnibus.se, res.omnibus.df, res.omnibus.lo, res.omnibus.hi) == (float(se), df, ci.lo, ci.hi)
    assert [(t.a, t.b) for t in res.pair_cross] == [(0, 1), (0, 2), (1, 2)]
    assert all(math.isfinite(t.lo) and t.df == n - 1 for t in res.pair_cross)


def test_perm_p_counts_the_identity_and_ties_against_the_claim():
    assert pt._perm_p(np.array([1.0, 1.0, 2.0, 0.5])) == 0.75  # identity, a tie and a smaller sum
    assert pt._perm_p(np.array([0.5, 1.0, 2.0, 3.0])) == 0.25  # the floor: 1 / (B + 1)


def _claims(d, rng):
    from nanoact.analysis.hypotheses import adjust, pd_tests

    k, n = d.shape[0], d.shape[1]
    acts, seeds = [f"a{i}" for i in range(k)], [str(s) for s in range(n)]
    res = pt.analyse_pd(d.reshape(k * n, k * n), [a for a in acts for _ in seeds], seeds * k, "pd_tv", 1, rng)
    return {h.family for h in adjust(pd_tests(res)) if h.outcome == "difference"}


def test_report_pd_claims_on_null_data_stay_within_alpha_per_family(monkeypatch):
    # what the report would claim, end to end through analyse_pd + the hypothesis list, on exchangeable activations
    monkeypatch.setattr(pt, "N_PERM", 199)
    rng = np.random.default_rng(80)
    m = 300
    data = simulate(rng, m, 4, 5, seed_scale=1.0)
    claims = [_claims(data[i], rng) for i in range(m)]
    for fam in ("pd_distribution", "pd_cross_within_pairs", "pd_reproducibility_pairs"):
        assert np.mean([fam in c for c in claims]) <= bound(m), fam


def test_report_pd_claims_find_planted_differences(monkeypatch):
    monkeypatch.setattr(pt, "N_PERM", 199)
    rng = np.random.default_rng(81)
    claims = [_claims(d, rng) for d in simulate(rng, 30, 3, 10, loc=0.8)]
    assert np.mean(["pd_distribution" in c for c in claims]) >= 0.9
    assert np.mean(["pd_cross_within_pairs" in c for c in claims]) >= 0.8


def test_holm_families_cannot_conclude_only_when_the_floor_rules_out_rejection():
    from nanoact.analysis.hypotheses import Hypothesis, adjust

    def h(i, p, floor=0.0):
        return Hypothesis(f"t{i}", "x", "m", "fam", [], "m", "s", 0.0, [], p, p_floor=floor, extra={"labels": 2})

    # a relabelling test with floor 0.04 next to a clearly rejected test: Holm's second step uses alpha/1
    a, b = adjust([h(0, 1e-6), h(1, 0.04, 0.04)])
    assert a.outcome == b.outcome == "difference"
    # alone with another non-rejected test, the same floor cannot pass alpha/2: cannot conclude, with a seed count
    a, b = adjust([h(0, 0.3), h(1, 0.04, 0.04)])
    assert a.outcome == "no_detectable_difference" and b.outcome == "cannot_conclude" and b.significant is None
    assert b.seeds_needed == 7  # 1/2^(n-1) <= 0.025
    (c,) = adjust([h(0, float("nan"))])
    assert c.outcome == "cannot_conclude"
