"""RCBD statistics against hand computation, statsmodels and scipy.

    python -m pytest tests/analysis/test_stats.py -q
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as sps

from nanoact.analysis import stats as st
from nanoact.analysis.outcome import analyse_outcome


def test_rcbd_by_hand_on_a_2x2_table():
    # grand mean 3; activation means 2, 4; seed means 1.5, 4.5; residuals ±0.5
    r = st.rcbd_anova(np.array([[1.0, 3.0], [2.0, 6.0]]))
    assert (r.ss_a, r.ss_s, r.ss_e) == pytest.approx((4.0, 9.0, 1.0))
    assert (r.df_a, r.df_s, r.df_e) == (1, 1, 1)
    assert r.f_a == pytest.approx(4.0)
    assert r.p_a == pytest.approx(sps.f.sf(4.0, 1, 1))
    assert r.partial_eta2 == pytest.approx(0.8)
    assert r.partial_omega2 == pytest.approx(1 * (4 - 1) / (1 * 4 + (4 - 1) * 1))
    assert r.var_activation == pytest.approx((4 - 1) / 2)
    assert r.var_seed == pytest.approx((9 - 1) / 2)
    assert r.var_residual == pytest.approx(1.0)


def test_rcbd_matches_statsmodels():
    pd = pytest.importorskip("pandas")
    smf = pytest.importorskip("statsmodels.formula.api")
    anova_lm = pytest.importorskip("statsmodels.stats.anova").anova_lm
    rng = np.random.default_rng(0)
    k, n = 4, 5
    y = rng.normal(size=(k, n)) + np.array([0.0, 0.3, 0.6, 0.2])[:, None] + rng.normal(size=n)[None, :]
    df = pd.DataFrame([(f"a{i}", f"s{j}", y[i, j]) for i in range(k) for j in range(n)], columns=["act", "seed", "y"])
    table = anova_lm(smf.ols("y ~ C(act) + C(seed)", data=df).fit())
    r = st.rcbd_anova(y)
    assert r.ss_a == pytest.approx(table.loc["C(act)", "sum_sq"])
    assert r.ss_s == pytest.approx(table.loc["C(seed)", "sum_sq"])
    assert r.ss_e == pytest.approx(table.loc["Residual", "sum_sq"])
    assert r.df_e == table.loc["Residual", "df"]
    assert r.f_a == pytest.approx(table.loc["C(act)", "F"])
    assert r.p_a == pytest.approx(table.loc["C(act)", "PR(>F)"])
    assert r.p_s == pytest.approx(table.loc["C(seed)", "PR(>F)"])


def test_one_way_anova_would_hide_the_effect_on_seed_heavy_data():
    # the contrast the stats module docstring warns about; f_oneway appears only here, to show why the library
    # never uses it
    rng = np.random.default_rng(11)
    k, n = 3, 6
    seed_effect = rng.normal(0, 3.0, size=n)
    y = np.array([0.0, 0.4, 0.8])[:, None] + seed_effect[None, :] + rng.normal(0, 0.15, size=(k, n))
    rcbd_p = st.rcbd_anova(y).p_a
    oneway_p = sps.f_oneway(*y).pvalue
    assert rcbd_p < 0.001
    assert oneway_p > 0.5
    assert oneway_p / rcbd_p > 1000


def test_friedman_matches_scipy_and_its_derived_statistics():
    rng = np.random.default_rng(2)
    y = rng.normal(size=(4, 6)) + np.arange(4)[:, None] * 0.8
    fr = st.friedman(y)
    ref = sps.friedmanchisquare(*y)
    assert fr.q == pytest.approx(ref.statistic) and fr.p == pytest.approx(ref.pvalue)
    k, n = y.shape
    f_id = (n - 1) * fr.q / (n * (k - 1) - fr.q)
    assert fr.f_id == pytest.approx(f_id)
    assert fr.p_id == pytest.approx(sps.f.sf(f_id, k - 1, (k - 1) * (n - 1)))
    assert fr.kendall_w == pytest.approx(fr.q / (n * (k - 1)))


def test_friedman_two_treatments_by_hand_and_perfect_agreement():
    y = np.array([[1.0, 2.0, 3.0, 4.0], [2.0, 3.0, 4.0, 5.0]])  # every seed ranks b above a
    fr = st.friedman(y)
    # ranks: a = 1, b = 2 in all 4 blocks -> Q = 12/(4·2·3)·(16+64) − 3·4·3 = 4
    assert fr.q == pytest.approx(4.0)
    assert fr.kendall_w == pytest.approx(1.0)
    # every seed ranks the treatments the same way: Iman-Davenport divides by zero; undefined, never "F = inf"
    assert math.isnan(fr.f_id) and math.isnan(fr.p_id) and fr.p < 1


def test_pairwise_studentized_range_and_holm():
    y = np.array([[1.0, 1.2, 0.9, 1.1], [1.5, 1.6, 1.4, 1.7], [1.05, 1.3, 0.95, 1.1]])
    r = st.rcbd_anova(y)
    rows = st.pairwise(y, ["a", "b", "c"], r.ms_e, r.df_e)
    ab = rows[0]
    q = abs(y[0].mean() - y[1].mean()) / math.sqrt(r.ms_e / 4)
    assert ab.q == pytest.approx(q)
    assert ab.p_range == pytest.approx(sps.studentized_range.sf(q, 3, r.df_e))
    t = sps.ttest_rel(y[0], y[1])
    assert ab.t == pytest.approx(t.statistic) and ab.p_t == pytest.approx(t.pvalue)
    assert st.holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert [x.p_holm for x in rows] == pytest.approx(st.holm([x.p_t for x in rows]))


def test_minimum_detectable_gap_is_the_80_percent_power_gap():
    assert st.min_detectable_gap(5, 3) == pytest.approx(3.8, abs=0.1)
    assert st.min_detectable_gap(5, 10) == pytest.approx(1.65, abs=0.05)
    # by construction the power at that gap (least favourable configuration) is 80%
    f = st.min_detectable_gap(5, 3) / math.sqrt(2 * 5)
    assert st.rcbd_power(5, 3, f) == pytest.approx(0.8, abs=1e-6)
    assert math.isnan(st.min_detectable_gap(5, 1))


def test_analyse_outcome_sentences_and_incomplete_blocks():
    acts, seeds = ["relu", "gelu", "swish"], ["1", "2", "3", "4"]
    rng = np.random.default_rng(3)
    values = {(a, s): 1.0 + 0.2 * i + 0.01 * rng.normal() + 0.1 * j
              for i, a in enumerate(acts) for j, s in enumerate(seeds)}
    values[("gelu", "4")] = math.nan  # a failed cell: its seed cannot enter the blocked analysis
    res = analyse_outcome("final_val_loss", "final val loss", values, acts, seeds, lower_is_better=True)
    assert res.seeds == ["1", "2", "3"] and res.excluded_seeds == ["4"]
    assert res.rcbd.p_a < 0.001
    assert [acts[i] for i in res.order()] == ["relu", "swish"]  # (best, worst)
    assert res.homogeneity is not None and len(res.pairwise) == 3
    few = analyse_outcome("x", "x", {("relu", "1"): 1.0, ("gelu", "1"): 2.0}, ["relu", "gelu"], ["1"],
                          lower_is_better=True)
    assert few.rcbd is None and few.pairwise == []


def test_homogeneity_check_blocks_pooling_under_unequal_variances():
    rng = np.random.default_rng(5)
    even = rng.normal(size=(3, 40)) + np.arange(40)
    assert st.homogeneity(even).passed
    uneven = even.copy()
    uneven[0] += 10 * rng.normal(size=40)  # one activation carries most of the residual
    h = st.homogeneity(uneven)
    assert not h.passed and h.ratio > st.VARIANCE_RATIO_LIMIT


def test_paired_t_with_holm_is_valid_under_unequal_variances_and_pooled_range_is_not():
    # null: equal means, one activation 10x noisier; the pooled studentized range borrows the noisy activation's
    # variance for the quiet pairs, the paired t uses each pair's own. Family-wise error over the 3 pairs.
    rng = np.random.default_rng(6)
    m, k, n = 1500, 3, 6
    y = rng.normal(size=(m, k, n)) * np.array([10.0, 1.0, 1.0])[None, :, None] + rng.normal(size=(m, 1, n))
    pairs = [(0, 1), (0, 2), (1, 2)]
    d = np.stack([y[:, i] - y[:, j] for i, j in pairs], axis=1)  # (m, 3, n)
    t = d.mean(axis=2) / (d.std(axis=2, ddof=1) / math.sqrt(n))
    p = 2 * sps.t.sf(np.abs(t), n - 1)
    holm = np.array([st.holm(row) for row in p])
    assert holm == pytest.approx(np.array([[x.p_holm for x in st.pairwise(y[i], "abc", 1.0, 10)] for i in range(3)]
                                          + [list(r) for r in holm[3:]]))
    fw_t = int(np.sum((holm < 0.05).any(axis=1)))
    resid = y - y.mean(axis=2, keepdims=True) - y.mean(axis=1, keepdims=True) + y.mean(axis=(1, 2), keepdims=True)
    ms_e = (resid**2).sum(axis=(1, 2)) / ((k - 1) * (n - 1))
    q = np.abs(y[:, 1].mean(axis=1) - y[:, 2].mean(axis=1)) / np.sqrt(ms_e / n)
    fw_q = int(np.sum(q > sps.studentized_range.ppf(0.95, k, (k - 1) * (n - 1))))  # the quiet pair b-c alone
    bound = 0.05 + 3 * math.sqrt(0.05 * 0.95 / m)
    assert fw_t / m <= bound
    assert fw_q / m < 0.01  # pooled error inflated by the noisy arm: b-c is almost never found (miscalibrated)


def test_zero_variance_gives_nan_not_zero():
    y = np.array([[1.0, 2.0, 3.0], [1.0, 2.0, 3.0]])  # identical treatments: SS_A = SS_E = 0
    r = st.rcbd_anova(y)
    assert r.ss_a == 0.0 and r.ss_e == 0.0
    assert math.isnan(r.f_a) and math.isnan(r.p_a)
