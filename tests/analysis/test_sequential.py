"""Seeds on demand under optional stopping: the rule stops on precision only, and its widened intervals cover at
or above 95% at the stopping time, so a contrast "decided" by them has type-I error at most 5%.

Each scenario simulates many sequential experiments: the data of max seeds are drawn at once and the rule reads
the first n of them at each look, exactly as ``decide`` is called by the sweep. The expected number of seeds is
printed (pytest -s) and bounded.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from nanoact.analysis import pdtests as pt
from nanoact.analysis import sequential as sq
from nanoact.errors import ConfigError
from tests.analysis.simulate import bound, coverage_floor, pd_tables

RULE = sq.SeedRule(start=3, step=2, max=11, targets={"final_val_loss": 0.005})
PAIRS = [(0, 1), (0, 2), (1, 2)]


def _run(rule, half_widths_at, estimates_at):
    """Run the rule on one simulated experiment; (stopping n, the estimates and half-widths there)."""
    for n in rule.schedule():
        hw = half_widths_at(n)
        if sq.decide(rule, n, hw).stop:
            return n, estimates_at(n)
    raise AssertionError("the rule never stopped")


def _loss_data(rng, m, k, n, *, effects=(0.0, 0.0, 0.0), seed_sd=0.006, noise=0.006):
    return (1.5 + np.asarray(effects)[None, :, None] + seed_sd * rng.standard_normal((m, 1, n))
            + noise * rng.standard_normal((m, k, n)))


def _loss_contrasts(y, kappa):
    """Seed-paired differences of every pair: estimates and widened half-widths of a (k, n) table."""
    est, hw = [], []
    n = y.shape[1]
    for a, b in PAIRS:
        d = y[a] - y[b]
        est.append(d.mean())
        hw.append(sq.half_width(d.std(ddof=1) / np.sqrt(n), n - 1, kappa))
    return np.array(est), np.array(hw)


@pytest.mark.parametrize("noise", [pytest.param(0.003, marks=pytest.mark.slow), 0.006,
                                   pytest.param(0.012, marks=pytest.mark.slow)])
def test_loss_intervals_cover_and_decisions_hold_their_level_under_the_rule(noise, capsys):
    """Three activations, no difference, a target near, at and below the noise: every pairwise interval covers 0
    at 95% or more at the stopping time, so no contrast is wrongly decided more than 5% of the time."""
    m = 2000
    kappa = sq.calibrate(RULE.start, RULE.step, RULE.max)
    y = _loss_data(np.random.default_rng(int(noise * 1e4)), m, 3, RULE.max, noise=noise)
    ns, reject = [], []
    for i in range(m):
        n, (est, hw) = _run(RULE, lambda n: {"final_val_loss": _loss_contrasts(y[i, :, :n], kappa)[1]},
                            lambda n: _loss_contrasts(y[i, :, :n], kappa))
        ns.append(n)
        reject.append(np.abs(est) > hw)
    reject = np.array(reject)
    assert reject.mean(axis=0).max() <= bound(m), reject.mean(axis=0)
    with capsys.disabled():
        print(f"\nloss, null, noise {noise}: E[seeds] = {np.mean(ns):.2f}, type-I per contrast "
              f"{np.round(reject.mean(axis=0), 3)}")
    assert RULE.start <= np.mean(ns) <= RULE.max


def test_plain_t_intervals_would_undercover_under_the_same_rule():
    """Why kappa exists: one contrast whose noise is near the target (paired sd 1.25x the target), stopped when
    the plain t interval is narrow enough, covers well under 95%."""
    m = 4000
    d = 0.00625 * np.random.default_rng(1).standard_normal((m, RULE.max))  # paired differences, true mean 0

    def at(i, n, kappa):
        x = d[i, :n]
        return np.array([x.mean()]), np.array([sq.half_width(x.std(ddof=1) / np.sqrt(n), n - 1, kappa)])

    for kappa, ok in ((1.0, False), (sq.calibrate(RULE.start, RULE.step, RULE.max), True)):
        covered = [np.abs(est[0]) <= hw[0] for est, hw in
                   (_run(RULE, lambda n: {"final_val_loss": at(i, n, kappa)[1]}, lambda n: at(i, n, kappa))[1]
                    for i in range(m))]
        assert (np.mean(covered) >= coverage_floor(m)) == ok, (kappa, np.mean(covered))


def test_a_planted_difference_is_covered_and_found(capsys):
    m = 2000
    kappa = sq.calibrate(RULE.start, RULE.step, RULE.max)
    effects = (0.0, 0.004, 0.012)
    y = _loss_data(np.random.default_rng(2), m, 3, RULE.max, effects=effects)
    truth = np.array([effects[a] - effects[b] for a, b in PAIRS])
    ns, covered, found = [], [], []
    for i in range(m):
        n, (est, hw) = _run(RULE, lambda n: {"final_val_loss": _loss_contrasts(y[i, :, :n], kappa)[1]},
                               lambda n: _loss_contrasts(y[i, :, :n], kappa))
        ns.append(n)
        covered.append(np.abs(est - truth) <= hw)
        found.append(np.abs(est) > hw)
    assert np.mean(covered, axis=0).min() >= coverage_floor(m)
    assert np.mean(found, axis=0)[1] >= 0.8  # a 2-noise-sd gap (0 vs 0.012) is decided in most experiments
    with capsys.disabled():
        print(f"\nloss, planted {effects}: E[seeds] = {np.mean(ns):.2f}, decided per contrast "
              f"{np.round(np.mean(found, axis=0), 3)}")


@pytest.mark.slow
def test_pd_intervals_cover_under_the_rule(capsys):
    """The PD estimand (same-seed activation-only excess, per pair, seed-jackknife SE) with a pd_tv target: the
    widened intervals cover the estimand's value (its mean over all simulated experiments at max seeds)."""
    rule = sq.SeedRule(start=3, step=2, max=9, targets={"pd_tv": 0.04})
    kappa = sq.calibrate(rule.start, rule.step, rule.max)
    m = 300
    d = pd_tables(np.random.default_rng(3), m, 3, rule.max, loc=0.1)
    groupings = pt.seed_groupings

    def at(i, n):
        t = pt.sub_table(d[i], np.arange(n))
        se, df = pt.grouped_jackknife(pt.activation_only, t, groupings(n))
        est = pt.activation_only(t)
        return (np.array([est[a, b] for a, b in PAIRS]),
                np.array([sq.half_width(se[a, b], df, kappa) for a, b in PAIRS]))

    truth = np.mean([at(i, rule.max)[0] for i in range(m)], axis=0)
    ns, covered = [], []
    for i in range(m):
        n, (est, hw) = _run(rule, lambda n: {"pd_tv": at(i, n)[1]}, lambda n: at(i, n))
        ns.append(n)
        covered.append(np.abs(est - truth) <= hw)
    assert np.mean(covered, axis=0).min() >= coverage_floor(m), np.mean(covered, axis=0)
    with capsys.disabled():
        print(f"\npd_tv activation-only: E[seeds] = {np.mean(ns):.2f}, coverage {np.round(np.mean(covered, 0), 3)}")


def test_kappa_is_the_smallest_factor_that_covers_at_every_noise_level():
    kappa = sq.calibrate(3, 2, 11)
    assert 1.0 < kappa < 1.6
    z = np.random.default_rng(99).standard_normal((20000, 11))  # another draw than calibrate's
    cov = sq._coverage(z, RULE.schedule(), np.geomspace(0.02, 20, 30), kappa)
    assert cov.min() >= 0.95 - 3 * np.sqrt(0.95 * 0.05 / 20000)
    assert sq._coverage(z, RULE.schedule(), np.geomspace(0.02, 20, 30), kappa * 0.9).min() < 0.95


def test_decide_follows_the_schedule_and_says_why_it_stops():
    rule = sq.SeedRule(3, 2, 8, {"final_val_loss": 0.005, "pd_tv": 0.002})
    assert rule.schedule() == (3, 5, 7, 8)
    go = sq.decide(rule, 3, {"final_val_loss": [0.004, 0.007], "pd_tv": [0.001]})
    assert not go.stop and go.next_seeds == 5 and go.met == {"final_val_loss": False, "pd_tv": True}
    # 0.007 * (t(3)/2) / (t(2)/sqrt(3)) = 0.0045 <= 0.005: 4 seeds (1/sqrt(n) alone would say 3 * (7/5)^2 = 5.9)
    assert go.widest["final_val_loss"] == 0.007 and go.projected["final_val_loss"] == 4
    done = sq.decide(rule, 5, {"final_val_loss": [0.005], "pd_tv": [0.002]})
    assert done.stop and done.reason == "target met" and done.round == 2
    cap = sq.decide(rule, 8, {"final_val_loss": [0.05], "pd_tv": [0.002]})
    assert cap.stop and cap.reason == "max seeds reached" and cap.projected["final_val_loss"] == 8
    with pytest.raises(ValueError):
        sq.decide(rule, 4, {})


@pytest.mark.parametrize("kw,msg", [
    (dict(start=2, step=2, max=9, targets={"pd_tv": 0.1}), "seeds.start"),
    (dict(start=3, step=0, max=9, targets={"pd_tv": 0.1}), "seeds.step"),
    (dict(start=5, step=2, max=4, targets={"pd_tv": 0.1}), "seeds.max"),
    (dict(start=3, step=2, max=9, targets={}), "names no metric"),
    (dict(start=3, step=2, max=9, targets={"val_loss": 0.1}), "unknown metric 'val_loss'"),
    (dict(start=3, step=2, max=9, targets={"pd_tv": -1}), "positive number"),
])
def test_a_bad_rule_is_refused_with_one_line(kw, msg):
    with pytest.raises(ConfigError, match=msg):
        sq.SeedRule(**kw)


def test_the_t_quantile_is_the_one_the_report_uses():
    assert sq.half_width(1.0, 4, 1.0) == pytest.approx(stats.t.ppf(0.975, 4))
    assert sq.half_width(1.0, 0, 1.0) == np.inf


def test_primary_contrasts_are_the_reports_pairwise_loss_and_pd_estimands():
    """The interim reads the same estimates as the report: seed-paired loss differences and, from analyse_pd's
    result, every pair's activation-only and cross-vs-within excess with their jackknife SEs, widened by kappa."""
    rule = sq.SeedRule(3, 2, 9, {"final_val_loss": 0.005, "pd_tv": 0.04})
    kappa = sq.calibrate(3, 2, 9)
    acts = ["gelu", "relu", "swish"]
    rng = np.random.default_rng(12)
    y = _loss_data(rng, 1, 3, 5)[0]
    d = pd_tables(rng, 1, 3, 5, loc=0.1)[0]
    seeds = [str(s) for s in range(5)]
    run_acts = [a for a in acts for _ in seeds]
    run_seeds = [s for _ in acts for s in seeds]
    pd = pt.analyse_pd(d.reshape(15, 15), run_acts, run_seeds, "pd_tv", 100, np.random.default_rng(0))
    cs = sq.primary_contrasts(rule, y, acts, pd)
    loss = [c for c in cs if c.metric == "final_val_loss"]
    assert [c.name for c in loss] == ["relu - gelu", "swish - gelu", "swish - relu"]
    diff = y[1] - y[0]
    assert loss[0].estimate == pytest.approx(diff.mean())
    assert loss[0].half_width == pytest.approx(kappa * stats.t.ppf(0.975, 4) * diff.std(ddof=1) / np.sqrt(5))
    pds = [c for c in cs if c.metric == "pd_tv"]
    assert len(pds) == 6 and pds[0].name == "activation-only gelu vs relu"
    t = pd.activation_only_pairs[0]
    assert pds[0].half_width == pytest.approx(kappa * stats.t.ppf(0.975, t.df) * t.se)
    look = sq.decide_on(rule, 5, cs)
    assert look.widest["pd_tv"] == max(c.half_width for c in pds)


def test_the_projection_scales_the_half_width_with_the_t_quantile():
    """hw(n) = hw(n0) (t(n - 1)/sqrt(n)) / (t(n0 - 1)/sqrt(n0)); the fewest n that meets the target, capped at max."""
    from scipy import stats

    rule = sq.SeedRule(3, 2, 10, {"final_val_loss": 0.01, "pd_tv": 0.008})
    got = sq.project(rule, 3, {"final_val_loss": 0.031, "pd_tv": None})
    scale = [0.031 * stats.t.ppf(0.975, n - 1) / np.sqrt(n) / (stats.t.ppf(0.975, 2) / np.sqrt(3)) for n in (8, 9)]
    assert scale[0] > 0.01 >= scale[1] and got == {"final_val_loss": 9, "pd_tv": 10}  # an unknown width: the max
    assert sq.project(rule, 5, {"final_val_loss": 0.009, "pd_tv": 0.5}) == {"final_val_loss": 5, "pd_tv": 10}
