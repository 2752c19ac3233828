"""The executive summary and the headline, built from the hypothesis list only.

Every sentence of the executive summary is built from entries of the hypothesis list (``Hypothesis``) and carries
their ids, so summary.json can show which tests stand behind it.
"""

from __future__ import annotations

import math
from typing import Any

from nanoact.analysis.answers import ci_text, interval_text
from nanoact.analysis.formatting import p_text, pct, sig
from nanoact.analysis.hypotheses import Hypothesis, by_family

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


def _item(text: str, tests: list[Hypothesis]) -> dict[str, Any]:
    return {"text": text, "tests": [h.id for h in tests]}


def _seeds_needed(h: Hypothesis) -> str:
    """How many seeds would let the test decide, when the test can say (not from a jackknife over 2 seeds)."""
    if h.seeds_needed:
        return f"; that needs at least {h.seeds_needed} seeds"
    return f"; how many seeds it would need cannot be estimated from {h.n_seeds}"


def _pair_est(h: Hypothesis) -> str:
    a, b = h.subjects[0], h.subjects[1]
    if h.kind == "pd_cross_within":
        return f"{a} vs {b}: symmetric excess Δ = {sig(h.estimate)}"
    if h.kind == "pd_activation_only":
        return f"{a} vs {b}: same-seed minus seed-to-seed pd_tv = {sig(h.estimate)}"
    if h.kind == "pd_reproducibility":
        return f"(W_{a} − W_{b}) / mean(W_{a}, W_{b}) = {sig(h.estimate, 3)}"
    return f"{a} − {b} = {sig(h.estimate)}"


def _no_pair_detected(fam: list[Hypothesis], what: str, how: str, tail: str) -> dict[str, Any]:
    big = max(fam, key=lambda h: abs(h.estimate) if math.isfinite(h.estimate) else -1)
    mdd = [h.mdd for h in fam if math.isfinite(h.mdd)]
    power = (f"; with {big.n_seeds} seeds the smallest difference detected with 80% power is about {sig(max(mdd), 3)}"
             f"{_margin_seeds(fam)}" if mdd else "")
    lo, hi = big.ci
    unadjusted = (f", unadjusted for the {len(fam)} pairs, so it can exclude 0 where Holm does not reject"
                  if len(fam) > 1 and (lo > 0 or hi < 0) else "")
    return _item(f"{what}: no difference detected ({how}, Holm over {len(fam)} pairs; largest estimate "
                 f"{_pair_est(big)}, {interval_text(big)}{unadjusted}{power}). Not detected is not the same as "
                 f"equal.{tail}", fam)


def _margin_seeds(fam: list[Hypothesis]) -> str:
    need = [h.seeds_for_margin for h in fam if math.isfinite(h.mdd)]
    if not need:
        return ""
    if None in need:
        return f"; more than 1000 seeds would be needed for ±{sig(fam[0].margin, 3)}"
    return f"; about {max(need)} seeds would detect ±{sig(fam[0].margin, 3)} (the stated margin) in every pair"


def _pairs_sentence(fam: list[Hypothesis], what: str, how: str) -> dict[str, Any] | None:
    if not fam:
        return None
    significant = [h for h in fam if h.significant]
    if all(h.outcome == "cannot_conclude" for h in fam):
        h = fam[0]
        why = (f"its smallest possible p, {sig(h.p_floor, 3)}, is above α/{len(fam)}" if h.p_floor > 0 else
               f"it gives no p-value with {h.n_seeds} seeds")
        return _item(f"{what}: no pair can be decided with {h.n_seeds} seeds ({how}; {why}){_seeds_needed(h)}.", fam)
    undecided = [h for h in fam if h.outcome == "cannot_conclude"]
    tail = (f" {len(undecided)} pair(s) cannot be decided with {undecided[0].n_seeds} seeds (p-value floor)"
            f"{_seeds_needed(undecided[0])}." if undecided else "")
    gated = [h for h in fam if h.outcome == "gated"]
    if gated:
        return _item(f"{what}: not claimed, because the primary F test did not reject (closed testing); "
                     f"{len(gated)} pair(s) would otherwise have passed Holm.", fam)
    if not significant:
        return _no_pair_detected(fam, what, how, tail)
    parts = [f"{_pair_est(h)} ({interval_text(h)}, Holm p {p_text(h.p_adjusted)})" for h in significant]
    return _item(f"{what}: {len(significant)} of {len(fam)} pairs differ ({how}, Holm over {len(fam)} pairs): "
                 + "; ".join(parts) + "." + tail, fam)


def _equivalence_sentence(fam: list[Hypothesis], what: str) -> dict[str, Any] | None:
    if not fam:
        return None
    eq = [h for h in fam if h.outcome == "equivalent"]
    m = sig(fam[0].margin, 3)
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
        return (f"Reproducibility is equal within ±{sig(eqv[0].margin, 3)} for every pair (TOST), so a distribution "
                "difference is a difference in what the activations predict.")
    return ("No reproducibility difference was detected, but equality is not shown (TOST), so a distribution "
            "difference may be in what the activations predict or in how reproducible they are.")


def share_sentence(shares) -> str:
    """The Summers & Dinneen comparison as an interval statement, on the PD scale."""
    by = {c.name: c for c in shares}
    parts = [f"only the {w} {pct(by[n].mean)} (95% CI [{pct(by[n].lo)}, {pct(by[n].hi)}])"
             for n, w in (("init_share", "initial weights"), ("data_share", "batch order")) if n in by]
    below = [c for c in shares if c.name in ("init_share", "data_share") and math.isfinite(c.hi) and c.hi < 1]
    verdict = ("both intervals lie below 100%: a single source gives most, but not all, of the PD of changing both"
               if len(below) == 2 else "not every interval excludes 100%")
    return (f"Share of reseeding's pd_tv (a ratio of mean PDs, on the PD scale, not a share of variance; two-way "
            f"jackknife): changing {' and '.join(parts)}; {verdict}. For comparison, Summers & Dinneen found that "
            "any single source of nondeterminism gives about the full run-to-run variability.")


def shares_of(an):
    return an.sources.shares if an.sources is not None else None


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


def headline(analyses, anomalies: list[str]) -> str:
    if anomalies:
        names = sorted({a.split(":", 1)[0] for a in anomalies})
        exps = ", ".join(dict.fromkeys(an.er.name for an in analyses))
        return (f"GUARDS FAILED on {exps} ({len(anomalies)} anomalies: {', '.join(names)}): the results below are "
                "not trustworthy until these are explained.")
    parts = [_headline_one(an) for an in analyses]
    s = "; ".join(parts)
    return s[0].upper() + s[1:] + "."


def _headline_one(an) -> str:
    tests = an.hypotheses
    txt = f"on {an.key} ({grid_words(an)}) "
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
        return (f"{base} moves pd_tv {word} than reseeding (by {sig(abs(h.estimate), 2)}, {ci_text(h, 2)}, "
                f"t({sig(h.df[0], 3)}) = {sig(h.statistic, 3)}, p {p_text(h.p)})")
    return (f"a difference between {base} and reseeding was not detected in pd_tv (same-seed minus seed-to-seed "
            f"{sig(h.estimate, 2)}, {ci_text(h, 2)})")


def _short(h: Hypothesis, yes: str, no: str) -> str:
    if h.outcome == "cannot_conclude":
        return f"cannot conclude whether {yes} with {h.n_seeds} seeds"
    word = yes if h.outcome == "difference" else no
    if h.kind == "pd_cross_within":
        return (f"{word} (Δ pd_tv = {sig(h.estimate, 3)}, jackknife {ci_text(h, 3)}; relabelling test p {p_text(h.p)}"
                f"{', Monte Carlo' if not h.extra.get('exact', True) else ''})")
    label = "quasi-F" if h.kind == "quasi_f" else "RCBD F"
    return f"{word} ({label} p {p_text(h.p)})"
