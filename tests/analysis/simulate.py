"""Simulated PD tables in the realistic regime: many contexts and classes, run effects shared across contexts.

The old calibration simulations drew independent noise for each of 6 contexts x 5 classes, so PD between two
runs was nearly a constant plus context noise. Real runs differ the other way round: 2048 contexts x 65 classes,
and a run's deviation is a function of its weights, shared by every context. Here every effect is a low-rank
random field over (context, class), so it is shared across contexts:

    logits(a, u) = TEMP·truth + loc·A_a + seed·S_u + scale_a·E_au (+ outlier·E'_au for outlier runs)

with 64 contexts x 65 classes (4,160 cells per run: far more cells than the 30 of the old tests, with PD still
cheap enough for hundreds of data sets) and rank-64 effects plus a little independent cell noise. Crossed grids
(``crossed``) split the seed into an init seed and a data seed, with activation x init interactions.
Fixed RNG seeds in every caller.
"""

from __future__ import annotations

import numpy as np

N_CTX, V, RANK = 64, 65, 64
TEMP = 2.5


def _field(rng: np.random.Generator, lead: tuple[int, ...], basis: np.ndarray) -> np.ndarray:
    """Low-rank random fields (lead..., N*V): shared across contexts, unit scale per cell on average."""
    out = (rng.standard_normal((int(np.prod(lead)), RANK), dtype=np.float32) @ basis).reshape(*lead, -1)
    out += rng.standard_normal((*lead, N_CTX * V), dtype=np.float32) * np.float32(0.3 * np.sqrt(RANK))
    out *= np.float32(1 / np.sqrt(RANK))
    return out


def _tv(z: np.ndarray) -> np.ndarray:
    """(m, R, N*V) logits -> (m, R, R) mean total variation over contexts."""
    z = z.reshape(*z.shape[:2], N_CTX, V)
    p = np.exp(z - z.max(axis=-1, keepdims=True))
    p /= p.sum(axis=-1, keepdims=True)
    p = p.reshape(*z.shape[:2], N_CTX * V)
    m, r = p.shape[:2]
    out = np.zeros((m, r, r))
    for i in range(r - 1):
        out[:, i, i + 1:] = 0.5 * np.abs(p[:, i:i + 1] - p[:, i + 1:]).sum(axis=-1) / N_CTX
    return out + out.transpose(0, 2, 1)


def pd_tables(rng: np.random.Generator, m: int, k: int, n: int, *, loc: float = 0.0, seed: float = 0.4,
              scale=0.3, shared_seed: bool = True, outlier: float = 0.0, chunk: int = 25) -> np.ndarray:
    """(m, k, n, k, n) pd_tv tables of m simulated activation x seed grids.

    ``shared_seed``: the seed effect is shared by every activation at that seed (same initial weights and batch
    order); False gives each (activation, seed) its own, so same-seed pairs are like different-seed pairs.
    ``scale``: run noise per activation (a scalar or k values). ``outlier``: extra noise on one run per data set.
    """
    scale = np.broadcast_to(np.asarray(scale, dtype=np.float32), (k,))
    out = np.empty((m, k * n, k * n))
    basis = rng.standard_normal((RANK, N_CTX * V), dtype=np.float32)  # one population for all m data sets
    truth = TEMP * _field(rng, (1, 1, 1), basis)
    for lo in range(0, m, chunk):
        mc = min(chunk, m - lo)
        acts = loc * _field(rng, (mc, k, 1), basis)
        seeds = seed * _field(rng, (mc, 1 if shared_seed else k, n), basis)
        z = truth + acts + seeds + scale[None, :, None, None] * _field(rng, (mc, k, n), basis)
        if outlier:
            z[:, 0, 0] += outlier * _field(rng, (mc,), basis)
        out[lo:lo + mc] = _tv(z.reshape(mc, k * n, -1))
    return out.reshape(m, k, n, k, n)


def crossed_tables(rng: np.random.Generator, m: int, k: int, ni: int, nd: int, *, init: float = 0.6,
                   data: float = 0.3, act_init: float = 0.0, scale: float = 0.3, chunk: int = 10) -> np.ndarray:
    """(m, k, ni*nd, k, ni*nd) pd_tv tables of crossed grids (block b = (init b // nd, data b % nd)).

    ``act_init``: activation x init-seed interaction (an init seed that suits one activation more than another).
    """
    out = np.empty((m, k * ni * nd, k * ni * nd))
    basis = rng.standard_normal((RANK, N_CTX * V), dtype=np.float32)
    truth = TEMP * _field(rng, (1, 1, 1, 1), basis)
    for lo in range(0, m, chunk):
        mc = min(chunk, m - lo)
        z = (truth + init * _field(rng, (mc, 1, ni, 1), basis)
             + data * _field(rng, (mc, 1, 1, nd), basis) + act_init * _field(rng, (mc, k, ni, 1), basis)
             + scale * _field(rng, (mc, k, ni, nd), basis))
        out[lo:lo + mc] = _tv(z.reshape(mc, k * ni * nd, -1))
    return out.reshape(m, k, ni * nd, k, ni * nd)


def crossed_groupings(ni: int, nd: int) -> list[np.ndarray]:
    b = np.arange(ni * nd)
    return [b // nd, b % nd]


def bound(m: int, alpha: float = 0.05) -> float:
    """Largest rejection rate consistent with level alpha: alpha + 3 Monte Carlo SE."""
    return alpha + 3 * np.sqrt(alpha * (1 - alpha) / m)


def coverage_floor(m: int, level: float = 0.95) -> float:
    return level - 3 * np.sqrt(level * (1 - level) / m)


def level_tables(rng: np.random.Generator, m: int, f: int, k: int, n: int, *, loc=0.3, seed: float = 0.4,
                 level_seed: float = 0.3, scale: float = 0.3, chunk: int = 10) -> np.ndarray:
    """(m, f, k, n, k, n) pd_tv tables of an activation x seed grid at each of f levels (architectures, say),
    PD taken between runs of one level only.

    ``loc``: the activation effect's size at each level (a scalar or f values), one fixed effect per activation
    scaled per level: equal values are the null of "the activation moves predictions equally at every level" (the
    levels' activation effects are the same fixed effects; drawing them afresh per level would make the levels'
    true excesses differ). Seeds are crossed with the levels: seed u's effect has
    a part shared by every level (``seed``) and a part of its own at each level (``level_seed``, a seed x level
    interaction), so the levels' tables are correlated through their seeds.
    """
    loc = np.broadcast_to(np.asarray(loc, dtype=np.float32), (f,))
    out = np.empty((m, f, k * n, k * n))
    basis = rng.standard_normal((RANK, N_CTX * V), dtype=np.float32)
    truth = TEMP * _field(rng, (1, 1, 1), basis)
    for lo in range(0, m, chunk):
        mc = min(chunk, m - lo)
        shared = seed * _field(rng, (mc, 1, n), basis)
        acts = _field(rng, (mc, k, 1), basis)
        for g in range(f):
            z = (truth + loc[g] * acts + shared
                 + level_seed * _field(rng, (mc, 1, n), basis) + scale * _field(rng, (mc, k, n), basis))
            out[lo:lo + mc, g] = _tv(z.reshape(mc, k * n, -1))
    return out.reshape(m, f, k, n, k, n)
