"""Rounds of a seeds-on-demand sweep (a ``[seeds]`` rule): when every cell of a round is done, the interim
analysis decides whether the targets are met, and if not the next round's seeds are enqueued as new trials.

Exactly once, with any number of workers on any number of machines:

- The interim is computed without holding any lease (issue: a lease is never held across MLflow calls, so a
  stopped process cannot stall the others). It is deterministic (the same runs give the same decision), so two
  workers computing it at once is wasted work, never a different outcome.
- The decision is then recorded under the coordinator lease, as one study user attr ``nanoact.round.<i>`` (a
  single write, so a kill leaves the round either recorded or not), unless another process recorded it first.
- The seeds a study has reached are read back from its records (``seed_count``), so the enqueueing that follows
  is redone by whoever comes next when a kill falls between the record and the enqueue: every worker and every
  new ``nanoact sweep`` enqueues the missing cells of the current round.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Mapping
from typing import Any

from nanoact.events import RoundAnalysing, RoundDecided
from nanoact.sweep import state as S
from nanoact.sweep.spec import SEED_AXIS, SweepSpec
from nanoact.tracking import schema

A_ROUND = "nanoact.round."  # study user attr per round: nanoact.round.1, nanoact.round.2, ...


def recorded_rounds(study) -> dict[int, dict[str, Any]]:
    return {int(k[len(A_ROUND):]): v for k, v in study.user_attrs.items() if k.startswith(A_ROUND)}


def seed_count(spec: SweepSpec, study) -> int:
    """Seeds per activation the study has reached: the newest recorded round's next seeds, else the rule's start."""
    done = recorded_rounds(study)
    return done[max(done)]["next_seeds"] if done else spec.seed_rule.start


def current(spec: SweepSpec, study) -> SweepSpec:
    """The spec at the study's current round (the spec itself without a rule)."""
    return spec if spec.seed_rule is None else spec.with_seed_count(seed_count(spec, study))


def optuna_axes(spec: SweepSpec) -> dict[str, list]:
    """The grid as Optuna's categorical distributions must see it from the first round on: the whole seed pool
    (a CategoricalDistribution refuses choices that change between trials of a study)."""
    if spec.seed_rule is None:
        return spec.grid
    return {**spec.grid, SEED_AXIS: list(spec.seed_pool)}


def round_complete(spec_n: SweepSpec, study) -> bool:
    return all(s.state == S.CellStatus.DONE for s in S.cell_states(spec_n, study.get_trials(deepcopy=False)))


def interim(spec_n: SweepSpec, tracking_uri: str, progress: Callable[[str], None]):
    """(``Interim``, its contrasts) for the round's runs, read from MLflow with the report's own analysis."""
    from nanoact.analysis import sequential as sq
    from nanoact.analysis.experiment import analyse_experiment
    from nanoact.analysis.predictions import ArtifactFetcher
    from nanoact.tracking.store import Store

    reader = Store(tracking_uri).reader()
    an = analyse_experiment(reader, spec_n.name, ArtifactFetcher(reader), progress, study=spec_n.study_name,
                            tracking_uri=tracking_uri)
    loss = next((o for o in an.outcomes if o.outcome == "final_val_loss"), None)
    contrasts = sq.primary_contrasts(spec_n.seed_rule, loss.y if loss else None,
                                     loss.activations if loss else [], an.pd)
    return sq.decide_on(spec_n.seed_rule, spec_n.n_seeds, contrasts), contrasts


def record(interim_, contrasts) -> dict[str, Any]:
    """The study attr of a round: what was reached, what was decided, and each primary contrast; ``at`` (ms) is
    the timestamp its parent-run metrics are logged with, so logging them again writes the same rows."""
    finite = lambda x: x if math.isfinite(x) else None  # noqa: E731 - JSON has no inf
    return {"seeds": interim_.n_seeds, "widest": {k: finite(v) for k, v in interim_.widest.items()},
            "met": dict(interim_.met), "stop": interim_.stop, "reason": interim_.reason,
            "next_seeds": interim_.next_seeds, "projected": dict(interim_.projected),
            "contrasts": [[c.metric, c.name, c.estimate, finite(c.half_width)] for c in contrasts],
            "at": int(time.time() * 1000)}


def decided(spec: SweepSpec, rnd: int, rec: Mapping[str, Any]) -> RoundDecided:
    """The progress event of a recorded round."""
    sched = spec.seed_rule.schedule()
    new = 0 if rec["stop"] else len(spec.with_seed_count(rec["next_seeds"]).cells()) - len(
        spec.with_seed_count(rec["seeds"]).cells())
    widest = {k: math.inf if v is None else v for k, v in rec["widest"].items()}
    return RoundDecided(rnd, sched[rnd - 2] if rnd > 1 else 0, rec["seeds"], widest, dict(spec.seed_rule.targets),
                        dict(rec["met"]), rec["stop"], rec["reason"], rec["next_seeds"], new)


def finished(spec: SweepSpec, study) -> bool:
    """Whether the rule has no round left to run: its newest recorded round stopped (always True without a rule)."""
    if spec.seed_rule is None:
        return True
    done = recorded_rounds(study)
    return bool(done) and done[max(done)]["stop"]


def advance(spec: SweepSpec, study, hold_coordinator: Callable[[], Any], enqueue: Callable[[SweepSpec], list[str]],
            tracking_uri: str, parent_run_id: str, events: Callable[[Any], None],
            compute: Callable[..., Any] = interim) -> bool | None:
    """After a round: decide and, unless the targets are met or the maximum is reached, enqueue the next round.
    True when cells were enqueued (there is work again); None when another process held the coordinator lease
    (it, or the next call, records the round). ``hold_coordinator()`` returns a lease (``release()``) or None;
    ``enqueue(spec_n)`` enqueues the missing cells of a round, holding it."""
    if spec.seed_rule is None:
        return False
    n = seed_count(spec, study)
    spec_n = spec.with_seed_count(n)
    if not round_complete(spec_n, study):
        return _enqueue_current(spec_n, hold_coordinator, enqueue)
    rnd = spec.seed_rule.schedule().index(n) + 1
    if rnd in recorded_rounds(study):  # decided to stop (else seed_count would be past n)
        return False
    sync_parent(spec, study, tracking_uri, parent_run_id)  # the declared grid the interim's guard reads
    events(RoundAnalysing(rnd, n))
    look, contrasts = compute(spec_n, tracking_uri, lambda line: None)
    lease = hold_coordinator()
    if lease is None:
        return None
    mine = False
    try:
        rec = recorded_rounds(study).get(rnd)  # attrs are read through the storage: a record made meanwhile shows
        if rec is None:
            rec, mine = record(look, contrasts), True
            study.set_user_attr(f"{A_ROUND}{rnd}", rec)
        enqueued = [] if rec["stop"] else enqueue(spec.with_seed_count(rec["next_seeds"]))  # the record rules
    finally:
        lease.release()
    if mine:
        events(decided(spec, rnd, rec))
    sync_parent(spec, study, tracking_uri, parent_run_id)  # no lease across MLflow calls
    return bool(enqueued)


def _enqueue_current(spec_n: SweepSpec, hold_coordinator, enqueue) -> bool | None:
    """A round whose cells are not all enqueued (a kill after its record): enqueue the missing ones."""
    lease = hold_coordinator()
    if lease is None:
        return None
    try:
        return bool(enqueue(spec_n))
    finally:
        lease.release()


def sync_parent(spec: SweepSpec, study, tracking_uri: str, parent_run_id: str) -> None:
    """The parent run as the study's records say: its declared grid (tag ``nanoact.grid``, which `nanoact report`'s
    grid guard reads) and cell count at the current round, the rule (tag ``nanoact.seed_rule``), and each recorded
    round's widest half-widths as metrics ``interim/<metric>/half_width`` stepped by round. Idempotent (a round's
    metrics carry its recorded timestamp), so whoever comes next redoes it after a kill."""
    if spec.seed_rule is None:
        return
    from nanoact.tracking.store import Store

    store, spec_n = Store(tracking_uri), current(spec, study)
    run = store.client.get_run(parent_run_id)
    for k, v in {schema.GRID: grid_json(spec_n), schema.N_CELLS: str(len(spec_n.cells())),
                 schema.SEED_RULE: json.dumps(spec.seed_rule.to_dict())}.items():
        if run.data.tags.get(k) != v:
            store.set_tag(parent_run_id, k, v)
    store.log_metrics(parent_run_id, [(f"interim/{k}/half_width", v, rec["at"], rnd)
                                      for rnd, rec in sorted(recorded_rounds(study).items())
                                      for k, v in rec["widest"].items() if v is not None])


def grid_json(spec_n: SweepSpec) -> str:
    return json.dumps(spec_n.grid)
