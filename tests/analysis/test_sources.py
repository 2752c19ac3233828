"""PD split by source (nanoact.analysis.sources): categories by hand, calibration under nulls, power."""

from __future__ import annotations

import math

import numpy as np
import pytest

from nanoact.analysis import sources as so

ALPHA = 0.05
N_CTX, V = 6, 5


def simulate(rng, m, k, ni, nd, *, loc=0.0, init_scale=1.0, data_scale=1.0, run_scale=0.5):
    """m data sets of (k activations x ni init seeds x nd data seeds) runs: pd_tv matrix and run labels."""
    truth = rng.standard_normal((N_CTX, V))
    z = (truth + loc * rng.standard_normal((m, k, 1, 1, N_CTX, V))
         + init_scale * rng.standard_normal((m, 1, ni, 1, N_CTX, V))
         + data_scale * rng.standard_normal((m, 1, 1, nd, N_CTX, V))
         + run_scale * rng.standard_normal((m, k, ni, nd, N_CTX, V)))
    p = np.exp(z - z.max(axis=-1, keepdims=True))
    p /= p.sum(axis=-1, keepdims=True)
    p = p.reshape(m, k * ni * nd, N_CTX, V)
    h = 0.5 * np.abs(p[:, :, None] - p[:, None, :]).sum(axis=-1).mean(axis=-1)
    a, i, d = np.meshgrid(np.arange(k), np.arange(ni), np.arange(nd), indexing="ij")
    return h, a.ravel(), i.ravel(), d.ravel()


def _p(h, a, i, d, name):
    est, se, df = so.decompose(h, a, i, d)[name]
    return 2 * __import__("scipy").stats.t.sf(abs(est / se), df)


def test_categories_by_hand():
    h, a, i, d = simulate(np.random.default_rng(0), 1, 2, 3, 3)
    h = h[0]
    res = so.decompose(h, a, i, d)
    r = len(a)
    pick = [h[x, y] for x in range(r) for y in range(x + 1, r) if a[x] == a[y] and i[x] != i[y] and d[x] == d[y]]
    assert res["init"][0] == pytest.approx(np.mean(pick))
    pick = [h[x, y] for x in range(r) for y in range(x + 1, r) if a[x] != a[y] and i[x] != i[y] and d[x] != d[y]]
    assert res["activation+init+data"][0] == pytest.approx(np.mean(pick))
    assert res["activation_vs_reseeding"][0] == pytest.approx(res["activation+init+data"][0] - res["init+data"][0])
    assert res["init"][2] == 2  # df = min(3, 3) - 1
    assert so.is_sources_grid(list(a), list(i), list(d))
    assert not so.is_sources_grid(list(a[:-1]), list(i[:-1]), list(d[:-1]))


@pytest.mark.parametrize("ni, nd", [(3, 3), (4, 4), (5, 5)])
def test_null_calibration(ni, nd):
    rng = np.random.default_rng(ni * 10 + nd)
    m = 300
    h, a, i, d = simulate(rng, m, 2, ni, nd, loc=0.0, init_scale=0.8, data_scale=0.8)
    bound = ALPHA + 3 * math.sqrt(ALPHA * (1 - ALPHA) / m)
    for name in ("activation_vs_reseeding", "init_only_vs_data_only"):
        p = np.array([_p(h[x], a, i, d, name) for x in range(m)])
        assert np.mean(p <= ALPHA) <= bound, name


def test_power_on_planted_sources():
    rng = np.random.default_rng(7)
    m = 100
    h, a, i, d = simulate(rng, m, 3, 4, 4, loc=1.0, init_scale=1.0, data_scale=0.2)
    p_act = np.array([_p(h[x], a, i, d, "activation_vs_reseeding") for x in range(m)])
    p_src = np.array([_p(h[x], a, i, d, "init_only_vs_data_only") for x in range(m)])
    assert np.mean(p_act <= ALPHA) >= 0.8 and np.mean(p_src <= ALPHA) >= 0.8


def test_analyse_sources_labels_and_intervals():
    h, a, i, d = simulate(np.random.default_rng(1), 1, 2, 3, 3, loc=0.5)
    res = so.analyse_sources(h[0], [f"act{x}" for x in a], [str(x) for x in i], [str(x) for x in d])
    assert [c.name for c in res.categories] == list(so.CATEGORIES)
    for c in res.categories + res.contrasts:
        assert c.lo < c.mean < c.hi
    assert all(math.isfinite(c.p) for c in res.contrasts)
