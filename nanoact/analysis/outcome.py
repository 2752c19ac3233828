"""Every statistic of one per-run outcome (final val loss, ...): the RCBD, its checks and power, and the
quasi-F test when init and data-order seeds are crossed (numbers only; ``stats`` has the tests themselves)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from nanoact.analysis.stats import (
    CrossedPair,
    CrossedResult,
    FriedmanResult,
    Homogeneity,
    PairwiseRow,
    RcbdResult,
    crossed_anova,
    crossed_pairwise,
    friedman,
    homogeneity,
    min_detectable_gap,
    pairwise,
    rcbd_anova,
)


@dataclass
class OutcomeStats:
    """Everything computed for one per-run outcome (numbers only)."""

    outcome: str
    label: str
    lower_is_better: bool
    activations: list[str]
    seeds: list[str]  # the complete blocks used
    excluded_seeds: list[str]
    y: list[list[float]]
    rcbd: RcbdResult | None = None
    friedman: FriedmanResult | None = None
    pairwise: list[PairwiseRow] = field(default_factory=list)
    homogeneity: Homogeneity | None = None
    mde_sigma: float = math.nan  # minimum detectable best-to-worst gap, in σ_e units
    mde: float = math.nan  # the same in outcome units (σ_e = sqrt(MS_E))
    crossed: CrossedResult | None = None  # init x data seeds crossed: the test to use instead of the RCBD F
    crossed_pairs: list[CrossedPair] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def order(self) -> tuple[int, int]:
        """Indices of the best and the worst activation by mean."""
        means = np.mean(np.asarray(self.y), axis=1)
        order = np.argsort(means)
        return (int(order[0]), int(order[-1])) if self.lower_is_better else (int(order[-1]), int(order[0]))


def analyse_outcome(
    outcome: str,
    label: str,
    values: Mapping[tuple[str, str], float],
    activations: Sequence[str],
    seeds: Sequence[str],
    *,
    lower_is_better: bool,
    seed_units: Mapping[str, tuple[str, str]] | None = None,
) -> OutcomeStats:
    """RCBD, Friedman, pairwise comparisons, homogeneity, effect sizes, variance components and power.

    Only complete blocks enter (seeds with a finite value for every activation); dropped seeds are listed.
    With fewer than 2 activations or 2 complete seeds nothing is tested (``rcbd`` is None).
    ``seed_units``: block -> (init seed, data seed) when seeds are crossed; then ``crossed`` holds the quasi-F
    test and ``crossed_pairs`` the pairwise tests that include the activation x seed interactions.
    """
    complete = [s for s in seeds if all(math.isfinite(values.get((a, s), math.nan)) for a in activations)]
    res = OutcomeStats(outcome=outcome, label=label, lower_is_better=lower_is_better,
                       activations=list(activations), seeds=complete,
                       excluded_seeds=[s for s in seeds if s not in complete],
                       y=[[values[(a, s)] for s in complete] for a in activations])
    k, n = len(activations), len(complete)
    if k < 2 or n < 2:
        return res
    y = np.asarray(res.y)
    r = res.rcbd = rcbd_anova(y)
    res.friedman = friedman(y)
    res.pairwise = pairwise(y, activations, r.ms_e, r.df_e)
    res.homogeneity = homogeneity(y)
    res.mde_sigma = min_detectable_gap(k, n)
    res.mde = res.mde_sigma * math.sqrt(r.ms_e) if r.ms_e >= 0 else math.nan
    y3 = _crossed_table(y, complete, seed_units)
    if y3 is not None:
        res.crossed = crossed_anova(y3)
        res.crossed_pairs = crossed_pairwise(y3, activations)
    return res


def _crossed_table(y: np.ndarray, seeds: Sequence[str], units: Mapping[str, tuple[str, str]] | None
                   ) -> np.ndarray | None:
    """(k, n_init, n_data) from the (k, blocks) table when the complete blocks cross >= 2 init and >= 2 data seeds."""
    if not units or any(s not in units for s in seeds):
        return None
    inits = sorted({units[s][0] for s in seeds})
    datas = sorted({units[s][1] for s in seeds})
    if len(inits) < 2 or len(datas) < 2 or len(seeds) != len(inits) * len(datas):
        return None
    y3 = np.full((y.shape[0], len(inits), len(datas)), np.nan)
    for c, s in enumerate(seeds):
        y3[:, inits.index(units[s][0]), datas.index(units[s][1])] = y[:, c]
    return None if np.isnan(y3).any() else y3
