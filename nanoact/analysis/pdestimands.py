"""The PD estimands, as functions of the table of one PD metric between every pair of runs of a complete grid.

    D[a, s, b, t] = PD(run(a, s), run(b, t)),    shape (..., k, n, k, n)

with k activations and n seeds; leading axes are a batch of data sets (simulations). Numbers only:
``nanoact.analysis.pdtests`` tests them (relabelling within seeds, jackknife over the design's random units) and
docs/REPORT.md ("PD tests") words each one.
"""

from __future__ import annotations

import numpy as np


def pd_table(matrix: np.ndarray, act_index: np.ndarray, seed_index: np.ndarray, k: int, n: int) -> np.ndarray:
    """(R, R) PD between runs -> (k, n, k, n) table; run r is (act_index[r], seed_index[r]) of a complete grid."""
    assert len(act_index) == k * n, "the grid must be complete (one run per activation x seed)"
    out = np.full((k, n, k, n), np.nan)
    a, s = np.asarray(act_index), np.asarray(seed_index)
    out[a[:, None], s[:, None], a[None, :], s[None, :]] = np.asarray(matrix, dtype=np.float64)
    return out


def offdiag(n: int) -> np.ndarray:
    """(n, n) True off the diagonal: pairs of different seeds."""
    return ~np.eye(n, dtype=bool)


def within_blocks(d: np.ndarray) -> np.ndarray:
    """(..., k, n, n): PD between seeds of each activation (the diagonal of the activation axes)."""
    return np.einsum("...aiaj->...aij", d)


def within_means(d: np.ndarray) -> np.ndarray:
    """(..., k) mean PD over pairs of different seeds of the same activation (W_a)."""
    n = d.shape[-1]
    w = within_blocks(d)
    return np.where(offdiag(n), w, 0.0).sum(axis=(-1, -2)) / (n * (n - 1))


def cross_minus_within(d: np.ndarray) -> np.ndarray:
    """(...) Δ = C − W over pairs of runs with different seeds (C: different activations, W: the same)."""
    k, n = d.shape[-4], d.shape[-1]
    mask = offdiag(n)[None, :, None, :]  # (1, n, 1, n) over (a, s, b, t)
    total = np.where(mask, d, 0.0).sum(axis=(-1, -2, -3, -4))
    wsum = within_means(d).sum(axis=-1) * n * (n - 1)
    c = (total - wsum) / (n * (n - 1) * k * (k - 1))
    return c - wsum / (n * (n - 1) * k)


def cross_means(d: np.ndarray) -> np.ndarray:
    """(..., k, k) mean PD between activations a and b over pairs of runs with different seeds."""
    n = d.shape[-1]
    return np.where(offdiag(n)[:, None, :], d, 0.0).sum(axis=(-3, -1)) / (n * (n - 1))


def excess(d: np.ndarray) -> np.ndarray:
    """(..., k, k) Δ_ab = C_ab − (W_a + W_b)/2, different seeds on both sides (a symmetric excess)."""
    w = within_means(d)
    return cross_means(d) - 0.5 * (w[..., :, None] + w[..., None, :])


def _pair_mean(x: np.ndarray) -> np.ndarray:
    return 0.5 * (x[..., :, None] + x[..., None, :])


def same_seed_means(d: np.ndarray) -> np.ndarray:
    """(..., k, k) mean over seeds of PD(run(a, s), run(b, s)): only the activation differs."""
    return np.einsum("...asbs->...abs", d).mean(axis=-1)


def activation_only(d: np.ndarray) -> np.ndarray:
    """(..., k, k) same-seed PD between a and b minus their mean seed-to-seed PD (W_a + W_b)/2.

    > 0: changing only the activation (same initial weights and batch order) moves predictions more than
    reseeding does; < 0: less.
    """
    return same_seed_means(d) - _pair_mean(within_means(d))


def _upper_mean(x: np.ndarray) -> np.ndarray:
    k = x.shape[-1]
    iu = np.triu_indices(k, 1)
    return x[..., iu[0], iu[1]].mean(axis=-1)


def activation_only_overall(d: np.ndarray) -> np.ndarray:
    """(...) ``activation_only`` averaged over the pairs of activations."""
    return _upper_mean(activation_only(d))


def relative_excess(d: np.ndarray) -> np.ndarray:
    """(...) Δ / W̄: the cross-activation PD (different seeds) relative to the mean seed-to-seed PD, minus 1."""
    return cross_minus_within(d) / within_means(d).mean(axis=-1)


def relative_reproducibility(d: np.ndarray) -> np.ndarray:
    """(..., k, k) (W_a − W_b) / ((W_a + W_b)/2): how much less reproducible a is than b, relative."""
    w = within_means(d)
    return (w[..., :, None] - w[..., None, :]) / _pair_mean(w)


def same_seed_ratio(d: np.ndarray) -> np.ndarray:
    """(k, k) median over seeds of PD(a, s; b, s), divided by (W_a + W_b)/2: near 0 means near-identical models."""
    n = d.shape[-1]
    s = np.arange(n)
    same = np.median(d[:, s, :, s], axis=0)  # (k, k)
    w = within_means(d) if n >= 2 else np.full(d.shape[0], np.nan)
    den = 0.5 * (w[:, None] + w[None, :])
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(den > 0, same / den, np.where(same > 0, np.inf, 0.0))
