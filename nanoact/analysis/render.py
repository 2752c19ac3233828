"""Words for the numbers: hypothesis questions and answers, the executive summary, the headline, report.md.

Every sentence of the executive summary is built from entries of the hypothesis list (``Hypothesis``) and carries
their ids, so summary.json can show which tests stand behind it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from nanoact.analysis.divergence import METRICS
from nanoact.analysis.hypotheses import PRIMARY_OUTCOME, Hypothesis, by_family
from nanoact.analysis.stats import ALPHA, VARIANCE_RATIO_LIMIT

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
CITE_SD = ("Summers & Dinneen, \"Nondeterminism and instability in neural network optimization\", ICML 2021")
CITE_BH = ("Bhojanapalli et al., \"On the reproducibility and stability of deep networks\", arXiv:2102.03349, 2021")


def f(x: float | None, d: int = 4) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "n/a" if x is None or math.isnan(x) else ("∞" if x > 0 else "−∞")
    return f"{x:.{d}f}"


def g(x: float | None, d: int = 4) -> str:
    if x is None or not math.isfinite(x):
        return "n/a"
    return f"{x:.{d}g}"


def fp(p: float) -> str:
    if p is None or not math.isfinite(p):
        return "n/a"
    return "< 0.0001" if p < 1e-4 else f"= {p:.4f}"


def ms(vals: Sequence[float], d: int = 4) -> str:
    v = np.array([x for x in vals if math.isfinite(x)], dtype=float)
    if len(v) == 0:
        return "n/a"
    return f"{v.mean():.{d}f} ± {v.std(ddof=1):.{d}f}" if len(v) > 1 else f"{v.mean():.{d}f}"


def table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c).replace("|", "\\|") for c in row) + " |" for row in rows]
    return "\n".join(lines)


def ci(h: Hypothesis, d: int = 4) -> str:
    lo, hi = h.ci
    return f"95% CI [{g(lo, d)}, {g(hi, d)}]" if math.isfinite(lo) and math.isfinite(hi) else "no interval"


def stat_text(h: Hypothesis) -> str:
    df = ", ".join(g(x, 3) for x in h.df)
    name = {"delta": "Δ"}.get(h.statistic_name, h.statistic_name)
    head = f"{name}({df})" if df else name
    adj = f", Holm-adjusted p {fp(h.p_adjusted)}" if h.p_adjusted != h.p and math.isfinite(h.p_adjusted) else ""
    return f"{h.method}: {head} = {g(h.statistic)}, p {fp(h.p)}{adj}"


def question(h: Hypothesis) -> str:
    what, subj = LABELS.get(h.measure, h.measure), h.subjects
    if h.kind in ("rcbd", "friedman", "quasi_f"):
        return f"Does {what} differ between activations ({', '.join(subj)})?"
    if h.kind in ("paired_t", "studentized_range"):
        return f"Does {what} differ between {subj[0]} and {subj[1]}?"
    if h.kind == "tost" and h.measure == "pd_tv":
        return (f"Are {subj[0]} and {subj[1]} equally reproducible: is their relative difference in seed-to-seed "
                f"{what} within ±{g(h.margin, 3)}?")
    if h.kind == "tost":
        return f"Are {subj[0]} and {subj[1]} equivalent in {what}: is the difference within ±{g(h.margin, 3)}?"
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
    text = ci(h, d)
    return f"{text} ({h.interval})" if "separate" in h.interval and text != "no interval" else text


def _absence(h: Hypothesis) -> str:
    """MDD at these seeds and the seeds a difference of interest would need (never from the observed effect)."""
    if not math.isfinite(h.mdd):
        return ""
    need = (f"{h.seeds_for_margin} seeds would detect a difference of ±{g(h.margin, 3)} (the stated margin) with "
            "80% power" if h.seeds_for_margin else f"more than 1000 seeds would be needed for ±{g(h.margin, 3)}")
    return (f"; with {h.n_seeds} seeds the smallest difference detected with 80% power is {g(h.mdd, 3)}; {need}")


def _verdict(h: Hypothesis) -> str:
    if h.kind == "tost":
        return (f"Equivalent within ±{g(h.margin, 3)}" if h.outcome == "equivalent" else
                f"Equivalence within ±{g(h.margin, 3)} not shown")
    if h.outcome == "gated":
        return "Not claimed: the primary F test did not reject (closed testing)"
    if h.outcome != "difference":
        return "Not detected"
    if h.kind == "pd_activation_only":
        return "Yes, more than reseeding" if h.estimate > 0 else "Yes, less than reseeding"
    return "Yes"


def answer(h: Hypothesis) -> str:
    if h.outcome == "cannot_conclude":
        why = (f"with {h.n_seeds} seeds the smallest p this test can give is {g(h.p_floor, 3)}, above its "
               f"threshold after Holm's adjustment" if h.p_floor > 0 else "the test is not defined with these data")
        need = f"; it needs at least {h.seeds_needed} seeds" if h.seeds_needed else ""
        return f"Cannot conclude: {why}{need} (estimate {g(h.estimate)}, {interval_text(h)})."
    tail = _absence(h) if h.outcome == "no_detectable_difference" else ""
    if h.kind in ("rcbd", "quasi_f"):
        x = h.extra
        mde = f" (detectable at 80% power: {g(x['mde'], 3)})" if math.isfinite(x.get("mde", math.nan)) else ""
        est = (f"best {x['best']} {g(x['best_mean'])}, worst {x['worst']} {g(x['worst_mean'])}, gap {g(h.estimate)}"
               f"{mde}; partial η² = {g(x['partial_eta2'], 3)}")
    elif h.kind == "pd_cross_within" and "relative" in h.extra:
        lo, hi = h.extra["relative_ci"]
        est = (f"Δ = {g(h.estimate)}, {interval_text(h)}; relative to the seed-to-seed PD, Δ/W = {pct(h.extra['relative'])}"
               f" (95% CI [{pct(lo)}, {pct(hi)}], jackknife)")
    elif math.isfinite(h.estimate):
        est = f"estimate {g(h.estimate)}, {interval_text(h)}"
    else:
        est = ""
    return f"{_verdict(h)}: {est}{'; ' if est else ''}{stat_text(h)} (α = {ALPHA}{tail})."


def pct(x: float) -> str:
    return f"{100 * x:+.1f}%" if x is not None and math.isfinite(x) else "n/a"


def fill_text(tests: list[Hypothesis]) -> None:
    for h in tests:
        h.question, h.answer = question(h), answer(h)


# ---------------------------------------------------------------------------------------------------------------
# executive summary and headline: built from the hypothesis list only


def _item(text: str, tests: list[Hypothesis]) -> dict[str, Any]:
    return {"text": text, "tests": [h.id for h in tests]}


FAMILY_WORDS = {
    "primary": "final val loss, one F test at α = 0.05",
    "primary_pairwise": "final val loss by pair: claimed only when the primary F rejects (closed testing), then "
                        "Holm over the pairs; familywise error ≤ α",
    "primary_equivalence": "final val loss equivalence (TOST) by pair, Holm; familywise error ≤ α",
    "secondary": "other outcomes' F tests, Holm; familywise error ≤ α",
    "pd_distribution": "the PD distribution test (cross vs within), alone; error ≤ α",
    "pd_cross_within_pairs": "the same by pair, Holm; familywise error ≤ α",
    "pd_activation_only": "same-seed PD against reseeding over all pairs, alone; error ≤ α",
    "pd_activation_only_pairs": "the same by pair, Holm; familywise error ≤ α",
    "pd_reproducibility_pairs": "reproducibility by pair, Holm; familywise error ≤ α",
    "pd_reproducibility_equivalence": "reproducibility equivalence (TOST) by pair, Holm; familywise error ≤ α",
    "sources": "PD-by-source contrasts, Holm; familywise error ≤ α",
}


def _seeds_needed(h: Hypothesis) -> str:
    """How many seeds would let the test decide, when the test can say (not from a jackknife over 2 seeds)."""
    if h.seeds_needed:
        return f"; that needs at least {h.seeds_needed} seeds"
    return f"; how many seeds it would need cannot be estimated from {h.n_seeds}"


def _pair_est(h: Hypothesis) -> str:
    a, b = h.subjects[0], h.subjects[1]
    if h.kind == "pd_cross_within":
        return f"{a} vs {b}: symmetric excess Δ = {g(h.estimate)}"
    if h.kind == "pd_activation_only":
        return f"{a} vs {b}: same-seed minus seed-to-seed pd_tv = {g(h.estimate)}"
    if h.kind == "pd_reproducibility":
        return f"(W_{a} − W_{b}) / mean(W_{a}, W_{b}) = {g(h.estimate, 3)}"
    return f"{a} − {b} = {g(h.estimate)}"


def _no_pair_detected(fam: list[Hypothesis], what: str, how: str, tail: str) -> dict[str, Any]:
    big = max(fam, key=lambda h: abs(h.estimate) if math.isfinite(h.estimate) else -1)
    mdd = [h.mdd for h in fam if math.isfinite(h.mdd)]
    power = (f"; with {big.n_seeds} seeds the smallest difference detected with 80% power is about {g(max(mdd), 3)}"
             f"{_margin_seeds(fam)}" if mdd else "")
    return _item(f"{what}: no difference detected ({how}, Holm over {len(fam)} pairs; largest estimate "
                 f"{_pair_est(big)}, {interval_text(big)}{power}). Not detected is not the same as equal.{tail}", fam)


def _margin_seeds(fam: list[Hypothesis]) -> str:
    need = [h.seeds_for_margin for h in fam if math.isfinite(h.mdd)]
    if not need:
        return ""
    if None in need:
        return f"; more than 1000 seeds would be needed for ±{g(fam[0].margin, 3)}"
    return f"; about {max(need)} seeds would detect ±{g(fam[0].margin, 3)} (the stated margin) in every pair"


def _pairs_sentence(fam: list[Hypothesis], what: str, how: str) -> dict[str, Any] | None:
    if not fam:
        return None
    sig = [h for h in fam if h.significant]
    if all(h.outcome == "cannot_conclude" for h in fam):
        h = fam[0]
        why = (f"its smallest possible p, {g(h.p_floor, 3)}, is above α/{len(fam)}" if h.p_floor > 0 else
               f"it gives no p-value with {h.n_seeds} seeds")
        return _item(f"{what}: no pair can be decided with {h.n_seeds} seeds ({how}; {why}){_seeds_needed(h)}.", fam)
    undecided = [h for h in fam if h.outcome == "cannot_conclude"]
    tail = (f" {len(undecided)} pair(s) cannot be decided with {undecided[0].n_seeds} seeds (p-value floor)"
            f"{_seeds_needed(undecided[0])}." if undecided else "")
    gated = [h for h in fam if h.outcome == "gated"]
    if gated:
        return _item(f"{what}: not claimed, because the primary F test did not reject (closed testing); "
                     f"{len(gated)} pair(s) would otherwise have passed Holm.", fam)
    if not sig:
        return _no_pair_detected(fam, what, how, tail)
    parts = [f"{_pair_est(h)} ({interval_text(h)}, Holm p {fp(h.p_adjusted)})" for h in sig]
    return _item(f"{what}: {len(sig)} of {len(fam)} pairs differ ({how}, Holm over {len(fam)} pairs): "
                 + "; ".join(parts) + "." + tail, fam)


def _equivalence_sentence(fam: list[Hypothesis], what: str) -> dict[str, Any] | None:
    if not fam:
        return None
    eq = [h for h in fam if h.outcome == "equivalent"]
    m = g(fam[0].margin, 3)
    if len(eq) == len(fam):
        return _item(f"{what}: every pair is equivalent within ±{m} (TOST, Holm over {len(fam)} pairs).", fam)
    names = ", ".join(f"{h.subjects[0]}–{h.subjects[1]}" for h in eq) or "none"
    return _item(f"{what}: equivalence within ±{m} (the stated margin) is shown for {len(eq)} of {len(fam)} pairs "
                 f"({names}; TOST, Holm); for the others it is not shown, so they are not called equal.", fam)


def _sources_sentences(tests: list[Hypothesis], shares) -> list[dict[str, Any]]:
    out = [_item(f"{h.question} {h.answer}", [h]) for h in by_family(tests, "sources")]
    if shares:
        out.append(_item(share_sentence(shares), [h for h in by_family(tests, "sources")
                                                  if h.subjects[0] in ("init_only_vs_reseeding",
                                                                       "data_only_vs_reseeding")]))
    return out


def executive_summary(tests: list[Hypothesis], n_seeds: int, shares=None) -> list[dict[str, Any]]:
    """Sentences, each with the ids of the tests behind it; confirmatory families only."""
    out = [_item(f"Primary outcome, final val loss. {h.question} {h.answer}", [h]) for h in by_family(tests, "primary")]
    pw = by_family(tests, "primary_pairwise")
    out.append(_pairs_sentence(pw, "Final val loss by pair of activations", pw[0].method if pw else ""))
    out.append(_equivalence_sentence(by_family(tests, "primary_equivalence"), "Final val loss equivalence"))
    out += [_item(f"{h.question} {h.answer}", [h]) for h in by_family(tests, "secondary")]
    for h in by_family(tests, "pd_distribution"):
        out.append(_item(f"{h.question} {h.answer} {attribution(tests)}", [h] + _repro(tests)))
    out.append(_pairs_sentence(by_family(tests, "pd_cross_within_pairs"),
                               "Distributions of fitted functions by pair (cross vs within PD)", "relabelling test"))
    out += [_item(f"{h.question} {h.answer}", [h]) for h in by_family(tests, "pd_activation_only")]
    out.append(_pairs_sentence(by_family(tests, "pd_activation_only_pairs"),
                               "Same-seed PD against reseeding by pair of activations", "jackknife t"))
    out.append(_pairs_sentence(by_family(tests, "pd_reproducibility_pairs"),
                               "Seed-to-seed PD (reproducibility) by pair, relative difference", "jackknife t"))
    out.append(_equivalence_sentence(by_family(tests, "pd_reproducibility_equivalence"), "Equal reproducibility"))
    out += _sources_sentences(tests, shares)
    if not any(h.family == "primary" for h in tests):
        out.insert(0, _item(f"No blocked test was possible with {n_seeds} complete seed block(s); it needs at "
                            "least 2 activations and 2 seeds.", []))
    return [x for x in out if x]


def _repro(tests: list[Hypothesis]) -> list[Hypothesis]:
    return by_family(tests, "pd_reproducibility_pairs") + by_family(tests, "pd_reproducibility_equivalence")


def attribution(tests: list[Hypothesis]) -> str:
    """Whether a distribution difference can be read as "what the activations predict" (checks W_a − W_b)."""
    rep = by_family(tests, "pd_reproducibility_pairs")
    eqv = by_family(tests, "pd_reproducibility_equivalence")
    if not rep:
        return ("Reproducibility (W_a − W_b) could not be tested here, so a difference may be in what the "
                "activations predict or in how reproducible they are.")
    diff = [h for h in rep if h.significant]
    if diff:
        names = ", ".join(f"{h.subjects[0]} vs {h.subjects[1]}" for h in diff)
        return (f"Seed-to-seed PD differs ({names}), so at least part of any distribution difference is a "
                "difference in reproducibility, not only in what the activations predict.")
    if eqv and all(h.outcome == "equivalent" for h in eqv):
        return (f"Reproducibility is equal within ±{g(eqv[0].margin, 3)} for every pair (TOST), so a distribution "
                "difference is a difference in what the activations predict.")
    return ("No reproducibility difference was detected, but equality is not shown (TOST), so a distribution "
            "difference may be in what the activations predict or in how reproducible they are.")


def share_sentence(shares) -> str:
    """The Summers & Dinneen comparison as an interval statement, on the PD scale."""
    by = {c.name: c for c in shares}
    parts = [f"only the {w} {pct1(by[n].mean)} (95% CI [{pct1(by[n].lo)}, {pct1(by[n].hi)}])"
             for n, w in (("init_share", "initial weights"), ("data_share", "batch order")) if n in by]
    below = [c for c in shares if c.name in ("init_share", "data_share") and math.isfinite(c.hi) and c.hi < 1]
    verdict = ("both intervals lie below 100%: a single source gives most, but not all, of the PD of changing both"
               if len(below) == 2 else "not every interval excludes 100%")
    return (f"Share of reseeding's pd_tv (a ratio of mean PDs, on the PD scale, not a share of variance; two-way "
            f"jackknife): changing {' and '.join(parts)}; {verdict}. For comparison, Summers & Dinneen found that "
            "any single source of nondeterminism gives about the full run-to-run variability.")


def pct1(x: float) -> str:
    return f"{100 * x:.1f}%" if x is not None and math.isfinite(x) else "n/a"


def headline(analyses, anomalies: list[str]) -> str:
    if anomalies:
        names = sorted({a.split(":", 1)[0] for a in anomalies})
        exps = ", ".join(an.er.name for an in analyses)
        return (f"GUARDS FAILED on {exps} ({len(anomalies)} anomalies: {', '.join(names)}): the results below are "
                "not trustworthy until these are explained.")
    parts = [_headline_one(an) for an in analyses]
    s = "; ".join(parts)
    return s[0].upper() + s[1:] + "."


def _headline_one(an) -> str:
    tests = an.hypotheses
    txt = f"on {an.er.name} ({grid_words(an)}) "
    prim = by_family(tests, "primary")
    txt += _short(prim[0], "final val loss differs between activations",
                  "a final val loss difference was not detected") if prim else "no blocked test was possible"
    for h in by_family(tests, "pd_distribution"):
        txt += "; " + _short(h, "the activations' distributions of fitted functions differ",
                             "a difference between the activations' distributions of fitted functions was not "
                             "detected")
        if h.outcome == "difference":
            why = attribution(tests).rstrip(".")
            txt += " (" + why[0].lower() + why[1:] + ")"
    for h in by_family(tests, "pd_activation_only"):
        txt += "; " + _activation_only_short(h)
    return txt


def _activation_only_short(h: Hypothesis) -> str:
    base = "changing only the activation (same seed)"
    if h.outcome == "cannot_conclude":
        return f"whether {base} moves pd_tv more or less than reseeding cannot be tested with {h.n_seeds} seeds"
    if h.outcome == "difference":
        word = "more" if h.estimate > 0 else "less"
        return (f"{base} moves pd_tv {word} than reseeding (by {g(abs(h.estimate), 2)}, {ci(h, 2)}, "
                f"t({g(h.df[0], 3)}) = {g(h.statistic, 3)}, p {fp(h.p)})")
    return (f"a difference between {base} and reseeding was not detected in pd_tv (same-seed minus seed-to-seed "
            f"{g(h.estimate, 2)}, {ci(h, 2)})")


def grid_words(an) -> str:
    """The design analysed, measured against the grid (declared by the sweep, else inferred from the runs): a
    partial grid is never described as complete."""
    er, src = an.er, an.sources
    declared = er.grid is not None and er.grid.declared
    of = " declared" if declared else ""
    ka, kd = len({r.activation for r in an.runs}), len(er.activations)
    na, nd = len({r.seed for r in an.runs}), len(er.seeds)
    acts = f"{ka} activations" if ka == kd else f"{ka} of {kd}{of} activations"
    if src is not None and na == nd:
        seeds = f"{len(src.init_seeds)} init × {len(src.data_seeds)} data-order seeds"
    else:
        seeds = f"{na} seeds" if na == nd else f"{na} of {nd}{of} seeds"
    cells = len(er.runs) + len(er.missing)
    txt = f"{acts} × {seeds}" + (f", {len(er.runs)} of {cells}{of} cells" if er.missing else "")
    return txt if declared or er.grid is None else txt + ", as found: no grid was declared"


def _short(h: Hypothesis, yes: str, no: str) -> str:
    if h.outcome == "cannot_conclude":
        return f"cannot conclude whether {yes} with {h.n_seeds} seeds"
    word = yes if h.outcome == "difference" else no
    if h.kind == "pd_cross_within":
        return (f"{word} (Δ pd_tv = {g(h.estimate, 3)}, jackknife {ci(h, 3)}; relabelling test p {fp(h.p)}"
                f"{', Monte Carlo' if not h.extra.get('exact', True) else ''})")
    label = "quasi-F" if h.kind == "quasi_f" else "RCBD F"
    return f"{word} ({label} p {fp(h.p)})"


# ---------------------------------------------------------------------------------------------------------------
# report.md sections


def _md_summary(an, h: str) -> list[str]:
    L = [f"{h} Executive summary", "",
         "Each sentence below answers one or more entries of the hypothesis list (summary.json `hypotheses`; ids in "
         "brackets). The primary outcome is final val loss; the other families are Holm-corrected within themselves "
         "(nanoact's docs/REPORT.md, section Hypothesis tests, explains each test). What each family controls:", ""]
    fams = list(dict.fromkeys(x.family for x in an.hypotheses if not x.exploratory))
    L += [f"  - `{fam}`: {FAMILY_WORDS.get(fam, 'Holm; familywise error ≤ α')}" for fam in fams]
    L += ["  - `exploratory:*`: Holm within each, but never quoted as findings, and their non-rejections never as "
          "evidence of no difference", ""]
    for item in executive_summary(an.hypotheses, len(an.er.seeds), shares_of(an)):
        ids = ", ".join(f"`{i}`" for i in item["tests"][:4]) + (" …" if len(item["tests"]) > 4 else "")
        L.append(f"- {item['text']}" + (f" [{ids}]" if ids else ""))
    return L + [""]


def shares_of(an):
    return an.sources.shares if an.sources is not None else None


def _n(n: int, word: str) -> str:
    """``1 seed``, ``2 seeds``."""
    return f"{n} {word}{'' if n == 1 else 's'}"


def _md_config(an, h: str) -> list[str]:
    runs = an.runs
    acts = sorted({r.activation for r in runs})
    common, varying = {}, {}
    for k in sorted(set().union(*(r.params for r in runs))):
        vals = {r.params.get(k, "—") for r in runs}
        if len(vals) == 1:
            common[k] = vals.pop()
        elif k not in ("activation", "seed", "model.activation", "train.seed"):
            varying[k] = vals
    n_params = {a: sorted({r.tags.get("nanoact.n_params", "n/a") for r in runs if r.activation == a}) for a in acts}
    L = [f"{h} Configuration", "",
         f"- experiment `{an.er.name}` (id {an.er.experiment_id}); analysed: {grid_words(an)}; {len(runs)} runs",
         f"- grid: {_n(len(an.er.activations), 'activation')} × {_n(len(an.er.seeds), 'seed')} = "
         f"{_n(len(an.er.activations) * len(an.er.seeds), 'cell')}"
         + (f", {an.er.grid.source}" if an.er.grid is not None else ""),
         f"- evaluation set for PD: {an.n_contexts} contexts × {an.vocab_size} classes, drawn once from the val "
         f"split and identical for every run (sha256 `{an.eval_sha256 or 'not tagged'}`); checkpoint steps "
         f"{an.steps}, PD tests at the final step {an.final_step}",
         f"- val loss and val accuracy are means over a fixed sample of {an.eval_iters or 'train.eval_iters'} val "
         "batches (the same batches for every run), not the whole val split; loss is cross-entropy in nats per "
         "character",
         "- parameter count (tag nanoact.n_params): " + "; ".join(f"{a}: {', '.join(v)}" for a, v in n_params.items()),
         f"- devices: {', '.join(sorted({r.tags.get('nanoact.device', 'n/a') for r in runs}))}; compute dtype: "
         f"{an.dtypes or 'not logged'}"]
    if varying:
        L.append("- params that vary between runs besides activation and seed: "
                 + "; ".join(f"`{k}` ∈ {sorted(v)}" for k, v in varying.items()))
    L += [f"- {n}" for n in an.notes]
    L += ["", "<details><summary>Resolved config shared by all runs</summary>", "",
          table(["param", "value"], [(f"`{k}`", v) for k, v in common.items()]), "", "</details>", ""]
    return L


def _md_runs(an, h: str) -> list[str]:
    runs = an.runs
    best = [] if an.best_equals_final else ["best val loss"]
    rows = [[f"`{r.run_id}`", r.activation, r.seed, f(r.metric("final/train_loss")), f(r.metric("final/val_loss"))]
            + ([] if an.best_equals_final else [f(r.metric("best/val_loss"))])
            + [f(r.metric("final/train_acc")), f(r.metric("final/val_acc")), f(an.eval_acc.get(r.run_id, math.nan)),
               f(r.metric("time/train_s"), 1)] for r in runs]
    L = [f"{h} Per-trial results", ""]
    if an.best_equals_final:
        L += ["Best val loss equals final val loss for every run, so it is not shown separately.", ""]
    return L + [table(["run id", "activation", "seed", "final train loss", "final val loss", *best, "final train acc",
                       "final val acc", "eval-set acc", "train time (s)"], rows), ""]


def _md_per_activation(an, h: str) -> list[str]:
    runs = an.runs
    best = [] if an.best_equals_final else ["best val loss"]
    rows = []
    for a in sorted({r.activation for r in runs}):
        rs = [r for r in runs if r.activation == a]
        rows.append([a, len(rs), ms([r.metric("final/train_loss") for r in rs]), ms([r.metric("final/val_loss") for r in rs])]
                    + ([] if an.best_equals_final else [ms([r.metric("best/val_loss") for r in rs])])
                    + [ms([r.metric("final/train_acc") for r in rs]), ms([r.metric("final/val_acc") for r in rs]),
                       ms([r.metric("time/train_s") for r in rs], 1), ", ".join(f"`{r.run_id[:8]}`" for r in rs)])
    return [f"{h} Per-activation results (mean ± s.d. over seeds)", "",
            table(["activation", "n", "final train loss", "final val loss", *best, "final train acc", "final val acc",
                   "train time (s)", "runs"], rows), ""]

PD_INTRO = (
    "Metrics on the fixed evaluation set, averaged over its contexts (Shamir et al., \"Smooth activations and "
    "reproducibility in deep networks\", arXiv:2010.09931): pd_tv = total variation ½Σ|p_a − p_b| in [0, 1]; "
    "pd_top1 = share of contexts whose top-1 prediction differs; pd_label = |p_a(y) − p_b(y)|; pd_label_rel = the "
    "same relative to the mean of the two; js = Jensen–Shannon divergence in nats (at most ln 2). Pairs share runs, "
    "so every standard error is a delete-one-seed jackknife and intervals use t on (seeds − 1) df; tests permute "
    "or delete whole seeds, never pairs."
)


def _jack_words(pd) -> str:
    return ("two-way (init seed + data seed) jackknife" if pd.design == "crossed" else "delete-one-seed jackknife")


def _md_pd_tables(an, pd) -> list[str]:
    acts = pd.activations
    rows = [[a, f"{f(e.mean)} ± {f(e.se)}", f(e.context_se), f"[{f(e.lo)}, {f(e.hi)}]"] for a, e in zip(acts, pd.within)]
    L = [f"Seed-to-seed {pd.metric} within each activation at step {pd.step}: mean over pairs of seeds ± "
         f"{_jack_words(pd)} SE; the SE from resampling the {an.n_contexts} evaluation contexts; 95% interval with "
         f"both (half-width √((t_{pd.df}·seed SE)² + (1.96·context SE)²)):", "",
         table(["activation", "mean ± seed SE", "context SE", "95% CI"], rows), ""]
    rows = []
    for i in range(len(acts)):
        for j in range(i + 1, len(acts)):
            w = 0.5 * (pd.within[i].mean + pd.within[j].mean)
            rows.append([f"{acts[i]} vs {acts[j]}", f"{f(pd.cross[i, j])} ± {f(pd.cross_se[i, j])}",
                         f"{f(pd.excess[i, j])} ± {f(pd.excess_se[i, j])}", f(pd.same_seed[i, j]),
                         f(pd.same_seed[i, j] - w), g(pd.same_seed_ratio[i, j], 3)])
    L += [f"Between activations ({pd.metric}; ± {_jack_words(pd)} SE): *cross* = runs of the two activations with "
          "different seeds; *excess* = cross − (W_a + W_b)/2, a symmetric distance between the two activations' "
          "distributions of fitted functions (it grows when either is less reproducible, and with the square of a "
          "systematic difference, so it is not the size of a difference of a and b); *same seed* = runs of the two "
          "with the same seed (only the activation differs), and its difference from (W_a + W_b)/2; the "
          "near-identity ratio (median same-seed PD / seed-to-seed PD):",
          "", table(["pair", "cross ± SE", "excess ± SE", "same seed", "same seed − W", "same-seed ratio"], rows), ""]
    return L


def _md_pd(an, h: str) -> list[str]:
    L = [f"{h} Prediction difference (PD)", "", PD_INTRO, ""]
    pd = an.pd
    if pd is not None:
        L += _md_pd_tables(an, pd)
        tests = [x for x in an.hypotheses if x.measure == pd.metric and not x.kind.startswith("sources")]
        L += _md_tests(tests)
    fin = -1
    rows = [[a, an.within[a]["pd_tv"]["n_pairs"]] + [f"{f(an.within[a][m]['mean'][fin])} ± {f(an.within[a][m]['se'][fin])}"
                                                    for m in METRICS] for a in sorted(an.within)]
    L += [f"All PD metrics within each activation at step {an.final_step} (± jackknife SE over seeds):", "",
          table(["activation", "pairs", *METRICS], rows), ""]
    rows = [[a] + [f(v) for v in an.within[a]["pd_tv"]["mean"]] for a in sorted(an.within)]
    L += ["Mean within-activation pd_tv by step:", "", table(["activation"] + [str(s) for s in an.steps], rows), "",
          f"Every pair's values at every step are in summary.json (`pairs`; {len(an.pairs)} pairs).", ""]
    return L


OUTCOME_WORDS = {"difference": "yes", "no_detectable_difference": "not detected", "cannot_conclude": "cannot conclude",
                 "gated": "not claimed (gate)", "equivalent": "equivalent", "not_equivalent": "not shown"}


def _md_tests(tests: list[Hypothesis]) -> list[str]:
    if not tests:
        return []
    rows = [(f"`{h.id}`", h.family, g(h.estimate), ci(h), h.interval or "—", f"{h.statistic_name} = {g(h.statistic)}",
             ", ".join(g(x, 3) for x in h.df) or "—", f(h.p), f(h.p_adjusted), g(h.mdd, 3),
             OUTCOME_WORDS.get(h.outcome, h.outcome)) for h in tests]
    return [table(["test", "family", "estimate", "95% interval", "interval method", "statistic", "df", "p",
                   "adjusted p", "MDD (80%)", "result"], rows), ""]


def _md_sources(an, h: str) -> list[str]:
    src = an.sources
    if src is None:
        return []
    rows = [(c.name, c.n_pairs, f"{f(c.mean)} ± {f(c.se)}", f"[{f(c.lo)}, {f(c.hi)}]") for c in src.categories]
    L = [f"{h} PD by source of variation", "",
         f"Activations {', '.join(src.activations)} × init seeds {', '.join(src.init_seeds)} × data-order seeds "
         f"{', '.join(src.data_seeds)}, crossed. Mean pd_tv at step {an.final_step} of pairs of runs that differ in "
         "the named sources only; SE is the two-way (init seed + data seed) jackknife, intervals t on "
         f"{src.categories[0].df} df. Background: {CITE_SD} found that any single source of nondeterminism gives "
         f"about the full run-to-run variability; {CITE_BH} studied churn by source.", "",
         table(["differs in", "pairs", "mean ± SE", "95% CI"], rows), ""]
    L += _md_tests([x for x in an.hypotheses if x.family == "sources"])
    rows = [(c.name, pct1(c.mean), f"[{pct1(c.lo)}, {pct1(c.hi)}]") for c in src.shares]
    L += ["Shares of the init+data (reseeding) pd_tv, as ratios of mean PDs (PD scale, not variance), with "
          "two-way jackknife intervals:", "", table(["share", "estimate", "95% CI"], rows), "",
          "- " + share_sentence(src.shares)]
    return L + [""]


def _md_outcome(an, o) -> list[str]:
    primary = " (primary outcome)" if o.outcome == PRIMARY_OUTCOME else " (secondary; Holm-corrected with the other " \
                                                                       "secondary tests)"
    L = [f"**{o.label}**{primary}", ""]
    if o.rcbd is None:
        return L + [f"No blocked test: {len(o.activations)} activation(s) and {len(o.seeds)} complete seed block(s); "
                    "it needs at least 2 of each.", ""]
    r = o.rcbd
    L += [table(["source", "SS", "df", "MS", "F", "p"], [
        ("activation", f"{r.ss_a:.4g}", r.df_a, f"{r.ms_a:.4g}", f(r.f_a, 3), f(r.p_a, 4)),
        ("seed (block)", f"{r.ss_s:.4g}", r.df_s, f"{r.ms_s:.4g}", f(r.f_s, 3), f(r.p_s, 4)),
        ("residual", f"{r.ss_e:.4g}", r.df_e, f"{r.ms_e:.4g}", "", "")]), ""]
    L += _md_crossed(o)
    L.append(f"- Effect sizes: partial η² = {g(r.partial_eta2, 3)}, partial ω² = {g(r.partial_omega2, 3)}. Variance "
             f"components: activation {g(r.var_activation)}, seed {g(r.var_seed)}, residual {g(r.var_residual)}.")
    L.append(f"- Power: with {r.k} activations and {r.n} seeds the smallest best-to-worst gap detectable at 80% "
             f"power (α = {ALPHA}) is {g(o.mde_sigma, 3)} σ_e ≈ {g(o.mde, 3)}.")
    fr, hom = o.friedman, o.homogeneity
    if fr is not None and not math.isfinite(fr.f_id) and math.isfinite(fr.q):
        L.append(f"- Friedman Q = {g(fr.q)} (p {fp(fr.p)}); the Iman–Davenport F is not defined here: every seed "
                 "ranks the activations the same way, so Q is at its maximum and F would divide by zero.")
    if hom is not None:
        verdict = ("pass: the pooled studentized range is shown as a secondary check" if hom.passed else
                   "fail: the pooled studentized range would be invalid and is not reported")
        L.append(f"- Variances of the seed-paired differences range from {g(hom.min_var)} to {g(hom.max_var)} "
                 f"(ratio {g(hom.ratio, 3)}; pooling needs ≤ {VARIANCE_RATIO_LIMIT:g}): {verdict}.")
    if o.excluded_seeds:
        L.append(f"- Seeds {', '.join(o.excluded_seeds)} were left out: not every activation has a value there.")
    L.append("")
    return L + _md_tests([h for h in an.hypotheses if h.measure == o.outcome])


def _md_crossed(o) -> list[str]:
    c = o.crossed
    if c is None:
        return []
    return [f"Init and data-order seeds are crossed, so the table above (blocks as independent) is for reference "
            f"only. The test: activation against its interactions with the init seed (MS = {g(c.ms_ai)}, df "
            f"{c.df_ai}) and the data seed (MS = {g(c.ms_ad)}, df {c.df_ad}), residual MS = {g(c.ms_aid)} (df "
            f"{c.df_aid}); quasi-F'' = (MS_A + MS_res)/(MS_AI + MS_AD) = {g(c.f, 4)} on Satterthwaite df "
            f"({g(c.df_num, 3)}, {g(c.df_den, 3)}), p {fp(c.p)}. Pairwise tests use the two-way (init + data) SE "
            "with Satterthwaite df.", ""]


def _md_stats(an, h: str) -> list[str]:
    L = [f"{h} Statistics", "",
         "Randomized complete block design: activation = treatment, seed = block (Montgomery, Design and Analysis "
         "of Experiments, ch. 4). Pairwise comparisons use seed-paired t tests with Holm's adjustment, which stay "
         "valid when variances differ; the pooled studentized range is secondary and shown only when the variances "
         "of the paired differences pass a homogeneity check.", ""]
    for o in an.outcomes:
        L += _md_outcome(an, o)
    return L


def _md_compute(an, h: str) -> list[str]:
    runs = an.runs
    rows = [(f"`{r.run_id}`", r.activation, r.seed, f(r.metric("time/wall_s"), 1), f(r.metric("time/train_s"), 1),
             f(r.metric("tokens_per_s_mean"), 0), r.tags.get("nanoact.device", "n/a")) for r in runs]
    L = [f"{h} Compute accounting", "",
         table(["run id", "activation", "seed", "wall (s)", "train (s)", "tokens/s", "device"], rows), ""]
    total = float(np.nansum([r.metric("time/wall_s") for r in runs]))
    return L + [f"Total wall time of the analysed runs: {total:.1f} s ({total / 60:.1f} min).", ""]


CAPTIONS = {"loss_curves": "Train and val loss per activation (mean ± 1 s.d. over seeds; thin: single seeds)",
            "final_metrics": "Final metrics by activation (dots: seeds; black: mean with 95% CI)",
            "pd_heatmap": "pd_tv between every pair of runs at the final step",
            "within_pd_steps": "Mean within-activation PD across steps (± jackknife SE over seeds)",
            "accuracy_vs_pd": "Final val accuracy against each run's pd_tv to its activation's leave-one-out mean "
                              "prediction (descriptive; not a test)"}


def _md_raw(an, h: str, logging_note: str) -> list[str]:
    L = [f"{h} Plots", ""]
    for key, fname in an.plots.items():
        L += [f"![{CAPTIONS[key]}]({fname})", "", f"*{CAPTIONS[key]}*", ""]
    L += [f"{h} Raw data summary", "",
          f"Tracking experiment `{an.er.name}` (id {an.er.experiment_id}); parent run: "
          f"{'`' + an.parent_run_id + '`' if an.parent_run_id else 'none found'}. {logging_note}", ""]
    selected = {r.run_id for r in an.runs}
    superseded = {r.run_id for r in an.er.superseded}
    dup_old = {old.run_id for old, _ in an.er.duplicates}
    every = an.runs + an.er.superseded + an.er.not_finished + [old for old, _ in an.er.duplicates]
    rows = []
    for r in sorted(every, key=lambda r: (r.activation, r.seed, r.start_time)):
        why = ("analysed" if r.run_id in selected else "older attempt of the same grid key" if r.run_id in superseded
               else "duplicate cell (older)" if r.run_id in dup_old else f"not FINISHED ({r.status})")
        start = _utc(r.start_time)
        rows.append((f"`{r.run_id}`", r.run_name, r.activation, r.seed, f"`{r.grid_key}`", r.status, start, why))
    return L + [table(["run id", "name", "activation", "seed", "grid key", "status", "start (UTC)", "used"], rows), ""]


def _utc(ms_epoch: int) -> str:
    import datetime as dt

    return dt.datetime.fromtimestamp(ms_epoch / 1000, dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S")


def experiment_md(an, level: str, logging_note: str) -> list[str]:
    fill_text(an.hypotheses)
    # the per-activation table right after the summary; the config dump last
    return (_md_summary(an, level) + _md_per_activation(an, level) + _md_runs(an, level) + _md_pd(an, level)
            + _md_sources(an, level) + _md_stats(an, level) + _md_compute(an, level)
            + _md_raw(an, level, logging_note) + _md_config(an, level))


def guard_md(analyses, multi: bool) -> list[str]:
    L = ["## Guards", ""]
    failed = [(an, gr) for an in analyses for gr in an.guards if not gr.passed]
    unverified = [(an, gr) for an in analyses for gr in an.guards if gr.status == "UNVERIFIED"]
    if failed:
        L += [f"- **GUARD FAILED: {gr.name}**" + (f" ({an.er.name})" if multi else "")
              + f" — requires: {gr.title}; {len(gr.details)} failure(s), e.g. {gr.details[0]}" for an, gr in failed]
        L += ["", "The numbers below are written for diagnosis only.", ""]
    elif unverified:
        L += [f"No guard failed, but {len(unverified)} could not be checked (UNVERIFIED): "
              + ", ".join(gr.name for _, gr in unverified) + ".", ""]
    else:
        L += ["All guards passed.", ""]
    rows = []
    for an in analyses:
        for gr in an.guards:
            name = ((an.er.name + ": ") if multi else "") + gr.name
            detail = "<br>".join(gr.details[:20]) + (f"<br>… {len(gr.details) - 20} more" if len(gr.details) > 20 else "")
            rows.append((name, gr.title, "**FAIL**" if gr.status == "FAIL" else gr.status, detail or "—"))
    return L + [table(["guard", "checks", "result", "details"], rows), ""]


def comparison_md(rows: list[dict[str, Any]]) -> list[str]:
    body = [(r["experiment"], r["activation"], r["n_runs"], f(r["mean_final_val_loss"]), f(r["mean_within_pd_tv"]),
             f(r["mean_within_pd_top1"]), f(r["mean_wall_s"], 1), ", ".join(f"`{x[:8]}`" for x in r["run_ids"]))
            for r in rows]
    return ["## Comparison across experiments", "",
            table(["experiment", "activation", "runs", "mean final val loss", "mean within-activation pd_tv",
                   "mean within-activation pd_top1", "mean wall (s)", "runs"], body), ""]


def make_plots(an, out, prefix: str) -> None:
    """Writes the PNGs into ``out`` and records their file names in ``an.plots``."""
    from nanoact.analysis import plots as pl

    runs = an.runs
    acts = sorted({r.activation for r in runs})
    curves = {a: {m: {r.seed: tuple(zip(*r.history[m])) if r.history.get(m) else ((), ())
                      for r in runs if r.activation == a} for m in ("train/loss", "val/loss")} for a in acts}
    figs = {"loss_curves": pl.loss_curves(curves, f"{an.er.name}: loss curves, mean ± 1 s.d. over seeds")}
    keys = {"final/val_loss": "final val loss", "final/val_acc": "final val acc"}
    if not an.best_equals_final:
        keys["best/val_loss"] = "best val loss"
    values = {lab: {a: {r.seed: r.metric(k) for r in runs if r.activation == a} for a in acts} for k, lab in keys.items()}
    figs["final_metrics"] = pl.final_metrics(values, title=f"{an.er.name}: final metrics by activation "
                                             "(dots: seeds; black: mean with 95% CI)")
    figs["pd_heatmap"] = pl.pd_heatmap(an.heatmap, [f"{r.activation} s{r.seed}" for r in runs],
                                       [r.activation for r in runs], an.final_step,
                                       f"{an.er.name}: pd_tv between runs at step {an.final_step}")
    within = {a: {m: (an.within[a][m]["mean"], an.within[a][m]["se"]) for m in METRICS} for a in acts}
    figs["within_pd_steps"] = pl.within_pd_over_steps(an.steps, within, METRICS,
                                                      f"{an.er.name}: mean within-activation PD between seeds "
                                                      "(± jackknife SE)")
    figs["accuracy_vs_pd"] = pl.accuracy_vs_pd([r.metric("final/val_acc") for r in runs], an.pd_score,
                                               [r.activation for r in runs], f"{an.er.name}: accuracy vs PD")
    for key, fig in figs.items():
        fname = f"{prefix}{key}.png"
        pl.save(fig, out / fname)
        an.plots[key] = fname
