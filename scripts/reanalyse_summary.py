"""Re-analyse a committed report's stored numbers with the current tests, without its MLflow store.

    python scripts/reanalyse_summary.py docs/results/sources/summary.json

A report's summary.json keeps every run's final val loss and accuracy and the run-by-run pd_tv matrix at the
final step (``heatmap``). This script runs the current loss statistics, PD tests, source split and hypothesis
list on exactly those numbers and prints the executive summary with the summary.json ids behind each sentence.
It cannot redo what needs the predictions themselves (the other PD metrics, the context-bootstrap part of the
within-activation intervals, plots): for that, rerun the sweep and `nanoact report`.
"""
from __future__ import annotations

import json
import sys

import numpy as np

from nanoact.analysis import pdtests as pt
from nanoact.analysis import render as rd
from nanoact.analysis.hypotheses import build_hypotheses
from nanoact.analysis.outcome import analyse_outcome
from nanoact.analysis.sources import analyse_sources, is_sources_grid


def main(path: str) -> None:
    summary = json.load(open(path))
    for name, e in summary["per_experiment"].items():
        by_id = {r["run_id"]: r for r in e["runs"]}
        rr = [by_id[i] for i in e["heatmap"]["run_ids"]]
        acts, seeds = [r["activation"] for r in rr], [r["seed"] for r in rr]
        ini, dat = [r.get("init_seed") for r in rr], [r.get("data_seed") for r in rr]
        crossed = all(x is not None for x in ini + dat) and is_sources_grid(acts, ini, dat)
        units = {r["seed"]: (str(r["init_seed"]), str(r["data_seed"])) for r in rr} if crossed else None
        heat = np.array(e["heatmap"]["pd_tv"])
        pd = pt.analyse_pd(heat, acts, seeds, "pd_tv", e["heatmap"]["step"], np.random.default_rng(20211),
                           seed_units=units)
        act_names, seed_names = sorted(set(acts)), list(dict.fromkeys(seeds))
        outcomes = []
        for key, metric, lower in (("final_val_loss", "val_loss", True), ("final_val_acc", "val_acc", False)):
            vals = {(r["activation"], r["seed"]): r["final"][metric] for r in rr}
            outcomes.append(analyse_outcome(key, key, vals, act_names, seed_names, lower_is_better=lower,
                                            seed_units=units))
        src = analyse_sources(heat, acts, ini, dat) if crossed else None
        hyps = build_hypotheses(outcomes, pd, src)
        rd.fill_text(hyps)
        print(f"# {name}: {len(rr)} runs, re-analysed from {path}")
        for item in rd.executive_summary(hyps, len(seed_names), src.shares if src else None):
            print("-", item["text"], f"[{', '.join(item['tests'])}]")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python scripts/reanalyse_summary.py REPORT_DIR/summary.json")
    main(sys.argv[1])
