"""Words for the numbers: hypothesis questions and answers, the executive summary, the headline, report.md.

Every sentence of the executive summary is built from entries of the hypothesis list (``Hypothesis``) and carries
their ids, so summary.json can show which tests stand behind it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from nanoact.analysis.divergence import METRICS
from nanoact.analysis.hypotheses import PRIMARY_OUTCOME, Hypothesis, by_family
from nanoact.analysis.stats import ALPHA, VARIANCE_RATIO_LIMIT

LABELS = {"final_val_loss": "final val loss", "final_val_acc": "final val acc", "best_val_loss": "best val loss",
          "pd_tv": "pd_tv"}
SOURCE_QUESTIONS = {
    "activation_vs_reseeding": "Does changing the activation move predictions more than reseeding both init and "
                               "data order does (different seeds on both sides)?",
    "init_only_vs_reseeding": "Does changing only the initial weights move predictions by a different amount than "
                              "changing both seeds does?",
    "data_only_vs_reseeding": "Does changing only the batch order move predictions by a different amount than "
                              "changing both seeds does?",
    "init_only_vs_data_only": "Do initial weights and batch order move predictions by different amounts?",
}
CITE_SD = ("Summers & Dinneen, \"Nondeterminism and instability in neural network optimization\", ICML 2021")
CITE_BH = ("Bhojanapalli et al., \"On the reproducibility and stability of deep networks\", arXiv:2102.03349, 2021")


def f(x: float | None, d: int = 4) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "n/a" if x is None or math.isnan(x) else ("∞" if x > 0 else "−∞")
    return f"{x:.{d}f}"


def g(x: float | None, d: int = 4) -> str:
    if x is None or not math.isfinite(x):
        return "n/a"
    return f"{x:.{d}g}"


def fp(p: float) -> str:
    if p is None or not math.isfinite(p):
        return "n/a"
    return "< 0.0001" if p < 1e-4 else f"= {p:.4f}"


def ms(vals: Sequence[float], d: int = 4) -> str:
    v = np.array([x for x in vals if math.isfinite(x)], dtype=float)
    if len(v) == 0:
        return "n/a"
    return f"{v.mean():.{d}f} ± {v.std(ddof=1):.{d}f}" if len(v) > 1 else f"{v.mean():.{d}f}"


def table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c).replace("|", "\\|") for c in row) + " |" for row in rows]
    return "\n".join(lines)


def ci(h: Hypothesis, d: int = 4) -> str:
    lo, hi = h.ci
    return f"95% CI [{g(lo, d)}, {g(hi, d)}]" if math.isfinite(lo) and math.isfinite(hi) else "no interval"


def stat_text(h: Hypothesis) -> str:
    df = ", ".join(g(x, 3) for x in h.df)
    name = {"delta": "Δ"}.get(h.statistic_name, h.statistic_name)
    head = f"{name}({df})" if df else name
    adj = f", Holm-adjusted p {fp(h.p_adjusted)}" if h.p_adjusted != h.p and math.isfinite(h.p_adjusted) else ""
    return f"{h.method}: {head} = {g(h.statistic)}, p {fp(h.p)}{adj}"


def question(h: Hypothesis) -> str:
    what, subj = LABELS.get(h.measure, h.measure), h.subjects
    if h.kind in ("rcbd", "friedman"):
        return f"Does {what} differ between activations ({', '.join(subj)})?"
    if h.kind in ("paired_t", "studentized_range"):
        return f"Does {what} differ between {subj[0]} and {subj[1]}?"
    if h.kind == "pd_cross_within" and len(subj) == 2 and h.family == "pd_cross_within_pairs":
        return (f"Do {subj[0]} and {subj[1]} predict more differently from each other than seeds of the same "
                f"activation do ({what}, different seeds on both sides)?")
    if h.kind == "pd_cross_within":
        return (f"Does changing the activation move predictions more than changing the seed does ({what}, "
                "different seeds on both sides)?")
    if h.kind == "pd_reproducibility":
        return f"Do {subj[0]} and {subj[1]} differ in seed-to-seed {what} (reproducibility)?"
    return SOURCE_QUESTIONS.get(subj[0], f"{h.kind}?")


def answer(h: Hypothesis) -> str:
    if h.outcome == "cannot_conclude":
        why = (f"with {h.n_seeds} seeds the smallest p this test can give is {g(h.p_floor, 3)}, above its "
               f"threshold after Holm's adjustment" if h.p_floor > 0 else "the test is not defined with these data")
        need = f"; it needs at least {h.seeds_needed} seeds" if h.seeds_needed else ""
        return f"Cannot conclude: {why}{need} (estimate {g(h.estimate)}, {ci(h)})."
    verdict = "Yes" if h.outcome == "difference" else "No detectable difference"
    tail = ""
    if h.outcome == "no_detectable_difference" and h.kind == "pd_reproducibility" and h.seeds_needed:
        tail = f"; detecting a difference of this size would need roughly {h.seeds_needed} seeds"
    if h.kind == "rcbd":
        x = h.extra
        est = (f"best {x['best']} {g(x['best_mean'])}, worst {x['worst']} {g(x['worst_mean'])}, gap {g(h.estimate)}"
               f" (detectable at 80% power: {g(x['mde'], 3)}); partial η² = {g(x['partial_eta2'], 3)}")
    elif math.isfinite(h.estimate):
        est = f"estimate {g(h.estimate)}, {ci(h)}"
    else:
        est = ""
    return f"{verdict}: {est}{'; ' if est else ''}{stat_text(h)} (α = {ALPHA}{tail})."


def fill_text(tests: list[Hypothesis]) -> None:
    for h in tests:
        h.question, h.answer = question(h), answer(h)


# ---------------------------------------------------------------------------------------------------------------
# executive summary and headline: built from the hypothesis list only


def _item(text: str, tests: list[Hypothesis]) -> dict[str, Any]:
    return {"text": text, "tests": [h.id for h in tests]}


def _seeds_needed(h: Hypothesis) -> str:
    """How many seeds would let the test decide, when the test can say (not from a jackknife over 2 seeds)."""
    if h.seeds_needed:
        return f"; that needs at least {h.seeds_needed} seeds"
    return f"; how many seeds it would need cannot be estimated from {h.n_seeds}"


def _pairs_sentence(fam: list[Hypothesis], what: str, how: str) -> dict[str, Any] | None:
    if not fam:
        return None
    sig = [h for h in fam if h.significant]
    if all(h.outcome == "cannot_conclude" for h in fam):
        h = fam[0]
        why = (f"its smallest possible p, {g(h.p_floor, 3)}, is above α/{len(fam)}" if h.p_floor > 0 else
               f"it gives no p-value with {h.n_seeds} seeds")
        return _item(f"{what}: no pair can be decided with {h.n_seeds} seeds ({how}; {why}){_seeds_needed(h)}.", fam)
    undecided = [h for h in fam if h.outcome == "cannot_conclude"]
    tail = (f" {len(undecided)} pair(s) cannot be decided with {undecided[0].n_seeds} seeds (p-value floor)"
            f"{_seeds_needed(undecided[0])}." if undecided else "")
    if not sig:
        big = max(fam, key=lambda h: abs(h.estimate) if math.isfinite(h.estimate) else -1)
        need = (f"; detecting a gap that size would need roughly {big.seeds_needed} seeds"
                if big.seeds_needed and big.outcome != "cannot_conclude" else "")
        return _item(f"{what}: no pair differs detectably ({how}, Holm over {len(fam)} pairs; largest estimate "
                     f"{big.subjects[0]} − {big.subjects[1]} = {g(big.estimate)}, {ci(big)}{need}).{tail}", fam)
    parts = [f"{h.subjects[0]} − {h.subjects[1]} = {g(h.estimate)} (Holm p {fp(h.p_adjusted)})" for h in sig]
    return _item(f"{what}: {len(sig)} of {len(fam)} pairs differ ({how}, Holm over {len(fam)} pairs): "
                 + "; ".join(parts) + "." + tail, fam)


def executive_summary(tests: list[Hypothesis], n_seeds: int) -> list[dict[str, Any]]:
    """Sentences, each with the ids of the tests behind it; confirmatory families only."""
    out = [_item(f"Primary outcome, final val loss. {h.question} {h.answer}", [h]) for h in by_family(tests, "primary")]
    out.append(_pairs_sentence(by_family(tests, "primary_pairwise"), "Final val loss by pair of activations",
                               "seed-paired t"))
    out += [_item(f"{h.question} {h.answer}", [h]) for h in by_family(tests, "secondary")]
    out.append(_pairs_sentence(by_family(tests, "pd_cross_within_pairs"),
                               "Cross-activation vs within-activation PD by pair", "exact relabelling test"))
    out.append(_pairs_sentence(by_family(tests, "pd_reproducibility_pairs"),
                               "Seed-to-seed PD (reproducibility) by pair of activations",
                               "delete-one-seed jackknife t"))
    out += [_item(f"{h.question} {h.answer}", [h]) for h in by_family(tests, "sources")]
    if not any(h.family == "primary" for h in tests):
        out.insert(0, _item(f"No blocked test was possible with {n_seeds} complete seed block(s); it needs at "
                            "least 2 activations and 2 seeds.", []))
    return [x for x in out if x]


def headline(analyses, anomalies: list[str]) -> str:
    if anomalies:
        names = sorted({a.split(":", 1)[0] for a in anomalies})
        exps = ", ".join(an.er.name for an in analyses)
        return (f"GUARDS FAILED on {exps} ({len(anomalies)} anomalies: {', '.join(names)}): the results below are "
                "not trustworthy until these are explained.")
    parts = []
    for an in analyses:
        k, n = len(an.er.activations), len(an.er.seeds)
        prim = by_family(an.hypotheses, "primary")
        pdo = [h for h in by_family(an.hypotheses, "secondary") if h.kind == "pd_cross_within"]
        src = an.sources
        blocks = (f"{len(src.init_seeds)} init × {len(src.data_seeds)} data-order seeds" if src is not None
                  else f"{n} seeds")
        txt = f"on {an.er.name} ({k} activations × {blocks}) "
        txt += _short(prim[0], "final val loss differs between activations",
                      "no detectable difference in final val loss") if prim else "no blocked test was possible"
        if pdo:
            txt += "; " + _short(pdo[0], "changing the activation moves predictions more than reseeding",
                                 "no evidence that changing the activation moves predictions more than reseeding")
        parts.append(txt)
    s = "; ".join(parts)
    return s[0].upper() + s[1:] + "."


def _short(h: Hypothesis, yes: str, no: str) -> str:
    if h.outcome == "cannot_conclude":
        return f"cannot conclude whether {yes} with {h.n_seeds} seeds"
    word = yes if h.outcome == "difference" else no
    if h.kind == "pd_cross_within":
        return f"{word} (Δ pd_tv = {g(h.estimate, 3)}, {ci(h, 3)}, relabelling test p {fp(h.p)})"
    return f"{word} (RCBD F p {fp(h.p)})"


# ---------------------------------------------------------------------------------------------------------------
# report.md sections


def _md_summary(an, h: str) -> list[str]:
    L = [f"{h} Executive summary", "",
         "Each sentence below answers one or more entries of the hypothesis list (summary.json `hypotheses`; ids in "
         "brackets). The primary outcome is final val loss; the other families are Holm-corrected within themselves "
         "(nanoact's docs/REPORT.md, section Hypothesis tests, explains each test).", ""]
    for item in executive_summary(an.hypotheses, len(an.er.seeds)):
        ids = ", ".join(f"`{i}`" for i in item["tests"][:4]) + (" …" if len(item["tests"]) > 4 else "")
        L.append(f"- {item['text']}" + (f" [{ids}]" if ids else ""))
    return L + [""]


def _n(n: int, word: str) -> str:
    """``1 seed``, ``2 seeds``."""
    return f"{n} {word}{'' if n == 1 else 's'}"


def _md_config(an, h: str) -> list[str]:
    runs = an.runs
    acts = sorted({r.activation for r in runs})
    common, varying = {}, {}
    for k in sorted(set().union(*(r.params for r in runs))):
        vals = {r.params.get(k, "—") for r in runs}
        if len(vals) == 1:
            common[k] = vals.pop()
        elif k not in ("activation", "seed", "model.activation", "train.seed"):
            varying[k] = vals
    n_params = {a: sorted({r.tags.get("nanoact.n_params", "n/a") for r in runs if r.activation == a}) for a in acts}
    L = [f"{h} Configuration", "",
         f"- experiment `{an.er.name}` (id {an.er.experiment_id}); {_n(len(acts), 'activation')} × "
         f"{_n(len(an.er.seeds), 'seed')} = {_n(len(acts) * len(an.er.seeds), 'cell')}, {len(runs)} analysed",
         f"- evaluation set for PD: {an.n_contexts} contexts × {an.vocab_size} classes, drawn once from the val "
         f"split and identical for every run (sha256 `{an.eval_sha256 or 'not tagged'}`); checkpoint steps "
         f"{an.steps}, PD tests at the final step {an.final_step}",
         f"- val loss and val accuracy are means over a fixed sample of {an.eval_iters or 'train.eval_iters'} val "
         "batches (the same batches for every run), not the whole val split; loss is cross-entropy in nats per "
         "character",
         "- parameter count (tag nanoact.n_params): " + "; ".join(f"{a}: {', '.join(v)}" for a, v in n_params.items()),
         f"- devices: {', '.join(sorted({r.tags.get('nanoact.device', 'n/a') for r in runs}))}"]
    if varying:
        L.append("- params that vary between runs besides activation and seed: "
                 + "; ".join(f"`{k}` ∈ {sorted(v)}" for k, v in varying.items()))
    L += [f"- {n}" for n in an.notes]
    L += ["", "<details><summary>Resolved config shared by all runs</summary>", "",
          table(["param", "value"], [(f"`{k}`", v) for k, v in common.items()]), "", "</details>", ""]
    return L


def _md_runs(an, h: str) -> list[str]:
    runs = an.runs
    best = [] if an.best_equals_final else ["best val loss"]
    rows = [[f"`{r.run_id}`", r.activation, r.seed, f(r.metric("final/train_loss")), f(r.metric("final/val_loss"))]
            + ([] if an.best_equals_final else [f(r.metric("best/val_loss"))])
            + [f(r.metric("final/train_acc")), f(r.metric("final/val_acc")), f(an.eval_acc.get(r.run_id, math.nan)),
               f(r.metric("time/train_s"), 1)] for r in runs]
    L = [f"{h} Per-trial results", ""]
    if an.best_equals_final:
        L += ["Best val loss equals final val loss for every run, so it is not shown separately.", ""]
    return L + [table(["run id", "activation", "seed", "final train loss", "final val loss", *best, "final train acc",
                       "final val acc", "eval-set acc", "train time (s)"], rows), ""]


def _md_per_activation(an, h: str) -> list[str]:
    runs = an.runs
    best = [] if an.best_equals_final else ["best val loss"]
    rows = []
    for a in sorted({r.activation for r in runs}):
        rs = [r for r in runs if r.activation == a]
        rows.append([a, len(rs), ms([r.metric("final/train_loss") for r in rs]), ms([r.metric("final/val_loss") for r in rs])]
                    + ([] if an.best_equals_final else [ms([r.metric("best/val_loss") for r in rs])])
                    + [ms([r.metric("final/train_acc") for r in rs]), ms([r.metric("final/val_acc") for r in rs]),
                       ms([r.metric("time/train_s") for r in rs], 1), ", ".join(f"`{r.run_id[:8]}`" for r in rs)])
    return [f"{h} Per-activation results (mean ± s.d. over seeds)", "",
            table(["activation", "n", "final train loss", "final val loss", *best, "final train acc", "final val acc",
                   "train time (s)", "runs"], rows), ""]

PD_INTRO = (
    "Metrics on the fixed evaluation set, averaged over its contexts (Shamir et al., \"Smooth activations and "
    "reproducibility in deep networks\", arXiv:2010.09931): pd_tv = total variation ½Σ|p_a − p_b| in [0, 1]; "
    "pd_top1 = share of contexts whose top-1 prediction differs; pd_label = |p_a(y) − p_b(y)|; pd_label_rel = the "
    "same relative to the mean of the two; js = Jensen–Shannon divergence in nats (at most ln 2). Pairs share runs, "
    "so every standard error is a delete-one-seed jackknife and intervals use t on (seeds − 1) df; tests permute "
    "or delete whole seeds, never pairs."
)


def _md_pd_tables(an, pd) -> list[str]:
    acts = pd.activations
    n = len(pd.seeds)
    rows = [[a, f"{f(e.mean)} ± {f(e.se)}", f(e.context_se), f"[{f(e.lo)}, {f(e.hi)}]"] for a, e in zip(acts, pd.within)]
    L = [f"Seed-to-seed {pd.metric} within each activation at step {pd.step}: mean over pairs of seeds ± jackknife "
         f"SE over seeds; the SE from resampling the {an.n_contexts} evaluation contexts; 95% interval (t on {n - 1} "
         "df with the seed SE, widened to ±1.96 context SE where that is larger):", "",
         table(["activation", "mean ± seed SE", "context SE", "95% CI"], rows), ""]
    rows = []
    for i in range(len(acts)):
        for j in range(i + 1, len(acts)):
            se = pd.excess_se[i, j]
            rows.append([f"{acts[i]} vs {acts[j]}", f"{f(pd.cross[i, j])} ± {f(pd.cross_se[i, j])}",
                         f"{f(pd.excess[i, j])} ± {f(se)}", g(pd.same_seed_ratio[i, j], 3)])
    L += [f"Different activations, different seeds ({pd.metric}), and the excess over the two activations' own "
          "seed-to-seed PD (like with like). Same-seed pairs share initial weights and batch order, so they are "
          "shown only as the near-identity ratio (median same-seed PD / seed-to-seed PD; honest runs are near 1):",
          "", table(["pair", "cross PD ± SE", "excess ± SE", "same-seed ratio"], rows), ""]
    return L


def _md_pd(an, h: str) -> list[str]:
    L = [f"{h} Prediction difference (PD)", "", PD_INTRO, ""]
    pd = an.pd
    if pd is not None:
        L += _md_pd_tables(an, pd)
        tests = [x for x in an.hypotheses if x.measure == pd.metric and not x.kind.startswith("sources")]
        L += _md_tests(tests)
    fin = -1
    rows = [[a, an.within[a]["pd_tv"]["n_pairs"]] + [f"{f(an.within[a][m]['mean'][fin])} ± {f(an.within[a][m]['se'][fin])}"
                                                    for m in METRICS] for a in sorted(an.within)]
    L += [f"All PD metrics within each activation at step {an.final_step} (± jackknife SE over seeds):", "",
          table(["activation", "pairs", *METRICS], rows), ""]
    rows = [[a] + [f(v) for v in an.within[a]["pd_tv"]["mean"]] for a in sorted(an.within)]
    L += ["Mean within-activation pd_tv by step:", "", table(["activation"] + [str(s) for s in an.steps], rows), "",
          f"Every pair's values at every step are in summary.json (`pairs`; {len(an.pairs)} pairs).", ""]
    return L


def _md_tests(tests: list[Hypothesis]) -> list[str]:
    if not tests:
        return []
    rows = [(f"`{h.id}`", h.family, g(h.estimate), ci(h), f"{h.statistic_name} = {g(h.statistic)}",
             ", ".join(g(x, 3) for x in h.df) or "—", f(h.p), f(h.p_adjusted),
             {True: "yes", False: "no", None: "cannot conclude"}[h.significant]) for h in tests]
    return [table(["test", "family", "estimate", "interval", "statistic", "df", "p", "adjusted p", "significant"],
                  rows), ""]


def _md_sources(an, h: str) -> list[str]:
    src = an.sources
    if src is None:
        return []
    rows = [(c.name, c.n_pairs, f"{f(c.mean)} ± {f(c.se)}", f"[{f(c.lo)}, {f(c.hi)}]") for c in src.categories]
    L = [f"{h} PD by source of variation", "",
         f"Activations {', '.join(src.activations)} × init seeds {', '.join(src.init_seeds)} × data-order seeds "
         f"{', '.join(src.data_seeds)}, crossed. Mean pd_tv at step {an.final_step} of pairs of runs that differ in "
         "the named sources only; SE is the two-way (init seed + data seed) jackknife, intervals t on "
         f"{src.categories[0].df} df. Background: {CITE_SD} found that any single source of nondeterminism gives "
         f"about the full run-to-run variability; {CITE_BH} studied churn by source.", "",
         table(["differs in", "pairs", "mean ± SE", "95% CI"], rows), ""]
    L += _md_tests([x for x in an.hypotheses if x.family == "sources"])
    both = next(c for c in src.categories if c.name == "init+data")
    for c in src.categories[:2]:
        if both.mean > 0:
            L.append(f"- {c.name} alone gives {100 * c.mean / both.mean:.0f}% of the PD of changing both seeds.")
    L.append("- " + _agreement(an.hypotheses))
    return L + [""]


def _agreement(tests: list[Hypothesis]) -> str:
    """Whether this grid agrees with Summers & Dinneen, from the two single-source tests only."""
    single = {h.subjects[0]: h for h in tests if h.family == "sources"
              and h.subjects[0] in ("init_only_vs_reseeding", "data_only_vs_reseeding")}
    words = {"init_only_vs_reseeding": "initial-weights", "data_only_vs_reseeding": "batch-order"}
    lower = [words[k] for k, h in single.items() if h.significant and h.estimate < 0]
    if any(h.outcome == "cannot_conclude" for h in single.values()) or len(single) < 2:
        return "Whether a single source gives the full variability cannot be decided with these seeds."
    if not lower:
        return ("Consistent with Summers & Dinneen: neither the initial weights alone nor the batch order alone "
                "moves predictions detectably less than changing both.")
    return (f"Only partly what Summers & Dinneen found: a single source gives most of the PD of changing both "
            f"(the shares above), but changing only the {' or only the '.join(lower)} seed moves predictions "
            "detectably less than changing both.")


def _md_outcome(an, o) -> list[str]:
    primary = " (primary outcome)" if o.outcome == PRIMARY_OUTCOME else " (secondary; Holm-corrected with the other " \
                                                                       "secondary tests)"
    L = [f"**{o.label}**{primary}", ""]
    if o.rcbd is None:
        return L + [f"No blocked test: {len(o.activations)} activation(s) and {len(o.seeds)} complete seed block(s); "
                    "it needs at least 2 of each.", ""]
    r = o.rcbd
    L += [table(["source", "SS", "df", "MS", "F", "p"], [
        ("activation", f"{r.ss_a:.4g}", r.df_a, f"{r.ms_a:.4g}", f(r.f_a, 3), f(r.p_a, 4)),
        ("seed (block)", f"{r.ss_s:.4g}", r.df_s, f"{r.ms_s:.4g}", f(r.f_s, 3), f(r.p_s, 4)),
        ("residual", f"{r.ss_e:.4g}", r.df_e, f"{r.ms_e:.4g}", "", "")]), ""]
    L.append(f"- Effect sizes: partial η² = {g(r.partial_eta2, 3)}, partial ω² = {g(r.partial_omega2, 3)}. Variance "
             f"components: activation {g(r.var_activation)}, seed {g(r.var_seed)}, residual {g(r.var_residual)}.")
    L.append(f"- Power: with {r.k} activations and {r.n} seeds the smallest best-to-worst gap detectable at 80% "
             f"power (α = {ALPHA}) is {g(o.mde_sigma, 3)} σ_e ≈ {g(o.mde, 3)}.")
    fr, hom = o.friedman, o.homogeneity
    if fr is not None and not math.isfinite(fr.f_id) and math.isfinite(fr.q):
        L.append(f"- Friedman Q = {g(fr.q)} (p {fp(fr.p)}); the Iman–Davenport F is not defined here: every seed "
                 "ranks the activations the same way, so Q is at its maximum and F would divide by zero.")
    if hom is not None:
        verdict = ("pass: the pooled studentized range is shown as a secondary check" if hom.passed else
                   "fail: the pooled studentized range would be invalid and is not reported")
        L.append(f"- Variances of the seed-paired differences range from {g(hom.min_var)} to {g(hom.max_var)} "
                 f"(ratio {g(hom.ratio, 3)}; pooling needs ≤ {VARIANCE_RATIO_LIMIT:g}): {verdict}.")
    if o.excluded_seeds:
        L.append(f"- Seeds {', '.join(o.excluded_seeds)} were left out: not every activation has a value there.")
    L.append("")
    return L + _md_tests([h for h in an.hypotheses if h.measure == o.outcome])


def _md_stats(an, h: str) -> list[str]:
    L = [f"{h} Statistics", "",
         "Randomized complete block design: activation = treatment, seed = block (Montgomery, Design and Analysis "
         "of Experiments, ch. 4). Pairwise comparisons use seed-paired t tests with Holm's adjustment, which stay "
         "valid when variances differ; the pooled studentized range is secondary and shown only when the variances "
         "of the paired differences pass a homogeneity check.", ""]
    for o in an.outcomes:
        L += _md_outcome(an, o)
    return L


def _md_compute(an, h: str) -> list[str]:
    runs = an.runs
    rows = [(f"`{r.run_id}`", r.activation, r.seed, f(r.metric("time/wall_s"), 1), f(r.metric("time/train_s"), 1),
             f(r.metric("tokens_per_s_mean"), 0), r.tags.get("nanoact.device", "n/a")) for r in runs]
    L = [f"{h} Compute accounting", "",
         table(["run id", "activation", "seed", "wall (s)", "train (s)", "tokens/s", "device"], rows), ""]
    total = float(np.nansum([r.metric("time/wall_s") for r in runs]))
    return L + [f"Total wall time of the analysed runs: {total:.1f} s ({total / 60:.1f} min).", ""]


CAPTIONS = {"loss_curves": "Train and val loss per activation (mean ± 1 s.d. over seeds; thin: single seeds)",
            "final_metrics": "Final metrics by activation (dots: seeds; black: mean with 95% CI)",
            "pd_heatmap": "pd_tv between every pair of runs at the final step",
            "within_pd_steps": "Mean within-activation PD across steps (± jackknife SE over seeds)",
            "accuracy_vs_pd": "Final val accuracy against each run's pd_tv to its activation's leave-one-out mean "
                              "prediction (descriptive; not a test)"}


def _md_raw(an, h: str, logging_note: str) -> list[str]:
    L = [f"{h} Plots", ""]
    for key, fname in an.plots.items():
        L += [f"![{CAPTIONS[key]}]({fname})", "", f"*{CAPTIONS[key]}*", ""]
    L += [f"{h} Raw data summary", "",
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
        start = _utc(r.start_time)
        rows.append((f"`{r.run_id}`", r.run_name, r.activation, r.seed, f"`{r.grid_key}`", r.status, start, why))
    return L + [table(["run id", "name", "activation", "seed", "grid key", "status", "start (UTC)", "used"], rows), ""]


def _utc(ms_epoch: int) -> str:
    import datetime as dt

    return dt.datetime.fromtimestamp(ms_epoch / 1000, dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S")


def experiment_md(an, level: str, logging_note: str) -> list[str]:
    fill_text(an.hypotheses)
    # the per-activation table right after the summary; the config dump last
    return (_md_summary(an, level) + _md_per_activation(an, level) + _md_runs(an, level) + _md_pd(an, level)
            + _md_sources(an, level) + _md_stats(an, level) + _md_compute(an, level)
            + _md_raw(an, level, logging_note) + _md_config(an, level))


def guard_md(analyses, multi: bool) -> list[str]:
    L = ["## Guards", ""]
    failed = [(an, gr) for an in analyses for gr in an.guards if not gr.passed]
    unverified = [(an, gr) for an in analyses for gr in an.guards if gr.status == "UNVERIFIED"]
    if failed:
        L += [f"- **GUARD FAILED: {gr.name}**" + (f" ({an.er.name})" if multi else "")
              + f" — requires: {gr.title}; {len(gr.details)} failure(s), e.g. {gr.details[0]}" for an, gr in failed]
        L += ["", "The numbers below are written for diagnosis only.", ""]
    elif unverified:
        L += [f"No guard failed, but {len(unverified)} could not be checked (UNVERIFIED): "
              + ", ".join(gr.name for _, gr in unverified) + ".", ""]
    else:
        L += ["All guards passed.", ""]
    rows = []
    for an in analyses:
        for gr in an.guards:
            name = ((an.er.name + ": ") if multi else "") + gr.name
            detail = "<br>".join(gr.details[:20]) + (f"<br>… {len(gr.details) - 20} more" if len(gr.details) > 20 else "")
            rows.append((name, gr.title, "**FAIL**" if gr.status == "FAIL" else gr.status, detail or "—"))
    return L + [table(["guard", "checks", "result", "details"], rows), ""]


def comparison_md(rows: list[dict[str, Any]]) -> list[str]:
    body = [(r["experiment"], r["activation"], r["n_runs"], f(r["mean_final_val_loss"]), f(r["mean_within_pd_tv"]),
             f(r["mean_within_pd_top1"]), f(r["mean_wall_s"], 1), ", ".join(f"`{x[:8]}`" for x in r["run_ids"]))
            for r in rows]
    return ["## Comparison across experiments", "",
            table(["experiment", "activation", "runs", "mean final val loss", "mean within-activation pd_tv",
                   "mean within-activation pd_top1", "mean wall (s)", "runs"], body), ""]


def make_plots(an, out, prefix: str) -> None:
    """Writes the PNGs into ``out`` and records their file names in ``an.plots``."""
    from nanoact.analysis import plots as pl

    runs = an.runs
    acts = sorted({r.activation for r in runs})
    curves = {a: {m: {r.seed: tuple(zip(*r.history[m])) if r.history.get(m) else ((), ())
                      for r in runs if r.activation == a} for m in ("train/loss", "val/loss")} for a in acts}
    figs = {"loss_curves": pl.loss_curves(curves, f"{an.er.name}: loss curves, mean ± 1 s.d. over seeds")}
    keys = {"final/val_loss": "final val loss", "final/val_acc": "final val acc"}
    if not an.best_equals_final:
        keys["best/val_loss"] = "best val loss"
    values = {lab: {a: {r.seed: r.metric(k) for r in runs if r.activation == a} for a in acts} for k, lab in keys.items()}
    figs["final_metrics"] = pl.final_metrics(values, title=f"{an.er.name}: final metrics by activation "
                                             "(dots: seeds; black: mean with 95% CI)")
    figs["pd_heatmap"] = pl.pd_heatmap(an.heatmap, [f"{r.activation} s{r.seed}" for r in runs],
                                       [r.activation for r in runs], an.final_step,
                                       f"{an.er.name}: pd_tv between runs at step {an.final_step}")
    within = {a: {m: (an.within[a][m]["mean"], an.within[a][m]["se"]) for m in METRICS} for a in acts}
    figs["within_pd_steps"] = pl.within_pd_over_steps(an.steps, within, METRICS,
                                                      f"{an.er.name}: mean within-activation PD between seeds "
                                                      "(± jackknife SE)")
    figs["accuracy_vs_pd"] = pl.accuracy_vs_pd([r.metric("final/val_acc") for r in runs], an.pd_score,
                                               [r.activation for r in runs], f"{an.er.name}: accuracy vs PD")
    for key, fig in figs.items():
        fname = f"{prefix}{key}.png"
        pl.save(fig, out / fname)
        an.plots[key] = fname
