"""Log synthetic runs in the docs/TRACKING.md schema into any MLflow store, through ``nanoact.tracking.Store``.

Used by the tests, by ``benchmarks/report_speed.py``, and to show that the report reads runs nanoact did not
produce. Nothing here is hard-coded output: every "model" is a fixed random function of the context whose
predictions are real softmax outputs, and every logged loss and accuracy is computed from those predictions.

Per cell (activation a, seed s) the final logits on context n are

    L = q_a · Z + act_scale · A_a + seed_scale · S_s + run_scale · E_as

with Z the true logits (targets are sampled from softmax(Z)), A_a an activation-specific offset (the treatment
effect on predictions), S_s a seed offset shared by all activations (the block), E_as run noise, and q_a a
per-activation sharpness (``quality``) that moves the loss. Checkpoint t predicts with f_t·L + (1−f_t)·I_as,
f_t = t / max_step, I_as a small "initialisation" term. ``copy_of`` makes an activation silently reuse another
activation's model: the failure of the flawed report (``copy_jitter`` adds the small differences that
nondeterministic training would, so the copies are not byte-identical).
"""

from __future__ import annotations

import hashlib
import json
import tempfile
import time
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from nanoact.tracking import schema as S

MODULE_NAMES = {"relu": "ReLU()", "gelu": "GELU(approximate='none')", "gelu_tanh": "GELU(approximate='tanh')",
                "swish": "SiLU()", "silu": "SiLU()"}


@dataclass
class SyntheticSpec:
    """What to log. Defaults: a small 3 × 3 grid with a real activation effect on predictions and none on loss."""

    experiment: str = "synthetic"
    activations: Sequence[str] = ("relu", "gelu", "swish")
    seeds: Sequence[int] = (42, 43, 44)
    n_contexts: int = 256
    vocab_size: int = 65
    steps: Sequence[int] = (0, 50, 100)
    quality: Mapping[str, float] = field(default_factory=dict)  # activation -> sharpness q_a (default 1.0)
    act_scale: float = 0.6
    seed_scale: float = 0.3
    run_scale: float = 0.3
    run_scale_of: Mapping[str, float] = field(default_factory=dict)  # activation -> its own run noise (reproducibility)
    copy_of: Mapping[str, str] = field(default_factory=dict)  # activation -> activation it silently reuses
    copy_jitter: float = 0.0  # logit noise added to copies: nondeterministic training, not byte-identical
    data_seeds: Sequence[int] = ()  # non-empty: ``seeds`` are init seeds, crossed with these data-order seeds
    data_scale: float = 0.3  # weight of the data-order seed's offset
    failed: Sequence[tuple[str, int]] = ()  # cells with only a FAILED attempt
    retried: Sequence[tuple[str, int]] = ()  # cells with an older FINISHED attempt before the kept one
    eval_sha256: Mapping[tuple[str, int], str] = field(default_factory=dict)  # per-cell override (refusal test)
    # cells logged as the current version does (train.dtype auto, train.dtype_resolved = the value); the others
    # as before auto existed (train.dtype float32, no train.dtype_resolved)
    dtypes: Mapping[tuple[str, int], str] = field(default_factory=dict)
    nanoact_tags: bool = True  # False: log like a foreign tool (no nanoact.role/grid_key/module tags)
    parent: bool = True
    declared_grid: Mapping[str, Sequence[Any]] | None = None  # the grid the parent run declares (tag nanoact.grid)
    model: str = "charlm"
    models: Sequence[str] = ()  # non-empty: the grid crosses these models (axis model.name), on one evaluation set
    data_seed: int = 0
    device: str = "cpu"
    n_params: int = 100_000  # tag nanoact.n_params of an activation's runs: this + 1000 * len(its name)


@dataclass
class SyntheticLog:
    experiment_id: str
    parent_run_id: str | None
    run_ids: dict[tuple[str, int], str]  # the kept (newest FINISHED) run per cell
    all_run_ids: list[str]


def _rng(*key: object) -> np.random.Generator:
    # stable across processes (unlike hash()): the same key always gives the same stream
    return np.random.default_rng(zlib.crc32(repr(key).encode()))


def _softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    np.exp(z, out=z)
    z /= z.sum(axis=1, keepdims=True)
    return z


class _World:
    """The shared truth: true logits Z and targets; cached offsets per activation and seed."""

    def __init__(self, spec: SyntheticSpec) -> None:
        n, v = spec.n_contexts, spec.vocab_size
        g = _rng("truth", spec.data_seed, n, v)
        self.z = (2.0 * g.standard_normal((n, v))).astype(np.float32)
        gumbel = -np.log(-np.log(g.random((n, v))))
        self.targets = np.argmax(self.z + gumbel, axis=1).astype(np.int64)  # y ~ softmax(Z)
        self.eval_sha256 = hashlib.sha256(self.targets.tobytes() + str(spec.data_seed).encode()).hexdigest()
        self.spec = spec
        self._act: dict[str, np.ndarray] = {}
        self._seed: dict[int, np.ndarray] = {}

    def _model_key(self) -> tuple:
        return (self.spec.model,) if self.spec.models else ()  # each model of a crossed grid fits its own way

    def act(self, a: str) -> np.ndarray:
        if a not in self._act:
            self._act[a] = _rng("act", a, self.spec.data_seed, *self._model_key()).standard_normal(
                self.z.shape, dtype=np.float32)
        return self._act[a]

    def seed(self, s: int) -> np.ndarray:
        if s not in self._seed:
            self._seed[s] = _rng("seed", s, self.spec.data_seed).standard_normal(self.z.shape, dtype=np.float32)
        return self._seed[s]

    def final_logits(self, a: str, s: int | tuple[int, int], attempt: int) -> tuple[np.ndarray, np.ndarray]:
        spec = self.spec
        g = _rng("run", a, s, attempt, spec.data_seed, *self._model_key())
        logits = spec.quality.get(a, 1.0) * self.z
        logits += spec.act_scale * self.act(a)
        if isinstance(s, tuple):  # (init seed, data-order seed)
            logits += spec.seed_scale * self.seed(s[0])
            data = _rng("data", s[1], spec.data_seed).standard_normal(self.z.shape, dtype=np.float32)
            logits += spec.data_scale * data
        else:
            logits += spec.seed_scale * self.seed(s)
        logits += spec.run_scale_of.get(a, spec.run_scale) * g.standard_normal(self.z.shape, dtype=np.float32)
        init = 0.1 * g.standard_normal(self.z.shape, dtype=np.float32)
        return logits, init


def _metrics_for(probs: np.ndarray, targets: np.ndarray) -> tuple[float, float]:
    p = probs[np.arange(len(targets)), targets].astype(np.float64)
    return float(-np.log(np.maximum(p, 1e-12)).mean()), float((probs.argmax(axis=1) == targets).mean())


def log_synthetic_runs(
    tracking_uri: str, spec: SyntheticSpec | None = None, *, artifact_root: str | Path | None = None
) -> SyntheticLog:
    """Log ``spec``'s grid as cell runs (plus a parent run) into the store at ``tracking_uri``.

    ``artifact_root`` (a folder or URI) holds the experiment's artifacts; by default the folder next to a
    sqlite DB (``nanoact.tracking_uri.default_artifact_root``).
    """
    from nanoact.tracking.store import Store

    spec = spec or SyntheticSpec()
    store = Store(tracking_uri)
    root = None  # the store's default
    if artifact_root is not None:
        root = str(artifact_root) if "://" in str(artifact_root) else Path(artifact_root).resolve().as_uri()
    exp_id = store.ensure_experiment(spec.experiment, artifact_root=root)
    t0 = int(time.time() * 1000)
    clock = [0]

    def tick() -> int:
        clock[0] += 1000  # strictly increasing start times, so "newest attempt" is well defined
        return t0 + clock[0]

    parent_id = None
    if spec.parent:
        tags = {S.ROLE: S.ROLE_PARENT, S.STUDY: spec.experiment} if spec.nanoact_tags else {}
        if spec.declared_grid is not None:
            tags[S.GRID] = json.dumps({k: list(v) for k, v in spec.declared_grid.items()})
        parent_id = store.create_run(exp_id, f"{spec.experiment}-sweep", tags, start_time=tick())

    max_step = max(spec.steps)
    run_ids: dict[tuple, str] = {}
    all_ids: list[str] = []
    for model in spec.models or [spec.model]:
        ms = replace(spec, model=model)
        world = _World(ms)
        for trial, (a, s, attempt, status) in enumerate(_attempts(ms), start=len(all_ids)):
            rid = _log_cell(store, exp_id, ms, world, a, s, attempt, status, parent_id, trial, max_step, tick, t0,
                            clock)
            all_ids.append(rid)
            if rid is not None and status == "FINISHED":
                run_ids[(model, a, s) if spec.models else (a, s)] = rid

    if parent_id:
        store.end_run(parent_id, "FINISHED", end_time=tick())
    return SyntheticLog(experiment_id=exp_id, parent_run_id=parent_id, run_ids=run_ids, all_run_ids=all_ids)


def _log_cell(store, exp_id, spec: SyntheticSpec, world: _World, a: str, s, attempt: int, status: str,
              parent_id: str | None, trial: int, max_step: int, tick, t0: int, clock: list[int]) -> str:
    src = spec.copy_of.get(a, a)  # the model that really "ran"
    config, flat, grid_key = _cell_config(spec, a, s, max_step)
    tags = _cell_tags(spec, world, a, s, src, grid_key, parent_id, trial, config["train"]["seed"])
    rid = store.create_run(exp_id, f"{spec.model}-{a}-s{s}", tags, flat, start_time=tick())
    if status != "FINISHED":
        store.end_run(rid, status, "synthetic failure: CUDA out of memory")
        return rid
    # copies share the source's predictions exactly, as the flawed report's runs did
    logits, init = world.final_logits(src, s, attempt)
    if src != a and spec.copy_jitter:
        logits = logits + spec.copy_jitter * _rng("jitter", a, s).standard_normal(logits.shape, dtype=np.float32)
    g = _rng("timing", a, s, attempt)
    store.log_metrics(rid, _log_steps(store, rid, spec, world, logits, init, g, t0 + clock[0]))
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / S.CONFIG_FILE).write_text(json.dumps(config, indent=1))
        store.log_artifacts(rid, Path(tmp) / S.CONFIG_FILE)
    store.end_run(rid, "FINISHED", end_time=tick())
    return rid


def _attempts(spec: SyntheticSpec) -> list[tuple[str, Any, int, str]]:
    """(activation, seed, attempt, final status) of every run to log, in order."""
    attempts = []
    cells = [(i, d) for i in spec.seeds for d in spec.data_seeds] if spec.data_seeds else list(spec.seeds)
    for a in spec.activations:
        for s in cells:
            if (a, s) in spec.retried:
                attempts.append((a, s, 0, "FINISHED"))
            attempts.append((a, s, 0, "FAILED") if (a, s) in spec.failed else (a, s, 1, "FINISHED"))
    return attempts


def _cell_config(spec: SyntheticSpec, a: str, s, max_step: int) -> tuple[dict, dict[str, str], str]:
    """The config, flat params and grid key of cell (a, s); s is a seed or an (init, data) seed pair."""
    config = {
        "model": {"name": spec.model, "activation": a, "n_layer": 2, "n_embd": 64, "n_head": 4,
                  "block_size": 64, "dropout": 0.0, "bias": False},
        "train": {"seed": s, "lr": 3e-4, "max_iters": max_step, "batch_size": 32,
                  "dtype": "auto" if (a, s) in spec.dtypes else "float32"},
        "data": {"corpus": "synthetic"},
        "eval": {"n_contexts": spec.n_contexts, "seed": 1234},
    }
    if isinstance(s, tuple):
        config["train"].update({"seed": 1337, "init_seed": s[0], "data_seed": s[1]})
    flat = {f"{sec}.{k}": str(v) for sec, d in config.items() for k, v in d.items()}
    flat.update({S.P_ACTIVATION: a, S.P_SEED: str(config["train"]["seed"])})
    if (a, s) in spec.dtypes:
        flat[S.P_DTYPE_RESOLVED] = spec.dtypes[(a, s)]
    grid_key = (f"model.activation={a}|train.data_seed={s[1]}|train.init_seed={s[0]}" if isinstance(s, tuple)
                else f"model.activation={a}|train.seed={s}")
    if spec.declared_grid is not None:  # the key of a sweep over the declared axes
        grid_key = "|".join(f"{k}={flat[k]}" for k in sorted(spec.declared_grid))
    return config, flat, grid_key


def _cell_tags(spec: SyntheticSpec, world: _World, a: str, s, src: str, grid_key: str, parent_id: str | None,
               trial: int, seed) -> dict[str, str]:
    tags = {S.RUN_NAME: f"{spec.model}-{a}-s{s}",
            S.EVAL_SET_SHA256: spec.eval_sha256.get((a, s), world.eval_sha256)}
    if parent_id:
        tags[S.PARENT_RUN_ID] = parent_id
    if spec.nanoact_tags:
        tags.update({
            S.ROLE: S.ROLE_CELL, S.STUDY: spec.experiment, S.GRID_KEY: grid_key, S.TRIAL_NUMBER: str(trial),
            S.ACTIVATION: a, S.SEED: str(seed), S.MODEL: spec.model, S.DATA_SHA256: "0" * 64,
            S.ACTIVATION_MODULES: MODULE_NAMES.get(src, f"{src}()"),
            S.ACTIVATION_MODULES_EXPECTED: MODULE_NAMES.get(a, f"{a}()"),
            S.WIRING_CHECK: "passed", S.N_PARAMS: str(spec.n_params + 1000 * len(a)),
            S.DEVICE: spec.device, S.VERSION: "synthetic",
        })
    return tags


def _log_steps(store, rid: str, spec: SyntheticSpec, world: _World, logits, init, g, ts: int) -> list:
    """Logs the prediction files of every step; returns the step and final metrics, computed from them, as
    (key, value, timestamp, step)."""
    max_step = max(spec.steps)
    tps = 5000.0 * (1 + 0.02 * g.standard_normal(len(spec.steps)))
    metrics: list[tuple[str, float, int, int]] = []
    val_losses = []
    with tempfile.TemporaryDirectory() as tmp:
        for i, step in enumerate(spec.steps):
            f = step / max_step if max_step else 1.0
            probs32 = _softmax(f * logits + (1 - f) * init)
            vl, va = _metrics_for(probs32, world.targets)
            tl, ta = vl - 0.05 * f, min(1.0, va + 0.01 * f)
            val_losses.append(vl)
            for key, val in ((S.VAL_LOSS, vl), (S.VAL_ACC, va), (S.TRAIN_LOSS, tl), (S.TRAIN_ACC, ta),
                             (S.LR, 3e-4 * (1 - 0.9 * f)), (S.TOKENS_PER_S, float(tps[i]))):
                metrics.append((key, val, ts + i, step))
            np.savez(
                Path(tmp) / f"step_{step}.npz",
                probs=probs32.astype(np.float16), targets=world.targets, step=np.asarray(step, dtype=np.int64),
                top1=probs32.argmax(axis=1).astype(np.int64),
                label_prob=probs32[np.arange(spec.n_contexts), world.targets].astype(np.float32),
            )
        store.log_artifacts(rid, tmp, S.PREDICTIONS_DIR)
    train_s = 10.0 + g.random()
    final = {S.FINAL_TRAIN_LOSS: tl, S.FINAL_VAL_LOSS: vl, S.FINAL_TRAIN_ACC: ta, S.FINAL_VAL_ACC: va,
             S.BEST_VAL_LOSS: min(val_losses), S.BEST_VAL_ACC: va, S.TIME_TRAIN_S: train_s,
             S.TIME_WALL_S: train_s + 2.0, S.TOKENS_PER_S_MEAN: float(tps.mean())}
    return metrics + [(k, v, ts + len(spec.steps), max_step) for k, v in final.items()]
