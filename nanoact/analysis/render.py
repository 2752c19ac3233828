"""report.md: the guards, each experiment's sections in order, the comparison across experiments, and the plots.

The words of the sections live beside it: ``answers`` (each test's question and answer), ``executive`` (the
executive summary and the headline), ``render_stats`` (the PD, sources and statistics sections) and ``formatting``
(numbers and tables).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from nanoact.analysis.answers import fill_text
from nanoact.analysis.divergence import METRICS
from nanoact.analysis.executive import FAMILY_WORDS, executive_summary, grid_words, headline, shares_of
from nanoact.analysis.formatting import fixed, md_table, mean_sd, plural, utc_time
from nanoact.analysis.render_stats import pd_section, sources_section, stats_section
from nanoact.tracking import schema as S

__all__ = ["comparison_md", "experiment_md", "guard_md", "headline", "make_plots"]


def _summary_section(an, level: str) -> list[str]:
    lines = [f"{level} Executive summary", "",
             "Each sentence below answers one or more entries of the hypothesis list (summary.json `hypotheses`; ids "
             "in brackets). The primary outcome is final val loss; the other families are Holm-corrected within "
             "themselves (nanoact's docs/REPORT.md, section Hypothesis tests, explains each test). What each family "
             "controls:", ""]
    fams = list(dict.fromkeys(x.family for x in an.hypotheses if not x.exploratory))
    lines += [f"  - `{fam}`: {FAMILY_WORDS.get(fam, 'Holm; familywise error ≤ α')}" for fam in fams]
    lines += ["  - `exploratory:*`: Holm within each, but never quoted as findings, and their non-rejections never as "
              "evidence of no difference", ""]
    for item in executive_summary(an.hypotheses, len(an.er.seeds), shares_of(an)):
        ids = ", ".join(f"`{i}`" for i in item["tests"][:4]) + (" …" if len(item["tests"]) > 4 else "")
        lines.append(f"- {item['text']}" + (f" [{ids}]" if ids else ""))
    return lines + [""]


def _config_section(an, level: str) -> list[str]:
    runs = an.runs
    acts = sorted({r.activation for r in runs})
    common, varying = {}, {}
    for k in sorted(set().union(*(r.params for r in runs))):
        vals = {r.params.get(k, "—") for r in runs}
        if len(vals) == 1:
            common[k] = vals.pop()
        elif k not in ("activation", "seed", "model.activation", "train.seed"):
            varying[k] = vals
    n_params = {a: sorted({r.tags.get(S.N_PARAMS, "n/a") for r in runs if r.activation == a}) for a in acts}
    lines = [f"{level} Configuration", "",
             f"- experiment `{an.er.name}` (id {an.er.experiment_id}); analysed: {grid_words(an)}; {len(runs)} runs",
             f"- grid: {plural(len(an.er.activations), 'activation')} × {plural(len(an.er.seeds), 'seed')} = "
             f"{plural(len(an.er.activations) * len(an.er.seeds), 'cell')}"
             + (f", {an.er.grid.source}" if an.er.grid is not None else ""),
             f"- evaluation set for PD: {an.n_contexts} contexts × {an.vocab_size} classes, drawn once from the val "
             f"split and identical for every run (sha256 `{an.eval_sha256 or 'not tagged'}`); checkpoint steps "
             f"{an.steps}, PD tests at the final step {an.final_step}",
             f"- val loss and val accuracy are means over a fixed sample of {an.eval_iters or 'train.eval_iters'} val "
             "batches (the same batches for every run), not the whole val split; loss is cross-entropy in nats per "
             "character",
             "- parameter count (tag nanoact.n_params): "
             + "; ".join(f"{a}: {', '.join(v)}" for a, v in n_params.items()),
             f"- devices: {', '.join(sorted({r.tags.get('nanoact.device', 'n/a') for r in runs}))}; compute dtype: "
             f"{an.dtypes or 'not logged'}"]
    if varying:
        lines.append("- params that vary between runs besides activation and seed: "
                     + "; ".join(f"`{k}` ∈ {sorted(v)}" for k, v in varying.items()))
    lines += [f"- {n}" for n in an.notes]
    lines += ["", "<details><summary>Resolved config shared by all runs</summary>", "",
              md_table(["param", "value"], [(f"`{k}`", v) for k, v in common.items()]), "", "</details>", ""]
    return lines


def _runs_section(an, level: str) -> list[str]:
    runs = an.runs
    best = [] if an.best_equals_final else ["best val loss"]
    rows = [[f"`{r.run_id}`", r.activation, r.seed, fixed(r.metric(S.FINAL_TRAIN_LOSS)),
             fixed(r.metric(S.FINAL_VAL_LOSS))]
            + ([] if an.best_equals_final else [fixed(r.metric(S.BEST_VAL_LOSS))])
            + [fixed(r.metric(S.FINAL_TRAIN_ACC)), fixed(r.metric(S.FINAL_VAL_ACC)),
               fixed(an.eval_acc.get(r.run_id, math.nan)), fixed(r.metric(S.TIME_TRAIN_S), 1)] for r in runs]
    lines = [f"{level} Per-trial results", ""]
    if an.best_equals_final:
        lines += ["Best val loss equals final val loss for every run, so it is not shown separately.", ""]
    header = ["run id", "activation", "seed", "final train loss", "final val loss", *best, "final train acc",
              "final val acc", "eval-set acc", "train time (s)"]
    return lines + [md_table(header, rows), ""]


def _over_seeds(runs, key: str, digits: int = 4) -> str:
    """Mean ± s.d. of metric ``key`` over ``runs`` (the seeds of one activation)."""
    return mean_sd([r.metric(key) for r in runs], digits)


def _per_activation_section(an, level: str) -> list[str]:
    runs = an.runs
    best = [] if an.best_equals_final else ["best val loss"]
    rows = []
    for a in sorted({r.activation for r in runs}):
        rs = [r for r in runs if r.activation == a]
        rows.append([a, len(rs), _over_seeds(rs, S.FINAL_TRAIN_LOSS), _over_seeds(rs, S.FINAL_VAL_LOSS)]
                    + ([] if an.best_equals_final else [_over_seeds(rs, S.BEST_VAL_LOSS)])
                    + [_over_seeds(rs, S.FINAL_TRAIN_ACC), _over_seeds(rs, S.FINAL_VAL_ACC),
                       _over_seeds(rs, S.TIME_TRAIN_S, 1), ", ".join(f"`{r.run_id[:8]}`" for r in rs)])
    header = ["activation", "n", "final train loss", "final val loss", *best, "final train acc", "final val acc",
              "train time (s)", "runs"]
    return [f"{level} Per-activation results (mean ± s.d. over seeds)", "", md_table(header, rows), ""]


def _compute_section(an, level: str) -> list[str]:
    runs = an.runs
    rows = [(f"`{r.run_id}`", r.activation, r.seed, fixed(r.metric(S.TIME_WALL_S), 1),
             fixed(r.metric(S.TIME_TRAIN_S), 1), fixed(r.metric(S.TOKENS_PER_S_MEAN), 0),
             r.tags.get(S.DEVICE, "n/a")) for r in runs]
    lines = [f"{level} Compute accounting", "",
             md_table(["run id", "activation", "seed", "wall (s)", "train (s)", "tokens/s", "device"], rows), ""]
    total = float(np.nansum([r.metric(S.TIME_WALL_S) for r in runs]))
    return lines + [f"Total wall time of the analysed runs: {total:.1f} s ({total / 60:.1f} min).", ""]


CAPTIONS = {"loss_curves": "Train and val loss per activation (mean ± 1 s.d. over seeds; thin: single seeds)",
            "final_metrics": "Final metrics by activation (dots: seeds; black: mean with 95% CI)",
            "pd_heatmap": "pd_tv between every pair of runs at the final step",
            "within_pd_steps": "Mean within-activation PD across steps (± jackknife SE over seeds)",
            "accuracy_vs_pd": "Final val accuracy against each run's pd_tv to its activation's leave-one-out mean "
                              "prediction (descriptive; not a test)"}


def _raw_section(an, level: str, logging_note: str) -> list[str]:
    lines = [f"{level} Plots", ""]
    for key, fname in an.plots.items():
        lines += [f"![{CAPTIONS[key]}]({fname})", "", f"*{CAPTIONS[key]}*", ""]
    lines += [f"{level} Raw data summary", "",
              f"Tracking experiment `{an.er.name}` (id {an.er.experiment_id}); parent run: "
              f"{'`' + an.parent_run_id + '`' if an.parent_run_id else 'none found'}. {logging_note}", ""]
    selected = {r.run_id for r in an.runs}
    superseded = {r.run_id for r in an.er.superseded}
    dup_old = {old.run_id for old, _ in an.er.duplicates}
    every = an.runs + an.er.superseded + an.er.not_finished + [old for old, _ in an.er.duplicates]
    rows = []
    for r in sorted(every, key=lambda r: (r.activation, r.seed, r.start_time)):
        why = ("analysed" if r.run_id in selected else "older attempt of the same grid key" if r.run_id in superseded
               else "duplicate cell (older)" if r.run_id in dup_old else f"not FINISHED ({r.status})")
        start = utc_time(r.start_time)
        rows.append((f"`{r.run_id}`", r.run_name, r.activation, r.seed, f"`{r.grid_key}`", r.status, start, why))
    header = ["run id", "name", "activation", "seed", "grid key", "status", "start (UTC)", "used"]
    return lines + [md_table(header, rows), ""]


def experiment_md(an, level: str, logging_note: str) -> list[str]:
    fill_text(an.hypotheses)
    # the per-activation table right after the summary; the config dump last
    return (_summary_section(an, level) + _per_activation_section(an, level) + _runs_section(an, level)
            + pd_section(an, level) + sources_section(an, level) + stats_section(an, level)
            + _compute_section(an, level) + _raw_section(an, level, logging_note) + _config_section(an, level))


def guard_md(analyses, multi: bool) -> list[str]:
    lines = ["## Guards", ""]
    failed = [(an, guard) for an in analyses for guard in an.guards if not guard.passed]
    unverified = [(an, guard) for an in analyses for guard in an.guards if guard.status == "UNVERIFIED"]
    if failed:
        lines += [f"- **GUARD FAILED: {guard.name}**" + (f" ({an.key})" if multi else "")
                  + f" — requires: {guard.title}; {len(guard.details)} failure(s), e.g. {guard.details[0]}"
                  for an, guard in failed]
        lines += ["", "The numbers below are written for diagnosis only.", ""]
    elif unverified:
        lines += [f"No guard failed, but {len(unverified)} could not be checked (UNVERIFIED): "
                  + ", ".join(guard.name for _, guard in unverified) + ".", ""]
    else:
        lines += ["All guards passed.", ""]
    rows: dict[tuple, list[str]] = {}  # one row per guard outcome, naming the analyses it holds for
    for an in analyses:
        for guard in an.guards:
            more = len(guard.details) - 20
            detail = "<br>".join(guard.details[:20]) + (f"<br>… {more} more" if more > 0 else "")
            row = (guard.name, guard.title, "**FAIL**" if guard.status == "FAIL" else guard.status, detail or "—")
            rows.setdefault(row, []).append(an.key)
    def named(row: tuple, keys: list[str]) -> tuple:
        if not multi:
            return row
        which = f"all {len(keys)}" if len(keys) == len(analyses) else ", ".join(keys)
        return (f"{row[0]} ({which})", *row[1:])

    return lines + [md_table(["guard", "checks", "result", "details"], [named(r, k) for r, k in rows.items()]), ""]


def comparison_md(rows: list[dict[str, Any]]) -> list[str]:
    body = [(r["experiment"], r["activation"], r["n_runs"], fixed(r["mean_final_val_loss"]),
             fixed(r["mean_within_pd_tv"]), fixed(r["mean_within_pd_top1"]), fixed(r["mean_wall_s"], 1),
             ", ".join(f"`{x[:8]}`" for x in r["run_ids"])) for r in rows]
    levels = any("[" in r["experiment"] for r in rows)
    return [f"## Comparison across {'levels' if levels else 'experiments'}", "",
            md_table(["level" if levels else "experiment", "activation", "runs", "mean final val loss",
                      "mean within-activation pd_tv",
                      "mean within-activation pd_top1", "mean wall (s)", "runs"], body), ""]


def make_plots(an, out, prefix: str) -> None:
    """Writes the PNGs into ``out`` and records their file names in ``an.plots``."""
    from nanoact.analysis import plots as pl

    runs = an.runs
    acts = sorted({r.activation for r in runs})
    curves = {a: {m: {r.seed: tuple(zip(*r.history[m])) if r.history.get(m) else ((), ())
                      for r in runs if r.activation == a} for m in (S.TRAIN_LOSS, S.VAL_LOSS)} for a in acts}
    figs = {"loss_curves": pl.loss_curves(curves, f"{an.key}: loss curves, mean ± 1 s.d. over seeds")}
    keys = {S.FINAL_VAL_LOSS: "final val loss", S.FINAL_VAL_ACC: "final val acc"}
    if not an.best_equals_final:
        keys[S.BEST_VAL_LOSS] = "best val loss"
    values = {label: {a: {r.seed: r.metric(key) for r in runs if r.activation == a} for a in acts}
              for key, label in keys.items()}
    figs["final_metrics"] = pl.final_metrics(values, title=f"{an.key}: final metrics by activation "
                                             "(dots: seeds; black: mean with 95% CI)")
    figs["pd_heatmap"] = pl.pd_heatmap(an.heatmap, [f"{r.activation} s{r.seed}" for r in runs],
                                       [r.activation for r in runs], an.final_step,
                                       f"{an.key}: pd_tv between runs at step {an.final_step}")
    within = {a: {m: (an.within[a][m]["mean"], an.within[a][m]["se"]) for m in METRICS} for a in acts}
    figs["within_pd_steps"] = pl.within_pd_over_steps(an.steps, within, METRICS,
                                                      f"{an.key}: mean within-activation PD between seeds "
                                                      "(± jackknife SE)")
    figs["accuracy_vs_pd"] = pl.accuracy_vs_pd([r.metric(S.FINAL_VAL_ACC) for r in runs], an.pd_score,
                                               [r.activation for r in runs], f"{an.key}: accuracy vs PD")
    for key, fig in figs.items():
        fname = f"{prefix}{key}.png"
        pl.save(fig, out / fname)
        an.plots[key] = fname
