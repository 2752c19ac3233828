"""The list of every hypothesis test a report makes, with multiplicity control per family.

Each ``Hypothesis`` holds numbers and codes only; ``nanoact.analysis.render`` words the question and the answer.
The report's executive summary is built from this list and nothing else, and summary.json writes it out
(schema in docs/REPORT.md).

Families (Holm's step-down adjustment inside each; Holm, Scand. J. Stat. 1979):

- ``primary``: the RCBD F test of the primary outcome, final val loss. One test, no adjustment.
- ``primary_pairwise``: seed-paired t tests of final val loss for every pair of activations.
- ``secondary``: the omnibus tests of the other outcomes (final val acc; best val loss when it differs from
  final val loss) and of PD (cross-activation vs within-activation).
- ``pd_cross_within_pairs``: the PD relabelling test for each pair of activations.
- ``pd_reproducibility_pairs``: the seed-to-seed PD of each activation against each other one.
- ``sources``: the decomposition of PD into initialisation, data order and activation (``sources`` grids).
- ``exploratory:<name>``: robustness checks and secondary outcomes' pairwise tests. They are adjusted within
  their family but never enter the executive summary as findings.
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
    seeds_needed: int | None = None  # when it cannot conclude: seeds needed (floor, or rough power)
    p_adjusted: float = math.nan
    significant: bool | None = None  # None: no p-value, or the test cannot reach significance here
    outcome: str = ""  # "difference" | "no_detectable_difference" | "cannot_conclude"
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
    (then ``seeds_needed`` says how many seeds would let it reach alpha / m).
    """
    fams: dict[str, list[Hypothesis]] = defaultdict(list)
    for h in tests:
        fams[h.family].append(h)
    for members in fams.values():
        m = sum(1 for h in members if math.isfinite(h.p))
        for i, (h, pa) in enumerate(zip(members, holm([h.p if math.isfinite(h.p) else math.nan for h in members]))):
            h.p_adjusted = pa
            h.exploratory = h.exploratory or h.family.startswith("exploratory")
            if math.isfinite(h.p) and pa < alpha:
                h.significant, h.outcome = True, "difference"
            elif not math.isfinite(h.p) or _floor_blocks(members, i, alpha):
                h.significant, h.outcome = None, "cannot_conclude"
                if "labels" in h.extra and m:  # relabelling tests: seeds for the floor to reach alpha / m
                    from nanoact.analysis.pdtests import seeds_for_floor

                    h.seeds_needed = seeds_for_floor(h.extra["labels"], m, alpha)
            else:
                h.significant, h.outcome = False, "no_detectable_difference"
    return tests


def by_family(tests: list[Hypothesis], family: str) -> list[Hypothesis]:
    return [h for h in tests if h.family == family]


def _t_ci(diff: float, se: float, df: int) -> list[float]:
    from scipy import stats

    if df < 1 or not math.isfinite(se):
        return [math.nan, math.nan]
    h = float(stats.t.ppf(0.975, df)) * se
    return [diff - h, diff + h]


def outcome_tests(o) -> list[Hypothesis]:
    """RCBD F, seed-paired t (primary pairwise), and the robustness checks for one ``OutcomeStats``."""
    if o.rcbd is None:
        return []
    r, n, primary = o.rcbd, len(o.seeds), o.outcome == PRIMARY_OUTCOME
    best, worst = o.order()
    gap = abs(r.treatment_means[worst] - r.treatment_means[best])
    out = [Hypothesis(f"{o.outcome}/rcbd", "rcbd", o.outcome, "primary" if primary else "secondary",
                      list(o.activations), "RCBD ANOVA", "F", r.f_a, [r.df_a, r.df_e], r.p_a, estimate=gap, n_seeds=n,
                      extra={"best": o.activations[best], "best_mean": r.treatment_means[best],
                             "worst": o.activations[worst], "worst_mean": r.treatment_means[worst],
                             "partial_eta2": r.partial_eta2, "mde": o.mde})]
    fam = "primary_pairwise" if primary else f"exploratory:{o.outcome}_pairwise"
    for row in o.pairwise:
        se = abs(row.diff / row.t) if math.isfinite(row.t) and row.t != 0 else math.nan
        out.append(Hypothesis(f"{o.outcome}/paired_t/{row.a}-{row.b}", "paired_t", o.outcome, fam, [row.a, row.b],
                              "seed-paired t", "t", row.t, [n - 1], row.p_t, estimate=row.diff,
                              ci=_t_ci(row.diff, se, n - 1), n_seeds=n))
    fr = o.friedman
    if fr is not None and math.isfinite(fr.f_id):
        out.append(Hypothesis(f"{o.outcome}/iman_davenport", "friedman", o.outcome, "exploratory:robustness",
                              list(o.activations), "Friedman (Iman-Davenport F)", "F", fr.f_id,
                              [r.df_a, r.df_e], fr.p_id, n_seeds=n))
    elif fr is not None:
        out.append(Hypothesis(f"{o.outcome}/friedman", "friedman", o.outcome, "exploratory:robustness",
                              list(o.activations), "Friedman chi-square", "Q", fr.q, [r.df_a], fr.p, n_seeds=n))
    if o.homogeneity is not None and o.homogeneity.passed:
        for row in o.pairwise:
            out.append(Hypothesis(f"{o.outcome}/studentized_range/{row.a}-{row.b}", "studentized_range",
                                  o.outcome, f"exploratory:{o.outcome}_range", [row.a, row.b],
                                  "studentized range, pooled RCBD error", "q", row.q, [r.k, r.df_e], row.p_range,
                                  estimate=row.diff, n_seeds=n))
    return out


def pd_tests(pd) -> list[Hypothesis]:
    """The PD tests of a ``pdtests.PDResult``: cross vs within (all, and per pair), reproducibility per pair."""
    from nanoact.analysis import pdtests as pt

    if pd is None or pd.omnibus is None:
        return []
    acts, n, k = pd.activations, len(pd.seeds), len(pd.activations)
    o = pd.omnibus  # n <= 1 seeds never gets here (analyse_pd needs 2)
    out = [Hypothesis(f"{pd.metric}/cross_vs_within", "pd_cross_within", pd.metric, "secondary", list(acts),
                      "within-seed relabelling of activations", "delta", o.estimate, [], o.p, estimate=o.estimate,
                      ci=[o.lo, o.hi], n_seeds=n, p_floor=o.p_floor, extra={"labels": k})]
    for t in pd.pair_cross:
        a, b = acts[t.a], acts[t.b]
        out.append(Hypothesis(f"{pd.metric}/cross_vs_within/{a}-{b}", "pd_cross_within", pd.metric,
                              "pd_cross_within_pairs", [a, b], "within-seed relabelling of the two activations",
                              "delta", t.estimate, [], t.p, estimate=t.estimate, ci=[t.lo, t.hi], n_seeds=n,
                              p_floor=t.p_floor, extra={"labels": 2}))
    m = len(pd.reproducibility)
    for t in pd.reproducibility:
        a, b = acts[t.a], acts[t.b]
        out.append(Hypothesis(f"{pd.metric}/reproducibility/{a}-{b}", "pd_reproducibility", pd.metric,
                              "pd_reproducibility_pairs", [a, b], "delete-one-seed jackknife t", "t", t.statistic,
                              [t.df] if t.df else [], t.p, estimate=t.estimate, ci=[t.lo, t.hi], n_seeds=n,
                              seeds_needed=pt.seeds_for_power(t.estimate, t.se, n, m)))
    return out


def sources_tests(src) -> list[Hypothesis]:
    if src is None:
        return []
    n = min(len(src.init_seeds), len(src.data_seeds))
    return [Hypothesis(f"pd_tv/sources/{c.name}", f"sources_{c.name}", "pd_tv", "sources", [c.name],
                       "two-way (init x data seed) jackknife t", "t", c.t, [c.df], c.p, estimate=c.mean,
                       ci=[c.lo, c.hi], n_seeds=n) for c in src.contrasts]


def build_hypotheses(outcomes, pd, sources) -> list[Hypothesis]:
    """Every test of one experiment, adjusted per family."""
    tests = [h for o in outcomes for h in outcome_tests(o)] + pd_tests(pd) + sources_tests(sources)
    return adjust(tests)
