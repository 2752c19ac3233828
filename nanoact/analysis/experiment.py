"""Computation for one experiment: runs -> predictions -> PD at every step -> statistics, tests and guards.

Returns plain numbers in an ``ExperimentAnalysis``; ``answers``, ``executive`` and ``render`` word them and ``summary``
writes summary.json.
Library code: no printing, progress goes to the ``progress`` callback, user mistakes raise ``NanoactError``.
"""

from __future__ import annotations

import hashlib
import math
from collections import defaultdict
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from itertools import combinations
from typing import Any

import numpy as np

from nanoact.analysis import comparable
from nanoact.analysis import divergence as dv
from nanoact.analysis import guards as gd
from nanoact.analysis import pdtests as pt
from nanoact.analysis.equivalence import Margins
from nanoact.analysis.hypotheses import Hypothesis, build_hypotheses
from nanoact.analysis.outcome import OutcomeStats, analyse_outcome
from nanoact.analysis.predictions import ArtifactFetcher, prediction_steps, read_predictions
from nanoact.analysis.runs import ExperimentRuns, RunRecord, load_experiment, load_histories
from nanoact.analysis.sources import SourcesAnalysis, analyse_sources, is_sources_grid
from nanoact.errors import NanoactError
from nanoact.tracking import schema

# (key in summary.json, words, logged metric, lower is better); the first is the primary outcome
OUTCOMES: tuple[tuple[str, str, str, bool], ...] = (
    ("final_val_loss", "final val loss", schema.FINAL_VAL_LOSS, True),
    ("final_val_acc", "final val acc", schema.FINAL_VAL_ACC, False),
    ("best_val_loss", "best val loss", schema.BEST_VAL_LOSS, True),
)
PD_TEST_METRIC = "pd_tv"  # the PD metric the tests are run on (the others are descriptive)
_SYMMETRY_SAMPLE = 64  # reversed pairs re-computed at the final step for the symmetry self-check
RNG_SEED = 20211  # fixed: a report's permutation p-values are reproducible
CROSSED_NOTE = ("init and data-order seeds are crossed: each (init, data) pair is a block of the relabelling test; "
                "PD intervals use the two-way (init x data seed) jackknife, and final val loss is tested against "
                "the activation x init and activation x data interactions (quasi-F and two-way t, Satterthwaite "
                "df); the RCBD table treats blocks as independent and is shown for reference only")


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
    pd_score: np.ndarray  # (R,) descriptive only: pd_tv of a run vs the leave-one-out mean of its activation
    within: dict[str, dict[str, dict[str, list[float]]]]  # act -> metric -> {"mean", "se", "n_pairs"} per step
    cross: dict[str, dict[str, dict[str, list[float]]]]  # "a|b" -> metric -> {"mean","se","n_seeds"}, same seed
    outcomes: list[OutcomeStats]
    pd: pt.PDResult | None
    sources: SourcesAnalysis | None
    guards: list[gd.GuardResult]
    parent_run_id: str | None
    eval_iters: str | None  # batches per split behind logged val loss / accuracy (param train.eval_iters)
    best_equals_final: bool  # best val loss equals final val loss for every run (so it is not repeated)
    hypotheses: list[Hypothesis] = field(default_factory=list)
    margins: Margins = field(default_factory=Margins)
    dtypes: str | None = None  # compute dtype(s) of the runs (train.dtype_resolved, else train.dtype)
    plots: dict[str, str] = field(default_factory=dict)  # name -> file name
    label: str = ""  # one level of a factorial grid ("model.name=charlm"); empty for a whole experiment
    sequential: dict[str, Any] | None = None  # a seeds-on-demand sweep's rule and rounds (sequential_report)

    @property
    def key(self) -> str:
        """What names this analysis in the report and summary.json: the experiment, or experiment[level]."""
        return f"{self.er.name}[{self.label}]" if self.label else self.er.name

    @property
    def runs(self) -> list[RunRecord]:
        return self.er.runs

    @property
    def final_step(self) -> int:
        return self.steps[-1]


@dataclass
class _PDPass:
    """What the pass over every step's predictions collected."""

    pair_values: dict[str, np.ndarray]
    heat: np.ndarray
    scores: np.ndarray
    eval_acc: dict[str, float] = field(default_factory=dict)
    fingerprints: dict[str, str] = field(default_factory=dict)
    self_pd: dict[str, dict[str, float]] = field(default_factory=dict)
    asym: list[tuple[str, str, str, float]] = field(default_factory=list)
    context_tv: dict[str, np.ndarray] = field(default_factory=dict)  # activation -> (N,) within-pair pd_tv per context


def _pair_list(runs: list[RunRecord]) -> list[tuple[int, int, str]]:
    by_act, by_seed = defaultdict(list), defaultdict(list)
    for i, r in enumerate(runs):
        by_act[r.activation].append(i)
        by_seed[r.seed].append(i)
    pairs = [(i, j, "within") for idx in by_act.values() for i, j in combinations(idx, 2)]
    pairs += [(i, j, "same_seed") for idx in by_seed.values() for i, j in combinations(idx, 2)]
    return pairs


def _common_steps(name: str, runs: list[RunRecord], fetcher: ArtifactFetcher, notes: list[str]) -> list[int]:
    """Steps with predictions for every run; a run missing its final step is an error (``prediction_steps``)."""
    steps, step_notes = prediction_steps(name, runs, {r.run_id: fetcher.steps(r) for r in runs})
    notes += step_notes
    return steps


class _StepLoader:
    """Reads one step's predictions of every run into a float32 buffer (runs in a prefetch thread)."""

    def __init__(self, runs: list[RunRecord], fetcher: ArtifactFetcher, final_step: int, out: _PDPass) -> None:
        self.runs, self.fetcher, self.final_step, self.out = runs, fetcher, final_step, out
        first = read_predictions(fetcher.path(runs[0], final_step), runs[0].run_id, final_step)
        self.shape, self.targets = first.probs.shape, first.targets

    def __call__(self, step: int, buf: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        R, ref = len(self.runs), self.runs[0].run_id
        top1 = np.empty((R, self.shape[0]), dtype=np.int64)
        label_prob = np.empty((R, self.shape[0]), dtype=np.float32)
        for ri, r in enumerate(self.runs):
            pred = read_predictions(self.fetcher.path(r, step), r.run_id, step)
            if pred.probs.shape != self.shape:
                raise NanoactError(f"runs {ref} and {r.run_id} stored predictions of different shapes "
                                   f"{self.shape} vs {pred.probs.shape}; they were not evaluated on the same eval set")
            if not np.array_equal(pred.targets, self.targets):
                raise NanoactError(f"runs {ref} and {r.run_id} stored different targets (step {step}); they were "
                                   "not evaluated on the same eval set, refusing to compare them")
            buf[ri] = pred.probs
            top1[ri], label_prob[ri] = pred.top1, pred.label_prob
            if step == self.final_step:
                self.out.fingerprints[r.run_id] = hashlib.sha256(np.ascontiguousarray(pred.probs).tobytes()).hexdigest()
        return top1, label_prob


def _final_step_extras(stack: dv.PredictionStack, runs: list[RunRecord], pairs, pair_idx, vals, out: _PDPass,
                       top1, label_prob) -> None:
    """Heatmap of every pair, leave-one-out scores and the PD self-checks, at the final step."""
    R = len(runs)
    out.eval_acc = {r.run_id: float(a) for r, a in zip(runs, stack.accuracy())}
    for k, (i, j, _) in enumerate(pairs):
        out.heat[i, j] = out.heat[j, i] = vals["pd_tv"][k]
    done = {(i, j) for i, j, _ in pairs}
    rest = [(i, j) for i in range(R) for j in range(i + 1, R) if (i, j) not in done]
    if rest:
        for (i, j), v in zip(rest, dv.pair_metrics(stack, rest, ("pd_tv",))["pd_tv"]):
            out.heat[i, j] = out.heat[j, i] = v
    groups = defaultdict(list)
    for i, r in enumerate(runs):
        groups[r.activation].append(i)
    out.scores = dv.loo_scores(stack, list(groups.values()))
    for act, idx in groups.items():
        out.context_tv[act] = dv.per_context_tv(stack, list(combinations(idx, 2)))
    for i, r in enumerate(runs):  # PD(a, a) through the full code path, on a separate copy
        twin = dv.PredictionStack(np.stack([stack.probs[i], stack.probs[i]]), stack.targets,
                                  top1[[i, i]], label_prob[[i, i]])
        out.self_pd[r.run_id] = {m: float(v[0]) for m, v in dv.pair_metrics(twin, [(0, 1)]).items()}
    sample = np.arange(len(pairs))[:: max(1, len(pairs) // _SYMMETRY_SAMPLE)]
    if len(sample):
        rev = dv.pair_metrics(stack, pair_idx[sample][:, ::-1])
        for m in dv.METRICS:
            gap = np.abs(rev[m] - vals[m][sample])
            for k in np.flatnonzero(gap > 1e-12):
                a, b = runs[pair_idx[sample[k], 0]], runs[pair_idx[sample[k], 1]]
                out.asym.append((a.run_id, b.run_id, m, float(gap[k])))


def _pd_pass(name: str, runs: list[RunRecord], steps: list[int], pairs, fetcher: ArtifactFetcher,
             progress: Callable[[str], None]) -> tuple[_PDPass, tuple[int, int]]:
    """PD of every listed pair at every step; the next step loads in a thread while PD runs on the current one."""
    R = len(runs)
    pair_idx = np.array([(i, j) for i, j, _ in pairs], dtype=np.int64).reshape(-1, 2)
    out = _PDPass({m: np.full((len(pairs), len(steps)), np.nan) for m in dv.METRICS}, np.zeros((R, R)),
                  np.full(R, np.nan))
    loader = _StepLoader(runs, fetcher, steps[-1], out)
    bufs = [np.empty((R, *loader.shape), dtype=np.float32) for _ in range(min(2, len(steps)))]
    pool = ThreadPoolExecutor(1)
    future = pool.submit(loader, steps[0], bufs[0])
    try:
        for si, step in enumerate(steps):
            progress(f"{name}: step {step} ({si + 1}/{len(steps)}): loading {R} prediction files")
            top1, label_prob = future.result()
            buf = bufs[si % len(bufs)]
            if si + 1 < len(steps):
                future = pool.submit(loader, steps[si + 1], bufs[(si + 1) % len(bufs)])
            stack = dv.PredictionStack(buf, loader.targets, top1, label_prob, copy=False)
            progress(f"{name}: step {step}: PD over {len(pairs)} pairs")
            vals = dv.pair_metrics(stack, pair_idx)
            for m in dv.METRICS:
                out.pair_values[m][:, si] = vals[m]
            if step == steps[-1]:
                progress(f"{name}: final step: runs × runs PD, leave-one-out scores, self-checks")
                _final_step_extras(stack, runs, pairs, pair_idx, vals, out, top1, label_prob)
            del stack
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    return out, (int(loader.shape[0]), int(loader.shape[1]))


def _within_summary(runs, pairs, pair_values, steps) -> dict[str, dict[str, dict[str, list[float]]]]:
    out: dict[str, dict[str, dict[str, list[float]]]] = {}
    for act in sorted({r.activation for r in runs}):
        ks = [k for k, (i, j, kind) in enumerate(pairs) if kind == "within" and runs[i].activation == act]
        seeds = np.array([(runs[pairs[k][0]].seed, runs[pairs[k][1]].seed) for k in ks]).reshape(-1, 2)
        out[act] = {}
        for m in dv.METRICS:
            res = [dv.pair_mean_jackknife(seeds, pair_values[m][ks, si]) if ks else (math.nan, math.nan)
                   for si in range(len(steps))]
            out[act][m] = {"mean": [x[0] for x in res], "se": [x[1] for x in res], "n_pairs": len(ks)}
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


def _outcomes(er: ExperimentRuns, seed_units) -> tuple[list[OutcomeStats], bool]:
    """The per-run outcomes; best val loss is left out when it equals final val loss for every run."""
    seeds = [s for s in er.seeds if any(r.seed == s for r in er.runs)]
    acts = [a for a in er.activations if any(r.activation == a for r in er.runs)]
    same = all(r.metric(schema.BEST_VAL_LOSS) == r.metric(schema.FINAL_VAL_LOSS) for r in er.runs)
    res = []
    for key, label, metric, lower in OUTCOMES:
        if key == "best_val_loss" and same:
            continue
        values = {r.cell: r.metric(metric) for r in er.runs}
        res.append(analyse_outcome(key, label, values, acts, seeds, lower_is_better=lower, seed_units=seed_units))
    return res, same


def _sources(runs: list[RunRecord], heat: np.ndarray) -> SourcesAnalysis | None:
    acts, ini, dat = [r.activation for r in runs], [r.init_seed for r in runs], [r.data_seed for r in runs]
    if not is_sources_grid(acts, ini, dat):
        return None
    return analyse_sources(heat, acts, ini, dat)


def _seed_units(runs: list[RunRecord]) -> dict[str, tuple[str, str]] | None:
    """Block (seed label) -> (init seed, data seed) when init and data seeds are crossed, else None."""
    acts, ini, dat = [r.activation for r in runs], [r.init_seed for r in runs], [r.data_seed for r in runs]
    if not is_sources_grid(acts, ini, dat):
        return None
    return {r.seed: (str(r.init_seed), str(r.data_seed)) for r in runs}


def analyse_experiment(client, name: str, fetcher: ArtifactFetcher, progress: Callable[[str], None],
                       study: str | None = None, where: Mapping[str, str] | None = None,
                       margins: Margins | None = None, *, storage: str | None = None,
                       tracking_uri: str | None = None, allow_mixed_dtypes: bool = False) -> ExperimentAnalysis:
    """Load one experiment and compute PD, statistics, tests and guards.

    ``margins``: the differences of interest stated in advance (equivalence tests, seeds needed).
    ``storage``, ``tracking_uri``: where to look for the sweep's Optuna study (``nanoact.analysis.grid``).
    ``allow_mixed_dtypes``: analyse runs computed in different dtypes together (else that is an error).
    """
    er = load_experiment(client, name, progress, study=study, where=where, storage=storage, tracking_uri=tracking_uri)
    notes: list[str] = []
    sha = comparable.eval_set(er, notes)
    dtypes = comparable.dtypes(er, notes, allow_mixed_dtypes)
    comparable.note_thread_counts(er, notes)
    runs = er.runs
    progress(f"{name}: reading metric histories of {len(runs)} runs")
    load_histories(client, runs)
    steps = _common_steps(name, runs, fetcher, notes)
    pairs = _pair_list(runs)
    pp, (n_ctx, vocab) = _pd_pass(name, runs, steps, pairs, fetcher, progress)
    units = _seed_units(runs)
    outcomes, same = _outcomes(er, units)
    rng = np.random.default_rng(RNG_SEED)
    pd = pt.analyse_pd(pp.heat, [r.activation for r in runs], [r.seed for r in runs], PD_TEST_METRIC, steps[-1], rng,
                       context_tv=pp.context_tv, seed_units=units)
    sources = _sources(runs, pp.heat)
    if units is not None:
        notes.append(CROSSED_NOTE)
    if len(er.activations) < 2:
        notes.append("only one activation: there is no treatment to compare")
    eval_iters = {r.params.get("train.eval_iters") for r in runs} - {None}
    an = ExperimentAnalysis(
        er=er, steps=steps, notes=notes, eval_sha256=sha, n_contexts=n_ctx, vocab_size=vocab,
        eval_acc=pp.eval_acc, fingerprints=pp.fingerprints, pairs=pairs, pair_values=pp.pair_values,
        heatmap=pp.heat, pd_score=pp.scores, within=_within_summary(runs, pairs, pp.pair_values, steps),
        cross=_cross_summary(runs, pairs, pp.pair_values, steps), outcomes=outcomes, pd=pd,
        sources=sources, guards=_guards(er, pp, outcomes, pd, steps, pairs, dtypes),
        parent_run_id=er.parent_run_id(), eval_iters=", ".join(sorted(eval_iters)) or None, best_equals_final=same,
        dtypes=dtypes,
    )
    an.margins = margins or Margins()
    an.hypotheses = build_hypotheses(outcomes, pd, an.sources, an.margins)
    return an


def _init_same_seed(runs: list[RunRecord], pairs, pair_values, steps: list[int], pd: pt.PDResult) -> np.ndarray | None:
    """(k, k) median over the analysed seeds of the same-seed pd_tv at step 0, in ``pd.activations`` order; None
    when step 0 was not evaluated. NaN for a pair of activations whose same-seed runs did not start from the same
    weights in the same dtype (different parameter counts, as a gated activation gives, or dtypes), where step 0
    says nothing about whether the activation was applied."""
    if steps[0] != 0:
        return None
    seeds = set(pd.seeds)
    by_pair: dict[tuple[str, str], list[float]] = defaultdict(list)
    for k, (i, j, kind) in enumerate(pairs):
        a, b = runs[i], runs[j]
        if kind != "same_seed" or a.seed not in seeds:
            continue
        same_start = (a.tags.get(schema.N_PARAMS) == b.tags.get(schema.N_PARAMS)
                      and comparable.run_dtype(a) == comparable.run_dtype(b))
        by_pair[tuple(sorted((a.activation, b.activation)))].append(pair_values["pd_tv"][k, 0] if same_start
                                                                     else math.nan)
    acts = pd.activations
    out = np.full((len(acts), len(acts)), np.nan)
    for i, a in enumerate(acts):
        for j, b in enumerate(acts):
            v = by_pair.get(tuple(sorted((a, b))))
            if v and not np.isnan(v).any():
                out[i, j] = np.median(v)
    return out


def _guards(er: ExperimentRuns, pp: _PDPass, outcomes: list[OutcomeStats], pd: pt.PDResult | None,
            steps: list[int], pairs, dtypes: str | None) -> list[gd.GuardResult]:
    runs, step = er.runs, steps[-1]
    ratio = pd.same_seed_ratio if pd is not None else np.zeros((0, 0))
    init = _init_same_seed(runs, pairs, pp.pair_values, steps, pd) if pd is not None else None
    return [
        gd.check_identical_outcomes(runs),
        gd.check_identical_predictions(runs, pp.fingerprints, step),
        gd.check_near_identity(pd.activations if pd else [], ratio, len(pd.seeds) if pd else 0, init,
                               gd.init_floor(dtypes)),
        gd.check_variance((o.label, o.rcbd.ss_a, o.rcbd.ss_e, o.rcbd.ss_a + o.rcbd.ss_s + o.rcbd.ss_e)
                          for o in outcomes if o.rcbd is not None),
        gd.check_pd_self(pp.self_pd, pp.asym),
        gd.check_cells(er.missing, er.duplicates, er.grid, er.outside_grid),
        gd.check_activation_modules(runs),
    ]
