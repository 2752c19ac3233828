"""The report's account of a seeds-on-demand sweep: the rule its parent run records (tag ``nanoact.seed_rule``),
the rounds its Optuna study records (``nanoact.sweep.rounds``), why it stopped, and the primary contrasts with the
intervals widened for the stopping rule (``nanoact.analysis.sequential``)."""

from __future__ import annotations

import json
from types import SimpleNamespace
from typing import Any

from nanoact.tracking import schema


def design(client, parent_run_id: str | None, storage: str | None, tracking_uri: str) -> dict[str, Any] | None:
    """The sequential design of a sweep as plain data for the writers, or None for a fixed design. A rule whose
    study cannot be found is reported as such (``rounds`` empty, ``found`` False), never as a fixed design."""
    from nanoact.analysis import sequential as sq
    from nanoact.analysis.grid import _find_study, storage_candidates
    from nanoact.sweep import rounds
    from nanoact.sweep.seeds import SeedRule

    if parent_run_id is None:
        return None
    run = client.get_run(parent_run_id)
    raw = run.data.tags.get(schema.SEED_RULE)
    if not raw:
        return None
    r = json.loads(raw)
    rule = SeedRule(r["start"], r["step"], r["max"], r["target"])
    parent = SimpleNamespace(tags=run.data.tags, run_id=parent_run_id)
    study, where = _find_study(parent, storage_candidates(tracking_uri, storage), explicit=bool(storage))
    recs = rounds.recorded_rounds(study) if study is not None else {}
    last = recs[max(recs)] if recs else None
    return {"rule": rule.to_dict(), "describe": rule.describe(), "kappa": sq.calibrate(rule.start, rule.step, rule.max),
            "found": study is not None, "where": where,
            "rounds": [{"round": i, **{k: recs[i][k] for k in ("seeds", "widest", "met", "stop", "reason",
                                                                "next_seeds")},
                        "projected": sq.project(rule, recs[i]["seeds"], recs[i]["widest"])} for i in sorted(recs)],
            "stopped": last["reason"] if last and last["stop"] else None,
            "contrasts": [dict(zip(("metric", "contrast", "estimate", "half_width"), c))
                          for c in (last["contrasts"] if last else [])]}


def render_md(d: dict[str, Any], h: str = "##") -> list[str]:
    """The report section: the rule, a line per round, why it stopped, and the widened primary intervals."""
    md = [f"{h} Sequential design (seeds on demand)", "",
          f"The seeds were added in rounds by a stopping rule: {d['describe']}. Only interval widths stop it, never "
          "an estimate or a test. Every interval in this section is widened by κ = "
          f"{d['kappa']:.3f}, the factor that keeps a 95% interval's coverage at or above 95% under this rule "
          "(simulated; `nanoact/analysis/sequential.py`); a contrast is decided when its widened interval excludes "
          "0. The other sections' intervals are the fixed-design ones, not widened: read at the stopping time they "
          "cover somewhat less than 95%.", ""]
    if not d["found"]:
        return md + [f"The rounds could not be read ({d['where']}); pass the sweep's `--storage`.", ""]
    rounds = d["rounds"]
    if not rounds:
        return md + ["No round has been decided yet.", ""]
    seeds = " -> ".join(str(r["seeds"]) for r in rounds)
    why = {"target met": "it stopped because every target was met",
           "max seeds reached": "it stopped at the maximum number of seeds, with a target unmet"}.get(
        d["stopped"], "it has not stopped (the sweep is running or was interrupted): the figures below are interim")
    md += [f"{len(rounds)} round(s) ran ({seeds} seeds per activation); {why}.", "",
           "| round | seeds | " + " | ".join(f"widest {k} (target ±{t:g})" for k, t in d["rule"]["target"].items())
           + " | decision |", "|---|---|" + "---|" * len(d["rule"]["target"]) + "---|"]
    for r in rounds:
        cells = [_hw(r["widest"].get(k)) + (" ✓" if r["met"].get(k) else "") for k in d["rule"]["target"]]
        decision = r["reason"] if r["stop"] else f"add seeds: {r['next_seeds']} per activation"
        md.append(f"| {r['round']} | {r['seeds']} | " + " | ".join(cells) + f" | {decision} |")
    md += ["", "Primary contrasts at the last round (estimate, widened 95% CI):", "",
           "| metric | contrast | estimate | widened 95% CI | |", "|---|---|---|---|---|"]
    for c in d["contrasts"]:
        hw = c["half_width"]
        ci = f"[{c['estimate'] - hw:.4g}, {c['estimate'] + hw:.4g}]" if hw is not None else "(too few seeds)"
        call = "differs" if hw is not None and abs(c["estimate"]) > hw else "not detected (the CI includes 0)"
        md.append(f"| {c['metric']} | {c['contrast']} | {c['estimate']:.4g} | {ci} | {call} |")
    return md + [""]


def _hw(x: float | None) -> str:
    return "±inf" if x is None else f"±{x:.2g}"
