"""PD split into its sources, for grids that cross activations with initialisation seeds and data-order seeds.

A run is (activation a, init seed i, data-order seed j). Every pair of runs falls into one category by what the
two runs share, and the mean PD of each category says how far that source of variation alone moves predictions:

    init                  same a, different i, same j         (initial weights only)
    data                  same a, same i, different j         (batch order only)
    init+data             same a, different i, different j    (ordinary reseeding)
    activation            different a, same i, same j         (the activation only)
    activation+init+data  different a, different i, different j

Shares (init / (init+data), data / (init+data), activation / (init+data)) are ratios of mean PDs, on the PD
scale, not shares of a variance; their intervals use the same two-way jackknife.

Contrasts compare like with like, e.g. the activation's effect is (activation+init+data) − (init+data): both sides
have different seeds, so neither shares initial weights nor batch order.

Uncertainty: init seeds and data seeds are two independent sets of random units, crossed. The standard error of a
category mean (or a contrast) adds the delete-one jackknife variance over init seeds and the one over data seeds
(the two-way jackknife; cf. Owen, "The pigeonhole bootstrap", Ann. Appl. Stat. 2007), and intervals use t on
min(n_init, n_data) − 1 df. ``tests/analysis/test_sources.py`` checks its calibration under a null.

Background: Summers & Dinneen, "Nondeterminism and instability in neural network optimization" (ICML 2021) found
that any single source of nondeterminism produces about the full run-to-run variability; Bhojanapalli et al.,
"On the reproducibility and stability of deep networks" (2021), measured prediction churn by source.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from scipy import stats

from nanoact.analysis.pdtests import jackknife_var

CATEGORIES = ("init", "data", "init+data", "activation", "activation+init+data")
# (name, category minuend, category subtrahend)
CONTRASTS = (
    ("activation_vs_reseeding", "activation+init+data", "init+data"),
    ("init_only_vs_reseeding", "init", "init+data"),
    ("data_only_vs_reseeding", "data", "init+data"),
    ("init_only_vs_data_only", "init", "data"),
)

# (name, category, reference): the category's mean PD as a share of the reference's (a ratio of mean PDs)
SHARES = (
    ("init_share", "init", "init+data"),
    ("data_share", "data", "init+data"),
    ("activation_share", "activation", "init+data"),
)


@dataclass
class SourceEstimate:
    name: str
    mean: float
    se: float
    df: int
    lo: float
    hi: float
    n_pairs: int = 0
    t: float = math.nan
    p: float = math.nan  # two-sided, H0: mean 0 (contrasts only)


@dataclass
class SourcesAnalysis:
    activations: list[str]
    init_seeds: list[str]
    data_seeds: list[str]
    categories: list[SourceEstimate] = field(default_factory=list)
    contrasts: list[SourceEstimate] = field(default_factory=list)
    shares: list[SourceEstimate] = field(default_factory=list)  # on the PD scale (not variance); no test


def _masks(act: np.ndarray, ini: np.ndarray, dat: np.ndarray) -> dict[str, np.ndarray]:
    sa, si, sd = (x[:, None] == x[None, :] for x in (act, ini, dat))
    upper = np.triu(np.ones_like(sa), 1)
    return {
        "init": upper & sa & ~si & sd,
        "data": upper & sa & si & ~sd,
        "init+data": upper & sa & ~si & ~sd,
        "activation": upper & ~sa & si & sd,
        "activation+init+data": upper & ~sa & ~si & ~sd,
    }


def _values(h: np.ndarray, masks: dict[str, np.ndarray], keep: np.ndarray) -> dict[str, float]:
    both = keep[:, None] & keep[None, :]
    out = {}
    for name, m in masks.items():
        mm = m & both
        out[name] = float(h[mm].mean()) if mm.any() else math.nan
    for name, a, b in CONTRASTS:
        out[name] = out[a] - out[b]
    for name, a, b in SHARES:
        out[name] = out[a] / out[b] if out[b] > 0 else math.nan
    return out


def decompose(h: np.ndarray, act: np.ndarray, ini: np.ndarray, dat: np.ndarray) -> dict[str, tuple[float, float, int]]:
    """name -> (estimate, two-way jackknife SE, df) for every category and contrast; run r is (act, ini, dat)[r]."""
    h = np.asarray(h, dtype=np.float64)
    masks = _masks(np.asarray(act), np.asarray(ini), np.asarray(dat))
    full = _values(h, masks, np.ones(len(h), dtype=bool))
    names = list(full)
    var = np.zeros(len(names))
    units = (np.unique(ini), np.unique(dat))
    for labels, uniq in zip((ini, dat), units):
        theta = np.array([[_values(h, masks, np.asarray(labels) != u)[k] for k in names] for u in uniq])
        var += jackknife_var(theta) if len(uniq) >= 3 else np.nan
    df = min(len(u) for u in units) - 1
    return {k: (full[k], float(math.sqrt(v)) if math.isfinite(v) else math.nan, df) for k, v in zip(names, var)}


def _estimate(name: str, mean: float, se: float, df: int, n_pairs: int, test: bool) -> SourceEstimate:
    if df >= 1 and math.isfinite(se) and se > 0:
        h = float(stats.t.ppf(0.975, df)) * se
        t = mean / se
        p = float(2 * stats.t.sf(abs(t), df)) if test else math.nan
        return SourceEstimate(name, mean, se, df, mean - h, mean + h, n_pairs, t if test else math.nan, p)
    return SourceEstimate(name, mean, se, df, math.nan, math.nan, n_pairs)


def analyse_sources(h: np.ndarray, activations: list[str], init_seeds: list[str], data_seeds: list[str]
                    ) -> SourcesAnalysis:
    """The decomposition for runs labelled (activations[r], init_seeds[r], data_seeds[r]), r indexing ``h``."""
    act, ini, dat = (np.asarray(x) for x in (activations, init_seeds, data_seeds))
    res = decompose(h, act, ini, dat)
    masks = _masks(act, ini, dat)
    out = SourcesAnalysis(sorted(set(activations)), sorted(set(init_seeds)), sorted(set(data_seeds)))
    for name in CATEGORIES:
        out.categories.append(_estimate(name, *res[name], int(masks[name].sum()), test=False))
    for name, _, _ in CONTRASTS:
        out.contrasts.append(_estimate(name, *res[name], 0, test=True))
    for name, _, _ in SHARES:
        out.shares.append(_estimate(name, *res[name], 0, test=False))
    return out


def is_sources_grid(activations: list[str], init_seeds: list[str], data_seeds: list[str]) -> bool:
    """True when every activation has every (init, data) combination, with at least 2 of each kind of seed."""
    cells = set(zip(activations, init_seeds, data_seeds))
    a, i, d = set(activations), set(init_seeds), set(data_seeds)
    return len(i) >= 2 and len(d) >= 2 and len(cells) == len(a) * len(i) * len(d) == len(activations)
