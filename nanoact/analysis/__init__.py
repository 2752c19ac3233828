"""Analysis of logged runs: PD on one fixed evaluation set, RCBD statistics, guards, plots and the report.

Modules (import them directly; importing this package does no work):
  runs        query MLflow for the cells of an experiment, dedupe attempts, fetch prediction artifacts
  divergence  the PD metrics of FACTS.md §3, vectorised over many run pairs
  stats       RCBD ANOVA, Friedman / Iman–Davenport, blocked pairwise comparisons, effect sizes, power
  guards      checks that make the failures of the flawed report loud
  plots       matplotlib Figures (Agg canvas, no pyplot state)
  report      ``run_report``: the whole pipeline, writing report.md, the PNGs and summary.json
  synthetic   logs synthetic runs in the docs/TRACKING.md schema (tests, benchmark, foreign-run proof)
"""

from __future__ import annotations
