"""summary.json: the machine-readable report (schema in docs/REPORT.md, "summary.json")."""

from __future__ import annotations

import math
from dataclasses import asdict
from typing import Any

import numpy as np

from nanoact.analysis import divergence as dv
from nanoact.analysis.answers import fill_text
from nanoact.analysis.executive import executive_summary, shares_of
from nanoact.analysis.experiment import ExperimentAnalysis
from nanoact.analysis.hypotheses import PRIMARY_OUTCOME
from nanoact.tracking import schema as S

SCHEMA_VERSION = 3
RUN_METRICS = (S.FINAL_TRAIN_LOSS, S.FINAL_VAL_LOSS, S.BEST_VAL_LOSS, S.FINAL_TRAIN_ACC, S.FINAL_VAL_ACC,
               S.BEST_VAL_ACC, S.TIME_TRAIN_S, S.TIME_WALL_S, S.TOKENS_PER_S_MEAN)


def jsonable(x: Any) -> Any:
    if isinstance(x, dict):
        return {str(k): jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [jsonable(v) for v in x]
    if isinstance(x, np.ndarray):
        return jsonable(x.tolist())
    if isinstance(x, (np.floating, float)):
        return float(x) if math.isfinite(x) else None
    if isinstance(x, np.integer):
        return int(x)
    if isinstance(x, np.bool_):
        return bool(x)
    return x


def _runs(an: ExperimentAnalysis) -> list[dict[str, Any]]:
    return [{
        "run_id": r.run_id, "run_name": r.run_name, "activation": r.activation, "seed": r.seed,
        "init_seed": r.init_seed, "data_seed": r.data_seed, "grid_key": r.grid_key, "parent_run_id": r.parent_id,
        "final": {k.split("/", 1)[1]: r.metric(k) for k in RUN_METRICS if k.startswith("final/")},
        "best": {k.split("/", 1)[1]: r.metric(k) for k in RUN_METRICS if k.startswith("best/")},
        "time": {"train_s": r.metric(S.TIME_TRAIN_S), "wall_s": r.metric(S.TIME_WALL_S)},
        "tokens_per_s_mean": r.metric(S.TOKENS_PER_S_MEAN), "n_params": r.tags.get(S.N_PARAMS),
        "device": r.tags.get(S.DEVICE), "eval_acc": an.eval_acc.get(r.run_id),
        "loo_pd_tv": float(an.pd_score[i]), "prediction_sha256": an.fingerprints.get(r.run_id),
    } for i, r in enumerate(an.runs)]


def _activations(an: ExperimentAnalysis) -> dict[str, Any]:
    out = {}
    for a in sorted({r.activation for r in an.runs}):
        rs = [r for r in an.runs if r.activation == a]
        cols = {k: [r.metric(k) for r in rs] for k in RUN_METRICS}
        out[a] = {
            "n_runs": len(rs), "run_ids": [r.run_id for r in rs], "seeds": [r.seed for r in rs],
            "mean": {k: float(np.nanmean(v)) if np.isfinite(v).any() else None for k, v in cols.items()},
            "std": {k: float(np.nanstd(v, ddof=1)) if np.isfinite(v).sum() > 1 else None for k, v in cols.items()},
            "within_pd": {m: {"mean": an.within[a][m]["mean"][-1], "se_jackknife": an.within[a][m]["se"][-1],
                              "n_pairs": an.within[a][m]["n_pairs"]} for m in dv.METRICS},
            "within_pd_by_step": {m: an.within[a][m] for m in dv.METRICS},
        }
    return out


def _pairs(an: ExperimentAnalysis) -> list[dict[str, Any]]:
    runs = an.runs
    return [{"run_a": runs[i].run_id, "run_b": runs[j].run_id, "kind": kind,
             "activation_a": runs[i].activation, "activation_b": runs[j].activation,
             "seed_a": runs[i].seed, "seed_b": runs[j].seed,
             **{m: an.pair_values[m][k].tolist() for m in dv.METRICS}} for k, (i, j, kind) in enumerate(an.pairs)]


def _pd(an: ExperimentAnalysis) -> dict[str, Any] | None:
    pd = an.pd
    if pd is None:
        return None
    return {"metric": pd.metric, "unit": "total variation, in [0, 1]", "step": pd.step,
            "activations": pd.activations, "seeds": pd.seeds,
            "within": [asdict(e) for e in pd.within], "cross_different_seeds": pd.cross,
            "cross_different_seeds_se": pd.cross_se, "excess_over_within": pd.excess,
            "excess_over_within_se": pd.excess_se, "same_seed_ratio": pd.same_seed_ratio,
            "design": pd.design, "df": pd.df, "same_seed": pd.same_seed,
            "relative_excess": asdict(pd.relative) if pd.relative is not None else None,
            "activation_only": asdict(pd.activation_only) if pd.activation_only is not None else None}


def _grid(an: ExperimentAnalysis) -> dict[str, Any] | None:
    g = an.er.grid
    if g is None:
        return None
    return {"declared": g.declared, "source": g.source, "n_cells": len(g.cells) if g.declared else None,
            "n_declared": g.n_declared if g.declared else None, "cell_keys": [c.key for c in g.cells],
            "states_from": g.states_from or None}


def experiment_summary(an: ExperimentAnalysis) -> dict[str, Any]:
    fill_text(an.hypotheses)
    return {
        "experiment": an.er.name, "experiment_id": an.er.experiment_id, "parent_run_id": an.parent_run_id,
        "primary_outcome": PRIMARY_OUTCOME,
        "evaluation": {"eval_set_sha256": an.eval_sha256, "n_contexts": an.n_contexts, "vocab_size": an.vocab_size,
                       "final_step": an.final_step, "val_metrics_batches": an.eval_iters, "dtypes": an.dtypes,
                       "js_unit": "nats", "loss_unit": "nats per character"},
        "steps": an.steps, "activations": an.er.activations, "seeds": an.er.seeds, "notes": an.notes,
        "best_val_loss_equals_final": an.best_equals_final,
        "hypotheses": [h.to_dict() for h in an.hypotheses],
        "executive_summary": executive_summary(an.hypotheses, len(an.er.seeds), shares_of(an)),
        "margins": {"pd_rel": an.margins.pd_rel, "loss": an.margins.loss},
        "runs": _runs(an), "activations_summary": _activations(an), "pd_tests": _pd(an),
        "sources": asdict(an.sources) if an.sources is not None else None,
        "sequential": an.sequential,
        "same_seed_pd": an.cross, "pairs": _pairs(an),
        "heatmap": {"step": an.final_step, "run_ids": [r.run_id for r in an.runs], "pd_tv": an.heatmap},
        "grid": _grid(an),
        "missing_cells": [{"activation": m.activation, "seed": m.seed, "axes": dict(m.axes),
                           "grid_key": m.grid_key or None, "state": m.state or None, "state_text": m.state_text or None,
                           "text": m.describe(),
                           "attempts": [{"run_id": r.run_id, "status": r.status, "error": r.tags.get(S.ERROR)}
                                        for r in m.attempts]} for m in an.er.missing],
        "outside_grid_run_ids": [r.run_id for r in an.er.outside_grid],
        "duplicates": [{"older": o.run_id, "newer": n.run_id, "activation": n.activation, "seed": n.seed}
                       for o, n in an.er.duplicates],
        "superseded_run_ids": [r.run_id for r in an.er.superseded],
        "statistics": {o.outcome: o.to_dict() for o in an.outcomes},
        "guards": [{**asdict(g), "status": g.status} for g in an.guards],
        "plots": an.plots,
    }


def comparison(analyses: list[ExperimentAnalysis]) -> list[dict[str, Any]]:
    rows = []
    for an in analyses:
        for a in sorted({r.activation for r in an.runs}):
            rs = [r for r in an.runs if r.activation == a]
            rows.append({"experiment": an.key, "activation": a, "n_runs": len(rs),
                         "mean_final_val_loss": float(np.nanmean([r.metric(S.FINAL_VAL_LOSS) for r in rs])),
                         "mean_within_pd_tv": an.within[a]["pd_tv"]["mean"][-1],
                         "mean_within_pd_top1": an.within[a]["pd_top1"]["mean"][-1],
                         "mean_wall_s": float(np.nanmean([r.metric(S.TIME_WALL_S) for r in rs])),
                         "run_ids": [r.run_id for r in rs]})
    return rows
