"""Read the cells of an experiment from MLflow (docs/TRACKING.md schema) and fetch their prediction artifacts.

Works on any runs logged in that schema, not only nanoact's: a run counts as a grid cell when it has the tag
``nanoact.role = cell``, or has the params ``activation`` and ``seed`` (and is not a parent run).
"""

from __future__ import annotations

import math
import os
import re
import zipfile
from collections import defaultdict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlparse

import numpy as np

from nanoact.errors import NanoactError
from nanoact.paths import safe_dirname

if TYPE_CHECKING:
    from mlflow import MlflowClient

    from nanoact.analysis.grid import Grid

PRED_DIR = "predictions"
_STEP_RE = re.compile(r"^step_(\d+)\.npz$")
HISTORY_KEYS = ("train/loss", "val/loss")  # curves for the plots; everything else comes from final metrics


@dataclass
class RunRecord:
    """One MLflow run, reduced to what the analysis reads."""

    run_id: str
    run_name: str
    experiment: str
    activation: str
    seed: str
    grid_key: str
    status: str
    start_time: int  # ms since epoch
    end_time: int | None
    parent_id: str | None
    artifact_uri: str
    params: dict[str, str]
    tags: dict[str, str]
    metrics: dict[str, float]
    history: dict[str, list[tuple[int, float]]] = field(default_factory=dict)
    init_seed: str = ""  # the seed of the initial weights (train.init_seed, else the run's seed)
    data_seed: str = ""  # the seed of the batch order (train.data_seed, else the run's seed)

    @property
    def cell(self) -> tuple[str, str]:
        return self.activation, self.seed

    def label(self) -> str:
        return f"{self.activation} s{self.seed} ({self.run_id[:8]})"

    def metric(self, key: str) -> float:
        """A logged final metric, falling back to the step curves for runs that log only those."""
        if key in self.metrics:
            return float(self.metrics[key])
        curve = {"final/val_loss": ("val/loss", "last"), "final/train_loss": ("train/loss", "last"),
                 "best/val_loss": ("val/loss", "min"), "final/val_acc": ("val/acc", "last"),
                 "final/train_acc": ("train/acc", "last"), "best/val_acc": ("val/acc", "max")}.get(key)
        if curve and self.history.get(curve[0]):
            vals = [v for _, v in sorted(self.history[curve[0]])]
            return float({"last": vals[-1], "min": min(vals), "max": max(vals)}[curve[1]])
        return math.nan


@dataclass
class MissingCell:
    activation: str
    seed: str
    attempts: list[RunRecord]  # every non-FINISHED attempt seen for the cell (possibly none)
    state: str = ""  # never_started, queued, running, failed, interrupted, inconsistent (nanoact.analysis.grid)
    state_text: str = ""  # the state in words, with where it comes from
    axes: tuple[tuple[str, str], ...] = ()  # grid axes besides activation and seed (a --where slice)
    grid_key: str = ""  # of a declared cell

    def describe(self) -> str:
        head = f"{self.activation} s{self.seed}" + "".join(f" {k}={v}" for k, v in self.axes)
        runs = [f"{r.run_id} {r.status}" + (f" ({r.tags['nanoact.error']})" if r.tags.get("nanoact.error") else "")
                for r in self.attempts]
        state = self.state_text or ("" if runs else "no run at all")
        return f"{head}: " + "; ".join(([state] if state else []) + (["runs " + ", ".join(runs)] if state and runs
                                                                      else runs))


@dataclass
class ExperimentRuns:
    """The cells of one experiment after choosing one FINISHED attempt per grid cell."""

    name: str
    experiment_id: str
    runs: list[RunRecord]  # selected, sorted by (activation, seed)
    activations: list[str]  # the complete grid, from every child run of any status
    seeds: list[str]
    missing: list[MissingCell]
    duplicates: list[tuple[RunRecord, RunRecord]]  # same activation+seed, different grid keys (both FINISHED)
    superseded: list[RunRecord]  # older FINISHED attempts of a selected grid key
    not_finished: list[RunRecord]  # FAILED / KILLED / RUNNING children
    parents: list[RunRecord]
    grid: Grid | None = None  # where the grid comes from (declared by the sweep, or inferred from the runs)
    outside_grid: list[RunRecord] = field(default_factory=list)  # selected runs that are no cell of the declared grid

    def parent_run_id(self) -> str | None:
        """Newest parent named by the selected cells' ``mlflow.parentRunId`` tags."""
        known = _parent_of(self.runs, self.parents)
        if known is not None:
            return known.run_id
        ids = {r.parent_id for r in self.runs if r.parent_id}
        return sorted(ids)[0] if len(ids) == 1 else None


def _parent_of(runs: list[RunRecord], parents: list[RunRecord]) -> RunRecord | None:
    ids = {r.parent_id for r in runs if r.parent_id}
    known = [p for p in parents if p.run_id in ids]
    return max(known, key=lambda p: p.start_time) if known else None


def _seed_key(s: str) -> tuple[int, float | str]:
    try:
        return 0, float(s)
    except ValueError:
        return 1, s


def sort_seeds(seeds: set[str] | list[str]) -> list[str]:
    return sorted(set(seeds), key=_seed_key)


def make_client(tracking_uri: str) -> MlflowClient:
    """An MlflowClient on an explicit URI (never the global ``mlflow.set_tracking_uri``), for reading.

    Reading never creates a store: a sqlite file that does not exist is an error (MLflow would create an empty
    database there), and an ``http(s)`` server that does not answer is one within seconds (MLflow would retry
    for minutes).
    """
    from mlflow import MlflowClient

    from nanoact.server import check_tracking_server
    from nanoact.tracking_uri import display_url

    if tracking_uri.startswith("sqlite:///"):
        db = tracking_uri[len("sqlite:///"):].split("?", 1)[0]
        if db and db != ":memory:" and not Path(db).is_file():
            raise NanoactError(f"no tracking store at {display_url(tracking_uri)} (the file does not exist); run a "
                               "sweep first, or point --tracking-uri at the store that holds the runs")
    check_tracking_server(tracking_uri)
    return MlflowClient(tracking_uri=tracking_uri)


SOURCE_SEEDS = ("train.init_seed", "train.data_seed", "train.dropout_seed")  # -1 (or absent): train.seed


def _seed_label(params: Mapping[str, str], tags: Mapping[str, str]) -> tuple[str, str, str]:
    """(block label, init seed, data seed). The block is the run's seed, or every explicit source seed."""
    seed = params.get("seed") or tags.get("nanoact.seed") or params.get("train.seed", "")
    explicit = {k: params[k] for k in SOURCE_SEEDS if params.get(k, "-1") != "-1"}
    init = explicit.get("train.init_seed", seed)
    data = explicit.get("train.data_seed", seed)
    if not explicit:
        return str(seed), str(init), str(data)
    label = f"i{init}-d{data}" + (f"-o{explicit['train.dropout_seed']}" if "train.dropout_seed" in explicit else "")
    return label, str(init), str(data)


def _record(run, experiment: str) -> RunRecord:
    params, tags = dict(run.data.params), dict(run.data.tags)
    activation = params.get("activation") or tags.get("nanoact.activation") or params.get("model.activation", "")
    seed, init, data = _seed_label(params, tags)
    grid_key = tags.get("nanoact.grid_key") or f"activation={activation}|seed={seed}"
    return RunRecord(
        run_id=run.info.run_id, run_name=run.info.run_name or "", experiment=experiment,
        activation=str(activation), seed=str(seed), grid_key=grid_key, status=run.info.status,
        start_time=int(run.info.start_time or 0), end_time=run.info.end_time, parent_id=tags.get("mlflow.parentRunId"),
        artifact_uri=run.info.artifact_uri, params=params, tags=tags, metrics=dict(run.data.metrics),
        init_seed=init, data_seed=data,
    )


def _is_cell(rec: RunRecord) -> bool:
    role = rec.tags.get("nanoact.role")
    if role == "parent":
        return False
    return role == "cell" or ("activation" in rec.params and "seed" in rec.params)


DESIGN_AXES = {"model.activation", "train.seed", "activation", "seed", *SOURCE_SEEDS}


def _other_axes(rec: RunRecord) -> tuple[tuple[str, str], ...]:
    """Grid axes besides activation and seed (e.g. model.name in the zoo), from the grid key."""
    out = []
    for part in rec.grid_key.split("|"):
        k, eq, v = part.partition("=")
        if eq and k not in DESIGN_AXES:  # keys of other tools without key=value parts carry no axes
            out.append((k, v))
    return tuple(sorted(out))


def _slice(name: str, children: list[RunRecord], study: str | None,
           where: Mapping[str, str] | None) -> list[RunRecord]:
    """Keep one study and one slice of any extra grid axes: the design analysed is activation x seed."""
    for key, value in (where or {}).items():
        if not any(key in r.params for r in children):
            raise NanoactError(f"--where {key}=...: no run of experiment {name!r} has a param {key!r}")
        children = [r for r in children if r.params.get(key) == str(value)]
        if not children:
            raise NanoactError(f"--where {key}={value}: no run of experiment {name!r} matches")
    studies = sorted({r.tags["nanoact.study"] for r in children if r.tags.get("nanoact.study")})
    if study is not None:
        children = [r for r in children if r.tags.get("nanoact.study") == study]
        if not children:
            raise NanoactError(f"experiment {name!r} has no runs of study {study!r}; studies: {', '.join(studies)}")
    elif len(studies) > 1:
        raise NanoactError(f"experiment {name!r} holds runs of several studies ({', '.join(studies)}); "
                           "choose one with --study NAME")
    others = sorted({_other_axes(r) for r in children})
    if len(others) > 1:
        axes = sorted({k for o in others for k, _ in o})
        values = {k: sorted({v for o in others for kk, v in o if kk == k}) for k in axes}
        hint = "; ".join(f"{k} in {values[k]}" for k in axes)
        raise NanoactError(f"experiment {name!r} varies {', '.join(axes)} besides activation and seed ({hint}); "
                           f"report one slice at a time, e.g. --where {axes[0]}={values[axes[0]][0]}")
    return children


def _all_runs(client: MlflowClient, experiment_id: str) -> list:
    raw, token = [], None
    while True:
        page = client.search_runs([experiment_id], "", max_results=1000, page_token=token)
        raw.extend(page)
        token = page.token
        if not token:
            return raw


def _newest_per(runs: list[RunRecord], key) -> tuple[list[RunRecord], list[tuple[RunRecord, RunRecord]]]:
    """The newest run (by start time) of each group, and (older, newest) for every other run of a group."""
    groups: dict[Any, list[RunRecord]] = defaultdict(list)
    for r in runs:
        groups[key(r)].append(r)
    newest, older = [], []
    for g in groups.values():
        g.sort(key=lambda r: (r.start_time, r.run_id))
        newest.append(g[-1])
        older.extend((old, g[-1]) for old in g[:-1])
    return newest, older


def load_experiment(
    client: MlflowClient, name: str, progress: Callable[[str], None] | None = None,
    study: str | None = None, where: Mapping[str, str] | None = None, *,
    storage: str | None = None, tracking_uri: str | None = None,
) -> ExperimentRuns:
    """All runs of experiment ``name``; one FINISHED run per grid cell (newest attempt by start time).

    ``study`` and ``where`` (param filters) select one study and one slice of any grid axes besides
    activation and seed; without them, an experiment holding several is an error that says how to choose.
    The grid is the one the sweep declared (``nanoact.analysis.grid``; ``storage`` and ``tracking_uri`` say where
    to look for its Optuna study), else the one the runs found span.
    """
    from nanoact.analysis.grid import find_grid

    exp = client.get_experiment_by_name(name)
    if exp is None:
        names = sorted(e.name for e in client.search_experiments())
        raise NanoactError(f"no experiment named {name!r} in the tracking store; it has: {', '.join(names) or 'none'}")
    records = [_record(r, name) for r in _all_runs(client, exp.experiment_id)]
    parents = [r for r in records if r.tags.get("nanoact.role") == "parent"]
    children = _slice(name, [r for r in records if _is_cell(r)], study, where)
    if progress:
        progress(f"{name}: {len(children)} cell runs, {len(parents)} parent runs")

    finished = [r for r in children if r.status == "FINISHED"]
    if not finished:
        raise NanoactError(
            f"experiment {name!r} has no FINISHED cell runs ({len(children)} cell runs in other states); "
            "run or resume the sweep first"
        )
    selected, retried = _newest_per(finished, lambda r: r.grid_key)  # a cell's earlier attempts are superseded
    kept, duplicates = _newest_per(selected, lambda r: r.cell)  # one cell under two grid keys: a guard failure
    not_finished = [r for r in children if r.status != "FINISHED"]
    grid = find_grid(_parent_of(kept, parents), where, storage, tracking_uri)
    if grid.declared:
        activations, seeds, missing, outside = _against_declared(grid, kept, not_finished)
    else:
        activations, seeds, missing, outside = _inferred(grid, children, kept, not_finished)
    kept.sort(key=lambda r: (r.activation, _seed_key(r.seed)))
    return ExperimentRuns(name=name, experiment_id=exp.experiment_id, runs=kept, activations=activations,
                          seeds=seeds, missing=missing, duplicates=duplicates,
                          superseded=[old for old, _ in retried],
                          not_finished=not_finished, parents=parents, grid=grid, outside_grid=outside)


def _inferred(grid, children, kept, not_finished):
    """Today's rule for runs without a declared grid: every activation x seed seen in any cell run."""
    from nanoact.analysis.grid import mlflow_state

    activations = sorted({r.activation for r in children})
    seeds = sort_seeds({r.seed for r in children})
    have = {r.cell for r in kept}
    missing = []
    for a in activations:
        for s in seeds:
            if (a, s) not in have:
                tries = sorted((r for r in not_finished if r.cell == (a, s)), key=lambda r: r.start_time)
                state, words = mlflow_state(tries, declared=False)
                missing.append(MissingCell(a, s, tries, state, words if tries else ""))
    return activations, seeds, missing, []


def _against_declared(grid, kept, not_finished):
    """The declared cells (in the --where slice): which have no FINISHED run, and in which state; and the
    analysed runs that are no declared cell."""
    from nanoact.analysis.grid import state_of

    def matches(r: RunRecord, c) -> bool:  # runs without nanoact's grid key tag match by their cell
        return r.grid_key == c.key if "nanoact.grid_key" in r.tags else r.cell == (c.activation, c.seed)

    missing, matched = [], set()
    for c in grid.cells:
        done = [r for r in kept if matches(r, c)]
        matched.update(r.run_id for r in done)
        if done:
            continue
        tries = sorted((r for r in not_finished if matches(r, c)), key=lambda r: r.start_time)
        state, words = state_of(c, grid, tries)
        missing.append(MissingCell(c.activation, c.seed, tries, state, words, c.axes, c.key))
    activations = sorted({c.activation for c in grid.cells})
    seeds = sort_seeds({c.seed for c in grid.cells})
    return activations, seeds, missing, [r for r in kept if r.run_id not in matched]


def load_histories(client: MlflowClient, runs: list[RunRecord], keys: tuple[str, ...] = HISTORY_KEYS) -> None:
    """Fill ``run.history`` with (step, value) curves; ``val/acc`` too when a run lacks final metrics."""
    for r in runs:
        wanted = list(keys)
        if "final/val_acc" not in r.metrics:
            wanted.append("val/acc")
        if "final/train_acc" not in r.metrics:
            wanted.append("train/acc")
        for key in wanted:
            hist = client.get_metric_history(r.run_id, key)
            if hist:
                by_step = {}
                for m in sorted(hist, key=lambda m: (m.step, m.timestamp)):
                    by_step[int(m.step)] = float(m.value)  # a re-logged step keeps its latest value
                r.history[key] = sorted(by_step.items())


# ---------------------------------------------------------------------------------------------------------------
# prediction artifacts


def prediction_steps(name: str, runs: list[RunRecord], step_sets: Mapping[str, list[int]]
                     ) -> tuple[list[int], list[str]]:
    """The steps PD is computed at, and notes on steps left out.

    Every run must have its final step (its ``train.max_iters`` param, else the newest step any run has): a
    missing final file is an error naming the run and the step, never a quiet fall-back to an earlier step,
    which would change every PD number. An intermediate step some runs lack is left out, and the note names
    the runs lacking it.
    """
    empty = [r.run_id for r in runs if not step_sets[r.run_id]]
    if empty:
        raise NanoactError(f"experiment {name!r}: run(s) {', '.join(empty)} have no predictions/step_<N>.npz "
                           "artifacts; PD needs them (rerun or delete those runs)")
    newest = max(max(step_sets[r.run_id]) for r in runs)
    lacking = []
    for r in runs:
        try:
            final = int(r.params.get("train.max_iters", newest))
        except ValueError:
            final = newest
        if final not in step_sets[r.run_id]:
            lacking.append(f"run {r.run_id} ({r.activation} s{r.seed}) lacks predictions/step_{final}.npz, its "
                           f"final step (it has steps {', '.join(map(str, step_sets[r.run_id]))})")
    finals = {int(r.params["train.max_iters"]) for r in runs if str(r.params.get("train.max_iters", "")).isdigit()}
    if lacking or len(finals) > 1:
        detail = "; ".join(lacking) if lacking else f"runs end at different steps {sorted(finals)}"
        raise NanoactError(f"experiment {name!r}: {detail}; PD at an earlier step would silently change the "
                           "numbers: restore the file, or rerun or delete the run")
    steps = sorted(set.intersection(*(set(step_sets[r.run_id]) for r in runs)))
    notes = []
    partial = sorted(set.union(*(set(step_sets[r.run_id]) for r in runs)) - set(steps))
    if partial:
        who = [f"{r.run_id} lacks {[s for s in partial if s not in step_sets[r.run_id]]}"
               for r in runs if not set(partial) <= set(step_sets[r.run_id])]
        notes.append(f"steps {partial} have predictions for only some runs and are left out of PD "
                     f"({'; '.join(who[:10])}{'; ...' if len(who) > 10 else ''})")
    return steps, notes


def default_cache_dir() -> Path:
    """Where downloaded artifacts are kept: ``$NANOACT_CACHE_DIR``, else ``$XDG_CACHE_HOME/nanoact/artifacts``."""
    if os.environ.get("NANOACT_CACHE_DIR"):
        return Path(os.environ["NANOACT_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "nanoact" / "artifacts"


def local_artifact_dir(artifact_uri: str) -> Path | None:
    """The local folder of a ``file:`` or plain-path artifact URI; None for remote stores."""
    parsed = urlparse(artifact_uri)
    if parsed.scheme == "file":
        return Path(unquote(parsed.path))
    if parsed.scheme == "" and artifact_uri.startswith("/"):
        return Path(artifact_uri)
    return None


class ArtifactFetcher:
    """Finds ``predictions/step_<N>.npz`` of runs; reads local stores in place, caches remote downloads.

    The cache is keyed by run id: artifacts of a FINISHED run do not change, and a file whose size differs from
    the store's listing is fetched again.
    """

    def __init__(self, client: MlflowClient, cache_dir: str | Path | None = None, prefer_local: bool = True):
        self.client = client
        self.cache_dir = Path(cache_dir) if cache_dir else default_cache_dir()
        self.prefer_local = prefer_local
        self.downloads = 0  # number of files actually downloaded (the rest came from the cache or in place)
        self._sizes: dict[tuple[str, int], int | None] = {}

    def steps(self, run: RunRecord) -> list[int]:
        """Checkpoint steps with a prediction file, ascending."""
        local = local_artifact_dir(run.artifact_uri) if self.prefer_local else None
        steps = []
        if local is not None:
            d = local / PRED_DIR
            names = [(p.name, None) for p in d.iterdir()] if d.is_dir() else []
        else:
            names = [(Path(f.path).name, f.file_size) for f in self.client.list_artifacts(run.run_id, PRED_DIR)]
        for name, size in names:
            m = _STEP_RE.match(name)
            if m:
                steps.append(int(m.group(1)))
                self._sizes[(run.run_id, int(m.group(1)))] = size
        return sorted(steps)

    def path(self, run: RunRecord, step: int) -> Path:
        """Local path of one prediction file, downloading it into the cache when needed."""
        rel = f"{PRED_DIR}/step_{step}.npz"
        local = local_artifact_dir(run.artifact_uri) if self.prefer_local else None
        if local is not None:
            return local / rel
        dst = self.cache_dir / safe_dirname(run.run_id) / PRED_DIR  # a store's run id is not a trusted path
        target = dst / f"step_{step}.npz"
        size = self._sizes.get((run.run_id, step))
        if target.is_file() and (size is None or target.stat().st_size == size):
            return target
        dst.mkdir(parents=True, exist_ok=True)
        # MLflow draws a tqdm bar per download unless told not to; the library must not write to the terminal
        quiet = "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR" not in os.environ
        if quiet:
            os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = "false"
        try:
            got = Path(self.client.download_artifacts(run.run_id, rel, str(dst)))
        except Exception as e:  # any store error is a missing artifact from the user's point of view
            raise NanoactError(f"run {run.run_id}: cannot download {rel} ({type(e).__name__}: {e})") from e
        finally:
            if quiet:
                os.environ.pop("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", None)
        self.downloads += 1
        return got


@dataclass
class Predictions:
    """One ``predictions/step_<N>.npz`` (docs/TRACKING.md)."""

    probs: np.ndarray  # (N, V) float16 as stored
    targets: np.ndarray  # (N,) int64
    top1: np.ndarray  # (N,) int64
    label_prob: np.ndarray  # (N,) float32
    step: int


def read_predictions(path: Path, run_id: str, step: int) -> Predictions:
    """Load and validate one prediction file; a broken file is a NanoactError naming the run and the file."""
    where = f"run {run_id}: predictions/step_{step}.npz"
    try:
        with np.load(path, allow_pickle=False) as z:
            names = set(z.files)
            if "probs" not in names or "targets" not in names:
                raise NanoactError(f"{where} lacks 'probs' or 'targets' (has {sorted(names)}); it is not in the schema")
            probs = z["probs"]
            targets = z["targets"].astype(np.int64, copy=False)
            top1 = z["top1"].astype(np.int64, copy=False) if "top1" in names else None
            label_prob = z["label_prob"].astype(np.float32, copy=False) if "label_prob" in names else None
            got_step = int(z["step"]) if "step" in names else step
    except NanoactError:
        raise
    except (OSError, EOFError, ValueError, KeyError, zipfile.BadZipFile) as e:
        raise NanoactError(f"{where} is unreadable or corrupted ({type(e).__name__}: {e}); re-log or delete it") from e
    if probs.ndim != 2 or targets.shape != (probs.shape[0],):
        raise NanoactError(f"{where} has probs {probs.shape} and targets {targets.shape}; expected (N, V) and (N,)")
    n, v = probs.shape
    if targets.size and (targets.min() < 0 or targets.max() >= v):
        raise NanoactError(f"{where} has targets outside [0, {v}); the file is corrupted")
    sums = probs.sum(axis=1, dtype=np.float32)
    if not np.all(np.isfinite(sums)) or np.abs(sums - 1).max(initial=0) > 1e-2:
        raise NanoactError(f"{where}: probability rows do not sum to 1 (worst {sums.min():.4g}..{sums.max():.4g}); "
                           "the file is corrupted or not softmax output")
    if got_step != step:
        raise NanoactError(f"{where} says it is step {got_step}; the file is misnamed or corrupted")
    if top1 is None:
        top1 = probs.astype(np.float32).argmax(axis=1)
    if label_prob is None:
        label_prob = probs[np.arange(n), targets].astype(np.float32)
    if top1.shape != (n,) or label_prob.shape != (n,):
        raise NanoactError(f"{where} has top1/label_prob of the wrong shape; the file is corrupted")
    return Predictions(probs=probs, targets=targets, top1=top1, label_prob=label_prob, step=step)
