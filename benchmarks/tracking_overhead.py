"""Tracking overhead: one `partial`-scale cell with the MLflow tracker vs the null tracker.

All variants do the same work (evals, predictions on the fixed evaluation set, checkpoint payload); the MLflow
ones also create the run, log params, tags, the dataset input, metrics at each eval step, the prediction npz
files, config.json and the checkpoint into a local sqlite store, and wait for every upload before the run is
closed. ``mlflow`` also logs the batch loss and lr every ``train.log_interval`` iterations (buffered, written in
batches from a background thread); ``mlflow-evals`` logs at eval steps only (``log_interval=0``). Runs are
interleaved (null, mlflow-evals, mlflow, null, ...) and the median wall times compared.

    python benchmarks/tracking_overhead.py [--repeats 5] [--iters 200] [--log-interval 10]

Target: overhead <= 3% against the null tracker, per-iteration logging included.
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
    ap.add_argument("--log-interval", type=int, default=10, help="train.log_interval of the 'mlflow' variant")
    args = ap.parse_args()
    spec = load_sweep("partial", overrides=[f"train.max_iters={args.iters}"])
    cell = spec.cells()[1]  # one cell of the grid (printed below)
    cfg = spec.cell_config(cell)
    cfg.train.log_interval = args.log_interval
    evals_only = spec.cell_config(cell)
    evals_only.train.log_interval = 0
    data = CharDataset.from_config(cfg.data.corpus)
    tmp = Path(tempfile.mkdtemp(prefix="nanoact-bench-"))
    uri = f"sqlite:///{tmp}/mlflow.db"
    exp = ensure_experiment(uri, "bench")
    MlflowTracker(uri, exp).client.search_runs([exp])  # warm the store: a sweep creates it before any cell

    def once(kind: str) -> float:
        tracker = NullTracker() if kind == "null" else MlflowTracker(uri, exp)
        t0 = time.perf_counter()
        train(evals_only if kind == "mlflow-evals" else cfg, data=data, tracker=tracker)
        return time.perf_counter() - t0

    kinds = ("null", "mlflow-evals", "mlflow")
    for kind in kinds:  # warm-up (first-call allocations, lazy imports)
        once(kind)
    times: dict[str, list[float]] = {k: [] for k in kinds}
    for r in range(args.repeats):
        for kind in kinds:
            times[kind].append(once(kind))
        print(f"repeat {r + 1}/{args.repeats}: " + ", ".join(f"{k} {times[k][-1]:.2f} s" for k in kinds), flush=True)
    print(f"cell: {cell.key}, {args.iters} iters, {cfg.eval.n_contexts} eval contexts, "
          f"{args.iters // cfg.train.eval_interval + 1} eval steps; 'mlflow' logs every {args.log_interval} iters")
    base = statistics.median(times["null"])
    for kind in kinds:
        med = statistics.median(times[kind])
        paired = statistics.median(t / n for n, t in zip(times["null"], times[kind]))
        print(f"{kind:13s}: median {med:.2f} s, ratio to null {med / base:.3f} (median of paired ratios "
              f"{paired:.3f})")
    print("target: 'mlflow' within 3% of 'null'")


if __name__ == "__main__":
    main()
