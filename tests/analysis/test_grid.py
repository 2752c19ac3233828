"""The report's grid: the one the sweep declared (parent run tag nanoact.grid), else inferred from the runs found.

Synthetic runs only (fast); real sweeps stopped part-way are in tests/test_report_grid.py.
"""

from __future__ import annotations

import json

import pytest

from nanoact.analysis import guards as gd
from nanoact.analysis.report import run_report
from nanoact.analysis.runs import load_experiment
from nanoact.analysis.synthetic import SyntheticSpec, log_synthetic_runs
from nanoact.errors import NanoactError
from nanoact.tracking import Store

SMALL = dict(activations=("relu", "gelu"), seeds=(42, 43), n_contexts=64, steps=(0, 50))


def _cells_guard(er) -> gd.GuardResult:
    return gd.check_cells(er.missing, er.duplicates, er.grid, er.outside_grid)


@pytest.mark.slow
def test_a_declared_activation_without_runs_fails_the_cells_guard(uri, artifacts, tmp_path):
    # the sweep declared swish too, but was stopped before its first cell: its runs found are a complete 2 x 2
    declared = {"model.activation": ["relu", "gelu", "swish"], "train.seed": [42, 43]}
    log_synthetic_runs(uri, SyntheticSpec(experiment="part", declared_grid=declared, **SMALL), artifact_root=artifacts)
    res = run_report(["part"], tracking_uri=uri, out_dir=tmp_path / "out", log_to_parent=False)
    cells = [a for a in res.anomalies if a.startswith("cells:")]
    assert [c.split(":", 2)[1].strip() for c in cells] == ["missing cell swish s42", "missing cell swish s43"]
    assert all("no run: never started, or queued" in c for c in cells)  # no Optuna study to tell which
    assert res.headline.startswith("GUARDS FAILED")
    md = res.report_md.read_text()
    assert "All guards passed" not in md and "GUARD FAILED: cells" in md
    assert "2 of 3 declared activations × 2 seeds, 4 of 6 declared cells" in md
    e = json.loads(res.summary_json.read_text())["per_experiment"]["part"]
    assert e["grid"]["declared"] and e["grid"]["n_cells"] == 6 and e["activations"] == ["gelu", "relu", "swish"]
    assert [(m["activation"], m["seed"], m["state"]) for m in e["missing_cells"]] == [
        ("swish", "42", "never_started"), ("swish", "43", "never_started")]


def test_a_complete_declared_grid_passes_and_the_headline_says_its_size(uri, artifacts, tmp_path):
    declared = {"model.activation": ["relu", "gelu"], "train.seed": [42, 43]}
    log_synthetic_runs(uri, SyntheticSpec(experiment="whole", declared_grid=declared, **SMALL), artifact_root=artifacts)
    res = run_report(["whole"], tracking_uri=uri, out_dir=tmp_path / "out", log_to_parent=False)
    assert res.anomalies == []
    assert "(2 activations × 2 seeds)" in res.headline
    guard = next(g for g in json.loads(res.summary_json.read_text())["per_experiment"]["whole"]["guards"]
                 if g["name"] == "cells")
    assert guard["status"] == "PASS" and "complete declared grid" in guard["title"]


@pytest.mark.slow
def test_runs_without_a_declared_grid_keep_the_inferred_rule_and_say_so(uri, artifacts, tmp_path):
    log_synthetic_runs(uri, SyntheticSpec(experiment="foreign", nanoact_tags=False, parent=False, **SMALL),
                       artifact_root=artifacts)
    res = run_report(["foreign"], tracking_uri=uri, out_dir=tmp_path / "out")
    assert res.anomalies == []
    assert "as found: no grid was declared" in res.headline
    guard = next(g for g in json.loads(res.summary_json.read_text())["per_experiment"]["foreign"]["guards"]
                 if g["name"] == "cells")
    assert guard["status"] == "PASS" and "no declared grid" in guard["title"]
    assert "inferred from the runs found" in guard["title"]
    # a parent run that declares no grid (another tool's, or a tag lost): the same rule, and the reason
    log_synthetic_runs(uri, SyntheticSpec(experiment="untagged", **SMALL), artifact_root=artifacts)
    er = load_experiment(Store(uri).reader(), "untagged", tracking_uri=uri)
    g = _cells_guard(er)
    assert g.passed and not er.grid.declared and "does not declare its grid" in g.title
    # the inferred rule still names a missing cell among the activations and seeds it saw
    log_synthetic_runs(uri, SyntheticSpec(experiment="gap", failed=(("gelu", 43),), **SMALL), artifact_root=artifacts)
    g = _cells_guard(load_experiment(Store(uri).reader(), "gap", tracking_uri=uri))
    assert not g.passed and g.details[0].startswith("missing cell gelu s43: failed (newest run FAILED); runs ")


def test_the_declared_grid_is_sliced_like_the_runs(uri, artifacts):
    # the zoo's shape: a model axis besides activation and seed; these runs are the charlm slice only
    declared = {"model.name": ["charlm", "minigpt"], "model.activation": ["relu", "gelu"], "train.seed": [42, 43]}
    log_synthetic_runs(uri, SyntheticSpec(experiment="zoo", declared_grid=declared, **SMALL), artifact_root=artifacts)
    client = Store(uri).reader()
    with pytest.raises(NanoactError, match=r"declared grid varies model.name .*--where model.name=charlm"):
        load_experiment(client, "zoo")
    er = load_experiment(client, "zoo", where={"model.name": "charlm"})
    g = _cells_guard(er)
    assert g.passed and "its 4 cells (of 8 declared, in the --where slice)" in g.title
    with pytest.raises(NanoactError, match="no run of experiment 'zoo' matches"):
        load_experiment(client, "zoo", where={"model.name": "minigpt"})


def test_a_run_outside_the_declared_grid_fails_the_cells_guard(uri, artifacts):
    declared = {"model.activation": ["relu", "gelu"], "train.seed": [42]}
    log_synthetic_runs(uri, SyntheticSpec(experiment="extra", declared_grid=declared, **SMALL), artifact_root=artifacts)
    er = load_experiment(Store(uri).reader(), "extra")
    g = _cells_guard(er)
    assert er.missing == [] and len(er.outside_grid) == 2
    assert not g.passed and all("is no cell of the declared grid" in d for d in g.details)


def test_an_explicit_storage_without_the_study_is_an_error(uri, artifacts, tmp_path):
    declared = {"model.activation": ["relu", "gelu"], "train.seed": [42, 43]}
    log_synthetic_runs(uri, SyntheticSpec(experiment="st", declared_grid=declared, **SMALL), artifact_root=artifacts)
    with pytest.raises(NanoactError, match="--storage: the Optuna journal .*nope.log does not exist"):
        load_experiment(Store(uri).reader(), "st", storage=str(tmp_path / "nope.log"))
