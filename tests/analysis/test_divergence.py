"""PD metrics (docs/REPORT.md, "Predictions and PD") on hand-made distributions, invariants and a scrambled-context
control.

    python -m pytest tests/analysis/test_divergence.py -q
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.spatial.distance import jensenshannon

from nanoact.analysis import divergence as dv


def _reference(p: np.ndarray, q: np.ndarray, y: np.ndarray) -> dict[str, float]:
    """Straight float64 transcription of the table in docs/REPORT.md."""
    p, q = p.astype(np.float64), q.astype(np.float64)
    n = np.arange(len(y))
    pa, pb = p[n, y], q[n, y]
    m = 0.5 * (p + q)

    def kl(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        safe = np.where(a > 0, a, 1.0)  # 0 · log 0 = 0
        return np.where(a > 0, a * np.log(safe / np.where(a > 0, b, 1.0)), 0.0).sum(axis=1)

    den = (pa + pb) / 2
    rel = np.divide(np.abs(pa - pb), den, out=np.zeros_like(den), where=den > 0)
    return {
        "pd_tv": float((0.5 * np.abs(p - q).sum(axis=1)).mean()),
        "pd_top1": float((p.argmax(1) != q.argmax(1)).mean()),
        "pd_label": float(np.abs(pa - pb).mean()),
        "pd_label_rel": float(rel.mean()),
        "js": float((0.5 * kl(p, m) + 0.5 * kl(q, m)).mean()),
    }


def _random_probs(rng, n, v, alpha=0.3, zeros=True):
    p = rng.dirichlet(np.full(v, alpha), size=n)
    if zeros:  # float16 storage underflows small probabilities to exactly 0
        p = p.astype(np.float16).astype(np.float64)
        p /= p.sum(axis=1, keepdims=True)
    return p


def test_hand_made_values():
    p = np.array([[0.5, 0.5, 0.0], [1.0, 0.0, 0.0]])
    q = np.array([[0.5, 0.0, 0.5], [0.0, 1.0, 0.0]])
    y = np.array([0, 0])
    got = dv.pd(p, q, y)
    # row 1: TV ½(0 + .5 + .5) = .5, same argmax 0, |.5 − .5| = 0, JS = ½ ln 2
    # row 2: TV 1, argmax 0 vs 1, |1 − 0| = 1, rel 1/(½) = 2, JS = ln 2
    assert got["pd_tv"] == pytest.approx(0.75, abs=1e-6)
    assert got["pd_top1"] == 0.5
    assert got["pd_label"] == pytest.approx(0.5, abs=1e-7)
    assert got["pd_label_rel"] == pytest.approx(1.0, abs=1e-7)
    assert got["js"] == pytest.approx(0.75 * math.log(2), abs=1e-6)


def test_scipy_jensenshannon_returns_the_square_root():
    p = np.array([0.5, 0.5, 0.0])
    q = np.array([0.5, 0.0, 0.5])
    js = dv.pd(p[None], q[None], np.array([0]))["js"]
    assert js == pytest.approx(0.5 * math.log(2), abs=1e-6)
    assert jensenshannon(p, q) ** 2 == pytest.approx(js, abs=1e-6)
    assert jensenshannon(p, q) == pytest.approx(math.sqrt(js), abs=1e-6)  # not the divergence itself


def test_matches_reference_and_scipy_on_random_distributions():
    rng = np.random.default_rng(1)
    p, q = _random_probs(rng, 3000, 65), _random_probs(rng, 3000, 65)
    y = rng.integers(0, 65, 3000)
    got, ref = dv.pd(p, q, y), _reference(p.astype(np.float32), q.astype(np.float32), y)
    for k in dv.METRICS:
        assert got[k] == pytest.approx(ref[k], rel=2e-5, abs=1e-7), k
    assert got["js"] == pytest.approx(np.mean(jensenshannon(p, q, axis=1) ** 2), rel=1e-4)


def test_js_precise_for_nearly_identical_models():
    # two models that agree closely: the entropy form must not drown JS in float32 rounding
    rng = np.random.default_rng(2)
    p = _random_probs(rng, 2000, 65, zeros=False)
    q = p * np.exp(1e-3 * rng.standard_normal(p.shape))
    q /= q.sum(axis=1, keepdims=True)
    got = dv.pd(p, q, rng.integers(0, 65, 2000))["js"]
    ref = np.mean(jensenshannon(p.astype(np.float32).astype(np.float64), q.astype(np.float32).astype(np.float64),
                                axis=1) ** 2)
    assert ref < 1e-6
    assert got == pytest.approx(ref, rel=0.05)


def test_self_pd_is_exactly_zero_and_symmetric():
    rng = np.random.default_rng(3)
    p = _random_probs(rng, 5000, 65).astype(np.float16)  # as stored, with exact zeros
    q = _random_probs(rng, 5000, 65).astype(np.float16)
    y = rng.integers(0, 65, 5000)
    same = dv.pd(p, p.copy(), y)
    assert all(v == 0.0 for v in same.values()), same
    ab, ba = dv.pd(p, q, y), dv.pd(q, p, y)
    assert ab == ba
    stack = dv.PredictionStack(np.stack([p, q, p]), y)
    vals = dv.pair_metrics(stack, [(0, 1), (1, 0), (0, 2), (2, 2)])
    for k in dv.METRICS:
        assert vals[k][0] == vals[k][1], k
        assert vals[k][2] == 0.0 and vals[k][3] == 0.0, k


def test_ranges_and_frechet_bounds_on_random_models():
    rng = np.random.default_rng(4)
    y = rng.integers(0, 10, 2000)
    probs = np.stack([_random_probs(rng, 2000, 10, alpha=0.5) for _ in range(6)])
    probs[:3, np.arange(2000), y] += 1.0  # three models that are better than chance
    probs /= probs.sum(axis=2, keepdims=True)
    stack = dv.PredictionStack(probs, y)
    pairs = [(i, j) for i in range(6) for j in range(i + 1, 6)]
    vals = dv.pair_metrics(stack, pairs)
    acc = stack.accuracy()
    lo, hi = dv.frechet_bounds(acc[[i for i, _ in pairs]], acc[[j for _, j in pairs]])
    assert np.all(vals["pd_top1"] >= lo - 1e-12) and np.all(vals["pd_top1"] <= hi + 1e-12)
    for k, top in (("pd_tv", 1), ("pd_top1", 1), ("pd_label", 1), ("pd_label_rel", 2), ("js", math.log(2))):
        assert np.all(vals[k] >= 0) and np.all(vals[k] <= top + 1e-9), k


def test_frechet_bounds_are_tight():
    # two models each 57% accurate agree on at least 14% of top-1 predictions
    n, v = 100, 5
    y = np.zeros(n, dtype=np.int64)
    a = np.where(np.arange(n) < 57, 0, 1)  # right on the first 57
    b = np.where(np.arange(n) >= 43, 0, 2)  # right on the last 57; wrong with a different label elsewhere
    pa, pb = np.eye(v)[a] * 0.9 + 0.02, np.eye(v)[b] * 0.9 + 0.02
    got = dv.pd(pa, pb, y)["pd_top1"]
    lo, hi = dv.frechet_bounds(0.57, 0.57)
    assert float(lo) == 0.0 and float(hi) == pytest.approx(0.86)
    assert got == pytest.approx(0.86)  # the upper bound is reached: only the 14 overlapping positions agree
    same = dv.pd(pa, pa[::-1].copy()[::-1], y)["pd_top1"]
    assert same == 0.0  # lower bound |acc_a − acc_b| = 0 is reached by identical predictions


def test_pair_mean_jackknife_by_hand():
    pairs = np.array([["s0", "s1"], ["s0", "s2"], ["s1", "s2"]])
    mean, se = dv.pair_mean_jackknife(pairs, np.array([1.0, 2.0, 3.0]))
    # leave-one-seed-out means 3, 2, 1 -> SE = sqrt((3-1)/3 * 2)
    assert mean == 2.0 and se == pytest.approx(math.sqrt(4 / 3))
    assert math.isnan(dv.pair_mean_jackknife(pairs[:1], np.array([1.0]))[1])  # 2 seeds: no SE


def test_loo_scores_match_direct_computation():
    rng = np.random.default_rng(5)
    probs = np.stack([_random_probs(rng, 300, 12) for _ in range(5)])
    y = rng.integers(0, 12, 300)
    stack = dv.PredictionStack(probs, y)
    got = dv.loo_scores(stack, [[0, 1, 2], [3, 4]])
    p32 = stack.probs.astype(np.float64)
    for g in ([0, 1, 2], [3, 4]):
        for i in g:
            loo = np.mean([p32[j] for j in g if j != i], axis=0)
            assert got[i] == pytest.approx(0.5 * np.abs(p32[i] - loo).sum(axis=1).mean(), rel=1e-5)
    assert np.isnan(dv.loo_scores(stack, [[0]])[0])


def test_chunked_many_pairs_equal_single_pairs(monkeypatch):
    # several chunks and pair blocks: the vectorised path equals pair-by-pair results
    monkeypatch.setattr(dv, "CHUNK", 1000)
    monkeypatch.setattr(dv, "_PAIR_BLOCK", 3)
    rng = np.random.default_rng(6)
    probs = np.stack([_random_probs(rng, 400, 17) for _ in range(5)])
    y = rng.integers(0, 17, 400)
    pairs = [(i, j) for i in range(5) for j in range(i + 1, 5)]
    vals = dv.pair_metrics(dv.PredictionStack(probs, y), pairs)
    for k, (i, j) in enumerate(pairs):
        ref = _reference(probs[i].astype(np.float32), probs[j].astype(np.float32), y)
        for m in dv.METRICS:
            assert vals[m][k] == pytest.approx(ref[m], rel=1e-5, abs=1e-7), (m, i, j)


# ---------------------------------------------------------------------------------------------------------------
# scrambled-context control (PD on shifted contexts looks like unrelated models): two real bigram models, scored on
# the same or on shifted contexts


def _markov_corpus(rng, v: int, length: int) -> tuple[np.ndarray, np.ndarray]:
    trans = rng.dirichlet(np.full(v, 0.2), size=v)  # peaked next-char distributions, like text
    seq = np.empty(length, dtype=np.int64)
    seq[0] = 0
    u = rng.random(length)
    cum = trans.cumsum(axis=1)
    for t in range(1, length):
        seq[t] = min(np.searchsorted(cum[seq[t - 1]], u[t]), v - 1)
    return seq, trans


def _bigram_model(seq: np.ndarray, v: int, alpha: float = 0.5) -> np.ndarray:
    counts = np.full((v, v), alpha)
    np.add.at(counts, (seq[:-1], seq[1:]), 1.0)  # fitted by counting: a real (tiny) language model
    return counts / counts.sum(axis=1, keepdims=True)


def test_scrambled_context_control():
    rng = np.random.default_rng(7)
    v = 20
    seq, _ = _markov_corpus(rng, v, 30_000)
    model_a = _bigram_model(seq[:10_000], v)  # "seed" a: trained on one part of the corpus
    model_b = _bigram_model(seq[10_000:20_000], v)  # "seed" b: another part
    held = seq[20_000:]
    pos = rng.choice(len(held) - 100, size=4000, replace=False)
    y = held[pos + 1]
    pa = model_a[held[pos]]
    pb_same = model_b[held[pos]]  # same contexts: the honest comparison
    pb_shifted = model_b[held[pos + 37]]  # a fresh draw of positions, as the flawed report did
    same, shifted = dv.pd(pa, pb_same, y), dv.pd(pa, pb_shifted, y)
    assert same["pd_tv"] < 0.1
    assert shifted["pd_tv"] > 5 * same["pd_tv"]
    assert shifted["pd_top1"] > 3 * same["pd_top1"]
    assert shifted["js"] > 10 * same["js"]


def test_threads_do_not_change_results():
    rng = np.random.default_rng(8)
    probs = np.stack([_random_probs(rng, 500, 33) for _ in range(6)]).astype(np.float16)
    y = rng.integers(0, 33, 500)
    pairs = [(i, j) for i in range(6) for j in range(6) if i != j] * 2
    one = dv.pair_metrics(dv.PredictionStack(probs, y), pairs, threads=1)
    two = dv.pair_metrics(dv.PredictionStack(probs, y), pairs, threads=2)
    for k in dv.METRICS:
        assert np.array_equal(one[k], two[k]), k


def test_per_context_tv_averages_to_pair_pd_tv():
    rng = np.random.default_rng(11)
    probs = np.stack([_random_probs(rng, 3000, 65) for _ in range(3)])
    stack = dv.PredictionStack(probs, rng.integers(0, 65, 3000))
    pairs = [(0, 1), (0, 2), (1, 2)]
    per = dv.per_context_tv(stack, pairs)
    assert per.shape == (3000,)
    assert per.mean() == pytest.approx(dv.pair_metrics(stack, pairs, ("pd_tv",))["pd_tv"].mean(), rel=1e-5)
    assert dv.per_context_tv(stack, []).sum() == 0
