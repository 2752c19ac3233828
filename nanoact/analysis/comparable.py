"""Whether an experiment's runs can be compared at all: one evaluation set (else an error), one compute dtype
(else an error unless allowed), and a note when they were trained at different CPU thread counts."""

from __future__ import annotations

import re
from collections import defaultdict

from nanoact.analysis.runs import ExperimentRuns, RunRecord
from nanoact.errors import NanoactError
from nanoact.tracking import schema


def _listed(rs: list[RunRecord]) -> str:
    """The first four runs of a group, named by id, activation and seed, and how many more there are."""
    return ", ".join(f"{r.run_id} ({r.activation} s{r.seed})" for r in rs[:4]) + (
        f" and {len(rs) - 4} more" if len(rs) > 4 else "")


def eval_set(er: ExperimentRuns, notes: list[str]) -> str | None:
    """The evaluation set's hash the runs share (None when none is tagged); an error when they differ."""
    groups: dict[str, list[RunRecord]] = defaultdict(list)
    untagged = []
    for r in er.runs:
        h = r.tags.get(schema.EVAL_SET_SHA256)
        (groups[h] if h else untagged).append(r)
    if len(groups) > 1:
        parts = [f"eval set {h[:12]}…: {_listed(rs)}" for h, rs in sorted(groups.items(), key=lambda kv: -len(kv[1]))]
        raise NanoactError(
            f"experiment {er.name!r}: runs were evaluated on different evaluation sets, so their PD is meaningless "
            f"— {'; '.join(parts)}; rerun them on one eval set or report them as separate experiments"
        )
    if untagged:
        notes.append(f"{len(untagged)} run(s) lack the nanoact.eval_set_sha256 tag; their stored targets were "
                     "compared instead: " + ", ".join(r.run_id for r in untagged))
    return next(iter(groups), None)


def run_dtype(r: RunRecord) -> str | None:
    """The dtype a run computed in: param ``train.dtype_resolved``, or for runs logged before ``auto`` existed
    their ``train.dtype`` (then always float32 or bfloat16); None when neither says."""
    d = r.params.get("train.dtype_resolved") or r.params.get("train.dtype")
    return d if d and d != "auto" else None


def dtypes(er: ExperimentRuns, notes: list[str], allow_mixed: bool) -> str | None:
    """One compute dtype per analysis: PD between a bf16 and a float32 run measures the dtype as well as the
    activation or seed. Mixed dtypes are an error unless ``allow_mixed`` (then a note says so)."""
    groups: dict[str, list[RunRecord]] = defaultdict(list)
    unknown = []
    for r in er.runs:
        d = run_dtype(r)
        (groups[d] if d else unknown).append(r)
    if unknown:
        notes.append(f"{len(unknown)} run(s) logged no train.dtype_resolved or train.dtype param; their compute dtype "
                     "is unknown: " + ", ".join(r.run_id for r in unknown))
    if len(groups) > 1:
        parts = [f"{d}: {_listed(rs)}" for d, rs in sorted(groups.items())]
        if not allow_mixed:
            raise NanoactError(
                f"experiment {er.name!r}: runs computed in different dtypes ({'; '.join(parts)}), so PD and loss "
                "differences mix the dtype with the activation and seed; rerun them in one dtype (--set "
                "train.dtype=...), or pass --allow-mixed-dtypes to analyse them together anyway")
        notes.append("runs computed in different dtypes were analysed together (--allow-mixed-dtypes): "
                     + "; ".join(f"{d}: {len(rs)} run(s)" for d, rs in sorted(groups.items()))
                     + "; differences between them include the dtype's")
    return ", ".join(sorted(groups)) or None


def note_thread_counts(er: ExperimentRuns, notes: list[str]) -> None:
    """Runs trained at different CPU thread counts (the ``nanoact.device`` tag, e.g. "cpu (x86_64, 2 threads)"): a
    note, since a thread count changes some kernels' summation order, hence a run's bits (measured for ReLU on
    PyTorch's CPU build: scripts/thread_bits.py), so a run is reproduced exactly only at its own thread count. It
    acts like one more source of run-to-run noise, not a bias, so it is not an error as mixed dtypes are."""
    counts: dict[str, int] = defaultdict(int)
    for r in er.runs:
        m = re.search(r"^cpu .*?(\d+) threads?\)", r.tags.get(schema.DEVICE, ""))
        if m:
            counts[m.group(1)] += 1
    if len(counts) > 1:
        notes.append("the CPU runs were trained at different thread counts ("
                     + ", ".join(f"{n} run(s) at {t}" for t, n in sorted(counts.items(), key=lambda kv: int(kv[0])))
                     + "; tag nanoact.device): a rerun reproduces a run bit for bit only at its recorded thread count")
