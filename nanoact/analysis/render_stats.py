"""report.md sections on the tests: prediction difference (PD), PD by source of variation, and the statistics."""

from __future__ import annotations

import math

from nanoact.analysis.answers import ci_text
from nanoact.analysis.divergence import METRICS
from nanoact.analysis.executive import share_sentence
from nanoact.analysis.formatting import fixed, md_table, p_text, pct, sig
from nanoact.analysis.hypotheses import PRIMARY_OUTCOME, Hypothesis
from nanoact.analysis.stats import ALPHA, VARIANCE_RATIO_LIMIT

CITE_SD = ("Summers & Dinneen, \"Nondeterminism and instability in neural network optimization\", ICML 2021")


CITE_BH = ("Bhojanapalli et al., \"On the reproducibility and stability of deep networks\", arXiv:2102.03349, 2021")


PD_INTRO = (
    "Metrics on the fixed evaluation set, averaged over its contexts (Shamir et al., \"Smooth activations and "
    "reproducibility in deep networks\", arXiv:2010.09931): pd_tv = total variation ½Σ|p_a − p_b| in [0, 1]; "
    "pd_top1 = share of contexts whose top-1 prediction differs; pd_label = |p_a(y) − p_b(y)|; pd_label_rel = the "
    "same relative to the mean of the two; js = Jensen–Shannon divergence in nats (at most ln 2). Pairs share runs, "
    "so every standard error is a delete-one-seed jackknife and intervals use t on (seeds − 1) df; tests permute "
    "or delete whole seeds, never pairs."
)


def _jackknife_words(pd) -> str:
    return ("two-way (init seed + data seed) jackknife" if pd.design == "crossed" else "delete-one-seed jackknife")


def _pd_tables(an, pd) -> list[str]:
    acts = pd.activations
    rows = [[a, f"{fixed(e.mean)} ± {fixed(e.se)}", fixed(e.context_se), f"[{fixed(e.lo)}, {fixed(e.hi)}]"]
            for a, e in zip(acts, pd.within)]
    lines = [f"Seed-to-seed {pd.metric} within each activation at step {pd.step}: mean over pairs of seeds ± "
             f"{_jackknife_words(pd)} SE; the SE from resampling the {an.n_contexts} evaluation contexts; 95% interval "
             f"with both (half-width √((t_{pd.df}·seed SE)² + (1.96·context SE)²)):", "",
             md_table(["activation", "mean ± seed SE", "context SE", "95% CI"], rows), ""]
    rows = []
    for i in range(len(acts)):
        for j in range(i + 1, len(acts)):
            w = 0.5 * (pd.within[i].mean + pd.within[j].mean)
            rows.append([f"{acts[i]} vs {acts[j]}", f"{fixed(pd.cross[i, j])} ± {fixed(pd.cross_se[i, j])}",
                         f"{fixed(pd.excess[i, j])} ± {fixed(pd.excess_se[i, j])}", fixed(pd.same_seed[i, j]),
                         fixed(pd.same_seed[i, j] - w), sig(pd.same_seed_ratio[i, j], 3)])
    lines += [f"Between activations ({pd.metric}; ± {_jackknife_words(pd)} SE): *cross* = runs of the two "
              "activations with different seeds; *excess* = cross − (W_a + W_b)/2, a symmetric distance between the "
              "two activations' distributions of fitted functions (it grows when either is less reproducible, and with "
              "the square of a systematic difference, so it is not the size of a difference of a and b); *same seed* = "
              "runs of the two with the same seed (only the activation differs), and its difference from (W_a + "
              "W_b)/2; the near-identity ratio (median same-seed PD / seed-to-seed PD):",
              "", md_table(["pair", "cross ± SE", "excess ± SE", "same seed", "same seed − W", "same-seed ratio"],
                           rows), ""]
    return lines


def pd_section(an, level: str) -> list[str]:
    lines = [f"{level} Prediction difference (PD)", "", PD_INTRO, ""]
    pd = an.pd
    if pd is not None:
        lines += _pd_tables(an, pd)
        tests = [x for x in an.hypotheses if x.measure == pd.metric and not x.kind.startswith("sources")]
        lines += tests_table(tests)
    final = {a: {m: (an.within[a][m]["mean"][-1], an.within[a][m]["se"][-1]) for m in METRICS} for a in an.within}
    rows = [[a, an.within[a]["pd_tv"]["n_pairs"]] + [f"{fixed(mean)} ± {fixed(se)}" for mean, se in final[a].values()]
            for a in sorted(an.within)]
    lines += [f"All PD metrics within each activation at step {an.final_step} (± jackknife SE over seeds):", "",
              md_table(["activation", "pairs", *METRICS], rows), ""]
    rows = [[a] + [fixed(v) for v in an.within[a]["pd_tv"]["mean"]] for a in sorted(an.within)]
    lines += ["Mean within-activation pd_tv by step:", "",
              md_table(["activation"] + [str(s) for s in an.steps], rows), "",
              f"Every pair's values at every step are in summary.json (`pairs`; {len(an.pairs)} pairs).", ""]
    return lines


OUTCOME_WORDS = {"difference": "yes", "no_detectable_difference": "not detected", "cannot_conclude": "cannot conclude",
                 "gated": "not claimed (gate)", "equivalent": "equivalent", "not_equivalent": "not shown"}


def tests_table(tests: list[Hypothesis]) -> list[str]:
    if not tests:
        return []
    rows = [(f"`{h.id}`", h.family, sig(h.estimate), ci_text(h), h.interval or "—",
             f"{h.statistic_name} = {sig(h.statistic)}", ", ".join(sig(x, 3) for x in h.df) or "—", fixed(h.p),
             fixed(h.p_adjusted), sig(h.mdd, 3), OUTCOME_WORDS.get(h.outcome, h.outcome)) for h in tests]
    return [md_table(["test", "family", "estimate", "95% interval", "interval method", "statistic", "df", "p",
                      "adjusted p", "MDD (80%)", "result"], rows), ""]


def sources_section(an, level: str) -> list[str]:
    src = an.sources
    if src is None:
        return []
    rows = [(c.name, c.n_pairs, f"{fixed(c.mean)} ± {fixed(c.se)}", f"[{fixed(c.lo)}, {fixed(c.hi)}]")
            for c in src.categories]
    lines = [f"{level} PD by source of variation", "",
             f"Activations {', '.join(src.activations)} × init seeds {', '.join(src.init_seeds)} × data-order seeds "
             f"{', '.join(src.data_seeds)}, crossed. Mean pd_tv at step {an.final_step} of pairs of runs that differ "
             "in the named sources only; SE is the two-way (init seed + data seed) jackknife, intervals t on "
             f"{src.categories[0].df} df. Background: {CITE_SD} found that any single source of nondeterminism gives "
             f"about the full run-to-run variability; {CITE_BH} studied churn by source.", "",
             md_table(["differs in", "pairs", "mean ± SE", "95% CI"], rows), ""]
    lines += tests_table([x for x in an.hypotheses if x.family == "sources"])
    rows = [(c.name, pct(c.mean), f"[{pct(c.lo)}, {pct(c.hi)}]") for c in src.shares]
    lines += ["Shares of the init+data (reseeding) pd_tv, as ratios of mean PDs (PD scale, not variance), with "
              "two-way jackknife intervals:", "", md_table(["share", "estimate", "95% CI"], rows), "",
              "- " + share_sentence(src.shares)]
    return lines + [""]


def _outcome_section(an, res) -> list[str]:
    """One outcome (``OutcomeStats``): the RCBD ANOVA table, effect sizes, power, checks and its tests."""
    primary = (" (primary outcome)" if res.outcome == PRIMARY_OUTCOME else
               " (secondary; Holm-corrected with the other secondary tests)")
    lines = [f"**{res.label}**{primary}", ""]
    if res.rcbd is None:
        return lines + [f"No blocked test: {len(res.activations)} activation(s) and {len(res.seeds)} complete seed "
                        "block(s); it needs at least 2 of each.", ""]
    anova = res.rcbd
    lines += [md_table(["source", "SS", "df", "MS", "F", "p"], [
        ("activation", f"{anova.ss_a:.4g}", anova.df_a, f"{anova.ms_a:.4g}", fixed(anova.f_a, 3), fixed(anova.p_a, 4)),
        ("seed (block)", f"{anova.ss_s:.4g}", anova.df_s, f"{anova.ms_s:.4g}", fixed(anova.f_s, 3),
         fixed(anova.p_s, 4)),
        ("residual", f"{anova.ss_e:.4g}", anova.df_e, f"{anova.ms_e:.4g}", "", "")]), ""]
    lines += _crossed_text(res)
    lines.append(f"- Effect sizes: partial η² = {sig(anova.partial_eta2, 3)}, partial ω² = "
                 f"{sig(anova.partial_omega2, 3)}. Variance components: activation {sig(anova.var_activation)}, "
                 f"seed {sig(anova.var_seed)}, residual {sig(anova.var_residual)}.")
    lines.append(f"- Power: with {anova.k} activations and {anova.n} seeds the smallest best-to-worst gap detectable "
                 f"at 80% power (α = {ALPHA}) is {sig(res.mde_sigma, 3)} σ_e ≈ {sig(res.mde, 3)}.")
    lines += _check_notes(res)
    lines.append("")
    return lines + tests_table([h for h in an.hypotheses if h.measure == res.outcome])


def _check_notes(res) -> list[str]:
    """Bullets on the Friedman test, the variance-homogeneity check and the seeds left out."""
    lines = []
    friedman, homogeneity = res.friedman, res.homogeneity
    if friedman is not None and not math.isfinite(friedman.f_id) and math.isfinite(friedman.q):
        lines.append(f"- Friedman Q = {sig(friedman.q)} (p {p_text(friedman.p)}); the Iman–Davenport F is not "
                     "defined here: every seed ranks the activations the same way, so Q is at its maximum and F would "
                     "divide by zero.")
    if homogeneity is not None:
        verdict = ("pass: the pooled studentized range is shown as a secondary check" if homogeneity.passed else
                   "fail: the pooled studentized range would be invalid and is not reported")
        lines.append(f"- Variances of the seed-paired differences range from {sig(homogeneity.min_var)} to "
                     f"{sig(homogeneity.max_var)} (ratio {sig(homogeneity.ratio, 3)}; pooling needs ≤ "
                     f"{VARIANCE_RATIO_LIMIT:g}): {verdict}.")
    if res.excluded_seeds:
        lines.append(f"- Seeds {', '.join(res.excluded_seeds)} were left out: not every activation has a value there.")
    return lines


def _crossed_text(res) -> list[str]:
    crossed = res.crossed
    if crossed is None:
        return []
    return [f"Init and data-order seeds are crossed, so the table above (blocks as independent) is for reference "
            f"only. The test: activation against its interactions with the init seed (MS = {sig(crossed.ms_ai)}, df "
            f"{crossed.df_ai}) and the data seed (MS = {sig(crossed.ms_ad)}, df {crossed.df_ad}), residual MS = "
            f"{sig(crossed.ms_aid)} (df {crossed.df_aid}); quasi-F'' = (MS_A + MS_res)/(MS_AI + MS_AD) = "
            f"{sig(crossed.f, 4)} on Satterthwaite df ({sig(crossed.df_num, 3)}, {sig(crossed.df_den, 3)}), "
            f"p {p_text(crossed.p)}. Pairwise tests use the two-way (init + data) SE with Satterthwaite df.", ""]


def stats_section(an, level: str) -> list[str]:
    lines = [f"{level} Statistics", "",
             "Randomized complete block design: activation = treatment, seed = block (Montgomery, Design and Analysis "
             "of Experiments, ch. 4). Pairwise comparisons use seed-paired t tests with Holm's adjustment, which stay "
             "valid when variances differ; the pooled studentized range is secondary and shown only when the variances "
             "of the paired differences pass a homogeneity check.", ""]
    for res in an.outcomes:
        lines += _outcome_section(an, res)
    return lines
