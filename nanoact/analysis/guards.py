"""Guards: checks that make the known failures of activation ablations loud (docs/REPORT.md, "Guards").

The failures: every "activation" silently ran the same one (an if/elif chain that falls back to ReLU), results
duplicated, PD computed on different inputs. Each check takes plain data and returns a ``GuardResult``. A failed
guard is an anomaly: the report still writes everything, puts the failure at the top, and the CLI exits non-zero
unless ``--allow-anomalies``. A guard that lacks the data to decide is UNVERIFIED: not an anomaly, never a PASS.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from nanoact.analysis.grid import Grid
from nanoact.analysis.runs import MissingCell, RunRecord
from nanoact.tracking import schema

# continuous: ties mean duplication
IDENTICAL_OUTCOMES = (schema.FINAL_VAL_LOSS, schema.BEST_VAL_LOSS, schema.FINAL_TRAIN_LOSS)


@dataclass
class GuardResult:
    name: str  # stable id, e.g. "identical-predictions"
    title: str  # what it checks, in words
    passed: bool  # False: an anomaly
    details: list[str] = field(default_factory=list)  # one line per failure (or per note when passed)
    verified: bool = True  # False: the data to check this were missing (shown as UNVERIFIED, not PASS)

    @property
    def status(self) -> str:
        return "FAIL" if not self.passed else "PASS" if self.verified else "UNVERIFIED"

    def anomalies(self) -> list[str]:
        return [] if self.passed else [f"{self.name}: {d}" for d in self.details]


def _differs(a: RunRecord, b: RunRecord) -> str:
    if a.activation != b.activation:
        return f"different activations ({a.activation} vs {b.activation})"
    return f"same activation, different seeds ({a.seed} vs {b.seed})"


def check_identical_outcomes(runs: Sequence[RunRecord], keys: Sequence[str] = IDENTICAL_OUTCOMES) -> GuardResult:
    """Two different cells with bit-identical continuous outcomes: the treatment (or seed) was not applied."""
    details = []
    for key in keys:
        groups: dict[float, list[RunRecord]] = defaultdict(list)
        for r in runs:
            v = r.metric(key)
            if math.isfinite(v):
                groups[v].append(r)
        for v, group in groups.items():
            for i in range(len(group)):
                for j in range(i + 1, len(group)):
                    a, b = group[i], group[j]
                    details.append(f"{key} = {v!r} for both {a.label()} and {b.label()}: {_differs(a, b)}")
    return GuardResult("identical-outcomes", "no two cells share a bit-identical loss", not details, details)


def check_identical_predictions(runs: Sequence[RunRecord], fingerprints: Mapping[str, str], step: int) -> GuardResult:
    """Two different cells whose stored probabilities are byte-identical (sha256 of the probs array)."""
    groups: dict[str, list[RunRecord]] = defaultdict(list)
    for r in runs:
        if r.run_id in fingerprints:
            groups[fingerprints[r.run_id]].append(r)
    details = []
    for fp, group in groups.items():
        for i in range(len(group)):
            for j in range(i + 1, len(group)):
                a, b = group[i], group[j]
                details.append(
                    f"step-{step} predictions of {a.label()} and {b.label()} are byte-identical "
                    f"(sha256 {fp[:12]}…): {_differs(a, b)}"
                )
    return GuardResult("identical-predictions", "no two cells share a prediction fingerprint", not details, details)


def check_variance(outcomes: Iterable[tuple[str, float, float, float]]) -> GuardResult:
    """Exactly zero between-activation or residual variance is an alarm, not a finding.

    With real noise it has probability zero: the treatment was not applied, or results were duplicated.

    ``outcomes`` yields (label, SS_A, SS_E, SS_total) per analysed outcome.
    """
    details = []
    for label, ss_a, ss_e, ss_tot in outcomes:
        scale = max(ss_tot, 1e-300)
        if ss_a <= 1e-12 * scale:
            details.append(f"{label}: between-activation sum of squares is {ss_a:.3g} (zero): identical treatments?")
        if ss_e <= 1e-12 * scale:
            details.append(f"{label}: residual sum of squares is {ss_e:.3g} (zero): duplicated or fabricated results?")
    return GuardResult("zero-variance", "activation and residual variance are both non-zero", not details, details)


def check_pd_self(
    self_pd: Mapping[str, Mapping[str, float]],
    asymmetry: Sequence[tuple[str, str, str, float]],
) -> GuardResult:
    """PD(a, a) = 0 for every run and metric; PD(a, b) = PD(b, a) (the PD code path itself)."""
    details = []
    for run_id, vals in self_pd.items():
        bad = {k: v for k, v in vals.items() if v != 0.0}
        if bad:
            details.append(f"PD({run_id}, copy of itself) is not 0: "
                           + ", ".join(f"{k}={v:.3g}" for k, v in bad.items()))
    for a, b, metric, gap in asymmetry:
        details.append(f"{metric}({a}, {b}) differs from {metric}({b}, {a}) by {gap:.3g}")
    return GuardResult("pd-self-check", "PD(a,a)=0 and PD symmetric", not details, details)


NEAR_IDENTITY_RATIO = 0.2  # honest runs of the cpu experiment: 0.88-1.17
# pd_tv at step 0 between copies of one model (same weights, same dtype) is float rounding at most
# (``python scripts/init_rounding_pd.py``, float16-stored probabilities, the zoo's size and full's): 0 across CPU
# thread counts; float64 vs float32 forward <= 1e-7, which bounds float32 rounding; bfloat16 autocast vs float32
# 2.7e-4 to 9.7e-4, which bounds bfloat16 rounding. Each floor is far above its dtype's bound (100x for float32,
# 2x for bfloat16); a dtype the runs do not record gets the larger one.
INIT_FLOORS = {"float32": 1e-5, "bfloat16": 2e-3}


def init_floor(dtypes: str | None) -> float:
    """The step-0 floor for runs computed in ``dtypes`` (comma-separated, as the analysis records them)."""
    names = [d.strip() for d in (dtypes or "").split(",") if d.strip()]
    return max((INIT_FLOORS.get(d, max(INIT_FLOORS.values())) for d in names), default=max(INIT_FLOORS.values()))


def check_near_identity(activations: Sequence[str], ratio, n_seeds: int, init_same=None,
                        floor: float = INIT_FLOORS["float32"]) -> GuardResult:
    """Alarm when two activations at the same seed predict far more alike than one activation across seeds.

    ``ratio[a][b]`` = median over seeds of PD(a, s; b, s) / mean within-activation PD of a and b (different seeds).
    A different activation should move predictions at least about as much as reseeding does; a ratio below
    NEAR_IDENTITY_RATIO means the two "activations" are nearly the same model at each seed: the activation was
    not applied, with or without small nondeterministic jitter that defeats the byte-identity guards.

    ``init_same[a][b]`` = median over seeds of pd_tv(a, s; b, s) at step 0 (None when step 0 was not evaluated;
    NaN for a pair whose runs did not start from the same weights in the same dtype). With the same weights the
    activation is the only difference at step 0, and copies of one model differ there by rounding at most, below
    ``floor`` (``init_floor`` of the runs' dtype). A pair whose ratio is low but which differed at step 0 by
    ``floor`` or more was not the same model at initialisation; it passes, and the details say that its trained
    models predict alike. (A fallback that acted only in training mode would pass too; the run-start wiring check
    evaluates in eval mode as well.)
    """
    title = (f"same-seed PD across activations is not far below seed-to-seed PD (ratio >= {NEAR_IDENTITY_RATIO}), "
             f"or was >= {floor:g} at step 0")
    if n_seeds < 2 or len(activations) < 2:
        return GuardResult("near-identity", title, True, ["needs at least 2 activations and 2 seeds"], verified=False)
    details, notes = [], []
    for i in range(len(activations)):
        for j in range(i + 1, len(activations)):
            r = float(ratio[i][j])
            if r >= NEAR_IDENTITY_RATIO:
                continue
            pair = f"{activations[i]} vs {activations[j]}: same-seed PD is {r:.3g} x the seed-to-seed PD"
            init = None if init_same is None else float(init_same[i][j])
            if init is not None and init >= floor:
                notes.append(f"{pair} at the final step, but at step 0 (same initial weights) their pd_tv was "
                             f"{init:.2g} (>= {floor:g}, above rounding): not the same model at initialisation; "
                             "the trained models predict alike")
                continue
            at0 = ("" if init_same is None else "; step 0 is not comparable (different parameter counts or dtypes)"
                   if math.isnan(init) else f"; at step 0 (same initial weights) it was {init:.2g}, below "
                   f"{floor:g}")
            details.append(f"{pair}{at0}: the two activations are nearly the same model (was the activation "
                           "applied?)")
    return GuardResult("near-identity", title, not details, details or notes)


def check_cells(missing: Sequence[MissingCell], duplicates: Sequence[tuple[RunRecord, RunRecord]],
                grid: Grid | None = None, outside: Sequence[RunRecord] = ()) -> GuardResult:
    """Every cell of the grid has exactly one FINISHED run. The grid is the one the sweep declared when there is
    one (a missing cell is named with its state: never started, queued, running, failed, interrupted), else the
    activation × seed combinations the runs found span, and the guard's title says which."""
    details = [f"missing cell {m.describe()}" for m in missing]
    for old, new in duplicates:
        details.append(
            f"duplicated cell {new.activation} s{new.seed}: FINISHED runs {old.run_id} (grid key {old.grid_key!r}) "
            f"and {new.run_id} (grid key {new.grid_key!r}); the newer one is analysed"
        )
    details += [f"run {r.run_id} ({r.activation} s{r.seed}, grid key {r.grid_key!r}) is no cell of the declared grid; "
                "it is analysed with the others" for r in outside]
    if grid is None:
        return GuardResult("cells", "complete grid, one FINISHED run per activation × seed", not details, details)
    if grid.declared:
        title = (f"complete declared grid: one FINISHED run for each of its {len(grid.cells)} cells"
                 + (f" (of {grid.n_declared} declared, in the --where slice)" if grid.n_declared != len(grid.cells)
                    else "") + f"; grid {grid.source}")
        note = f"states of missing cells from {grid.states_from}"
    else:
        title = ("one FINISHED run per activation × seed seen in the runs found (no declared grid: "
                 f"{grid.source})")
        note = "grid inferred from the runs found: " + grid.source
    return GuardResult("cells", title, not details, details or [note])


def _modules(tag: str | None) -> frozenset[str] | None:
    if tag is None:
        return None
    return frozenset(s.strip() for s in tag.split(";") if s.strip())


def check_activation_modules(runs: Sequence[RunRecord]) -> GuardResult:
    """The activation modules a run logged match what its configured activation builds.

    Uses ``nanoact.activation_modules_expected`` when logged; otherwise requires a non-empty set that differs
    between activations. Also fails runs whose ``nanoact.wiring_check`` starts with "failed".
    """
    details, notes = [], []
    by_act: dict[str, set[frozenset[str]]] = defaultdict(set)
    for r in runs:
        found = _modules(r.tags.get(schema.ACTIVATION_MODULES))
        expected = _modules(r.tags.get(schema.ACTIVATION_MODULES_EXPECTED))
        wiring = r.tags.get(schema.WIRING_CHECK, "")
        if wiring.startswith("failed"):
            details.append(f"{r.label()}: wiring check {wiring}")
        if found is None:
            notes.append(f"{r.label()}: no nanoact.activation_modules tag; the wiring cannot be checked")
            continue
        if not found:
            details.append(f"{r.label()}: no activation module was found in the model")
            continue
        if expected is not None and found != expected:
            details.append(
                f"{r.label()}: model has {sorted(found)} but activation {r.activation!r} builds {sorted(expected)}"
            )
        if expected is None:
            by_act[r.activation].add(found)
    acts = sorted(by_act)
    for i in range(len(acts)):
        for j in range(i + 1, len(acts)):
            shared = by_act[acts[i]] & by_act[acts[j]]
            for s in shared:
                details.append(
                    f"activations {acts[i]!r} and {acts[j]!r} logged the same modules {sorted(s)}: "
                    "the configured activation was not applied"
                )
    passed = not details
    return GuardResult("activation-modules", "logged activation modules match the configured activation",
                       passed, details if details else notes, verified=not notes)
