"""Prediction-difference (PD) metrics, computed for many pairs of runs at once.

All runs of a ``PredictionStack`` predicted on the same evaluation set (the report refuses anything else), so
row n of every run is the same context x_n. Names and formulas, averaged over the N contexts:

  pd_tv         ½ Σ_ℓ |p_a(ℓ|x) − p_b(ℓ|x)|                      (Shamir's Δ₁, total variation)
  pd_top1       1[argmax p_a ≠ argmax p_b]                        (churn)
  pd_label      |p_a(y|x) − p_b(y|x)|
  pd_label_rel  |p_a(y) − p_b(y)| / ((p_a(y) + p_b(y)) / 2)       (0 where both are 0)
  js            ½KL(p_a‖m) + ½KL(p_b‖m), m = (p_a + p_b)/2, nats   (the divergence, not scipy's square root)

Speed: the two dense metrics are computed from identities that need few passes over memory,
  Σ|p − q| = Σp + Σq − 2 Σ min(p, q)
  JS       = ¼ T(p) + ¼ T(q) − ½ S(p, q),  S(p, q) = Σ (p+q) log(p+q),  T(p) = S(p, p)
(the log 2 terms cancel), over fixed-size chunks of the flattened (N·V) arrays so the scratch buffers stay in
cache. The per-run terms Σp and T(p) are computed by the very same code path as the pair terms, so PD(a, a) is
exactly 0 and every metric is exactly symmetric. JS sums accumulate in float64 because T and S are large and
nearly cancel when two models agree closely.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from nanoact.analysis.pdtests import jackknife_var

METRICS: tuple[str, ...] = ("pd_tv", "pd_top1", "pd_label", "pd_label_rel", "js")

_TINY = np.finfo(np.float32).tiny  # floor for probabilities so log(p) is finite; far below float16's 6e-8
CHUNK = 1 << 17  # elements per chunk of a run's flattened probabilities (512 KiB of float32)
THREADS = min(2, os.cpu_count() or 1)  # a modest default: the dev machine has 2 cores, shared
_PAIR_BLOCK = 64  # pairs per block for the (pairs, N) gathers of the cheap per-context metrics


class PredictionStack:
    """The predictions of R runs at one step, on one shared evaluation set.

    Args:
        probs: (R, N, V) probabilities. Converted to C-contiguous float32 and floored at the smallest normal
            float32 (so ``log`` is finite); with ``copy=False`` a float32 input is modified in place.
        targets: (N,) true next token of each context.
        top1: (R, N) argmax per run; computed from ``probs`` when missing.
        label_prob: (R, N) probability of the target per run; gathered from ``probs`` when missing.
    """

    def __init__(
        self,
        probs: np.ndarray,
        targets: np.ndarray,
        top1: np.ndarray | None = None,
        label_prob: np.ndarray | None = None,
        *,
        copy: bool = True,
    ) -> None:
        probs = np.array(probs, dtype=np.float32, copy=True, order="C") if copy else np.ascontiguousarray(
            probs, dtype=np.float32
        )
        assert probs.ndim == 3, f"probs must be (runs, contexts, vocab), got shape {probs.shape}"
        np.maximum(probs, _TINY, out=probs)
        self.probs = probs
        self.n_runs, self.n_contexts, self.vocab_size = probs.shape
        self.targets = np.asarray(targets, dtype=np.int64)
        assert self.targets.shape == (self.n_contexts,), "targets must be (contexts,)"
        self.top1 = probs.argmax(axis=2) if top1 is None else np.asarray(top1, dtype=np.int64)
        if label_prob is None:
            label_prob = probs[:, np.arange(self.n_contexts), self.targets]
        self.label_prob = np.asarray(label_prob, dtype=np.float32)
        self._flat = probs.reshape(self.n_runs, -1)
        n = self._flat.shape[1]
        self._bounds = [(lo, min(lo + CHUNK, n)) for lo in range(0, n, CHUNK)]
        self._sigma = np.zeros((self.n_runs, len(self._bounds)))  # Σp per chunk (float32 sum, as the pair path)
        self._t = np.zeros((self.n_runs, len(self._bounds)))  # T(p) per chunk
        self._have_self = np.zeros(self.n_runs, dtype=bool)

    def accuracy(self) -> np.ndarray:
        """(R,) top-1 accuracy of each run on the evaluation set."""
        return (self.top1 == self.targets[None, :]).mean(axis=1)

    # -- the one code path for both pair and self terms (bit-identical results for identical inputs)
    @staticmethod
    def _chunk_terms(a: np.ndarray, b: np.ndarray, b1: np.ndarray, b2: np.ndarray,
                     want_js: bool) -> tuple[float, float]:
        n = a.shape[0]
        b1, b2 = b1[:n], b2[:n]
        np.minimum(a, b, out=b1)
        summin = float(b1.sum())
        s = 0.0
        if want_js:
            np.add(a, b, out=b1)
            np.log(b1, out=b2)
            np.multiply(b2, b1, out=b2)
            s = float(b2.sum(dtype=np.float64))
        return summin, s

    def _scratch(self) -> tuple[np.ndarray, np.ndarray]:
        n = min(CHUNK, self._flat.shape[1])
        return np.empty(n, dtype=np.float32), np.empty(n, dtype=np.float32)

    def _ensure_self(self, runs: Iterable[int]) -> None:
        todo = [r for r in runs if not self._have_self[r]]
        b1, b2 = self._scratch()
        for r in todo:
            for c, (lo, hi) in enumerate(self._bounds):
                a = self._flat[r, lo:hi]
                self._sigma[r, c], self._t[r, c] = self._chunk_terms(a, a, b1, b2, True)
            self._have_self[r] = True

    def _dense(self, i_idx: np.ndarray, j_idx: np.ndarray, want_js: bool) -> tuple[np.ndarray, np.ndarray]:
        """Σ-terms of pd_tv and js for the given pairs (self terms must exist)."""
        m = len(i_idx)
        tv, js = np.zeros(m), np.zeros(m)
        b1, b2 = self._scratch()
        flat, sigma, t = self._flat, self._sigma, self._t
        # chunk-outer: the chunk of every run stays hot in cache while all pairs that use it are visited
        for c, (lo, hi) in enumerate(self._bounds):
            for k in range(m):
                i, j = i_idx[k], j_idx[k]
                summin, s = self._chunk_terms(flat[i, lo:hi], flat[j, lo:hi], b1, b2, want_js)
                tv[k] += 0.5 * (sigma[i, c] + sigma[j, c]) - summin
                if want_js:
                    js[k] += 0.25 * (t[i, c] + t[j, c]) - 0.5 * s
        return tv, js


def pair_metrics(
    stack: PredictionStack,
    pairs: np.ndarray | Sequence[tuple[int, int]],
    metrics: Sequence[str] = METRICS,
    threads: int | None = None,
) -> dict[str, np.ndarray]:
    """PD metrics for each pair (i, j) of run indices of ``stack``; returns name -> (n_pairs,) float64.

    ``threads`` (default ``THREADS``) splits the pairs between threads; results do not depend on it.
    """
    pairs = np.asarray(pairs, dtype=np.int64).reshape(-1, 2)
    unknown = set(metrics) - set(METRICS)
    assert not unknown, f"unknown PD metrics {sorted(unknown)}; choose from {METRICS}"
    out: dict[str, np.ndarray] = {}
    m, n_ctx = len(pairs), stack.n_contexts
    if m == 0:
        return {k: np.zeros(0) for k in metrics}
    i_idx, j_idx = pairs[:, 0], pairs[:, 1]

    want_tv, want_js = "pd_tv" in metrics, "js" in metrics
    if want_tv or want_js:
        stack._ensure_self(np.unique(pairs))
        n_threads = max(1, min(threads or THREADS, m // 8))  # numpy releases the GIL in ufunc loops
        if n_threads == 1:
            tv, js = stack._dense(i_idx, j_idx, want_js)
        else:
            parts = np.array_split(np.arange(m), n_threads)
            with ThreadPoolExecutor(n_threads) as ex:
                res = list(ex.map(lambda p: stack._dense(i_idx[p], j_idx[p], want_js), parts))
            tv, js = np.concatenate([r[0] for r in res]), np.concatenate([r[1] for r in res])
        if want_tv:
            out["pd_tv"] = np.maximum(tv / n_ctx, 0.0)  # rounding can give -1e-12 for identical rows
        if want_js:
            out["js"] = np.maximum(js / n_ctx, 0.0)

    cheap = [k for k in ("pd_top1", "pd_label", "pd_label_rel") if k in metrics]
    if cheap:
        res = {k: np.empty(m) for k in cheap}
        for lo in range(0, m, _PAIR_BLOCK):
            sl = slice(lo, lo + _PAIR_BLOCK)
            a_i, b_i = i_idx[sl], j_idx[sl]
            if "pd_top1" in res:
                res["pd_top1"][sl] = (stack.top1[a_i] != stack.top1[b_i]).mean(axis=1)
            if "pd_label" in res or "pd_label_rel" in res:
                la = stack.label_prob[a_i].astype(np.float64)
                lb = stack.label_prob[b_i].astype(np.float64)
                diff = np.abs(la - lb)
                if "pd_label" in res:
                    res["pd_label"][sl] = diff.mean(axis=1)
                if "pd_label_rel" in res:
                    den = 0.5 * (la + lb)
                    rel = np.divide(diff, den, out=np.zeros_like(diff), where=den > 0)
                    res["pd_label_rel"][sl] = rel.mean(axis=1)
        out.update(res)
    return {k: out[k] for k in metrics}


def pd(
    p: np.ndarray,
    q: np.ndarray,
    targets: np.ndarray,
    metrics: Sequence[str] = METRICS,
) -> dict[str, float]:
    """All PD metrics between two (N, V) prediction matrices on the same contexts (same code path as reports)."""
    stack = PredictionStack(np.stack([np.asarray(p), np.asarray(q)]), targets)
    return {k: float(v[0]) for k, v in pair_metrics(stack, [(0, 1)], metrics).items()}


def loo_scores(stack: PredictionStack, groups: Sequence[Sequence[int]]) -> np.ndarray:
    """Per-run PD score: pd_tv of each run against the leave-one-out mean prediction of its group.

    ``groups`` are lists of run indices (one per activation). Runs alone in their group get NaN.
    """
    scores = np.full(stack.n_runs, np.nan)
    flat = stack._flat
    for group in groups:
        g = np.asarray(group, dtype=np.int64)
        if len(g) < 2:
            continue
        acc = np.zeros(len(g))
        for lo, hi in stack._bounds:
            block = flat[g, lo:hi]  # (M, chunk)
            total = block.sum(axis=0, dtype=np.float64)
            for k in range(len(g)):
                loo = (total - block[k]) / (len(g) - 1)
                acc[k] += np.abs(loo - block[k]).sum()
        scores[g] = 0.5 * acc / stack.n_contexts
    return scores


def frechet_bounds(acc_a: float | np.ndarray, acc_b: float | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Bounds on top-1 disagreement from the two accuracies: |acc_a − acc_b| ≤ pd_top1 ≤ err_a + err_b."""
    acc_a, acc_b = np.asarray(acc_a, dtype=np.float64), np.asarray(acc_b, dtype=np.float64)
    return np.abs(acc_a - acc_b), np.minimum(1.0, (1 - acc_a) + (1 - acc_b))


def pair_mean_jackknife(pairs: np.ndarray, values: np.ndarray) -> tuple[float, float]:
    """Mean over pairs of units, with a jackknife standard error that leaves out one *unit* (seed) at a time.

    Pairs share units, so a standard error over pairs would be too small. ``pairs`` holds unit
    labels (n_pairs, 2). Returns (mean, se); se is NaN with fewer than 3 units (no pair survives deletion).
    """
    pairs = np.asarray(pairs).reshape(-1, 2)
    values = np.asarray(values, dtype=np.float64)
    if len(values) == 0:
        return float("nan"), float("nan")
    mean = float(values.mean())
    units = np.unique(pairs)
    if len(units) < 3:
        return mean, float("nan")
    theta = np.array([values[(pairs[:, 0] != u) & (pairs[:, 1] != u)].mean() for u in units])
    return mean, float(np.sqrt(jackknife_var(theta)))


def per_context_tv(stack: PredictionStack, pairs: Sequence[tuple[int, int]]) -> np.ndarray:
    """(N,) pd_tv per context, averaged over ``pairs``: the input of a bootstrap over evaluation contexts."""
    out = np.zeros(stack.n_contexts)
    if not len(pairs):
        return out
    step = max(1, CHUNK // stack.vocab_size)
    for i, j in pairs:
        for lo in range(0, stack.n_contexts, step):
            a, b = stack.probs[i, lo:lo + step], stack.probs[j, lo:lo + step]
            out[lo:lo + step] += 0.5 * np.abs(a - b).sum(axis=1, dtype=np.float64)
    return out / len(pairs)
