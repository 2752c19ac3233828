"""``run_report``: the entry point. Analyse experiments, then write report.md, report.html, the PNGs and
summary.json, and log them to the sweep's parent run.

The work is split by job: ``experiment`` computes (numbers only), ``hypotheses`` lists and adjusts every test,
``render`` words it (report.md, the headline, the executive summary), ``html`` turns report.md into one
self-contained page, ``summary`` writes summary.json (schema in docs/REPORT.md). Library code: no printing,
progress goes to the ``progress`` callback, user mistakes raise
``NanoactError`` with a one-line message.
"""

from __future__ import annotations

import datetime as _dt
import functools
import itertools
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from nanoact.analysis import factorial as fa
from nanoact.analysis import factorial_report as fr
from nanoact.analysis import factorial_words as fw
from nanoact.analysis import render as rd
from nanoact.analysis import sequential_report as seqrep
from nanoact.analysis import summary as sm
from nanoact.analysis.equivalence import Margins
from nanoact.analysis.experiment import ExperimentAnalysis, analyse_experiment
from nanoact.analysis.html import write_html
from nanoact.analysis.predictions import ArtifactFetcher
from nanoact.errors import GridVariesError, NanoactError
from nanoact.paths import report_dir, safe_dirname
from nanoact.tracking import schema as S
from nanoact.tracking.store import Store
from nanoact.tracking_uri import display_url, resolve_tracking_uri

SCHEMA_VERSION = sm.SCHEMA_VERSION
__all__ = ["ReportResult", "ExperimentAnalysis", "analyse_experiment", "run_report"]


@dataclass
class ReportResult:
    out_dir: Path
    report_md: Path
    summary_json: Path
    anomalies: list[str]  # guard failures, one line each; empty if clean
    headline: str  # one-sentence executive summary


def _logging_note(an: ExperimentAnalysis, log_to_parent: bool, art_path: str, status: str | None) -> str:
    if status:
        return status
    if not log_to_parent:
        return "The report was not logged to MLflow (log_to_parent=False)."
    if an.parent_run_id is None:
        return ("No sweep parent run was found (no cell has a mlflow.parentRunId tag), so this report is NOT "
                "logged to MLflow; it exists only in this folder.")
    slice_note = (" It is a slice (--where), so the parent run's description and `report/*` metrics, which "
                  "belong to the full report, are left as they are." if art_path.startswith("report-slices/") else "")
    return (f"After writing it, nanoact logs this report as artifacts of parent run `{an.parent_run_id}` under "
            f"`{art_path}/` (report.md, report.html, summary.json, the plots); had that upload failed, this note "
            f"would say so.{slice_note}")


def _title(an: ExperimentAnalysis) -> str:
    study = _study(an)
    return f"{an.er.name}, study {study}" if study else an.er.name


def _scope(analyses: list[ExperimentAnalysis], where: Mapping[str, str] | None) -> str:
    """What the headline is about, when the experiment name alone does not say it: the study (when it is not
    the default one, or the experiment holds several) and the slice."""
    parts = [f"study {_study(an)}" for an in analyses
             if _study(an) and (_study(an) != an.er.name or _n_studies(an) > 1)]
    if where:
        parts.append(f"slice {_where_label(where)}")
    return f"[{'; '.join(parts)}] " if parts else ""


def _write(out: Path, experiments: list[str], uri: str, analyses: list[ExperimentAnalysis], headline: str,
           anomalies: list[str], allow_anomalies: bool, notes: dict[str, str],
           factorial: tuple[fr.FactorialSection, dict[str, str]] | None = None) -> tuple[Path, Path]:
    multi = len(analyses) > 1
    title = " + ".join(dict.fromkeys(_title(an) for an in analyses))
    md = [f"# nanoact report: {title}", "",
          f"*Generated {_dt.datetime.now(_dt.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')} from "
          f"`{display_url(uri)}`; every number traces to the MLflow run ids in the tables.*", "",
          f"**Headline:** {headline}", ""]
    md += rd.guard_md(analyses, multi)
    if anomalies and allow_anomalies:
        md += ["Anomalies were allowed (--allow-anomalies).", ""]
    if factorial is not None:
        md += fr.render_md(*factorial)
    if multi:
        md += rd.comparison_md(sm.comparison(analyses))
    for an in analyses:
        if multi:
            md += [f"## {'Level' if an.label else 'Experiment'} `{an.label or an.er.name}`", ""]
        if an.sequential is not None:
            md += seqrep.render_md(an.sequential, "###" if multi else "##")
        md += rd.experiment_md(an, "###" if multi else "##", notes[an.er.name])
    report_md = out / "report.md"
    report_md.write_text("\n".join(md) + "\n")
    write_html(report_md)
    summary = {
        "schema_version": SCHEMA_VERSION, "generated_at": _dt.datetime.now(_dt.timezone.utc).isoformat(),
        "tracking_uri": display_url(uri), "experiments": experiments, "headline": headline,
        "anomalies": anomalies, "allow_anomalies": allow_anomalies,
        "per_experiment": {an.key: sm.experiment_summary(an) for an in analyses},
        "comparison": sm.comparison(analyses) if multi else [],
        "factorial": fr.summary(factorial[0]) if factorial is not None else None,
        "logged_to": notes,
    }
    summary_json = out / "summary.json"
    summary_json.write_text(json.dumps(sm.jsonable(summary), indent=1, allow_nan=False))
    return report_md, summary_json


def _log_outputs(store: Store, analyses, files: list[Path], art_path: str, headline: str, say,
                 describe: bool = True, per_activation: bool = True) -> dict[str, str]:
    """Log the outputs to each experiment's parent run (once per run: the levels of one grid share it), with a
    description and headline metrics unless ``describe`` is False (a slice report: the full report's description
    and metrics stay); ``per_activation`` False (levels of a factorial grid): no ``report/<activation>/*`` metrics,
    which would mix levels, and earlier ones are marked stale. Returns a note per experiment where that failed."""
    failed, done = {}, set()
    for an in analyses:
        if an.parent_run_id is None or an.parent_run_id in done:
            continue
        done.add(an.parent_run_id)
        say(f"{an.er.name}: logging the report to parent run {an.parent_run_id}")
        try:
            if describe:
                metrics = _parent_metrics(an) if per_activation else {}
                store.log_report(an.parent_run_id, files, art_path, metrics=metrics, step=an.final_step,
                                 replace_prefix=S.REPORT_PREFIX, note=_parent_note(an, art_path, headline))
            else:
                store.log_report(an.parent_run_id, files, art_path)
        except Exception as e:  # the report on disk is still valid; say so in it instead of failing
            failed[an.er.name] = (f"Logging this report to parent run `{an.parent_run_id}` FAILED "
                                  f"({type(e).__name__}: {e}); it exists only in this folder.")
    return failed


def _parent_metrics(an: ExperimentAnalysis) -> dict[str, float]:
    """What the parent run's metrics say the report found: per activation the mean and sample standard deviation
    over seeds of the final val loss and val accuracy and the within-activation pd_tv at the final step, as
    ``report/<activation>/...`` (the MLflow UI's group rows show means only).

    MLflow cannot delete a metric: ``Store.log_report`` gives a ``report/*`` metric of an earlier report that this
    one does not write (an activation no longer in the analysis) NaN as its newest value, so the run never shows a
    stale number as current; its history keeps the earlier values."""
    values: dict[str, float] = {}
    for row in sm.comparison([an]):
        a = row["activation"]
        values[f"{S.REPORT_PREFIX}{a}/within_pd_tv"] = row["mean_within_pd_tv"]
        for metric, name in ((S.FINAL_VAL_LOSS, "final_val_loss"), (S.FINAL_VAL_ACC, "final_val_acc")):
            xs = np.array([r.metric(metric) for r in an.runs if r.activation == a], dtype=float)
            xs = xs[np.isfinite(xs)]
            if len(xs):
                values[f"{S.REPORT_PREFIX}{a}/{name}_mean"] = float(xs.mean())
            if len(xs) > 1:
                values[f"{S.REPORT_PREFIX}{a}/{name}_sd"] = float(xs.std(ddof=1))
    return {k: float(v) for k, v in values.items() if v is not None and np.isfinite(v)}


def _parent_note(an: ExperimentAnalysis, art_path: str, headline: str) -> str:
    """The parent run's description: the headline and where the whole report is."""
    return (f"{headline}\n\nThe whole report: `{art_path}/report.html` (or report.md, summary.json) in this "
            f"run's artifacts; made by `nanoact report {_report_args(an)}`. Per activation, "
            f"`{S.REPORT_PREFIX}<activation>/final_val_loss_mean` and `_sd` (mean and sd over seeds) are among this "
            "run's metrics.")


def _study(an: ExperimentAnalysis) -> str | None:
    """The study whose runs ``an`` analysed (one: the report refuses a mix)."""
    return next((r.tags[S.STUDY] for r in an.runs if r.tags.get(S.STUDY)), None)


def _n_studies(an: ExperimentAnalysis) -> int:
    """How many studies the experiment holds (its parent runs and cells of every status)."""
    runs = [*an.er.parents, *an.er.runs, *an.er.not_finished]
    return len({r.tags[S.STUDY] for r in runs if r.tags.get(S.STUDY)})


def _report_args(an: ExperimentAnalysis) -> str:
    import shlex

    study = _study(an)
    args = ["--experiment", an.er.name] + (["--study", study] if study and study != an.er.name else [])
    return shlex.join(args)


def _where_label(where: Mapping[str, str]) -> str:
    return ",".join(f"{k}={v}" for k, v in sorted(where.items()))


def _default_subfolder(out: Path, analyses: list[ExperimentAnalysis], where: Mapping[str, str] | None) -> Path:
    """Two studies of one experiment never share the default folder, nor does a slice overwrite the full report."""
    if len(analyses) == 1 and _n_studies(analyses[0]) > 1 and _study(analyses[0]):
        out = out / safe_dirname(_study(analyses[0]))
    return out / safe_dirname(_where_label(where)) if where else out


def _artifact_path(experiments: list[str], where: Mapping[str, str] | None) -> str:
    """Where on the parent run the report goes; a slice has its own folder, which keeps the full report's."""
    if where:
        return f"report-slices/{safe_dirname(_where_label(where))}"
    return "report" if len(experiments) == 1 else f"report/{'+'.join(safe_dirname(e) for e in experiments)}"


def multi_experiment(experiments: list[str]) -> bool:
    return len(experiments) > 1


def _analyse_all(reader, experiments: list[str], where: Mapping[str, str] | None, say, opts: dict
                 ) -> tuple[list[ExperimentAnalysis], fr.FactorialSection | None]:
    """The analyses the report holds, and its factorial section when there is a factor: an experiment whose grid
    varies axes besides activation and seed is analysed level by level (seeds crossed with the levels); several
    experiments are the levels of the factor ``experiment`` (seeds nested in them)."""
    fetcher = ArtifactFetcher(reader)
    try:
        analyses = [analyse_experiment(reader, name, fetcher, say, where=where, **opts) for name in experiments]
    except GridVariesError as e:
        if multi_experiment(experiments):
            raise NanoactError(f"{e}; with several experiments, report one slice of each with --where") from None
        axes = sorted(e.axes)
        levels = [dict(zip(axes, combo)) for combo in itertools.product(*(e.axes[k] for k in axes))]
        say(f"{experiments[0]}: {len(levels)} levels of {', '.join(axes)}; analysing each, then the factorial design")
        analyses = []
        for level in levels:
            an = analyse_experiment(reader, experiments[0], fetcher, say, where={**(where or {}), **level}, **opts)
            an.label = _where_label(level)
            analyses.append(an)
        labels = ["|".join(str(lv[k]) for k in axes) for lv in levels]
        return analyses, fr.from_analyses(analyses, labels, "|".join(axes), fa.CROSSED)
    if multi_experiment(experiments):
        return analyses, fr.from_analyses(analyses, experiments, "experiment", fa.NESTED)
    return analyses, None


def _plots(analyses: list[ExperimentAnalysis], factorial, out: Path, say
           ) -> tuple[fr.FactorialSection, dict[str, str]] | None:
    """Every analysis's PNGs (``an.plots``) and the factorial section's, as (section, its files) or None."""
    for an in analyses:
        say(f"{an.key}: plotting")
        rd.make_plots(an, out, f"{safe_dirname(an.label or an.er.name)}_" if len(analyses) > 1 else "")
    return (factorial, fr.make_plots(factorial, out)) if factorial is not None else None


def _sequential_designs(analyses: list[ExperimentAnalysis], factorial, reader, storage: str | None, uri: str) -> None:
    """A seeds-on-demand sweep's rounds and widened primary intervals (``an.sequential``); the factorial section,
    whose intervals are fixed-design, says which of its levels came from such a sweep."""
    for an in analyses:
        an.sequential = seqrep.design(reader.client, an.parent_run_id, storage, uri)
        if an.sequential is not None and factorial is not None:
            factorial.notes.append(
                f"{an.key} is a seeds-on-demand sweep ({an.sequential['describe']}): the intervals here are "
                "fixed-design (not widened for its stopping rule); its own Sequential design section gives "
                "the widened intervals of its primary contrasts")


def _check_experiments(experiments: list[str]) -> None:
    if not experiments:
        raise NanoactError("no experiment given; pass --experiment NAME")
    if len(set(experiments)) != len(experiments):
        raise NanoactError(f"experiment listed twice: {experiments}")


def _write_and_log(store: Store, write: Callable[..., tuple[Path, Path]], *, out: Path, experiments: list[str],
                   analyses: list[ExperimentAnalysis], headline: str, fac, where: Mapping[str, str] | None,
                   log_to_parent: bool, say: Callable[[str], None]) -> tuple[Path, Path]:
    """Write report.md, report.html and summary.json with ``write(notes, fac)`` (``_write`` with its other
    arguments bound), then log them and the PNGs to the parent runs; a run that cannot take them is named in the
    rewritten report's logging notes."""
    art_path = _artifact_path(experiments, where)
    notes = {an.er.name: _logging_note(an, log_to_parent, art_path, None) for an in analyses}
    say("writing report.md, report.html and summary.json")
    report_md, summary_json = write(notes, fac)
    if log_to_parent:
        files = [report_md, out / "report.html", summary_json] + [out / f for an in analyses for f in an.plots.values()]
        files += [out / f for f in (fac[1].values() if fac else ())]
        failed = _log_outputs(store, analyses, files, art_path, headline, say, describe=not where,
                              per_activation=fac is None or multi_experiment(experiments))
        if failed:
            notes.update(failed)
            report_md, summary_json = write(notes, fac)
    return report_md, summary_json


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
    margins: Margins | None = None,
    storage: str | None = None,
    allow_mixed_dtypes: bool = False,
) -> ReportResult:
    """Analyse ``experiments`` and write report.md, report.html, the PNGs and summary.json to ``out_dir``.

    Args:
        experiments: MLflow experiment names (one report; a comparison table when several).
        tracking_uri: the store; resolved with ``nanoact.tracking_uri.resolve_tracking_uri``.
        out_dir: output folder; default ``reports/<experiment>`` or ``reports/<e1>+<e2>`` (names made safe).
        allow_anomalies: recorded in the report; the CLI uses it to decide the exit code.
        log_to_parent: also log the outputs as artifacts of each experiment's sweep parent run.
        progress: callback for one-line progress messages.
        study: analyse only this Optuna study's runs (needed when an experiment holds several).
        where: param filters (``{"model.name": "minigpt"}``) selecting one slice of extra grid axes.
        margins: differences of interest stated in advance (``Margins(pd_rel=0.10, loss=0.01)`` by default): the
            equivalence tests and the seeds-needed figures use them.
        storage: the sweeps' Optuna storage, read for the states of missing cells (queued, running, ...) and for
            a grid its parent run does not declare; default: the journal beside a sqlite store or in ./mlruns.
        allow_mixed_dtypes: analyse runs computed in different dtypes together (else that is an error).

    Returns a ``ReportResult``; the outputs are written even when guards fail (``anomalies`` lists them).
    Raises ``NanoactError`` for user-caused problems (unknown experiment, no finished runs, different eval sets,
    different compute dtypes without ``allow_mixed_dtypes``, unreadable or missing artifacts); then nothing is written.
    """
    _check_experiments(experiments)
    say = progress or (lambda _msg: None)
    uri = resolve_tracking_uri(tracking_uri)
    store = Store(uri)
    reader = store.reader()
    out = report_dir(experiments, out_dir)
    opts = dict(study=study, storage=storage, tracking_uri=uri, margins=margins, allow_mixed_dtypes=allow_mixed_dtypes)
    analyses, factorial = _analyse_all(reader, experiments, where, say, opts)
    _sequential_designs(analyses, factorial, reader, storage, uri)
    if out_dir is None:
        out = _default_subfolder(out, analyses, where)
    out.mkdir(parents=True, exist_ok=True)  # only now: a failed analysis leaves no empty folder behind
    fac = _plots(analyses, factorial, out, say)
    anomalies = [(f"{an.key}: " if len(analyses) > 1 else "") + a
                 for an in analyses for g in an.guards for a in g.anomalies()]
    headline = _scope(analyses, where) + rd.headline(analyses, anomalies)
    if factorial is not None and not anomalies:
        headline = f"On {' + '.join(experiments)}, {fw.headline(factorial)}."
    write = functools.partial(_write, out, experiments, uri, analyses, headline, anomalies, allow_anomalies)
    report_md, summary_json = _write_and_log(store, write, out=out, experiments=experiments, analyses=analyses,
                                             headline=headline, fac=fac, where=where, log_to_parent=log_to_parent,
                                             say=say)
    return ReportResult(out_dir=out, report_md=report_md, summary_json=summary_json, anomalies=anomalies,
                        headline=headline)
