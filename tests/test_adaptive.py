"""Seeds on demand: the [seeds] rule in a sweep file and on the command line."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from test_sweep import write_sweep

from nanoact.errors import ConfigError
from nanoact.sweep import load_sweep

RULE = '[seeds]\nstart = 3\nstep = 2\nmax = 7\ntarget = { final_val_loss = 0.005, pd_tv = 0.002 }\n'


def _file(tmp_path, rule=RULE, seeds='"train.seed" = [42, 43, 44]'):
    p = write_sweep(tmp_path, grid=f'"model.activation" = ["relu", "gelu"]\n{seeds}')
    p.write_text(p.read_text() + rule)
    return p


def test_a_rule_starts_at_its_first_round_and_its_fingerprint_covers_the_rule(tmp_path):
    spec = load_sweep(path=_file(tmp_path))
    assert spec.grid["train.seed"] == [42, 43, 44] and spec.seed_pool == (42, 43, 44, 45, 46, 47, 48)
    assert len(spec.cells()) == 6 and spec.seed_rule.schedule() == (3, 5, 7)
    later = spec.with_seed_count(5)
    assert later.grid["train.seed"] == [42, 43, 44, 45, 46] and later.fingerprint() == spec.fingerprint()
    other = load_sweep(path=_file(tmp_path, RULE.replace("0.005", "0.004")))
    assert other.fingerprint() != spec.fingerprint()  # another target is another study
    assert load_sweep(path=_file(tmp_path, "")).fingerprint() != spec.fingerprint()


def test_the_command_line_sets_or_replaces_the_target(tmp_path):
    spec = load_sweep(path=_file(tmp_path, "", '"train.seed" = [1, 2, 3, 4, 5, 6]'))
    ruled = spec.with_seed_rule({"final_val_loss": 0.01}, 10)
    assert ruled.grid["train.seed"] == [1, 2, 3] and ruled.seed_pool == tuple(range(1, 11))
    assert ruled.seed_rule.targets == {"final_val_loss": 0.01} and ruled.seed_rule.step == 2
    assert spec.with_seed_rule({"final_val_loss": 0.01}, None).seed_rule.max == 6  # the listed seeds
    with pytest.raises(ConfigError, match="--max-seeds needs a target"):
        spec.with_seed_rule(None, 10)
    file_rule = load_sweep(path=_file(tmp_path)).with_seed_rule(None, 9)
    assert file_rule.seed_rule.max == 9 and file_rule.seed_rule.targets["pd_tv"] == 0.002


@pytest.mark.parametrize("rule,msg", [
    ("[seeds]\nstart = 3\n", "needs target"),
    ("[seeds]\nstart = 2\ntarget = { pd_tv = 0.1 }\n", "seeds.start must be an integer >= 3"),
    ("[seeds]\ntarget = { val_loss = 0.1 }\n", "unknown metric 'val_loss'"),
    ("[seeds]\nrounds = 3\ntarget = { pd_tv = 0.1 }\n", "unknown key 'rounds'"),
    ("[seeds]\nmax = 2\ntarget = { pd_tv = 0.1 }\n", "seeds.max must be an integer >= seeds.start"),
])
def test_a_bad_rule_names_the_file_and_the_key(tmp_path, rule, msg):
    p = _file(tmp_path, rule)
    with pytest.raises(ConfigError, match=msg) as e:
        load_sweep(path=p)
    assert str(p) in str(e.value)


def test_a_rule_cannot_grow_seeds_of_a_crossed_grid(tmp_path):
    p = _file(tmp_path, RULE, '"train.init_seed" = [1, 2]\n"train.data_seed" = [1, 2]')
    with pytest.raises(ConfigError, match="cannot be combined with the grid axis train.init_seed"):
        load_sweep(path=p)


# -- rounds, end to end (subprocesses on a tiny recipe) -----------------------------------------------------------
# 2 activations, 4 iterations: the widest 95% half-width of the loss difference is about ±0.006 at 3 seeds and
# ±0.004 at 5 (deterministic on CPU), so a target of ±0.005 is met in round 2.
GROW = '[seeds]\nstart = 3\nstep = 2\nmax = 7\ntarget = { final_val_loss = 0.005 }\n'
TESTS = Path(__file__).resolve().parent


def _env(**extra: str) -> dict[str, str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]), **extra}
    env.pop("MLFLOW_TRACKING_URI", None)
    env.pop("NANOACT_STORAGE", None)
    return env


def _grow_file(tmp_path) -> Path:
    p = write_sweep(tmp_path, iters=4, grid='"model.activation" = ["relu", "gelu"]\n"train.seed" = [1, 2, 3]')
    p.write_text(p.read_text() + GROW)
    return p


def _sweep(p: Path, *extra: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "nanoact.cli", "sweep", "--file", str(p), *extra], cwd=p.parent,
                          capture_output=True, text=True, timeout=600, env=_env(**env))


def _study(p: Path):
    import optuna

    from nanoact.sweep import open_storage

    return optuna.load_study(study_name="tiny", storage=open_storage(str(p.parent / "mlruns/optuna-journal.log")))


def _check_rounds(p: Path) -> dict:
    """The recorded rounds follow the rule and decide as their half-widths say; every cell of the seeds reached
    has exactly one trial, COMPLETE; the parent run declares the grown grid and logs the interim half-widths."""
    from mlflow import MlflowClient
    from optuna.trial import TrialState

    from nanoact.sweep import rounds

    spec, study = load_sweep(path=p), _study(p)
    recs = rounds.recorded_rounds(study)
    assert sorted(recs) == list(range(1, len(recs) + 1)) and len(recs) >= 2
    target = spec.seed_rule.targets["final_val_loss"]
    for i, rec in recs.items():
        assert rec["seeds"] == spec.seed_rule.schedule()[i - 1]
        assert rec["met"]["final_val_loss"] == (rec["widest"]["final_val_loss"] <= target)
        assert rec["stop"] == (i == len(recs))
        assert rec["next_seeds"] == (rec["seeds"] if rec["stop"] else spec.seed_rule.schedule()[i])
    last = recs[max(recs)]
    assert last["reason"] in ("target met", "max seeds reached")
    cells = sorted(c.key for c in spec.with_seed_count(last["seeds"]).cells())
    trials = study.get_trials(deepcopy=False)
    assert sorted(t.user_attrs["grid_key"] for t in trials) == cells  # one trial per cell, none twice
    assert all(t.state == TrialState.COMPLETE for t in trials)
    c = MlflowClient(f"sqlite:///{p.parent}/mlruns/mlflow.db")
    parent = c.get_run(study.user_attrs["mlflow_parent_run_id"])
    assert json.loads(parent.data.tags["nanoact.grid"])["train.seed"] == list(range(1, last["seeds"] + 1))
    assert study.user_attrs["nanoact.grid"]["train.seed"] == list(range(1, last["seeds"] + 1))
    assert json.loads(parent.data.tags["nanoact.seed_rule"]) == spec.seed_rule.to_dict()
    hist = c.get_metric_history(parent.info.run_id, "interim/final_val_loss/half_width")
    assert sorted((m.step, m.value) for m in hist) == [(i, r["widest"]["final_val_loss"]) for i, r in recs.items()]
    assert parent.info.status == "FINISHED"
    return recs


@pytest.mark.slow
def test_a_sweep_grows_in_rounds_to_a_met_target_with_one_trial_per_cell(tmp_path):
    p = _grow_file(tmp_path)
    r = _sweep(p)
    assert r.returncode == 0, r.stdout + r.stderr
    recs = _check_rounds(p)
    assert [rec["seeds"] for rec in recs.values()] == [3, 5] and recs[2]["reason"] == "target met"
    out = r.stdout + r.stderr  # progress lines go where the terminal shows them
    assert "round 1: 3 seeds; widest final_val_loss ±" in out and "next: 2 more seeds (4 cells" in out
    assert "round 2: 3 -> 5 seeds; widest final_val_loss ±" in out and "✓; stop: target met" in out
    st = subprocess.run([sys.executable, "-m", "nanoact.cli", "status", "--file", str(p)], cwd=tmp_path,
                        capture_output=True, text=True, timeout=120, env=_env())
    assert "10/10 cells done" in st.stdout and "round 2: 3 -> 5 seeds" in st.stdout, st.stdout + st.stderr
    assert "projected seeds per activation to meet each target: final_val_loss" in st.stdout
    again = _sweep(p)  # a rerun of a finished rule trains nothing and records nothing
    out = again.stdout + again.stderr
    assert again.returncode == 0 and "round 1:" not in out and "round 3" not in out, out
    assert rounds_of(p) == recs
    rep = subprocess.run([sys.executable, "-m", "nanoact.cli", "report", "--experiment", "tiny", "--allow-anomalies",
                          "--out", str(tmp_path / "rep")], cwd=tmp_path, capture_output=True, text=True, timeout=300,
                         env=_env())
    assert rep.returncode == 0, rep.stdout + rep.stderr
    md = (tmp_path / "rep" / "report.md").read_text()
    assert "## Sequential design (seeds on demand)" in md and "2 round(s) ran (3 -> 5 seeds per activation); it " \
        "stopped because every target was met" in md
    seq = json.loads((tmp_path / "rep" / "summary.json").read_text())["per_experiment"]["tiny"]["sequential"]
    assert seq["stopped"] == "target met" and [r["seeds"] for r in seq["rounds"]] == [3, 5] and seq["kappa"] > 1
    assert seq["contrasts"][0]["half_width"] == recs[2]["widest"]["final_val_loss"]  # the widened one decided


def rounds_of(p: Path) -> dict:
    from nanoact.sweep import rounds

    return rounds.recorded_rounds(_study(p))


@pytest.mark.slow
def test_kill_9_between_a_rounds_record_and_its_enqueue_then_a_rerun_continues(tmp_path):
    p = _grow_file(tmp_path)
    r = _sweep(p, "--plugin", "kill_plugin", NANOACT_KILL_AT="round")
    assert r.returncode == -signal.SIGKILL, r.stdout + r.stderr
    study = _study(p)
    assert list(rounds_of(p)) == [1] and rounds_of(p)[1]["next_seeds"] == 5  # recorded, the next round not queued
    assert len(study.get_trials(deepcopy=False)) == 6
    r = _sweep(p)
    assert r.returncode == 0, r.stdout + r.stderr
    out = r.stdout + r.stderr
    assert "round 1:" not in out and "round 2: 3 -> 5 seeds" in out  # round 1 is not decided again
    recs = _check_rounds(p)
    assert [rec["seeds"] for rec in recs.values()] == [3, 5]


@pytest.mark.slow
def test_two_workers_enqueue_no_round_twice(tmp_path):
    p = _grow_file(tmp_path)
    r = _sweep(p, "--workers", "2", "--oversubscribe")
    assert r.returncode == 0, r.stdout + r.stderr
    recs = _check_rounds(p)  # one trial per cell: no round's cells enqueued twice
    for i in recs:
        assert (r.stdout + r.stderr).count(f"round {i}: ") == 1  # decided and announced once


def test_a_round_is_one_line_against_its_targets():
    from nanoact.events import RoundDecided
    from nanoact.progress import round_line

    ev = RoundDecided(2, 3, 5, {"final_val_loss": 0.0071, "pd_tv": 0.0015}, {"final_val_loss": 0.005, "pd_tv": 0.002},
                      {"final_val_loss": False, "pd_tv": True}, False, "", 7, 10)
    assert round_line(ev, 90.0) == ("round 2: 3 -> 5 seeds; widest final_val_loss ±0.0071 (target ±0.005); "
                                    "pd_tv ±0.0015 ✓; next: 2 more seeds (10 cells, ~15m00s)")
    first = RoundDecided(1, 0, 3, {"final_val_loss": float("inf")}, {"final_val_loss": 0.005},
                         {"final_val_loss": False}, True, "max seeds reached", 3, 0)
    assert round_line(first) == "round 1: 3 seeds; widest final_val_loss ±inf (target ±0.005); stop: max seeds reached"


@pytest.mark.parametrize("args,msg", [
    (["--until", "final_val_loss"], "expected METRIC=HALF_WIDTH"),
    (["--until", "final_val_loss=abc"], "expected METRIC=HALF_WIDTH"),
    (["--until", "val_loss=0.01"], "unknown metric 'val_loss'"),
    (["--until", "pd_tv=-1"], "must be a positive number"),
    (["--until", "pd_tv=0.1", "--until", "pd_tv=0.2"], "pd_tv is given twice"),
    (["--max-seeds", "9"], "--max-seeds needs a target"),
])
def test_bad_until_options_are_one_error_line_exit_2(tmp_path, args, msg):
    from click.testing import CliRunner

    from nanoact.cli import cli

    p = write_sweep(tmp_path, grid='"model.activation" = ["relu", "gelu"]\n"train.seed" = [1, 2, 3]')
    r = CliRunner().invoke(cli, ["sweep", "--file", str(p), *args, "--dry-run"])
    assert r.exit_code == 2 and msg in r.output, r.output
    assert not (tmp_path / "mlruns").exists()  # nothing created


class _Lease:
    def release(self) -> None:
        pass


def test_two_processes_deciding_one_round_record_and_enqueue_it_once(tmp_path, monkeypatch):
    """Process B decides round 1 while A computes its interim (the race two idle workers run): A then finds B's
    record under the lease, records nothing, announces nothing, and enqueues no cell twice."""
    import optuna

    from nanoact.analysis.sequential import decide
    from nanoact.sweep import coordinator, rounds

    monkeypatch.setattr(rounds, "sync_parent", lambda *a: None)  # the MLflow side is covered end to end above
    spec = load_sweep(path=_file(tmp_path))
    study = optuna.create_study()
    coordinator.enqueue_round(spec, study)
    for _ in spec.cells():
        study.tell(study.ask(), 1.0)
    seen: list = []
    look = decide(spec.seed_rule, 3, {"final_val_loss": [0.01], "pd_tv": [0.001]})

    def advance(compute):
        return rounds.advance(spec, study, _Lease, lambda s: coordinator.enqueue_round(s, study), "", "",
                              seen.append, compute)

    def b_decides_meanwhile(spec_n, uri, progress):
        assert advance(lambda *a: (look, [])) is True  # B records and enqueues round 2
        return decide(spec.seed_rule, 3, {"final_val_loss": [0.001], "pd_tv": [0.001]}), []  # A would stop

    assert advance(b_decides_meanwhile) is False
    assert list(rounds.recorded_rounds(study)) == [1] and rounds.recorded_rounds(study)[1]["next_seeds"] == 5
    keys = [t.user_attrs["grid_key"] for t in study.get_trials(deepcopy=False)]
    assert sorted(keys) == sorted(c.key for c in spec.with_seed_count(5).cells())  # one trial per cell
    assert [type(e).__name__ for e in seen] == ["RoundAnalysing", "RoundAnalysing", "RoundDecided"]
    assert study.user_attrs["nanoact.grid"]["train.seed"] == [42, 43, 44, 45, 46]


def test_the_reports_sequential_section_says_when_the_sweep_has_not_stopped():
    from nanoact.analysis.sequential_report import render_md

    d = {"describe": "start 3 seeds", "kappa": 1.2, "found": True, "where": "x", "stopped": None,
         "rule": {"target": {"final_val_loss": 0.005}},
         "rounds": [{"round": 1, "seeds": 3, "widest": {"final_val_loss": 0.007}, "met": {"final_val_loss": False},
                     "stop": False, "reason": "", "next_seeds": 5}],
         "contrasts": [{"metric": "final_val_loss", "contrast": "gelu - relu", "estimate": 0.001, "half_width": 0.007}]}
    text = "\n".join(render_md(d))
    assert "it has not stopped" in text and "interim" in text and "not detected (the CI includes 0)" in text
    assert "| 1 | 3 | ±0.007 | add seeds: 5 per activation |" in text
    assert "could not be read" in "\n".join(render_md({**d, "found": False}))


def test_the_dry_run_names_the_rule(tmp_path):
    from click.testing import CliRunner

    from nanoact.cli import cli

    r = CliRunner().invoke(cli, ["sweep", "--file", str(_file(tmp_path)), "--dry-run"])
    assert r.exit_code == 0, r.output
    assert "seeds on demand: start 3 seeds, add 2 per round up to 7" in r.output
    assert "final_val_loss ±0.005, pd_tv ±0.002; the cells below are round 1's" in r.output


def test_a_factorial_level_from_a_seeds_on_demand_sweep_is_named_in_the_sections_notes(monkeypatch):
    """Its fixed-design intervals are not widened for the stopping rule; the factorial section says so."""
    from types import SimpleNamespace

    from nanoact.analysis import report
    from nanoact.analysis.factorial_report import FactorialSection

    designs = {"fixed": None, "grown": {"describe": "start 3 seeds, add 2 per round up to 10"}}
    monkeypatch.setattr(report.seqrep, "design", lambda client, run_id, storage, uri: designs[run_id])
    analyses = [SimpleNamespace(key=k, parent_run_id=k, sequential="unset") for k in designs]
    sec = FactorialSection("experiment", ["fixed", "grown"], ["relu", "gelu"], "nested", 3)
    report._sequential_designs(analyses, sec, SimpleNamespace(client=None), None, "sqlite:///x.db")
    assert [an.sequential for an in analyses] == [None, designs["grown"]]
    assert sec.notes == ["grown is a seeds-on-demand sweep (start 3 seeds, add 2 per round up to 10): the intervals "
                         "here are fixed-design (not widened for its stopping rule); its own Sequential design section "
                         "gives the widened intervals of its primary contrasts"]
