"""Tracking overhead: one `partial`-scale cell with the MLflow tracker vs the null tracker.

Both variants do the same work (evals, predictions on the fixed evaluation set, checkpoint payload); the MLflow
one also creates the run, logs params, tags, metrics at each eval step, the prediction npz files, config.json
and the checkpoint into a local sqlite store, and waits for every upload before the run is closed. Runs are
interleaved (null, mlflow, null, mlflow, ...) and the median wall times compared.

    python benchmarks/tracking_overhead.py [--repeats 5] [--iters 200]   # about 2 min per repeat on 2 cores

Target: overhead <= 3%.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from nanoact.data import CharDataset
from nanoact.sweep import load_sweep
from nanoact.tracking import MlflowTracker, NullTracker, ensure_experiment
from nanoact.trainer import train


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--iters", type=int, default=200)
    args = ap.parse_args()
    spec = load_sweep("partial", overrides=[f"train.max_iters={args.iters}"])
    cell = spec.cells()[1]  # gelu, seed 42
    cfg = spec.cell_config(cell)
    data = CharDataset.from_config(cfg.data.corpus)
    tmp = Path(tempfile.mkdtemp(prefix="nanoact-bench-"))
    uri = f"sqlite:///{tmp}/mlflow.db"
    exp = ensure_experiment(uri, "bench")
    MlflowTracker(uri, exp).client.search_runs([exp])  # warm the store: a sweep creates it before any cell

    def once(kind: str) -> float:
        tracker = NullTracker() if kind == "null" else MlflowTracker(uri, exp)
        t0 = time.perf_counter()
        train(cfg, data=data, tracker=tracker)
        return time.perf_counter() - t0

    once("null")  # warm-up (first-call allocations, lazy imports)
    once("mlflow")
    null, mlf = [], []
    for r in range(args.repeats):
        null.append(once("null"))
        mlf.append(once("mlflow"))
        print(f"repeat {r + 1}/{args.repeats}: null {null[-1]:.2f} s, mlflow {mlf[-1]:.2f} s", flush=True)
    mn, mm = statistics.median(null), statistics.median(mlf)
    print(f"cell: {cell.key}, {args.iters} iters, {cfg.eval.n_contexts} eval contexts, "
          f"{args.iters // cfg.train.eval_interval + 1} eval steps")
    print(f"null tracker  : median {mn:.2f} s")
    print(f"mlflow tracker: median {mm:.2f} s")
    print(f"overhead: {100 * (mm / mn - 1):+.1f}% (ratio {mm / mn:.3f}; target <= 3%)")
    paired = [m / n for n, m in zip(null, mlf)]
    print(f"median of paired ratios: {statistics.median(paired):.3f}")


if __name__ == "__main__":
    main()
