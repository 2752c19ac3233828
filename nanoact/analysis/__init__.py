"""Analysis of logged runs: PD on one fixed evaluation set, RCBD statistics, guards, plots and the report.

Modules (import them directly; importing this package does no work):
  runs        query MLflow for the cells of an experiment, dedupe attempts, fetch prediction artifacts
  divergence  the PD metrics (Shamir et al., arXiv:2010.09931), vectorised over many run pairs
  stats       RCBD ANOVA, Friedman / Iman–Davenport, blocked pairwise comparisons, effect sizes, power
  outcome     every statistic of one per-run outcome (stats gathered, complete blocks only)
  pdestimands the PD estimands on the table of PD between every pair of runs (numbers only)
  pdtests     tests about PD that resample or permute whole seeds (pairs share runs)
  sources     PD split into initialisation, data order and activation (crossed seed grids)
  hypotheses  the list of every test, Holm-adjusted per family
  experiment  the computation for one experiment (numbers only)
  answers     each test's question and answer (the words)
  executive   the executive summary and the headline, from the hypothesis list
  formatting  numbers, p-values, percentages and markdown tables as the report writes them
  render      report.md: guards, sections in order, comparison, plots (render_stats: the test sections)
  summary     summary.json
  guards      checks that make the failures of the flawed report loud
  plots       matplotlib Figures (Agg canvas, no pyplot state)
  report      ``run_report``: the entry point, writing report.md, the PNGs and summary.json
  synthetic   logs synthetic runs in the docs/TRACKING.md schema (tests, benchmark, foreign-run proof)
"""

from __future__ import annotations
