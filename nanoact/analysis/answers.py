"""The question and the answer of every entry of the hypothesis list (``Hypothesis.question`` and ``.answer``)."""

from __future__ import annotations

import math

from nanoact.analysis.formatting import p_text, sig, signed_pct
from nanoact.analysis.hypotheses import Hypothesis
from nanoact.analysis.stats import ALPHA

LABELS = {"final_val_loss": "final val loss", "final_val_acc": "final val acc", "best_val_loss": "best val loss",
          "pd_tv": "pd_tv"}


SOURCE_QUESTIONS = {
    "activation_vs_reseeding": "Do runs of different activations (different init and data-order seeds) differ in "
                               "pd_tv by more than runs of one activation with different init and data-order seeds "
                               "(a distance between the activations' distributions of fitted functions)?",
    "init_only_vs_reseeding": "Does changing only the initial weights move predictions by a different amount than "
                              "changing both seeds does?",
    "data_only_vs_reseeding": "Does changing only the batch order move predictions by a different amount than "
                              "changing both seeds does?",
    "init_only_vs_data_only": "Do initial weights and batch order move predictions by different amounts?",
}


def ci_text(h: Hypothesis, d: int = 4) -> str:
    lo, hi = h.ci
    return f"95% CI [{sig(lo, d)}, {sig(hi, d)}]" if math.isfinite(lo) and math.isfinite(hi) else "no interval"


def stat_text(h: Hypothesis) -> str:
    df = ", ".join(sig(x, 3) for x in h.df)
    name = {"delta": "Δ"}.get(h.statistic_name, h.statistic_name)
    head = f"{name}({df})" if df else name
    adj = f", Holm-adjusted p {p_text(h.p_adjusted)}" if h.p_adjusted != h.p and math.isfinite(h.p_adjusted) else ""
    return f"{h.method}: {head} = {sig(h.statistic)}, p {p_text(h.p)}{adj}"


def question(h: Hypothesis) -> str:
    what, subj = LABELS.get(h.measure, h.measure), h.subjects
    if h.kind in ("rcbd", "friedman", "quasi_f"):
        return f"Does {what} differ between activations ({', '.join(subj)})?"
    if h.kind in ("paired_t", "studentized_range"):
        return f"Does {what} differ between {subj[0]} and {subj[1]}?"
    if h.kind == "tost" and h.measure == "pd_tv":
        return (f"Are {subj[0]} and {subj[1]} equally reproducible: is their relative difference in seed-to-seed "
                f"{what} within ±{sig(h.margin, 3)}?")
    if h.kind == "tost":
        return f"Are {subj[0]} and {subj[1]} equivalent in {what}: is the difference within ±{sig(h.margin, 3)}?"
    if h.kind == "pd_cross_within" and h.family == "pd_cross_within_pairs":
        return (f"Do the distributions of fitted functions of {subj[0]} and {subj[1]} differ: are runs of the two "
                f"further apart in {what} than runs of one of them (different seeds on both sides)?")
    if h.kind == "pd_cross_within":
        return ("Do the activations' distributions of fitted functions differ: are runs of different activations "
                f"further apart in {what} than runs of the same activation (different seeds on both sides)?")
    if h.kind == "pd_activation_only" and h.family == "pd_activation_only_pairs":
        return (f"Does changing only the activation between {subj[0]} and {subj[1]} (same seed: same initial weights "
                f"and batch order) move {what} more or less than reseeding one activation does?")
    if h.kind == "pd_activation_only":
        return ("Does changing only the activation (same seed: same initial weights and batch order) move "
                f"{what} more or less than reseeding does, averaged over pairs of activations?")
    if h.kind == "pd_reproducibility":
        return (f"Do {subj[0]} and {subj[1]} differ in seed-to-seed {what} (reproducibility), relative to its mean "
                "(W_a − W_b) / mean(W_a, W_b)?")
    return SOURCE_QUESTIONS.get(subj[0], f"{h.kind}?")


def interval_text(h: Hypothesis, d: int = 4) -> str:
    """The 95% interval and, when it is not the inverted test, how it was made."""
    text = ci_text(h, d)
    if "separate" not in h.interval or text == "no interval":
        return text
    lo, hi = h.ci
    disagree = ("; it includes 0 although the test rejects: the two methods disagree near the boundary, and at "
                f"{h.n_seeds} seeds the interval is the less sensitive" if h.significant and lo <= 0 <= hi else "")
    return f"{text} ({h.interval}{disagree})"


def _absence(h: Hypothesis) -> str:
    """MDD at these seeds and the seeds a difference of interest would need (never from the observed effect)."""
    if not math.isfinite(h.mdd):
        return ""
    need = (f"{h.seeds_for_margin} seeds would detect a difference of ±{sig(h.margin, 3)} (the stated margin) with "
            "80% power" if h.seeds_for_margin else f"more than 1000 seeds would be needed for ±{sig(h.margin, 3)}")
    return (f"; with {h.n_seeds} seeds the smallest difference detected with 80% power is {sig(h.mdd, 3)}; {need}")


def _verdict(h: Hypothesis) -> str:
    if h.kind == "tost":
        return (f"Equivalent within ±{sig(h.margin, 3)}" if h.outcome == "equivalent" else
                f"Equivalence within ±{sig(h.margin, 3)} not shown")
    if h.outcome == "gated":
        return "Not claimed: the primary F test did not reject (closed testing)"
    if h.outcome != "difference":
        return "Not detected"
    if h.kind == "pd_activation_only":
        return "Yes, more than reseeding" if h.estimate > 0 else "Yes, less than reseeding"
    return "Yes"


def answer(h: Hypothesis) -> str:
    if h.outcome == "cannot_conclude":
        why = (f"with {h.n_seeds} seeds the smallest p this test can give is {sig(h.p_floor, 3)}, above its "
               f"threshold after Holm's adjustment" if h.p_floor > 0 else "the test is not defined with these data")
        need = f"; it needs at least {h.seeds_needed} seeds" if h.seeds_needed else ""
        return f"Cannot conclude: {why}{need} (estimate {sig(h.estimate)}, {interval_text(h)})."
    tail = _absence(h) if h.outcome == "no_detectable_difference" else ""
    if h.kind in ("rcbd", "quasi_f"):
        x = h.extra
        mde = f" (detectable at 80% power: {sig(x['mde'], 3)})" if math.isfinite(x.get("mde", math.nan)) else ""
        est = (f"best {x['best']} {sig(x['best_mean'])}, worst {x['worst']} {sig(x['worst_mean'])}, "
               f"gap {sig(h.estimate)}{mde}; partial η² = {sig(x['partial_eta2'], 3)}")
    elif h.kind == "pd_cross_within" and "relative" in h.extra:
        lo, hi = h.extra["relative_ci"]
        est = (f"Δ = {sig(h.estimate)}, {interval_text(h)}; relative to the seed-to-seed PD, "
               f"Δ/W = {signed_pct(h.extra['relative'])} (95% CI [{signed_pct(lo)}, {signed_pct(hi)}], jackknife)")
    elif math.isfinite(h.estimate):
        est = f"estimate {sig(h.estimate)}, {interval_text(h)}"
    else:
        est = ""
    return f"{_verdict(h)}: {est}{'; ' if est else ''}{stat_text(h)} (α = {ALPHA}{tail})."


def fill_text(tests: list[Hypothesis]) -> None:
    for h in tests:
        h.question, h.answer = question(h), answer(h)
