"""The report on real (tiny) sweeps: extra grid axes are reported one slice at a time, studies one at a time."""

from __future__ import annotations

import json

import pytest

from nanoact import sweep
from nanoact.analysis.report import run_report
from nanoact.errors import NanoactError

from test_sweep import uri, write_sweep


@pytest.mark.slow
def test_report_on_a_sweep_with_an_extra_axis(tmp_path):
    grid = ('"model.name" = ["minigpt", "charlm"]\n"model.activation" = ["relu", "gelu"]\n'
            '"train.seed" = [1, 2, 3]')
    p = write_sweep(tmp_path, iters=10, grid=grid)
    assert sweep.run(sweep.load_sweep(path=p)).complete
    with pytest.raises(NanoactError, match=r"varies model.name .*--where model.name=charlm"):
        run_report(["tiny"], tracking_uri=uri(tmp_path), out_dir=tmp_path / "r0")
    res = run_report(["tiny"], tracking_uri=uri(tmp_path), out_dir=tmp_path / "r1",
                     where={"model.name": "minigpt"}, allow_anomalies=True)
    summary = json.loads(res.summary_json.read_text())
    runs = summary["per_experiment"]["tiny"]["runs"]
    assert len(runs) == 6
    assert "minigpt" in res.report_md.read_text()
    with pytest.raises(NanoactError, match="no run of experiment 'tiny' matches"):
        run_report(["tiny"], tracking_uri=uri(tmp_path), out_dir=tmp_path / "r2", where={"model.name": "gpt"})


@pytest.mark.slow
def test_report_refuses_to_mix_studies(tmp_path):
    p = write_sweep(tmp_path, iters=10, grid='"model.activation" = ["relu", "gelu"]\n"train.seed" = [1, 2, 3]')
    sweep.run(sweep.load_sweep(path=p))
    other = sweep.load_sweep(path=p, overrides=["train.lr=1e-2"])
    other.study = "tiny-lr"
    sweep.run(other)
    with pytest.raises(NanoactError, match=r"several studies \(tiny, tiny-lr\)"):
        run_report(["tiny"], tracking_uri=uri(tmp_path), out_dir=tmp_path / "r0")
    res = run_report(["tiny"], tracking_uri=uri(tmp_path), out_dir=tmp_path / "r1", study="tiny-lr",
                     allow_anomalies=True)
    assert "tiny" in res.headline
