"""The prediction artifacts of cell runs (``predictions/step_<N>.npz``, docs/TRACKING.md): which steps every run has,
where a file is (read in place from a local store, downloaded into a cache from a remote one), and reading one
with its checks.
"""

from __future__ import annotations

import os
import re
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import unquote, urlparse

import numpy as np

from nanoact.analysis.runs import RunRecord
from nanoact.errors import NanoactError
from nanoact.paths import safe_dirname
from nanoact.tracking import schema as S

if TYPE_CHECKING:
    from nanoact.tracking.store import RunReader

PRED_DIR = S.PREDICTIONS_DIR
_STEP_RE = re.compile(r"^step_(\d+)\.npz$")


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
            final = int(r.params.get(S.P_MAX_ITERS, newest))
        except ValueError:
            final = newest
        if final not in step_sets[r.run_id]:
            lacking.append(f"run {r.run_id} ({r.activation} s{r.seed}) lacks predictions/step_{final}.npz, its "
                           f"final step (it has steps {', '.join(map(str, step_sets[r.run_id]))})")
    finals = {int(r.params[S.P_MAX_ITERS]) for r in runs if str(r.params.get(S.P_MAX_ITERS, "")).isdigit()}
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

    def __init__(self, reader: RunReader, cache_dir: str | Path | None = None, prefer_local: bool = True):
        self.reader = reader
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
            names = self.reader.list_artifacts(run.run_id, PRED_DIR)
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
        try:  # the library draws no progress bar on the terminal (RunReader.download)
            got = self.reader.download(run.artifact_uri, rel, target)
        except Exception as e:  # any store error is a missing artifact from the user's point of view
            raise NanoactError(f"run {run.run_id}: cannot download {rel} ({type(e).__name__}: {e})") from e
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
