"""Sentences of the executive summary that must not say more than their tests."""

from __future__ import annotations

from nanoact.analysis.executive import executive_summary
from nanoact.analysis.hypotheses import Hypothesis


def _pair(a: str, b: str, est: float, ci: list[float], p_adj: float) -> Hypothesis:
    return Hypothesis(id=f"final_val_loss/paired_t/{a}-{b}", kind="paired_t", measure="final_val_loss",
                      family="primary_pairwise", subjects=[a, b], method="seed-paired t", statistic_name="t",
                      statistic=3.0, df=[2], p=0.02, estimate=est, ci=ci, n_seeds=3, interval="inverts the test",
                      margin=0.01, mdd=0.014, seeds_for_margin=4, p_adjusted=p_adj, significant=False,
                      outcome="no_detectable_difference")


def test_a_pair_interval_that_excludes_0_without_a_holm_rejection_is_called_unadjusted():
    # the zoo's charlm: relu - smelu_1 = -0.0041, 95% CI [-0.0073, -0.0008], not significant after Holm over 6 pairs
    fam = [_pair("relu", "smelu_1", -0.0041, [-0.0073, -0.0008], 0.12),
           _pair("gelu", "relu", 0.001, [-0.002, 0.004], 1)]
    text = " ".join(item["text"] for item in executive_summary(fam, 3) if "by pair" in item["text"])
    assert "no difference detected" in text and "[-0.0073, -0.0008]" in text.replace("−", "-")
    assert "unadjusted for the 2 pairs, so it can exclude 0 where Holm does not reject" in text
    inside = [_pair("relu", "smelu_1", -0.003, [-0.007, 0.001], 0.5), _pair("gelu", "relu", 0.001, [-0.002, 0.004], 1)]
    text = " ".join(item["text"] for item in executive_summary(inside, 3) if "by pair" in item["text"])
    assert "no difference detected" in text and "unadjusted" not in text


def test_a_separate_interval_that_includes_0_beside_a_rejecting_test_says_so():
    from nanoact.analysis.answers import interval_text

    # the zoo's charlm: cross-vs-within Δ = 0.00027, jackknife CI [-0.00052, 0.0011], exact relabelling p = 0.0035
    h = Hypothesis(id="pd_tv/cross_vs_within", kind="pd_cross_within", measure="pd_tv", family="pd_distribution",
                   subjects=["gelu", "relu"], method="within-seed relabelling (exact)", statistic_name="Δ",
                   statistic=0.00027, df=[], p=0.0035, estimate=0.00027, ci=[-0.00052, 0.0011], n_seeds=3,
                   interval="delete-one-seed jackknife t on 2 df, separate from the test", significant=True)
    assert "it includes 0 although the test rejects" in interval_text(h)
    h.ci = [0.0001, 0.0011]
    assert "includes 0" not in interval_text(h) and "separate from the test" in interval_text(h)
