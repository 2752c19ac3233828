"""The report on real (tiny) sweeps: extra grid axes are reported one slice at a time, studies one at a time."""

from __future__ import annotations

import json

import pytest
from test_sweep import uri, write_sweep

from nanoact import sweep
from nanoact.analysis.report import run_report
from nanoact.errors import NanoactError


def test_report_on_a_sweep_with_an_extra_axis(tmp_path):
    grid = ('"model.name" = ["minigpt", "charlm"]\n"model.activation" = ["relu", "gelu"]\n'
            '"train.seed" = [1, 2, 3]')
    p = write_sweep(tmp_path, iters=10, grid=grid)
    assert sweep.run(sweep.load_sweep(path=p)).complete
    # the whole grid: each model analysed as its own activation x seed design, and the factorial section first
    whole = run_report(["tiny"], tracking_uri=uri(tmp_path), out_dir=tmp_path / "r0", allow_anomalies=True)
    fac = json.loads(whole.summary_json.read_text())["factorial"]
    assert fac["factor"] == "model.name" and fac["levels"] == ["charlm", "minigpt"] and fac["seeds"] == "crossed"
    assert "factorial/final_val_loss/interaction" in {h["id"] for h in fac["hypotheses"]}
    md = whole.report_md.read_text()
    assert md.index("## Does the activation effect depend on model.name?") < md.index("## Level `model.name=charlm`")
    res = run_report(["tiny"], tracking_uri=uri(tmp_path), out_dir=tmp_path / "r1",
                     where={"model.name": "minigpt"}, allow_anomalies=True)
    summary = json.loads(res.summary_json.read_text())
    runs = summary["per_experiment"]["tiny"]["runs"]
    assert len(runs) == 6
    # the declared grid is sliced like the runs: the charlm half is not a missing half
    e = summary["per_experiment"]["tiny"]
    cells = next(g for g in e["guards"] if g["name"] == "cells")
    assert cells["status"] == "PASS" and e["grid"]["n_cells"] == 6 and e["grid"]["n_declared"] == 12
    assert "minigpt" in res.report_md.read_text()
    with pytest.raises(NanoactError, match="no run of experiment 'tiny' matches"):
        run_report(["tiny"], tracking_uri=uri(tmp_path), out_dir=tmp_path / "r2", where={"model.name": "gpt"})


def test_report_refuses_to_mix_studies(tmp_path):
    p = write_sweep(tmp_path, iters=10, grid='"model.activation" = ["relu", "gelu"]\n"train.seed" = [1, 2, 3]')
    sweep.run(sweep.load_sweep(path=p))
    other = sweep.load_sweep(path=p, overrides=["train.lr=1e-2"]).with_study("tiny-lr")
    sweep.run(other)
    with pytest.raises(NanoactError, match=r"several studies \(tiny, tiny-lr\)"):
        run_report(["tiny"], tracking_uri=uri(tmp_path), out_dir=tmp_path / "r0")
    res = run_report(["tiny"], tracking_uri=uri(tmp_path), out_dir=tmp_path / "r1", study="tiny-lr",
                     allow_anomalies=True)
    assert "tiny" in res.headline


def test_report_decomposes_a_real_sources_sweep(tmp_path):
    # the sweep engine crosses activation x init seed x data seed; the report must see 9 blocks, not 1 seed
    grid = ('"model.activation" = ["relu", "gelu"]\n"train.init_seed" = [1, 2, 3]\n"train.data_seed" = [1, 2, 3]')
    p = write_sweep(tmp_path, iters=10, grid=grid)
    assert sweep.run(sweep.load_sweep(path=p)).complete
    res = run_report(["tiny"], tracking_uri=uri(tmp_path), out_dir=tmp_path / "r", allow_anomalies=True,
                     log_to_parent=False)
    e = json.loads(res.summary_json.read_text())["per_experiment"]["tiny"]
    assert len(e["runs"]) == 18 and e["duplicates"] == [] and len(e["seeds"]) == 9
    assert {(r["init_seed"], r["data_seed"]) for r in e["runs"]} == {(str(i), str(d)) for i in (1, 2, 3)
                                                                     for d in (1, 2, 3)}
    cats = {c["name"]: c["mean"] for c in e["sources"]["categories"]}
    assert all(v > 0 for v in cats.values())
    assert any(h["family"] == "sources" for h in e["hypotheses"])
