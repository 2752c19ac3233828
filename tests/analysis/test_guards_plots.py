"""Guards on hand-made runs; plot functions return Figures without touching pyplot state.

    python -m pytest tests/analysis/test_guards_plots.py -q
"""

from __future__ import annotations

import subprocess
import sys

import numpy as np
from matplotlib.figure import Figure

from nanoact.analysis import guards as gd
from nanoact.analysis import plots as pl
from nanoact.analysis.runs import MissingCell, RunRecord


def _run(rid: str, act: str, seed: str, metrics=None, **tags) -> RunRecord:
    # keyword nanoact_activation_modules -> tag nanoact.activation_modules
    return RunRecord(run_id=rid, run_name=rid, experiment="x", activation=act, seed=seed,
                     grid_key=f"a={act}|s={seed}", status="FINISHED", start_time=0, end_time=None, parent_id=None,
                     artifact_uri="", params={},
                     tags={k.replace("nanoact_", "nanoact.", 1): v for k, v in tags.items()},
                     metrics=metrics or {})


def test_identical_outcomes_flag_different_cells_only():
    runs = [_run("a", "relu", "1", {"final/val_loss": 1.5}), _run("b", "gelu", "1", {"final/val_loss": 1.5}),
            _run("c", "relu", "2", {"final/val_loss": 1.5000001})]
    g = gd.check_identical_outcomes(runs)
    assert not g.passed and len(g.details) == 1
    assert "different activations (relu vs gelu)" in g.details[0]
    assert g.anomalies()[0].startswith("identical-outcomes: ")
    assert gd.check_identical_outcomes(runs[:1] + runs[2:]).passed


def test_identical_predictions_also_catch_ignored_seeds():
    runs = [_run("a", "relu", "1"), _run("b", "relu", "2"), _run("c", "gelu", "1")]
    g = gd.check_identical_predictions(runs, {"a": "f" * 64, "b": "f" * 64, "c": "0" * 64}, step=100)
    assert not g.passed and "different seeds" in g.details[0]


def test_variance_guard():
    assert not gd.check_variance([("final val loss", 0.0, 0.1, 1.0)]).passed
    assert not gd.check_variance([("final val loss", 0.2, 0.0, 1.0)]).passed
    assert gd.check_variance([("final val loss", 0.2, 0.1, 1.0)]).passed


def test_activation_module_guard():
    ok = _run("a", "gelu", "1", nanoact_activation_modules="GELU(approximate='none')",
              nanoact_activation_modules_expected="GELU(approximate='none')", nanoact_wiring_check="passed")
    assert gd.check_activation_modules([ok]).passed
    wrong = _run("b", "gelu", "2", nanoact_activation_modules="ReLU()",
                 nanoact_activation_modules_expected="GELU(approximate='none')")
    g = gd.check_activation_modules([ok, wrong])
    assert not g.passed and "builds [\"GELU(approximate='none')\"]" in g.details[0]
    # no expected tag (foreign runs): the sets must differ between activations
    r1 = _run("c", "relu", "1", nanoact_activation_modules="ReLU();ReLU()")
    r2 = _run("d", "swish", "1", nanoact_activation_modules="ReLU()")
    g = gd.check_activation_modules([r1, r2])
    assert not g.passed and "logged the same modules" in g.details[0]
    empty = _run("e", "relu", "1", nanoact_activation_modules="")
    assert "no activation module" in gd.check_activation_modules([empty]).details[0]
    failed = _run("f", "relu", "1", nanoact_wiring_check="failed: logits are identical")
    assert "wiring check failed" in gd.check_activation_modules([failed]).details[0]
    untagged = gd.check_activation_modules([_run("g", "relu", "1")])
    # not an anomaly, but never a PASS: nothing was checked
    assert untagged.passed and not untagged.verified and untagged.status == "UNVERIFIED"
    assert "cannot be checked" in untagged.details[0] and untagged.anomalies() == []
    assert gd.check_activation_modules([ok]).status == "PASS"


def test_cells_guard():
    g = gd.check_cells([MissingCell("gelu", "3", [])], [])
    assert not g.passed and g.details == ["missing cell gelu s3: no run at all"]
    assert gd.check_cells([], []).passed


def test_pd_self_guard():
    assert gd.check_pd_self({"r": {"pd_tv": 0.0}}, []).passed
    g = gd.check_pd_self({"r": {"pd_tv": 1e-9}}, [("a", "b", "js", 1e-3)])
    assert not g.passed and len(g.details) == 2


def test_plot_functions_return_figures_without_pyplot_state():
    import matplotlib.pyplot as plt

    before = plt.get_fignums()
    rng = np.random.default_rng(0)
    steps = [0, 10, 20]
    curves = {a: {m: {s: (steps, list(3 - np.arange(3) * 0.5 + rng.normal(0, 0.05, 3))) for s in "123"}
                  for m in ("train/loss", "val/loss")} for a in ("relu", "gelu")}
    figs = [
        pl.loss_curves(curves),
        pl.final_metrics({"final val loss": {"relu": {"1": 1.0, "2": 1.1}, "gelu": {"1": 0.9, "2": 0.95}}}),
        pl.pd_heatmap(rng.random((4, 4)), ["r1", "r2", "g1", "g2"], ["relu", "relu", "gelu", "gelu"], 20),
        pl.pd_heatmap(rng.random((50, 50)), [f"r{i}" for i in range(50)], ["a"] * 25 + ["b"] * 25, 20),
        pl.within_pd_over_steps(steps, {"relu": {"pd_tv": ([0.1, 0.2, 0.3], [0.01, np.nan, 0.02])}}, ["pd_tv"]),
        pl.accuracy_vs_pd([0.5, 0.6, 0.55], [0.1, 0.2, np.nan], ["relu", "gelu", "gelu"]),
    ]
    assert all(isinstance(f, Figure) for f in figs)
    assert plt.get_fignums() == before  # nothing registered with pyplot


def test_imports_do_no_work():
    code = ("import sys; import nanoact.analysis, nanoact.analysis.plots; "
            "print('mlflow' in sys.modules, 'matplotlib.pyplot' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]


def _relu_copies(rng, k, n, jitter):
    """pd_tv tables of k 'activations' that are all the same model per seed, plus run-level jitter."""
    z = rng.standard_normal((1, n, 16, 5)) + jitter * rng.standard_normal((k, n, 16, 5))
    p = np.exp(z)
    p /= p.sum(axis=-1, keepdims=True)
    p = p.reshape(k * n, 16, 5)
    h = 0.5 * np.abs(p[:, None] - p[None, :]).sum(axis=-1).mean(axis=-1)
    return h.reshape(k, n, k, n)


def test_near_identity_guard_fires_on_jittered_relu_copies_and_is_silent_on_honest_runs():
    from nanoact.analysis import pdtests as pt

    rng = np.random.default_rng(0)
    acts = ["relu", "gelu", "swish"]
    for jitter in (0.0, 1e-4, 1e-2, 0.1):  # bit-identical, then nondeterministic copies of one model
        d = _relu_copies(rng, 3, 3, jitter)
        g = gd.check_near_identity(acts, pt.same_seed_ratio(d), 3)
        assert not g.passed and len(g.details) == 3 and "nearly the same model" in g.details[0]
    # honest runs: each activation its own model (plus seed and run effects)
    z = (rng.standard_normal((3, 1, 16, 5)) + 0.7 * rng.standard_normal((1, 3, 16, 5))
         + 0.5 * rng.standard_normal((3, 3, 16, 5)))
    p = np.exp(z)
    p /= p.sum(axis=-1, keepdims=True)
    p = p.reshape(9, 16, 5)
    d = (0.5 * np.abs(p[:, None] - p[None, :]).sum(axis=-1).mean(axis=-1)).reshape(3, 3, 3, 3)
    assert gd.check_near_identity(acts, pt.same_seed_ratio(d), 3).status == "PASS"
    one = gd.check_near_identity(["relu"], np.zeros((1, 1)), 3)
    assert one.status == "UNVERIFIED"


def test_near_identity_guard_reads_step_0_where_the_same_seed_means_the_same_weights():
    """A low final ratio fails unless the pair already differed at step 0 by more than its dtype's rounding can."""
    acts = ["relu", "smelu_05"]
    low = np.array([[1.0, 0.13], [0.13, 1.0]])

    def init(v):
        return np.array([[0.0, v], [v, 0.0]])

    f32, bf16 = gd.init_floor("float32"), gd.init_floor("bfloat16")
    assert f32 == 1e-5 and bf16 == 2e-3 and gd.init_floor(None) == gd.init_floor("float32, bfloat16") == bf16
    # no step 0; a copy, bit-identical or float32-rounding apart; a bfloat16 copy up to a dtype change apart
    for values, floor in ((None, f32), (init(0.0), f32), (init(1e-7), f32), (init(9.7e-4), bf16)):
        g = gd.check_near_identity(acts, low, 3, values, floor)
        assert g.status == "FAIL" and "nearly the same model" in g.details[0]
        assert (f"below {floor:g}" in g.details[0]) == (values is not None)
    # charlm at 200 iterations in the zoo (float32): relu vs smelu_05 differ at init (0.004), gelu vs swish less
    # (7.7e-4 in scripts/init_rounding_pd.py's setting), and both train into alike models
    for v in (0.004, 7.7e-4):
        g = gd.check_near_identity(acts, low, 3, init(v), f32)
        assert g.status == "PASS" and len(g.details) == 1 and "not the same model at initialisation" in g.details[0]
        assert g.anomalies() == []
    assert gd.check_near_identity(acts, low, 3, init(7.7e-4), bf16).status == "FAIL"  # within bfloat16 rounding
    nan = np.full((2, 2), np.nan)  # other parameter shapes or dtypes: step 0 says nothing
    g = gd.check_near_identity(acts, low, 3, nan, f32)
    assert g.status == "FAIL" and "step 0 is not comparable" in g.details[0]
    high = np.array([[1.0, 0.9], [0.9, 1.0]])  # step 0 decides nothing when the final ratio is high
    assert gd.check_near_identity(acts, high, 3, np.zeros((2, 2)), f32) == gd.GuardResult("near-identity", g.title,
                                                                                           True)


def test_near_identity_guard_is_silent_on_the_committed_cpu_runs():
    # the honest cpu experiment (docs/results/cpu): every pd_tv between its 50 runs at step 2000
    import json
    from pathlib import Path

    from nanoact.analysis import pdtests as pt

    e = json.loads((Path(__file__).parents[2] / "docs/results/cpu/summary.json").read_text())["per_experiment"]["cpu"]
    res = pt.analyse_pd(np.array(e["heatmap"]["pd_tv"]), [r["activation"] for r in e["runs"]],
                        [r["seed"] for r in e["runs"]], "pd_tv", 2000, np.random.default_rng(0))
    assert gd.check_near_identity(res.activations, res.same_seed_ratio, len(set(res.seeds))).status == "PASS"


def test_near_identity_guard_passes_the_committed_zoo_charlm_runs_only_through_step_0():
    """The zoo's charlm (docs/results/zoo, float32): four pairs of activations train into alike models (ratio below
    0.2), which the ratio alone calls copies; their step-0 same-seed pd_tv (same weights) clears the float32 floor."""
    import json
    from collections import defaultdict
    from pathlib import Path

    from nanoact.analysis import pdtests as pt

    e = json.loads((Path(__file__).parents[2] / "docs/results/zoo/summary.json").read_text())["per_experiment"][
        "zoo[model.name=charlm]"]
    res = pt.analyse_pd(np.array(e["heatmap"]["pd_tv"]), [r["activation"] for r in e["runs"]],
                        [r["seed"] for r in e["runs"]], "pd_tv", 200, np.random.default_rng(0))
    at0 = defaultdict(list)
    for p in e["pairs"]:
        if p["kind"] == "same_seed":
            at0[frozenset((p["activation_a"], p["activation_b"]))].append(p["pd_tv"][0])
    acts = res.activations
    init = np.array([[np.median(at0[frozenset((a, b))]) if a != b else 0.0 for b in acts] for a in acts])
    n = len(set(res.seeds))
    alone = gd.check_near_identity(acts, res.same_seed_ratio, n)
    assert alone.status == "FAIL" and len(alone.details) == 4
    g = gd.check_near_identity(acts, res.same_seed_ratio, n, init, gd.init_floor(e["evaluation"]["dtypes"]))
    assert g.status == "PASS" and len(g.details) == 4 and init[init > 0].min() > 10 * gd.init_floor("float32")


def test_the_guards_table_of_many_levels_has_one_row_per_outcome_naming_its_levels():
    """A guard that passes at every level is one row ("all 3"); where it fails at one, that level has its own row."""
    from types import SimpleNamespace

    from nanoact.analysis.guards import GuardResult
    from nanoact.analysis.render import guard_md

    def level(key, ok):
        return SimpleNamespace(key=key, guards=[GuardResult("cells", "complete grid", True),
                                                GuardResult("identical-predictions", "no twins", ok,
                                                            [] if ok else ["relu/42 = gelu/42"])])

    md = "\n".join(guard_md([level("m=a", True), level("m=b", False), level("m=c", True)], multi=True))
    assert "| cells (all 3) | complete grid | PASS | — |" in md
    assert "| identical-predictions (m=a, m=c) | no twins | PASS | — |" in md
    assert "| identical-predictions (m=b) | no twins | **FAIL** | relu/42 = gelu/42 |" in md
    assert "**GUARD FAILED: identical-predictions** (m=b)" in md
    assert md.count("\n| ") == 4  # the header and three rows
