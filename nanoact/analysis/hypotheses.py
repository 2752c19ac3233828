"""The list of every hypothesis test a report makes, with multiplicity control per family.

Each ``Hypothesis`` holds numbers and codes only; ``nanoact.analysis.answers`` words the question and the answer.
The report's executive summary is built from this list and nothing else, and summary.json writes it out
(schema in docs/REPORT.md).

Families (Holm's step-down adjustment inside each, so each family's familywise error rate is at most α;
Holm, Scand. J. Stat. 1979). ``executive.FAMILY_WORDS`` words them for the report.

- ``primary``: the F test of the primary outcome, final val loss (RCBD F, or the quasi-F with Satterthwaite df
  when init and data seeds are crossed). One test.
- ``primary_pairwise``: final val loss for every pair of activations. Closed testing: a pair is claimed only when
  the primary F rejects (``gated`` otherwise), then Holm.
- ``primary_equivalence``: TOST of every pair's final val loss against the loss margin.
- ``secondary``: the F tests of the other outcomes (final val acc; best val loss when it differs).
- ``pd_distribution``: the PD cross-vs-within test, alone (its own family).
- ``pd_cross_within_pairs``: the PD relabelling test for each pair of activations.
- ``pd_activation_only``: same-seed cross-activation PD against seed-to-seed PD, over all pairs (one test).
- ``pd_activation_only_pairs``: the same per pair of activations.
- ``pd_reproducibility_pairs``: relative seed-to-seed PD of each activation against each other one.
- ``pd_reproducibility_equivalence``: TOST of the same against the PD margin.
- ``sources``: the decomposition of PD into initialisation, data order and activation (``sources`` grids).
- ``exploratory:<name>``: robustness checks and secondary outcomes' pairwise tests. They are adjusted within
  their family but never enter the executive summary, and their non-rejections are never quoted.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from typing import Any

from nanoact.analysis.stats import ALPHA, holm

PRIMARY_OUTCOME = "final_val_loss"


@dataclass
class Hypothesis:
    id: str  # unique within an experiment, e.g. "final_val_loss/paired_t/gelu-relu"
    kind: str  # rcbd | paired_t | studentized_range | friedman | pd_cross_within | pd_reproducibility | sources_*
    measure: str  # the outcome measured: final_val_loss, final_val_acc, best_val_loss, pd_tv
    family: str
    subjects: list[str]  # activations (or PD sources) compared
    method: str  # the procedure, e.g. "RCBD F", "paired t", "within-seed relabelling (exact)"
    statistic_name: str
    statistic: float
    df: list[float]
    p: float
    estimate: float = math.nan  # effect in the measure's units (difference of means, Δ PD, ...)
    ci: list[float] = field(default_factory=lambda: [math.nan, math.nan])  # 95% interval of the estimate
    n_seeds: int = 0
    p_floor: float = 0.0  # smallest p-value this test can give with these seeds
    seeds_needed: int | None = None  # when it cannot conclude: seeds the p-value floor needs
    interval: str = ""  # how ``ci`` was made: "inverts the test" or the separate method
    margin: float = math.nan  # difference of interest stated in advance (TOST margin; MDD compares to it)
    mdd: float = math.nan  # minimum detectable difference at these seeds (80% power, α/m)
    seeds_for_margin: int | None = None  # seeds for 80% power at a difference of exactly ``margin``
    p_adjusted: float = math.nan
    significant: bool | None = None  # None: no p-value, or the test cannot reach significance here
    outcome: str = ""  # difference | no_detectable_difference | cannot_conclude | gated | equivalent | not_equivalent
    exploratory: bool = False
    extra: dict[str, Any] = field(default_factory=dict)  # e.g. {"best": ..., "worst": ...} for omnibus tests
    question: str = ""  # filled by rendering
    answer: str = ""  # filled by rendering

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _floor_blocks(members: list[Hypothesis], i: int, alpha: float) -> bool:
    """True when test i could not have been rejected even at its smallest possible p, given the family's others."""
    h = members[i]
    if h.p_floor <= 0:
        return False
    ps = [x.p if math.isfinite(x.p) else math.nan for x in members]
    ps[i] = h.p_floor
    return not holm(ps)[i] < alpha


def adjust(tests: list[Hypothesis], alpha: float = ALPHA) -> list[Hypothesis]:
    """Holm-adjust p within each family and set ``p_adjusted``, ``significant`` and ``outcome`` (in place).

    ``cannot_conclude``: no p-value, or a permutation test whose p-value floor could not have been significant
    (then ``seeds_needed`` says how many seeds would let it reach alpha / m). TOST families: ``equivalent`` or
    ``not_equivalent``. ``primary_pairwise`` is gated on the primary test (closed testing): ``gated`` when it
    did not reject.
    """
    fams: dict[str, list[Hypothesis]] = defaultdict(list)
    for h in tests:
        fams[h.family].append(h)
    for members in fams.values():
        m = sum(1 for h in members if math.isfinite(h.p))
        for i, (h, pa) in enumerate(zip(members, holm([h.p if math.isfinite(h.p) else math.nan for h in members]))):
            h.p_adjusted = pa
            h.exploratory = h.exploratory or h.family.startswith("exploratory")
            if h.kind == "tost":
                h.significant = bool(math.isfinite(h.p) and pa < alpha)
                h.outcome = "equivalent" if h.significant else "not_equivalent"
            elif math.isfinite(h.p) and pa < alpha:
                h.significant, h.outcome = True, "difference"
            elif not math.isfinite(h.p) or _floor_blocks(members, i, alpha):
                h.significant, h.outcome = None, "cannot_conclude"
                if "labels" in h.extra and m:  # relabelling tests: seeds for the floor to reach alpha / m
                    from nanoact.analysis.pdtests import seeds_for_floor

                    h.seeds_needed = seeds_for_floor(h.extra["labels"], m, alpha)
            else:
                h.significant, h.outcome = False, "no_detectable_difference"
    _gate(tests)
    return tests


def _gate(tests: list[Hypothesis]) -> None:
    """Closed testing: pairwise primary claims stand only when the primary test rejected."""
    primary = by_family(tests, "primary")
    if primary and primary[0].significant:
        return
    for h in by_family(tests, "primary_pairwise"):
        if h.outcome == "difference":
            h.significant, h.outcome = False, "gated"


def by_family(tests: list[Hypothesis], family: str) -> list[Hypothesis]:
    return [h for h in tests if h.family == family]


def _t_ci(diff: float, se: float, df: float) -> list[float]:
    from scipy import stats

    if not (df >= 1) or not math.isfinite(se):
        return [math.nan, math.nan]
    h = float(stats.t.ppf(0.975, df)) * se
    return [diff - h, diff + h]


def _omnibus(o, primary: bool) -> Hypothesis:
    r, n = o.rcbd, len(o.seeds)
    best, worst = o.order()
    gap = abs(r.treatment_means[worst] - r.treatment_means[best])
    extra = {"best": o.activations[best], "best_mean": r.treatment_means[best], "worst": o.activations[worst],
             "worst_mean": r.treatment_means[worst], "partial_eta2": r.partial_eta2, "mde": o.mde}
    fam = "primary" if primary else "secondary"
    if o.crossed is not None:
        c = o.crossed
        extra.update(mde=math.nan, ms_ai=c.ms_ai, ms_ad=c.ms_ad, ms_aid=c.ms_aid)
        return Hypothesis(f"{o.outcome}/quasi_f", "quasi_f", o.outcome, fam, list(o.activations),
                          "quasi-F (activation x init and activation x data in the error), Satterthwaite df", "F",
                          c.f, [c.df_num, c.df_den], c.p, estimate=gap, n_seeds=min(c.n_init, c.n_data), extra=extra)
    return Hypothesis(f"{o.outcome}/rcbd", "rcbd", o.outcome, fam, list(o.activations), "RCBD ANOVA", "F", r.f_a,
                      [r.df_a, r.df_e], r.p_a, estimate=gap, n_seeds=n, extra=extra)


def _pair_rows(o) -> list[tuple[str, str, float, float, float, float, float, str]]:
    """(a, b, diff, se, t, df, p, method) per pair: seed-paired t, or the crossed two-way t."""
    n = len(o.seeds)
    if o.crossed is not None:
        return [(c.a, c.b, c.diff, c.se, c.t, c.df, c.p, "two-way (init x data) t, Satterthwaite df")
                for c in o.crossed_pairs]
    return [(r.a, r.b, r.diff, abs(r.diff / r.t) if math.isfinite(r.t) and r.t != 0 else math.nan, r.t, n - 1,
             r.p_t, "seed-paired t") for r in o.pairwise]


def _pairwise(o, primary: bool, margins) -> list[Hypothesis]:
    from nanoact.analysis import equivalence as eq

    fam = "primary_pairwise" if primary else f"exploratory:{o.outcome}_pairwise"
    rows, n = _pair_rows(o), len(o.seeds) if o.crossed is None else min(o.crossed.n_init, o.crossed.n_data)
    out, tost = [], []
    for a, b, diff, se, t, df, p, method in rows:
        h = Hypothesis(f"{o.outcome}/paired_t/{a}-{b}", "paired_t", o.outcome, fam, [a, b], method, "t", t, [df],
                       p, estimate=diff, ci=_t_ci(diff, se, df), n_seeds=n, interval="inverts the test")
        if primary:
            h.margin, h.mdd = margins.loss, eq.mdd(se, df, len(rows))
            h.seeds_for_margin = eq.seeds_for_margin(margins.loss, se, n, len(rows))
            tost.append(Hypothesis(f"{o.outcome}/equivalence/{a}-{b}", "tost", o.outcome, "primary_equivalence",
                                  [a, b], "TOST (two one-sided t tests)", "t", t, [df],
                                  eq.tost_p(diff, se, df, margins.loss), estimate=diff, ci=_t_ci(diff, se, df),
                                  n_seeds=n, margin=margins.loss, interval="95% t interval of the difference"))
        out.append(h)
    return out + tost


def outcome_tests(o, margins=None) -> list[Hypothesis]:
    """Omnibus F, pairwise (primary pairwise, with TOST), and the robustness checks for one ``OutcomeStats``."""
    from nanoact.analysis.equivalence import Margins

    if o.rcbd is None:
        return []
    r, n, primary = o.rcbd, len(o.seeds), o.outcome == PRIMARY_OUTCOME
    out = [_omnibus(o, primary)] + _pairwise(o, primary, margins or Margins())
    fr = o.friedman
    if fr is not None and math.isfinite(fr.f_id):
        out.append(Hypothesis(f"{o.outcome}/iman_davenport", "friedman", o.outcome, "exploratory:robustness",
                              list(o.activations), "Friedman (Iman-Davenport F)", "F", fr.f_id,
                              [r.df_a, r.df_e], fr.p_id, n_seeds=n))
    elif fr is not None:
        out.append(Hypothesis(f"{o.outcome}/friedman", "friedman", o.outcome, "exploratory:robustness",
                              list(o.activations), "Friedman chi-square", "Q", fr.q, [r.df_a], fr.p, n_seeds=n))
    if o.homogeneity is not None and o.homogeneity.passed and o.crossed is None:
        for row in o.pairwise:
            out.append(Hypothesis(f"{o.outcome}/studentized_range/{row.a}-{row.b}", "studentized_range",
                                  o.outcome, f"exploratory:{o.outcome}_range", [row.a, row.b],
                                  "studentized range, pooled RCBD error", "q", row.q, [r.k, r.df_e], row.p_range,
                                  estimate=row.diff, n_seeds=n))
    return out


def _pd_distribution(pd, n: int) -> list[Hypothesis]:
    o, rel, k = pd.omnibus, pd.relative, len(pd.activations)
    how = (f"exact (all {o.n_relabellings} relabellings)" if o.exact else
           f"Monte Carlo (B = {o.n_relabellings - 1}), p >= 1/(B+1)")
    out = [Hypothesis(f"{pd.metric}/cross_vs_within", "pd_cross_within", pd.metric, "pd_distribution",
                      list(pd.activations), f"within-seed relabelling of activations, {how}", "delta", o.estimate,
                      [], o.p, estimate=o.estimate, ci=[o.lo, o.hi], n_seeds=n, p_floor=o.p_floor,
                      interval=f"{_jack(pd)} t on {pd.df} df, separate from the test",
                      extra={"labels": k, "exact": o.exact, "n_relabellings": o.n_relabellings,
                             "relative": rel.estimate, "relative_ci": [rel.lo, rel.hi]})]
    for t in pd.pair_cross:
        a, b = pd.activations[t.a], pd.activations[t.b]
        how = "exact" if t.exact else f"Monte Carlo (B = {t.n_relabellings - 1}), p >= 1/(B+1)"
        out.append(Hypothesis(f"{pd.metric}/cross_vs_within/{a}-{b}", "pd_cross_within", pd.metric,
                              "pd_cross_within_pairs", [a, b], f"within-seed relabelling of the two activations, {how}",
                              "delta", t.estimate, [], t.p, estimate=t.estimate, ci=[t.lo, t.hi], n_seeds=n,
                              p_floor=t.p_floor, interval=f"{_jack(pd)} t on {pd.df} df, separate from the test",
                              extra={"labels": 2, "exact": t.exact, "n_relabellings": t.n_relabellings}))
    return out


def _jack(pd) -> str:
    return "two-way (init x data seed) jackknife" if pd.design == "crossed" else "delete-one-seed jackknife"


def _t_hyp(pd, t, hid: str, kind: str, family: str, subjects: list[str], n: int) -> Hypothesis:
    return Hypothesis(hid, kind, pd.metric, family, subjects, f"{_jack(pd)} t", "t", t.statistic,
                      [t.df] if t.df else [], t.p, estimate=t.estimate, ci=[t.lo, t.hi], n_seeds=n,
                      interval="inverts the test")


def _pd_activation_only(pd, n: int) -> list[Hypothesis]:
    if pd.activation_only is None:
        return []
    out = [_t_hyp(pd, pd.activation_only, f"{pd.metric}/activation_only", "pd_activation_only", "pd_activation_only",
                  list(pd.activations), n)]
    for t in pd.activation_only_pairs:
        a, b = pd.activations[t.a], pd.activations[t.b]
        out.append(_t_hyp(pd, t, f"{pd.metric}/activation_only/{a}-{b}", "pd_activation_only",
                          "pd_activation_only_pairs", [a, b], n))
    return out


def _pd_reproducibility(pd, n: int, margin: float) -> list[Hypothesis]:
    from nanoact.analysis import equivalence as eq

    out, tost, m = [], [], len(pd.reproducibility)
    for t in pd.reproducibility:
        a, b = pd.activations[t.a], pd.activations[t.b]
        h = _t_hyp(pd, t, f"{pd.metric}/reproducibility/{a}-{b}", "pd_reproducibility", "pd_reproducibility_pairs",
                   [a, b], n)
        h.margin, h.mdd = margin, eq.mdd(t.se, t.df, m)
        h.seeds_for_margin = eq.seeds_for_margin(margin, t.se, n, m)
        out.append(h)
        tost.append(Hypothesis(f"{pd.metric}/reproducibility_equivalence/{a}-{b}", "tost", pd.metric,
                               "pd_reproducibility_equivalence", [a, b], f"TOST, {_jack(pd)} t", "t", t.statistic,
                               [t.df] if t.df else [], eq.tost_p(t.estimate, t.se, t.df, margin),
                               estimate=t.estimate, ci=[t.lo, t.hi], n_seeds=n, margin=margin,
                               interval="95% t interval of the relative difference"))
    return out + tost


def pd_tests(pd, margins=None) -> list[Hypothesis]:
    """The PD tests of a ``pdtests.PDResult``: the distribution test (all, per pair), the same-seed comparison
    with reseeding (all, per pair), and reproducibility per pair with its equivalence test."""
    from nanoact.analysis.equivalence import Margins

    if pd is None or pd.omnibus is None:
        return []
    n = pd.df + 1 if pd.df else len(pd.seeds)
    return (_pd_distribution(pd, len(pd.seeds)) + _pd_activation_only(pd, n)
            + _pd_reproducibility(pd, n, (margins or Margins()).pd_rel))


def sources_tests(src) -> list[Hypothesis]:
    if src is None:
        return []
    n = min(len(src.init_seeds), len(src.data_seeds))
    return [Hypothesis(f"pd_tv/sources/{c.name}", f"sources_{c.name}", "pd_tv", "sources", [c.name],
                       "two-way (init x data seed) jackknife t", "t", c.t, [c.df], c.p, estimate=c.mean,
                       ci=[c.lo, c.hi], n_seeds=n, interval="inverts the test") for c in src.contrasts]


def build_hypotheses(outcomes, pd, sources, margins=None) -> list[Hypothesis]:
    """Every test of one experiment, adjusted per family."""
    tests = [h for o in outcomes for h in outcome_tests(o, margins)] + pd_tests(pd, margins) + sources_tests(sources)
    return adjust(tests)
