"""The report's factorial section: does the activation's effect depend on the architecture, the scale, or another
factor? Numbers come from ``factorial``; this module assembles them per outcome and level, lists the tests as
hypotheses (with ids, for summary.json), and words them.

Input is one ``LevelData`` per level of the factor: a slice of one grid (``model.name = charlm``, ...) or one
experiment of several reported together.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from nanoact.analysis import factorial as fa
from nanoact.analysis.factorial_words import interaction_sentence, pd_sentences, term_name, verdicts
from nanoact.analysis.formatting import fixed, p_text
from nanoact.analysis.hypotheses import Hypothesis, adjust
from nanoact.analysis.stats import ALPHA
from nanoact.tracking import schema

OUTCOMES = (("final_val_loss", "final val loss", True), ("final_val_acc", "final val acc", False))
PD_ESTIMANDS = ("cross-vs-within", "activation-only")
_f, _p = fixed, p_text  # the report's number and p-value formats


@dataclass(frozen=True)
class LevelData:
    level: str
    activations: tuple[str, ...]
    seeds: tuple[str, ...]
    outcomes: dict  # outcome key -> (k, n) values, rows in ``activations`` order, columns in ``seeds`` order
    pd_table: np.ndarray | None  # (k, n, k, n) pd_tv at the final step, PD between this level's runs only
    eval_set: str | None  # the evaluation set's hash: PD is compared between levels only when they share it
    run_ids: tuple[str, ...] = ()
    n_params: dict[str, str] = field(default_factory=dict)  # activation -> its runs' tag nanoact.n_params


@dataclass
class FactorialSection:
    factor: str
    levels: list[str]
    activations: list[str]
    seeds: str  # fa.CROSSED or fa.NESTED
    n_seeds: int
    notes: list[str] = field(default_factory=list)
    results: dict[str, fa.FactorialResult] = field(default_factory=dict)
    pairs: dict[str, list[fa.PairEffect]] = field(default_factory=dict)
    pd_levels: dict[str, list[tuple[str, float, float, float]]] = field(default_factory=dict)  # (level, est, lo, hi)
    pd_contrasts: list[fa.LevelContrast] = field(default_factory=list)
    pd_refused: str = ""
    hypotheses: list[Hypothesis] = field(default_factory=list)
    n_params: dict[str, str] = field(default_factory=dict)  # level -> its parameter count(s) over the activations


def _sizes(levels: Sequence[LevelData], acts: Sequence[str]) -> dict[str, str]:
    """Each level's parameter count(s) over the analysed activations ("" when its runs do not say)."""
    return {lv.level: ", ".join(sorted({lv.n_params[a] for a in acts if lv.n_params.get(a)}, key=int)) for lv in levels}


def _common(levels: Sequence[LevelData], seeds: str) -> tuple[list[str], list[list[str]], list[str]]:
    """(activations every level has, the seeds used per level, notes). Crossed: the seeds every level has, the
    same at every level. Nested: the first n of each level's seeds, n the fewest any level has (balance)."""
    notes = []
    acts = [a for a in levels[0].activations if all(a in lv.activations for lv in levels)]
    left = sorted({a for lv in levels for a in lv.activations} - set(acts))
    if left:
        notes.append(f"activations not run at every level are left out of the factorial analysis: {', '.join(left)}")
    if seeds == fa.CROSSED:
        common = [s for s in levels[0].seeds if all(s in lv.seeds for lv in levels)]
        dropped = sorted({s for lv in levels for s in lv.seeds} - set(common))
        if dropped:
            notes.append(f"seeds not complete at every level are left out: {', '.join(dropped)}")
        return acts, [common] * len(levels), notes
    n = min(len(lv.seeds) for lv in levels)
    if any(len(lv.seeds) > n for lv in levels):
        notes.append(f"the levels have different numbers of seeds; the factorial analysis uses the first {n} of each "
                     "(a balanced design), the per-level sections use all of them")
    return acts, [list(lv.seeds[:n]) for lv in levels], notes


def _table(levels: Sequence[LevelData], acts: list[str], seeds: list[list[str]], key: str) -> np.ndarray:
    out = np.empty((len(acts), len(levels), len(seeds[0])))
    for g, lv in enumerate(levels):
        y = np.asarray(lv.outcomes[key], dtype=np.float64)
        rows = [lv.activations.index(a) for a in acts]
        cols = [lv.seeds.index(s) for s in seeds[g]]
        out[:, g, :] = y[np.ix_(rows, cols)]
    return out


def _pd_tables(levels: Sequence[LevelData], acts: list[str], seeds: list[list[str]]) -> list[np.ndarray]:
    out = []
    for g, lv in enumerate(levels):
        rows = [lv.activations.index(a) for a in acts]
        cols = [lv.seeds.index(s) for s in seeds[g]]
        d = np.take(np.take(lv.pd_table, rows, axis=0), cols, axis=1)
        out.append(np.take(np.take(d, rows, axis=2), cols, axis=3))
    return out


def build_section(levels: Sequence[LevelData], factor: str, seeds: str) -> FactorialSection:
    """Every factorial number for the levels; raises ValueError when fewer than 2 levels, 2 common activations or
    2 seeds per level are left."""
    from nanoact.analysis import pdtests as pt

    acts, used, notes = _common(levels, seeds)
    names = [lv.level for lv in levels]
    if len(levels) < 2 or len(acts) < 2 or len(used[0]) < 2:
        raise ValueError(f"a factorial analysis of {factor} needs 2+ levels, 2+ common activations and 2+ common "
                         f"seeds; have {len(levels)} level(s), {len(acts)} activation(s), {len(used[0])} seed(s)")
    sec = FactorialSection(factor, names, acts, seeds, len(used[0]), notes, n_params=_sizes(levels, acts))
    for key, label, lower in OUTCOMES:
        if all(key in lv.outcomes for lv in levels):
            y = _table(levels, acts, used, key)
            sec.results[key] = fa.analyse_factorial(y, acts, names, outcome=label, factor=factor, seeds=seeds,
                                                    lower_is_better=lower)
            sec.pairs[key] = fa.pair_effects(y, acts, names)
    sets = {lv.eval_set for lv in levels}
    if any(lv.pd_table is None for lv in levels):
        sec.pd_refused = "some level has no PD table (no stored predictions), so PD is not compared between levels"
    elif len(sets) > 1 or None in sets:
        sec.pd_refused = ("the levels were evaluated on different evaluation sets (different block sizes, corpora or "
                          "eval seeds), and PD is only compared on the same stored inputs: each level's PD is in its "
                          "own section, and no PD difference between levels is tested")
    elif len(used[0]) < 3:
        sec.pd_refused = "PD intervals need 3+ seeds per level (a seed jackknife)"
    else:
        tables = _pd_tables(levels, acts, used)
        stats_ = {"cross-vs-within": pt.cross_minus_within, "activation-only": pt.activation_only_overall}
        for name, stat in stats_.items():
            rows = []
            for lv, d in zip(names, tables):
                est, se, dfree = fa._jack(stat, d)
                half = float(fa.stats.t.ppf(0.975, dfree) * se) if dfree >= 1 else math.nan
                rows.append((lv, float(est), float(est) - half, float(est) + half))
            sec.pd_levels[name] = rows
            sec.pd_contrasts += fa.level_contrasts(tables, names, name, stat, seeds)
    sec.hypotheses = adjust(hypotheses(sec))
    return sec


def _hyp(hid: str, kind: str, measure: str, family: str, subjects, method: str, stat_name: str, stat: float,
         df, p: float, n: int, estimate=math.nan, ci=(math.nan, math.nan), extra=None) -> Hypothesis:
    return Hypothesis(id=hid, kind=kind, measure=measure, family=family, subjects=list(subjects), method=method,
                      statistic_name=stat_name, statistic=float(stat), df=[float(x) for x in df], p=float(p),
                      estimate=float(estimate), ci=[float(ci[0]), float(ci[1])], n_seeds=n, extra=extra or {})


def hypotheses(sec: FactorialSection) -> list[Hypothesis]:
    """The factorial tests with ids ``factorial/<outcome>/<term>``, ``factorial/<outcome>/simple/<level>``,
    ``factorial/pd_tv/<estimand>/<level a>-<level b>``. Families: the interactions (primary: final val loss, with
    val acc Holm-corrected alongside), the main effects, the simple effects per outcome, the PD level contrasts per
    estimand."""
    out = []
    design = "seeds crossed with both factors" if sec.seeds == fa.CROSSED else "seeds nested in levels (split-plot)"
    for key, r in sec.results.items():
        for term, tag, fam in ((r.interaction, "interaction", "factorial_interaction"),
                               (r.activation, "activation", "factorial_main"),
                               (r.factor_term, "factor", "factorial_main")):
            out.append(_hyp(f"factorial/{key}/{tag}", f"factorial_{tag}", key, fam, [sec.factor, *sec.activations],
                            f"F against {term.error} ({design})", "F", term.f, [term.df, term.df_error], term.p,
                            r.n_seeds, term.partial_eta2, (term.eta2_lo, term.eta2_hi),
                            {"effect_size": "partial eta^2", "error_term": term.error,
                             **({"share": r.share, "share_ci": [r.share_lo, r.share_hi]}
                                if tag == "interaction" else {})}))
        for s in r.simple:
            out.append(_hyp(f"factorial/{key}/simple/{s.level}", "factorial_simple", key, f"factorial_simple/{key}",
                            [s.level, *sec.activations], "RCBD F within the level", "F", s.f, [s.df, s.df_error], s.p,
                            r.n_seeds, s.gap, extra={"best": s.best, "worst": s.worst}))
    for c in sec.pd_contrasts:
        out.append(_hyp(f"factorial/pd_tv/{c.estimand}/{c.a}-{c.b}", "factorial_pd_level", "pd_tv",
                        f"factorial_pd/{c.estimand}", [c.a, c.b], "seed jackknife t, "
                        + ("seeds deleted from every level at once" if sec.seeds == fa.CROSSED else "Welch"),
                        "t", c.diff / c.se if c.se > 0 else math.nan, [c.df], c.p, sec.n_seeds, c.diff, (c.lo, c.hi)))
    return out


def render_md(sec: FactorialSection, plots: dict[str, str] | None = None) -> list[str]:
    plots = plots or {}
    design = ("seed crossed with both factors: activation tested against activation × seed, the factor against factor "
              "× seed, the interaction against the three-way residual" if sec.seeds == fa.CROSSED else
              "seeds nested in the levels (split-plot): the factor tested against seeds within levels, activation and "
              "the interaction against activation × seeds within levels")
    md = ["## Executive summary", ""] + [f"- {line}" for line in
                                         verdicts(sec) + [interaction_sentence(sec, key) for key in sec.results]
                                         + pd_sentences(sec)]
    md += ["", f"## Does the activation effect depend on {sec.factor}?", "",
           f"{len(sec.levels)} levels of `{sec.factor}` ({', '.join(sec.levels)}) × {len(sec.activations)} "
           f"activations × {sec.n_seeds} seeds; {design}.", ""]
    md += [f"- {n}" for n in sec.notes] + ([""] if sec.notes else [])
    for key, r in sec.results.items():
        md += [f"### {r.outcome}", "", interaction_sentence(sec, key), "",
               "| term | F | df | p | error term | partial η² [95% CI] |", "|---|---|---|---|---|---|"]
        for t in r.terms():
            md.append(f"| {term_name(t.name, sec.factor)} | {_f(t.f, 2)} | {t.df}, {t.df_error} | {_p(t.p)} | "
                      f"{term_name(t.error, sec.factor)} | "
                      f"{_f(t.partial_eta2, 2)} [{_f(t.eta2_lo, 2)}, {_f(t.eta2_hi, 2)}] |")
        md += ["", "Simple effects (the activation's RCBD F within each level, Holm across levels):", "",
               "| level | F | df | p | Holm p | best | worst | gap |", "|---|---|---|---|---|---|---|---|"]
        adj = {h.id: h.p_adjusted for h in sec.hypotheses}
        for s in r.simple:
            md.append(f"| {s.level} | {_f(s.f, 2)} | {s.df}, {s.df_error} | {_p(s.p)} | "
                      f"{_p(adj.get(f'factorial/{key}/simple/{s.level}', s.p_holm))} | {s.best} | {s.worst} | "
                      f"{_f(s.gap)} |")
        for name in (f"interaction_{key}", f"effects_{key}"):
            if name in plots:
                md += ["", f"![{name}]({plots[name]})"]
        md.append("")
    md += ["### Prediction difference across levels", ""]
    if sec.pd_refused:
        md += [f"Not compared: {sec.pd_refused}.", ""]
        return md
    md += [*(f"- {x}" for x in pd_sentences(sec)), "",
           "Each level's PD estimands (pd_tv at the final step, between runs of that level only; seed-jackknife 95% "
           "CI), and each pair of levels' difference (Holm across pairs of levels, per estimand):", "",
           "| estimand | level | estimate [95% CI] |", "|---|---|---|"]
    for name, rows in sec.pd_levels.items():
        md += [f"| {name} | {lv} | {_f(e)} [{_f(lo)}, {_f(hi)}] |" for lv, e, lo, hi in rows]
    md += ["", "| estimand | levels | difference [95% CI] | p | Holm p |", "|---|---|---|---|---|"]
    adj = {h.id: h for h in sec.hypotheses}
    for c in sec.pd_contrasts:
        h = adj[f"factorial/pd_tv/{c.estimand}/{c.a}-{c.b}"]
        md.append(f"| {c.estimand} | {c.a} − {c.b} | {_f(c.diff)} [{_f(c.lo)}, {_f(c.hi)}] | {_p(c.p)} | "
                  f"{_p(h.p_adjusted)} |")
    md.append("")
    return md


def level_data(an, level: str) -> LevelData | None:
    """One level's data from its ``ExperimentAnalysis``: the outcome tables on its complete seeds, and the PD table
    at the final step (None when the level has no outcomes)."""
    outs = {o.outcome: o for o in an.outcomes if o.rcbd is not None}
    base = outs.get("final_val_loss")
    if base is None:
        return None
    acts, seeds = tuple(base.activations), tuple(base.seeds)
    tables = {k: np.asarray(o.y, dtype=np.float64) for k, o in outs.items()
              if list(o.activations) == list(acts) and list(o.seeds) == list(seeds)}
    pos = {(r.activation, r.seed): i for i, r in enumerate(an.runs)}
    pd = None
    if an.heatmap is not None and all((a, s) in pos for a in acts for s in seeds):
        rows = [pos[(a, s)] for a in acts for s in seeds]
        pd = np.asarray(an.heatmap, dtype=np.float64)[np.ix_(rows, rows)].reshape(len(acts), len(seeds),
                                                                                len(acts), len(seeds))
    eval_set = f"{an.eval_sha256}|{an.vocab_size}" if an.eval_sha256 else None
    sizes = {r.activation: r.tags[schema.N_PARAMS] for r in an.runs if r.tags.get(schema.N_PARAMS, "").isdigit()}
    return LevelData(level, acts, seeds, tables, pd, eval_set, tuple(r.run_id for r in an.runs), sizes)


def from_analyses(analyses, levels: Sequence[str], factor: str, seeds: str) -> FactorialSection | None:
    """The section for per-level analyses, or None when they do not make a factorial design (fewer than 2 levels
    with outcomes, or fewer than 2 activations in common)."""
    data = [d for d in (level_data(an, lv) for an, lv in zip(analyses, levels)) if d is not None]
    try:
        return build_section(data, factor, seeds) if len(data) >= 2 else None
    except ValueError:
        return None


def make_plots(sec: FactorialSection, out, prefix: str = "") -> dict[str, str]:
    """The interaction plot and the effect heatmap per outcome, as PNGs in ``out``; name -> file name."""
    from nanoact.analysis import plots as pl

    files = {}
    for key, r in sec.results.items():
        figs = {f"interaction_{key}": pl.interaction_plot(sec.levels, sec.activations, np.asarray(r.means),
                                                          np.asarray(r.ci_half), sec.factor, r.outcome)}
        rows = sec.pairs[key]
        pairs = list(dict.fromkeys(f"{p.b} − {p.a}" for p in rows))
        diff = np.array([[p.diff for p in rows if p.level == lv] for lv in sec.levels])
        sig = np.array([[p.p_holm < ALPHA for p in rows if p.level == lv] for lv in sec.levels])
        figs[f"effects_{key}"] = pl.effect_heatmap(sec.levels, pairs, diff, sig, sec.factor, r.outcome)
        for name, fig in figs.items():
            files[name] = f"{prefix}factorial_{name}.png"
            pl.save(fig, out / files[name])
    return files


def summary(sec: FactorialSection) -> dict:
    """summary.json's ``factorial``: the design, each test as a hypothesis with its id, and the tables."""
    from dataclasses import asdict

    return {
        "factor": sec.factor, "levels": sec.levels, "activations": sec.activations, "seeds": sec.seeds,
        "n_seeds": sec.n_seeds, "notes": sec.notes, "pd_refused": sec.pd_refused or None, "n_params": sec.n_params,
        "hypotheses": [asdict(h) for h in sec.hypotheses],
        "anova": {k: {"terms": [asdict(t) for t in r.terms()], "share": [r.share, r.share_lo, r.share_hi],
                      "means": r.means, "ci_half": r.ci_half} for k, r in sec.results.items()},
        "pair_effects": {k: [asdict(p) for p in v] for k, v in sec.pairs.items()},
        "pd_levels": {k: [list(row) for row in v] for k, v in sec.pd_levels.items()},
        "verdicts": verdicts(sec), "pd_across_levels": pd_sentences(sec),
    }
