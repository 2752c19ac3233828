"""``run_report``: runs → predictions → PD, RCBD statistics, guards, plots → report.md, PNGs and summary.json.

The schema of summary.json is documented in docs/REPORT.md. Library code: no printing, progress goes to the
``progress`` callback, user mistakes raise ``NanoactError`` with a one-line message.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import math
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from itertools import combinations
from pathlib import Path
from typing import Any

import numpy as np

from nanoact.analysis import divergence as dv
from nanoact.analysis import guards as gd
from nanoact.analysis import plots as pl
from nanoact.analysis.runs import (
    ArtifactFetcher,
    ExperimentRuns,
    RunRecord,
    load_experiment,
    load_histories,
    make_client,
    prediction_steps,
    read_predictions,
)
from nanoact.analysis.stats import OutcomeStats, analyse_outcome
from nanoact.errors import NanoactError
from nanoact.paths import report_dir, safe_dirname
from nanoact.tracking_uri import display_url, resolve_tracking_uri

SCHEMA_VERSION = 1
# (key in summary.json, words, logged metric or None for the PD score, lower is better)
OUTCOMES: tuple[tuple[str, str, str | None, bool], ...] = (
    ("final_val_loss", "final val loss", "final/val_loss", True),
    ("best_val_loss", "best val loss", "best/val_loss", True),
    ("final_val_acc", "final val acc", "final/val_acc", False),
    ("pd_score", "per-run PD score (pd_tv vs the leave-one-out mean prediction of its activation)", None, True),
)
RUN_METRICS = ("final/train_loss", "final/val_loss", "best/val_loss", "final/train_acc", "final/val_acc",
               "best/val_acc", "time/train_s", "time/wall_s", "tokens_per_s_mean")
_SYMMETRY_SAMPLE = 64  # reversed pairs re-computed at the final step for the symmetry self-check


@dataclass
class ReportResult:
    out_dir: Path
    report_md: Path
    summary_json: Path
    anomalies: list[str]  # guard failures, one line each; empty if clean
    headline: str  # one-sentence executive summary


@dataclass
class ExperimentAnalysis:
    """Everything computed for one experiment (plain data for the writers)."""

    er: ExperimentRuns
    steps: list[int]
    notes: list[str]
    eval_sha256: str | None
    n_contexts: int
    vocab_size: int
    eval_acc: dict[str, float]  # run id -> top-1 accuracy on the eval set at the final step (from predictions)
    fingerprints: dict[str, str]
    pairs: list[tuple[int, int, str]]  # (run index, run index, "within" | "same_seed")
    pair_values: dict[str, np.ndarray]  # metric -> (n_pairs, n_steps)
    heatmap: np.ndarray  # (R, R) pd_tv at the final step
    pd_score: np.ndarray  # (R,)
    within: dict[str, dict[str, dict[str, list[float]]]]  # act -> metric -> {"mean": [...], "se": [...]} per step
    cross: dict[str, dict[str, dict[str, list[float]]]]  # "a|b" -> metric -> {"mean","se"} per step
    outcomes: list[OutcomeStats]
    guards: list[gd.GuardResult]
    parent_run_id: str | None
    plots: dict[str, str] = field(default_factory=dict)  # name -> file name
    sentences: list[str] = field(default_factory=list)

    @property
    def runs(self) -> list[RunRecord]:
        return self.er.runs

    @property
    def final_step(self) -> int:
        return self.steps[-1]


# ---------------------------------------------------------------------------------------------------------------
# analysis


def _check_eval_hashes(er: ExperimentRuns, notes: list[str]) -> str | None:
    groups: dict[str, list[RunRecord]] = defaultdict(list)
    untagged = []
    for r in er.runs:
        h = r.tags.get("nanoact.eval_set_sha256")
        (groups[h] if h else untagged).append(r)
    if len(groups) > 1:
        parts = []
        for h, rs in sorted(groups.items(), key=lambda kv: -len(kv[1])):
            ids = ", ".join(f"{r.run_id} ({r.activation} s{r.seed})" for r in rs[:4])
            more = f" and {len(rs) - 4} more" if len(rs) > 4 else ""
            parts.append(f"eval set {h[:12]}…: {ids}{more}")
        raise NanoactError(
            f"experiment {er.name!r}: runs were evaluated on different evaluation sets, so their PD is meaningless "
            f"— {'; '.join(parts)}; rerun them on one eval set or report them as separate experiments"
        )
    if untagged:
        notes.append(f"{len(untagged)} run(s) lack the nanoact.eval_set_sha256 tag; their stored targets were "
                     "compared instead: " + ", ".join(r.run_id for r in untagged))
    return next(iter(groups), None)


def _pair_list(runs: list[RunRecord]) -> list[tuple[int, int, str]]:
    by_act, by_seed = defaultdict(list), defaultdict(list)
    for i, r in enumerate(runs):
        by_act[r.activation].append(i)
        by_seed[r.seed].append(i)
    pairs = [(i, j, "within") for idx in by_act.values() for i, j in combinations(idx, 2)]
    pairs += [(i, j, "same_seed") for idx in by_seed.values() for i, j in combinations(idx, 2)]
    return pairs


def analyse_experiment(client, name: str, fetcher: ArtifactFetcher, progress: Callable[[str], None],
                       study: str | None = None, where: Mapping[str, str] | None = None) -> ExperimentAnalysis:
    """Load one experiment and compute PD, statistics and guards."""
    er = load_experiment(client, name, progress, study=study, where=where)
    notes: list[str] = []
    sha = _check_eval_hashes(er, notes)
    runs = er.runs
    progress(f"{name}: reading metric histories of {len(runs)} runs")
    load_histories(client, runs)

    steps, step_notes = prediction_steps(name, runs, {r.run_id: fetcher.steps(r) for r in runs})
    notes += step_notes

    pairs = _pair_list(runs)
    pair_idx = np.array([(i, j) for i, j, _ in pairs], dtype=np.int64).reshape(-1, 2)
    pair_values = {m: np.full((len(pairs), len(steps)), np.nan) for m in dv.METRICS}
    R = len(runs)
    first = read_predictions(fetcher.path(runs[0], steps[0]), runs[0].run_id, steps[0])
    shape, ref_targets, ref_run = first.probs.shape, first.targets, runs[0].run_id
    del first
    eval_acc, fingerprints, frechet = {}, {}, []
    self_pd: dict[str, dict[str, float]] = {}
    asym: list[tuple[str, str, str, float]] = []
    heat = np.zeros((R, R))
    scores = np.full(R, np.nan)

    def load(step: int, buf: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        # runs in a prefetch thread: reading and the float16 -> float32 cast release the GIL
        top1 = np.empty((R, shape[0]), dtype=np.int64)
        label_prob = np.empty((R, shape[0]), dtype=np.float32)
        for ri, r in enumerate(runs):
            pred = read_predictions(fetcher.path(r, step), r.run_id, step)
            if pred.probs.shape != shape:
                raise NanoactError(f"runs {ref_run} and {r.run_id} stored predictions of different shapes "
                                   f"{shape} vs {pred.probs.shape}; they were not evaluated on the same eval set")
            if not np.array_equal(pred.targets, ref_targets):
                raise NanoactError(f"runs {ref_run} and {r.run_id} stored different targets (step {step}); they were "
                                   "not evaluated on the same eval set, refusing to compare them")
            buf[ri] = pred.probs
            top1[ri], label_prob[ri] = pred.top1, pred.label_prob
            if step == steps[-1]:
                fingerprints[r.run_id] = hashlib.sha256(np.ascontiguousarray(pred.probs).tobytes()).hexdigest()
        return top1, label_prob

    # two float32 stacks: the next step loads while PD runs on the current one
    bufs = [np.empty((R, *shape), dtype=np.float32) for _ in range(min(2, len(steps)))]
    pool = ThreadPoolExecutor(1)
    future = pool.submit(load, steps[0], bufs[0])
    for si, step in enumerate(steps):
        progress(f"{name}: step {step} ({si + 1}/{len(steps)}): loading {R} prediction files")
        try:
            top1, label_prob = future.result()
        except BaseException:
            pool.shutdown(wait=True, cancel_futures=True)
            raise
        buf = bufs[si % len(bufs)]
        if si + 1 < len(steps):
            future = pool.submit(load, steps[si + 1], bufs[(si + 1) % len(bufs)])
        stack = dv.PredictionStack(buf, ref_targets, top1, label_prob, copy=False)
        progress(f"{name}: step {step}: PD over {len(pairs)} pairs")
        vals = dv.pair_metrics(stack, pair_idx)
        for m in dv.METRICS:
            pair_values[m][:, si] = vals[m]
        acc = stack.accuracy()
        lo, hi = dv.frechet_bounds(acc[pair_idx[:, 0]], acc[pair_idx[:, 1]]) if len(pairs) else ([], [])
        for k in np.flatnonzero((vals["pd_top1"] < np.asarray(lo) - 1e-12) | (vals["pd_top1"] > np.asarray(hi) + 1e-12)):
            a, b = runs[pair_idx[k, 0]], runs[pair_idx[k, 1]]
            frechet.append(f"step {step}: pd_top1({a.run_id}, {b.run_id}) = {vals['pd_top1'][k]:.4f} outside the "
                           f"Fréchet bounds [{lo[k]:.4f}, {hi[k]:.4f}] of their eval-set accuracies")
        if step == steps[-1]:
            eval_acc = {r.run_id: float(acc[i]) for i, r in enumerate(runs)}
            progress(f"{name}: final step: runs × runs heatmap, leave-one-out scores, self-checks")
            for k, (i, j, _) in enumerate(pairs):
                heat[i, j] = heat[j, i] = vals["pd_tv"][k]
            done = {(i, j) for i, j, _ in pairs}
            rest = [(i, j) for i in range(R) for j in range(i + 1, R) if (i, j) not in done]
            if rest:
                tv = dv.pair_metrics(stack, rest, ("pd_tv",))["pd_tv"]
                for (i, j), v in zip(rest, tv):
                    heat[i, j] = heat[j, i] = v
            groups = defaultdict(list)
            for i, r in enumerate(runs):
                groups[r.activation].append(i)
            scores = dv.loo_scores(stack, list(groups.values()))
            for i, r in enumerate(runs):  # PD(a, a) through the full code path, on a separate copy
                twin = dv.PredictionStack(np.stack([stack.probs[i], stack.probs[i]]), ref_targets,
                                          top1[[i, i]], label_prob[[i, i]])
                self_pd[r.run_id] = {m: float(v[0]) for m, v in dv.pair_metrics(twin, [(0, 1)]).items()}
            sample = np.arange(len(pairs))[:: max(1, len(pairs) // _SYMMETRY_SAMPLE)]
            if len(sample):
                rev = dv.pair_metrics(stack, pair_idx[sample][:, ::-1])
                for m in dv.METRICS:
                    gap = np.abs(rev[m] - vals[m][sample])
                    for k in np.flatnonzero(gap > 1e-12):
                        a, b = runs[pair_idx[sample[k], 0]], runs[pair_idx[sample[k], 1]]
                        asym.append((a.run_id, b.run_id, m, float(gap[k])))
        del stack
    pool.shutdown(wait=True)
    del bufs

    within = _within_summary(runs, pairs, pair_values, steps)
    cross = _cross_summary(runs, pairs, pair_values, steps)
    outcomes = _outcomes(er, scores)
    guards = [
        gd.check_identical_outcomes(runs),
        gd.check_identical_predictions(runs, fingerprints, steps[-1]),
        gd.check_variance((o.label, o.rcbd.ss_a, o.rcbd.ss_e, o.rcbd.ss_a + o.rcbd.ss_s + o.rcbd.ss_e)
                          for o in outcomes if o.rcbd is not None),
        gd.check_pd_self(self_pd, asym, frechet),
        gd.check_cells(er.missing, er.duplicates),
        gd.check_activation_modules(runs),
    ]
    if len(er.activations) < 2:
        notes.append("only one activation: there is no treatment to compare")
    return ExperimentAnalysis(
        er=er, steps=steps, notes=notes, eval_sha256=sha, n_contexts=int(shape[0]), vocab_size=int(shape[1]),
        eval_acc=eval_acc, fingerprints=fingerprints, pairs=pairs, pair_values=pair_values, heatmap=heat,
        pd_score=scores, within=within, cross=cross, outcomes=outcomes, guards=guards,
        parent_run_id=er.parent_run_id(),
    )


def _within_summary(runs, pairs, pair_values, steps) -> dict[str, dict[str, dict[str, list[float]]]]:
    out: dict[str, dict[str, dict[str, list[float]]]] = {}
    for act in sorted({r.activation for r in runs}):
        ks = [k for k, (i, j, kind) in enumerate(pairs) if kind == "within" and runs[i].activation == act]
        seeds = np.array([(runs[pairs[k][0]].seed, runs[pairs[k][1]].seed) for k in ks]).reshape(-1, 2)
        out[act] = {}
        for m in dv.METRICS:
            means, ses = [], []
            for si in range(len(steps)):
                mean, se = dv.pair_mean_jackknife(seeds, pair_values[m][ks, si]) if ks else (math.nan, math.nan)
                means.append(mean)
                ses.append(se)
            out[act][m] = {"mean": means, "se": ses, "n_pairs": len(ks)}
    return out


def _cross_summary(runs, pairs, pair_values, steps) -> dict[str, dict[str, dict[str, list[float]]]]:
    by: dict[str, list[int]] = defaultdict(list)
    for k, (i, j, kind) in enumerate(pairs):
        if kind == "same_seed":
            a, b = sorted((runs[i].activation, runs[j].activation))
            by[f"{a}|{b}"].append(k)
    out = {}
    for key in sorted(by):
        ks = by[key]
        out[key] = {}
        for m in dv.METRICS:
            v = pair_values[m][ks]  # (seeds, steps): one pair per seed, independent across seeds
            se = v.std(axis=0, ddof=1) / math.sqrt(len(ks)) if len(ks) > 1 else np.full(len(steps), np.nan)
            out[key][m] = {"mean": v.mean(axis=0).tolist(), "se": list(map(float, se)), "n_seeds": len(ks)}
    return out


def _outcomes(er: ExperimentRuns, scores: np.ndarray) -> list[OutcomeStats]:
    res = []
    seeds = [s for s in er.seeds if any(r.seed == s for r in er.runs)]
    acts = [a for a in er.activations if any(r.activation == a for r in er.runs)]
    per_act = [sum(r.activation == a for r in er.runs) for a in acts]
    for key, label, metric, lower in OUTCOMES:
        if metric is None and min(per_act, default=0) < 3:
            # with 2 runs each is the other's leave-one-out mean: both get the same score, SS_E = 0 by construction
            res.append(OutcomeStats(
                outcome=key, label=label, lower_is_better=lower, activations=acts, seeds=[], excluded_seeds=seeds,
                y=[], sentences=[f"The {label} is not analysed: it needs at least 3 seeds per activation "
                                 f"(here the fewest is {min(per_act, default=0)}; with 2, both runs of an activation "
                                 "get the same score, the pd_tv between them)."]))
            continue
        values = {}
        for i, r in enumerate(er.runs):
            values[r.cell] = float(scores[i]) if metric is None else r.metric(metric)
        res.append(analyse_outcome(key, label, values, acts, seeds, lower_is_better=lower))
    return res


# ---------------------------------------------------------------------------------------------------------------
# writers


def _f(x: float | None, d: int = 4) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "n/a" if x is None or math.isnan(x) else ("∞" if x > 0 else "−∞")
    return f"{x:.{d}f}"


def _ms(vals: Sequence[float], d: int = 4) -> str:
    v = np.array([x for x in vals if math.isfinite(x)], dtype=float)
    if len(v) == 0:
        return "n/a"
    return f"{v.mean():.{d}f} ± {v.std(ddof=1):.{d}f}" if len(v) > 1 else f"{v.mean():.{d}f}"


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c).replace("|", "\\|") for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _make_plots(an: ExperimentAnalysis, out: Path, prefix: str) -> None:
    runs = an.runs
    acts = sorted({r.activation for r in runs})
    curves = {a: {m: {r.seed: tuple(zip(*r.history[m])) if r.history.get(m) else ((), ())
                      for r in runs if r.activation == a} for m in ("train/loss", "val/loss")} for a in acts}
    figs = {"loss_curves": pl.loss_curves(curves, f"{an.er.name}: loss curves, mean ± 1 s.d. over seeds")}
    fm_keys = {"final/val_loss": "final val loss", "best/val_loss": "best val loss", "final/val_acc": "final val acc"}
    values = {lab: {a: {r.seed: r.metric(k) for r in runs if r.activation == a} for a in acts} for k, lab in fm_keys.items()}
    values["PD score (pd_tv vs LOO mean)"] = {a: {r.seed: float(an.pd_score[i]) for i, r in enumerate(runs)
                                                  if r.activation == a} for a in acts}
    figs["final_metrics"] = pl.final_metrics(values, title=f"{an.er.name}: final metrics by activation "
                                             "(dots: seeds; black: mean with 95% CI)")
    figs["pd_heatmap"] = pl.pd_heatmap(an.heatmap, [f"{r.activation} s{r.seed}" for r in runs],
                                       [r.activation for r in runs], an.final_step,
                                       f"{an.er.name}: pd_tv between runs at step {an.final_step}")
    within = {a: {m: (an.within[a][m]["mean"], an.within[a][m]["se"]) for m in dv.METRICS} for a in acts}
    figs["within_pd_steps"] = pl.within_pd_over_steps(an.steps, within, dv.METRICS,
                                                      f"{an.er.name}: mean within-activation PD between seeds "
                                                      "(± jackknife SE)")
    figs["accuracy_vs_pd"] = pl.accuracy_vs_pd([r.metric("final/val_acc") for r in runs], an.pd_score,
                                               [r.activation for r in runs], f"{an.er.name}: accuracy vs PD")
    for key, fig in figs.items():
        fname = f"{prefix}{key}.png"
        pl.save(fig, out / fname)
        an.plots[key] = fname


def _pd_sentences(an: ExperimentAnalysis) -> list[str]:
    s = []
    fin = -1
    w = [(a, an.within[a]["pd_tv"]["mean"][fin], an.within[a]["pd_tv"]["se"][fin],
          an.within[a]["pd_top1"]["mean"][fin]) for a in an.within if an.within[a]["pd_tv"]["n_pairs"]]
    if w:
        parts = ", ".join(f"{a} {_f(m)} ± {_f(se)}" for a, m, se, _ in w)
        mean_tv = float(np.mean([m for _, m, _, _ in w]))
        mean_top1 = float(np.mean([t for _, _, _, t in w]))
        s.append(f"Between seeds of the same activation, predictions at step {an.final_step} differ by pd_tv = "
                 f"{_f(mean_tv)} on average (per activation, ± jackknife SE over seeds: {parts}); "
                 f"{100 * mean_top1:.1f}% of top-1 predictions change (pd_top1).")
    if an.cross:
        c = [(k, an.cross[k]["pd_tv"]["mean"][fin], an.cross[k]["pd_tv"]["se"][fin]) for k in an.cross]
        parts = ", ".join(f"{k.replace('|', ' vs ')} {_f(m)} ± {_f(se)}" for k, m, se in c)
        mean_cross = float(np.mean([m for _, m, _ in c]))
        rel = ""
        if w:
            mean_tv = float(np.mean([m for _, m, _, _ in w]))
            rel = (f"; that is {'more' if mean_cross > mean_tv else 'less'} than between seeds "
                   f"({_f(mean_cross)} vs {_f(mean_tv)}), so changing the activation moves predictions "
                   f"{'more than' if mean_cross > mean_tv else 'no more than'} reseeding does")
        s.append(f"At a fixed seed, changing the activation moves predictions by pd_tv = {_f(mean_cross)} on "
                 f"average (± SE over seeds: {parts}){rel}.")
    return s


def _headline(analyses: list[ExperimentAnalysis], anomalies: list[str]) -> str:
    if anomalies:
        names = sorted({a.split(":", 1)[0] for a in anomalies})
        exps = ", ".join(an.er.name for an in analyses)
        return (f"GUARDS FAILED on {exps} ({len(anomalies)} anomalies: {', '.join(names)}): the results below are "
                "not trustworthy until these are explained.")
    parts = []
    for an in analyses:
        o = an.outcomes[0]
        k, n = len(o.activations), len(o.seeds)
        if o.rcbd is not None:
            r = o.rcbd
            order = np.argsort(r.treatment_means)
            verdict = "differs" if r.p_a < 0.05 else "does not detectably differ"
            txt = (f"on {an.er.name} ({k} activations × {n} seeds) final val loss {verdict} between activations "
                   f"(RCBD p = {r.p_a:.3g}, partial η² = {r.partial_eta2:.2f}; best {o.activations[order[0]]} "
                   f"{r.treatment_means[order[0]]:.4f}, worst {o.activations[order[-1]]} "
                   f"{r.treatment_means[order[-1]]:.4f})")
        else:
            txt = f"on {an.er.name} ({k} activations × {n} complete seeds) no blocked test was possible"
        tv = [an.within[a]["pd_tv"]["mean"][-1] for a in an.within if an.within[a]["pd_tv"]["n_pairs"]]
        if tv:
            txt += f", and seeds of one activation disagree by pd_tv = {np.mean(tv):.3f}"
        parts.append(txt)
    s = "; ".join(parts)
    return s[0].upper() + s[1:] + "."


def _md_experiment(an: ExperimentAnalysis, level: str, logging_note: str) -> list[str]:
    runs, L = an.runs, []
    h = level
    acts = sorted({r.activation for r in runs})
    L += [f"{h} Executive summary", ""]
    L += [f"- {s}" for s in an.sentences] + [""]

    # -- configuration
    L += [f"{h} Configuration", ""]
    common, varying = {}, defaultdict(set)
    keys = sorted(set().union(*(r.params for r in runs)))
    for k in keys:
        vals = {r.params.get(k, "—") for r in runs}
        if len(vals) == 1:
            common[k] = vals.pop()
        elif k not in ("activation", "seed", "model.activation", "train.seed"):
            varying[k] = vals
    n_params = {a: sorted({r.tags.get("nanoact.n_params", "n/a") for r in runs if r.activation == a}) for a in acts}
    L += [f"- experiment `{an.er.name}` (id {an.er.experiment_id}); {len(acts)} activations × "
          f"{len(an.er.seeds)} seeds = {len(acts) * len(an.er.seeds)} cells, {len(runs)} analysed",
          f"- evaluation set: {an.n_contexts} contexts × {an.vocab_size} classes, sha256 "
          f"`{an.eval_sha256 or 'not tagged'}`; checkpoint steps {an.steps}",
          "- parameter count (tag nanoact.n_params): " + "; ".join(f"{a}: {', '.join(v)}" for a, v in n_params.items()),
          f"- devices: {', '.join(sorted({r.tags.get('nanoact.device', 'n/a') for r in runs}))}"]
    if varying:
        L += ["- params that vary between runs besides activation and seed: "
              + "; ".join(f"`{k}` ∈ {sorted(v)}" for k, v in varying.items())]
    L += [f"- {n}" for n in an.notes]
    L += ["", "<details><summary>Resolved config shared by all runs</summary>", "",
          _table(["param", "value"], [(f"`{k}`", v) for k, v in common.items()]), "", "</details>", ""]

    # -- per-trial and per-activation tables
    L += [f"{h} Per-trial results", ""]
    rows = []
    for i, r in enumerate(runs):
        rows.append((f"`{r.run_id}`", r.activation, r.seed, _f(r.metric("final/train_loss")),
                     _f(r.metric("final/val_loss")), _f(r.metric("best/val_loss")), _f(r.metric("final/train_acc")),
                     _f(r.metric("final/val_acc")), _f(an.eval_acc.get(r.run_id, math.nan)), _f(an.pd_score[i]),
                     _f(r.metric("time/train_s"), 1)))
    L += [_table(["run id", "activation", "seed", "final train loss", "final val loss", "best val loss",
                  "final train acc", "final val acc", "eval-set acc", "PD score", "train time (s)"], rows), ""]
    L += [f"{h} Per-activation results (mean ± s.d. over seeds)", ""]
    rows = []
    for a in acts:
        rs = [r for r in runs if r.activation == a]
        idx = [i for i, r in enumerate(runs) if r.activation == a]
        rows.append((a, len(rs), _ms([r.metric("final/train_loss") for r in rs]),
                     _ms([r.metric("final/val_loss") for r in rs]), _ms([r.metric("best/val_loss") for r in rs]),
                     _ms([r.metric("final/train_acc") for r in rs]), _ms([r.metric("final/val_acc") for r in rs]),
                     _ms([float(an.pd_score[i]) for i in idx]), _ms([r.metric("time/train_s") for r in rs], 1),
                     ", ".join(f"`{r.run_id[:8]}`" for r in rs)))
    L += [_table(["activation", "n", "final train loss", "final val loss", "best val loss", "final train acc",
                  "final val acc", "PD score", "train time (s)", "runs"], rows), ""]

    # -- PD
    L += [f"{h} Prediction difference (PD)", "",
          f"Metrics of FACTS.md §3 on the fixed evaluation set ({an.n_contexts} contexts), at every checkpoint. "
          "Within an activation: mean over all pairs of seeds, ± jackknife SE over seeds (pairs share runs). "
          "Across activations: pairs of runs with the same seed, mean ± SE over seeds.", ""]
    L += [f"- {s}" for s in _pd_sentences(an)] + [""]
    fin = -1
    rows = []
    for a in acts:
        w = an.within[a]
        ids = ", ".join(f"`{r.run_id[:8]}`" for r in runs if r.activation == a)
        rows.append([a, w["pd_tv"]["n_pairs"]] + [f"{_f(w[m]['mean'][fin])} ± {_f(w[m]['se'][fin])}"
                                                 for m in dv.METRICS] + [ids])
    L += [f"Within-activation PD at step {an.final_step}:", "",
          _table(["activation", "pairs"] + list(dv.METRICS) + ["runs"], rows), ""]
    if an.cross:
        rows = [[k.replace("|", " vs "), an.cross[k]["pd_tv"]["n_seeds"]]
                + [f"{_f(an.cross[k][m]['mean'][fin])} ± {_f(an.cross[k][m]['se'][fin])}" for m in dv.METRICS]
                for k in an.cross]
        L += [f"Same seed, different activation, at step {an.final_step}:", "",
              _table(["activations", "seeds"] + list(dv.METRICS), rows), ""]
    rows = [[a] + [_f(v) for v in an.within[a]["pd_tv"]["mean"]] for a in acts]
    L += ["Mean within-activation pd_tv by step:", "", _table(["activation"] + [str(s) for s in an.steps], rows), ""]
    if len(an.pairs) <= 60:
        rows = []
        for k, (i, j, kind) in enumerate(an.pairs):
            rows.append([f"`{runs[i].run_id[:8]}` {runs[i].activation} s{runs[i].seed}",
                         f"`{runs[j].run_id[:8]}` {runs[j].activation} s{runs[j].seed}", kind]
                        + [_f(an.pair_values[m][k, fin]) for m in dv.METRICS])
        L += [f"Every pair at step {an.final_step}:", "", _table(["run a", "run b", "kind"] + list(dv.METRICS), rows), ""]
    else:
        L += [f"The {len(an.pairs)} pair values at every step are in summary.json (`pairs`).", ""]

    # -- statistics
    L += [f"{h} Statistics", "",
          "Randomized complete block design: activation = treatment, seed = block (FACTS.md §5). One-way tests "
          "(f_oneway, kruskal, tukey_hsd) are not used: they would put the seed variance into the error term.", ""]
    for o in an.outcomes:
        L += [f"**{o.label}**", ""] + [f"- {s}" for s in o.sentences] + [""]
        if o.rcbd is not None:
            r = o.rcbd
            L += [_table(["source", "SS", "df", "MS", "F", "p"], [
                ("activation", f"{r.ss_a:.4g}", r.df_a, f"{r.ms_a:.4g}", _f(r.f_a, 3), _f(r.p_a, 4)),
                ("seed (block)", f"{r.ss_s:.4g}", r.df_s, f"{r.ms_s:.4g}", _f(r.f_s, 3), _f(r.p_s, 4)),
                ("residual", f"{r.ss_e:.4g}", r.df_e, f"{r.ms_e:.4g}", "", "")]), ""]
            L += [_table(["pair", "mean diff", "q", "p (studentized range)", "paired t", "p (t)", "p (Holm)"],
                         [(f"{p.a} − {p.b}", f"{p.diff:+.4g}", _f(p.q, 3), _f(p.p_range, 4), _f(p.t, 3),
                           _f(p.p_t, 4), _f(p.p_holm, 4)) for p in o.pairwise]), ""]

    # -- compute
    L += [f"{h} Compute accounting", ""]
    rows = [(f"`{r.run_id}`", r.activation, r.seed, _f(r.metric("time/wall_s"), 1), _f(r.metric("time/train_s"), 1),
             _f(r.metric("tokens_per_s_mean"), 0), r.tags.get("nanoact.device", "n/a")) for r in runs]
    L += [_table(["run id", "activation", "seed", "wall (s)", "train (s)", "tokens/s", "device"], rows), ""]
    rows = []
    for a in acts:
        rs = [r for r in runs if r.activation == a]
        wall = [r.metric("time/wall_s") for r in rs]
        rows.append((a, len(rs), _f(float(np.nansum(wall)), 1), _ms(wall, 1),
                     _ms([r.metric("tokens_per_s_mean") for r in rs], 0),
                     ", ".join(sorted({r.tags.get("nanoact.device", "n/a") for r in rs}))))
    total = float(np.nansum([r.metric("time/wall_s") for r in runs]))
    L += [_table(["activation", "runs", "total wall (s)", "wall per run (s)", "tokens/s", "device"], rows), "",
          f"Total wall time of the analysed runs: {total:.1f} s ({total / 60:.1f} min).", ""]

    # -- plots
    L += [f"{h} Plots", ""]
    captions = {"loss_curves": "Train and val loss per activation (mean ± 1 s.d. over seeds; thin: single seeds)",
                "final_metrics": "Final metrics by activation (dots: seeds; black: mean with 95% CI)",
                "pd_heatmap": f"pd_tv between every pair of runs at step {an.final_step}",
                "within_pd_steps": "Mean within-activation PD across steps (± jackknife SE)",
                "accuracy_vs_pd": "Final val accuracy against the per-run PD score"}
    for key, fname in an.plots.items():
        L += [f"![{captions[key]}]({fname})", "", f"*{captions[key]}*", ""]

    # -- raw data
    L += [f"{h} Raw data summary", "",
          f"Tracking experiment `{an.er.name}` (id {an.er.experiment_id}); parent run: "
          f"{'`' + an.parent_run_id + '`' if an.parent_run_id else 'none found'}. {logging_note}", ""]
    rows = []
    selected = {r.run_id for r in runs}
    superseded = {r.run_id for r in an.er.superseded}
    dup_old = {old.run_id for old, _ in an.er.duplicates}
    every = runs + an.er.superseded + an.er.not_finished + [old for old, _ in an.er.duplicates]
    for r in sorted(every, key=lambda r: (r.activation, r.seed, r.start_time)):
        why = ("analysed" if r.run_id in selected else "older attempt of the same grid key" if r.run_id in superseded
               else "duplicate cell (older)" if r.run_id in dup_old else f"not FINISHED ({r.status})")
        start = _dt.datetime.fromtimestamp(r.start_time / 1000, _dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S")
        rows.append((f"`{r.run_id}`", r.run_name, r.activation, r.seed, f"`{r.grid_key}`", r.status, start, why))
    L += [_table(["run id", "name", "activation", "seed", "grid key", "status", "start (UTC)", "used"], rows), ""]
    return L


def _guard_md(analyses: list[ExperimentAnalysis], multi: bool) -> list[str]:
    L = ["## Guards", ""]
    failed = [(an, g) for an in analyses for g in an.guards if not g.passed]
    if failed:
        L += [f"- **GUARD FAILED: {g.name}**" + (f" ({an.er.name})" if multi else "")
              + f" — requires: {g.title}; {len(g.details)} failure(s), e.g. {g.details[0]}" for an, g in failed]
        L += ["", "The numbers below are written for diagnosis only.", ""]
    else:
        L += ["All guards passed.", ""]
    rows = []
    for an in analyses:
        for g in an.guards:
            name = ((an.er.name + ": ") if multi else "") + g.name
            detail = "<br>".join(g.details[:20]) + (f"<br>… {len(g.details) - 20} more" if len(g.details) > 20 else "")
            rows.append((name, g.title, "PASS" if g.passed else "**FAIL**", detail or "—"))
    L += [_table(["guard", "checks", "result", "details"], rows), ""]
    return L


def _jsonable(x: Any) -> Any:
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, np.ndarray):
        return _jsonable(x.tolist())
    if isinstance(x, (np.floating, float)):
        return float(x) if math.isfinite(x) else None
    if isinstance(x, np.integer):
        return int(x)
    return x


def _summary_experiment(an: ExperimentAnalysis) -> dict[str, Any]:
    runs = an.runs
    per_run = []
    for i, r in enumerate(runs):
        per_run.append({
            "run_id": r.run_id, "run_name": r.run_name, "activation": r.activation, "seed": r.seed,
            "grid_key": r.grid_key, "parent_run_id": r.parent_id,
            "final": {k.split("/", 1)[1]: r.metric(k) for k in RUN_METRICS if k.startswith("final/")},
            "best": {k.split("/", 1)[1]: r.metric(k) for k in RUN_METRICS if k.startswith("best/")},
            "time": {"train_s": r.metric("time/train_s"), "wall_s": r.metric("time/wall_s")},
            "tokens_per_s_mean": r.metric("tokens_per_s_mean"), "n_params": r.tags.get("nanoact.n_params"),
            "device": r.tags.get("nanoact.device"), "eval_acc": an.eval_acc.get(r.run_id),
            "pd_score": float(an.pd_score[i]), "prediction_sha256": an.fingerprints.get(r.run_id),
        })
    per_act = {}
    for a in sorted({r.activation for r in runs}):
        rs = [r for r in runs if r.activation == a]
        idx = [i for i, r in enumerate(runs) if r.activation == a]
        cols = {k: [r.metric(k) for r in rs] for k in RUN_METRICS}
        cols["pd_score"] = [float(an.pd_score[i]) for i in idx]
        per_act[a] = {
            "n_runs": len(rs), "run_ids": [r.run_id for r in rs], "seeds": [r.seed for r in rs],
            "mean": {k: float(np.nanmean(v)) if np.isfinite(v).any() else None for k, v in cols.items()},
            "std": {k: float(np.nanstd(v, ddof=1)) if np.isfinite(v).sum() > 1 else None for k, v in cols.items()},
            "within_pd": {m: {"mean": an.within[a][m]["mean"][-1], "se_jackknife": an.within[a][m]["se"][-1],
                              "n_pairs": an.within[a][m]["n_pairs"]} for m in dv.METRICS},
            "within_pd_by_step": {m: an.within[a][m] for m in dv.METRICS},
        }
    pairs = []
    for k, (i, j, kind) in enumerate(an.pairs):
        pairs.append({"run_a": runs[i].run_id, "run_b": runs[j].run_id, "kind": kind,
                      "activation_a": runs[i].activation, "activation_b": runs[j].activation,
                      "seed_a": runs[i].seed, "seed_b": runs[j].seed,
                      **{m: an.pair_values[m][k].tolist() for m in dv.METRICS}})
    return {
        "experiment": an.er.name, "experiment_id": an.er.experiment_id, "parent_run_id": an.parent_run_id,
        "eval_set_sha256": an.eval_sha256, "n_contexts": an.n_contexts, "vocab_size": an.vocab_size,
        "steps": an.steps, "activations": an.er.activations, "seeds": an.er.seeds, "notes": an.notes,
        "runs": per_run, "activations_summary": per_act,
        "same_seed_pd": an.cross, "pairs": pairs,
        "heatmap": {"step": an.final_step, "run_ids": [r.run_id for r in runs], "pd_tv": an.heatmap},
        "missing_cells": [{"activation": m.activation, "seed": m.seed,
                           "attempts": [{"run_id": r.run_id, "status": r.status, "error": r.tags.get("nanoact.error")}
                                        for r in m.attempts]} for m in an.er.missing],
        "duplicates": [{"older": o.run_id, "newer": n.run_id, "activation": n.activation, "seed": n.seed}
                       for o, n in an.er.duplicates],
        "superseded_run_ids": [r.run_id for r in an.er.superseded],
        "statistics": {o.outcome: o.to_dict() for o in an.outcomes},
        "guards": [asdict(g) for g in an.guards],
        "sentences": an.sentences, "plots": an.plots,
    }


def _comparison(analyses: list[ExperimentAnalysis]) -> list[dict[str, Any]]:
    rows = []
    for an in analyses:
        for a in sorted({r.activation for r in an.runs}):
            rs = [r for r in an.runs if r.activation == a]
            rows.append({"experiment": an.er.name, "activation": a, "n_runs": len(rs),
                         "mean_final_val_loss": float(np.nanmean([r.metric("final/val_loss") for r in rs])),
                         "mean_within_pd_tv": an.within[a]["pd_tv"]["mean"][-1],
                         "mean_within_pd_top1": an.within[a]["pd_top1"]["mean"][-1],
                         "mean_wall_s": float(np.nanmean([r.metric("time/wall_s") for r in rs])),
                         "run_ids": [r.run_id for r in rs]})
    return rows


# ---------------------------------------------------------------------------------------------------------------
# entry point


def run_report(
    experiments: list[str],
    *,
    tracking_uri: str | None = None,
    out_dir: str | Path | None = None,
    allow_anomalies: bool = False,
    log_to_parent: bool = True,
    progress: Callable[[str], None] | None = None,
    study: str | None = None,
    where: Mapping[str, str] | None = None,
) -> ReportResult:
    """Analyse ``experiments`` and write report.md, the PNGs and summary.json to ``out_dir``.

    Args:
        experiments: MLflow experiment names (one report; a comparison table when several).
        tracking_uri: the store; resolved with ``nanoact.tracking_uri.resolve_tracking_uri``.
        out_dir: output folder; default ``reports/<experiment>`` or ``reports/<e1>+<e2>``.
        allow_anomalies: recorded in the report; the CLI uses it to decide the exit code.
        log_to_parent: also log the outputs as artifacts of each experiment's sweep parent run.
        progress: callback for one-line progress messages.
        study: analyse only this Optuna study's runs (needed when an experiment holds several).
        where: param filters (``{"model.name": "minigpt"}``) selecting one slice of extra grid axes.

    Returns a ``ReportResult``; the outputs are written even when guards fail (``anomalies`` lists them).
    Raises ``NanoactError`` for user-caused problems (unknown experiment, no finished runs, different eval sets,
    unreadable artifacts).
    """
    if not experiments:
        raise NanoactError("no experiment given; pass --experiment NAME")
    if len(set(experiments)) != len(experiments):
        raise NanoactError(f"experiment listed twice: {experiments}")
    say = progress or (lambda _msg: None)
    uri = resolve_tracking_uri(tracking_uri)
    client = make_client(uri)
    fetcher = ArtifactFetcher(client)
    out = report_dir(experiments, out_dir)
    multi = len(experiments) > 1

    analyses = []
    for name in experiments:
        an = analyse_experiment(client, name, fetcher, say, study=study, where=where)
        an.sentences = [o.sentences[0] for o in an.outcomes] + _pd_sentences(an)
        analyses.append(an)
    out.mkdir(parents=True, exist_ok=True)  # only now: a failed analysis leaves no empty folder behind
    for an in analyses:
        say(f"{an.er.name}: plotting")
        _make_plots(an, out, f"{safe_dirname(an.er.name)}_" if multi else "")
    anomalies = [(f"{an.er.name}: " if multi else "") + a for an in analyses for g in an.guards for a in g.anomalies()]
    headline = _headline(analyses, anomalies)
    art_path = "report" if not multi else f"report/{'+'.join(experiments)}"

    def logging_note(an: ExperimentAnalysis, status: str | None = None) -> str:
        if status:
            return status
        if not log_to_parent:
            return "The report was not logged to MLflow (log_to_parent=False)."
        if an.parent_run_id is None:
            return ("No sweep parent run was found (no cell has a mlflow.parentRunId tag), so this report is NOT "
                    "logged to MLflow; it exists only in this folder.")
        return (f"After writing it, nanoact logs this report as artifacts of parent run `{an.parent_run_id}` under "
                f"`{art_path}/`; had that upload failed, this note would say so.")

    status: dict[str, str] = {}

    def write() -> tuple[Path, Path]:
        md = [f"# nanoact report: {' + '.join(experiments)}", "",
              f"*Generated {_dt.datetime.now(_dt.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')} from "
              f"`{display_url(uri)}`; every number traces to the MLflow run ids in the tables.*", "",
              f"**Headline:** {headline}", ""]
        md += _guard_md(analyses, multi)
        if anomalies and allow_anomalies:
            md += ["Anomalies were allowed (--allow-anomalies).", ""]
        if multi:
            rows = [(r["experiment"], r["activation"], r["n_runs"], _f(r["mean_final_val_loss"]),
                     _f(r["mean_within_pd_tv"]), _f(r["mean_within_pd_top1"]), _f(r["mean_wall_s"], 1),
                     ", ".join(f"`{x[:8]}`" for x in r["run_ids"])) for r in _comparison(analyses)]
            md += ["## Comparison across experiments", "",
                   _table(["experiment", "activation", "runs", "mean final val loss", "mean within-activation pd_tv",
                           "mean within-activation pd_top1", "mean wall (s)", "runs"], rows), ""]
        for an in analyses:
            if multi:
                md += [f"## Experiment `{an.er.name}`", ""]
            md += _md_experiment(an, "###" if multi else "##", logging_note(an, status.get(an.er.name)))
        report_md = out / "report.md"
        report_md.write_text("\n".join(md) + "\n")
        summary = {
            "schema_version": SCHEMA_VERSION, "generated_at": _dt.datetime.now(_dt.timezone.utc).isoformat(),
            "tracking_uri": display_url(uri), "experiments": experiments, "headline": headline,
            "anomalies": anomalies, "allow_anomalies": allow_anomalies,
            "per_experiment": {an.er.name: _summary_experiment(an) for an in analyses},
            "comparison": _comparison(analyses) if multi else [],
            "logged_to": {an.er.name: logging_note(an, status.get(an.er.name)) for an in analyses},
        }
        summary_json = out / "summary.json"
        summary_json.write_text(json.dumps(_jsonable(summary), indent=1, allow_nan=False))
        return report_md, summary_json

    say("writing report.md and summary.json")
    report_md, summary_json = write()
    if log_to_parent:
        files = [report_md, summary_json] + [out / f for an in analyses for f in an.plots.values()]
        failed = False
        for an in analyses:
            if an.parent_run_id is None:
                continue
            say(f"{an.er.name}: logging the report to parent run {an.parent_run_id}")
            try:
                for f in files:
                    client.log_artifact(an.parent_run_id, str(f), art_path)
            except Exception as e:  # the report on disk is still valid; say so in it instead of failing
                status[an.er.name] = (f"Logging this report to parent run `{an.parent_run_id}` FAILED "
                                      f"({type(e).__name__}: {e}); it exists only in this folder.")
                failed = True
        if failed:
            report_md, summary_json = write()
    return ReportResult(out_dir=out, report_md=report_md, summary_json=summary_json, anomalies=anomalies,
                        headline=headline)
