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
    question: str = ""  # filled by rendering
    answer: str = ""  # filled by rendering

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def adjust(tests: list[Hypothesis], alpha: float = ALPHA) -> list[Hypothesis]:
    """Holm-adjust p within each family and set ``p_adjusted``, ``significant`` and ``outcome`` (in place)."""
    fams: dict[str, list[Hypothesis]] = defaultdict(list)
    for h in tests:
        fams[h.family].append(h)
    for members in fams.values():
        m = sum(1 for h in members if math.isfinite(h.p))
        for h, pa in zip(members, holm([h.p if math.isfinite(h.p) else math.nan for h in members])):
            h.p_adjusted = pa
            h.exploratory = h.exploratory or h.family.startswith("exploratory")
            # Holm's first step compares the smallest p with alpha / m: a floor above that can never reject
            floor_blocks = m > 0 and h.p_floor > alpha / m
            if not math.isfinite(h.p) or floor_blocks:
                h.significant, h.outcome = None, "cannot_conclude"
            else:
                h.significant = bool(pa < alpha)
                h.outcome = "difference" if h.significant else "no_detectable_difference"
    return tests


def by_family(tests: list[Hypothesis], family: str) -> list[Hypothesis]:
    return [h for h in tests if h.family == family]
