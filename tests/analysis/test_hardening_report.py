"""`nanoact report` hardening (issue 10): folder names from experiment names, partial data, no store, dead
servers, and passwords in every output.

    python -m pytest tests/analysis/test_hardening_report.py -q
"""

from __future__ import annotations

import json
import socket
import sys
from pathlib import Path

import pytest

from nanoact import cli
from nanoact.analysis import report as report_mod
from nanoact.analysis.report import run_report
from nanoact.analysis.synthetic import SyntheticSpec, log_synthetic_runs
from nanoact.tracking import Store

SMALL = dict(activations=("relu", "gelu"), seeds=(1, 2, 3), n_contexts=64, steps=(0, 50, 100))


def run_main(monkeypatch, capsys, *args: str) -> tuple[int, str, str]:
    capsys.readouterr()
    monkeypatch.setattr(sys, "argv", ["nanoact", *args])
    try:
        cli.main()
        code = 0
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
    out, err = capsys.readouterr()
    return code, out, err


def one_error_line(err: str) -> str:
    lines = [ln for ln in err.splitlines() if ln.strip() and not ln.startswith(" ")]
    errors = [ln for ln in lines if ln.startswith("error: ")]
    assert len(errors) == 1 and lines[-1] == errors[0], err
    return errors[0]


def snapshot(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file()}


def _dead_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("name", ["../../x", "..", "ABS"])
def test_an_experiment_named_like_a_path_is_reported_under_reports(monkeypatch, capsys, uri, artifacts, tmp_path,
                                                                   name):
    name = str(tmp_path / "abs_target") if name == "ABS" else name
    log_synthetic_runs(uri, SyntheticSpec(experiment=name, **SMALL), artifact_root=artifacts)
    work = tmp_path / "w" / "a" / "b"
    work.mkdir(parents=True)
    monkeypatch.chdir(work)
    before = snapshot(tmp_path)
    code, out, err = run_main(monkeypatch, capsys, "report", "--experiment", name, "--tracking-uri", uri,
                              "--allow-anomalies")
    assert code == 0, err
    changed = {p for p, t in snapshot(tmp_path).items() if before.get(p) != t}
    outside = {p for p in changed if not p.startswith("w/a/b/reports/") and not p.startswith("mlflow.db")
               and not p.startswith("artifacts/")}
    assert outside == set(), outside  # nothing outside reports/ and the store
    folders = {Path(p).parts[4] for p in changed if p.startswith("w/a/b/reports/")}
    assert len(folders) == 1 and not next(iter(folders)).startswith(".")
    assert not (tmp_path / "abs_target").exists() and not (tmp_path / "w" / "x").exists()


def test_a_missing_final_prediction_file_is_an_error_naming_run_and_step(monkeypatch, capsys, uri, artifacts,
                                                                        tmp_path):
    log = log_synthetic_runs(uri, SyntheticSpec(experiment="partial", **SMALL), artifact_root=artifacts)
    victim = log.run_ids[("gelu", 2)]
    [final] = list(artifacts.rglob(f"{victim}/artifacts/predictions/step_100.npz"))
    final.unlink()
    code, out, err = run_main(monkeypatch, capsys, "report", "--experiment", "partial", "--tracking-uri", uri)
    line = one_error_line(err)
    assert code == 2 and victim in line and "step_100.npz" in line, line
    assert not (tmp_path / "reports").exists()  # a failed report leaves no empty folder


def test_a_missing_intermediate_step_is_left_out_with_a_note_naming_the_run(uri, artifacts, tmp_path):
    log = log_synthetic_runs(uri, SyntheticSpec(experiment="mid", **SMALL), artifact_root=artifacts)
    victim = log.run_ids[("relu", 1)]
    [mid] = list(artifacts.rglob(f"{victim}/artifacts/predictions/step_50.npz"))
    mid.unlink()
    res = run_report(["mid"], tracking_uri=uri, out_dir=tmp_path / "out", log_to_parent=False)
    s = json.loads(res.summary_json.read_text())["per_experiment"]["mid"]
    assert s["steps"] == [0, 100]
    assert any(victim in n and "[50]" in n for n in s["notes"])


def test_report_without_a_store_creates_nothing(monkeypatch, capsys, tmp_path):
    work = tmp_path / "empty"
    work.mkdir()
    monkeypatch.chdir(work)
    code, out, err = run_main(monkeypatch, capsys, "report", "--experiment", "cpu")
    assert code == 2 and "no MLflow store at" in one_error_line(err)
    assert list(work.rglob("*")) == []  # no reports/cpu/, no mlruns/mlflow.db


def test_report_with_a_dead_tracking_server_is_one_line(monkeypatch, capsys, tmp_path):
    code, out, err = run_main(monkeypatch, capsys, "report", "--experiment", "cpu", "--tracking-uri",
                              f"http://127.0.0.1:{_dead_port()}")
    assert code == 2 and "cannot reach the MLflow tracking server" in one_error_line(err)
    assert list(tmp_path.rglob("*")) == []


PASSWORD = "s3:cr/et@x y%41"  # '/', '@', ':', a space and '%'
PIECES = ("s3:cr", "cr/et", "et@x", "x y", "y%41", "yA", "s3:cr/et@x")


def test_no_password_reaches_report_summary_artifacts_or_tags(monkeypatch, uri, artifacts, tmp_path):
    log = log_synthetic_runs(uri, SyntheticSpec(experiment="pw", **SMALL), artifact_root=artifacts)
    secret_uri = f"postgresql+psycopg2://nanoact:{PASSWORD}@db.example:5432/mlflow"
    monkeypatch.setattr(report_mod, "Store", lambda _u: Store(uri))  # the store behind that URL
    res = run_report(["pw"], tracking_uri=secret_uri, out_dir=tmp_path / "out")
    texts = {"report.md": res.report_md.read_text(), "summary.json": res.summary_json.read_text()}
    shown = "postgresql+psycopg2://nanoact:***@db.example:5432/mlflow"
    assert shown in texts["report.md"] and json.loads(texts["summary.json"])["tracking_uri"] == shown
    client = Store(uri).client
    for f in ("report.md", "summary.json"):  # the copies logged to the parent run
        texts["logged " + f] = Path(client.download_artifacts(log.parent_run_id, f"report/{f}",
                                                               str(tmp_path / "dl"))).read_text()
    for rid in [log.parent_run_id, *log.run_ids.values()]:
        texts[f"tags of {rid}"] = json.dumps(client.get_run(rid).data.tags)
    for where, text in texts.items():
        for piece in PIECES:
            assert piece not in text, (where, piece)


def test_no_password_in_the_error_of_a_report_on_a_dead_database(monkeypatch, capsys):
    url = f"postgresql+psycopg2://nanoact:{PASSWORD}@127.0.0.1:{_dead_port()}/mlflow"
    code, out, err = run_main(monkeypatch, capsys, "report", "--experiment", "cpu", "--tracking-uri", url)
    line = one_error_line(err)
    assert code == 2 and "nanoact:***@127.0.0.1" in line
    for piece in PIECES:
        assert piece not in out + err, piece


# -- artifact folders of an experiment named like a path (sweep and train create experiments this way) -------------

def test_an_experiment_named_dotdot_keeps_its_artifacts_in_the_store(uri, tmp_path):
    from nanoact.errors import NanoactError
    from nanoact.tracking import ensure_experiment

    root = tmp_path.resolve()  # the store's artifact root: the folder of mlflow.db
    client = Store(uri).client
    for name in ("..", "../../x", str(tmp_path.parent / "elsewhere")):
        loc = client.get_experiment(ensure_experiment(uri, name)).artifact_location
        assert root in Path(loc.removeprefix("file://")).resolve().parents, (name, loc)
    # an experiment made before names were made safe, pointing outside the store, is refused
    client.create_experiment("old", artifact_location=f"{tmp_path.as_uri()}/..")
    with pytest.raises(NanoactError, match="outside"):
        ensure_experiment(uri, "old")


def test_train_into_an_experiment_named_dotdot_writes_only_into_the_store(monkeypatch, capsys, uri, tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\nSpeak, speak.\n" * 40)
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    tiny = ["model.n_layer=1", "model.n_embd=16", "model.n_head=2", "model.block_size=16", "train.max_iters=4",
            "train.eval_interval=2", "train.eval_iters=1", "eval.n_contexts=8", f"data.corpus={corpus}"]
    args = ["train", "--experiment", "..", "--tracking-uri", uri]
    for kv in tiny:
        args += ["--set", kv]
    code, out, err = run_main(monkeypatch, capsys, *args)
    assert code == 0, err
    assert list(work.iterdir()) == []  # no ./<run_id>/ in the working directory
    [ckpt] = list(tmp_path.rglob("model.pt"))
    [folder] = [p for p in tmp_path.iterdir() if p.is_dir() and p.name != "work"]
    assert folder.name.startswith("__-") and folder in ckpt.parents


def test_a_read_only_reports_folder_is_one_line(monkeypatch, capsys, uri, artifacts, tmp_path):
    import shutil
    import subprocess

    log_synthetic_runs(uri, SyntheticSpec(experiment="ro", **SMALL), artifact_root=artifacts)
    work = tmp_path / "work"
    (work / "reports").mkdir(parents=True)
    monkeypatch.chdir(work)
    if shutil.which("chattr") is None or subprocess.run(["chattr", "+i", str(work / "reports")],
                                                        capture_output=True).returncode != 0:
        pytest.skip("chattr +i is not available here (needs ext4 and CAP_LINUX_IMMUTABLE); chmod does not stop root")
    try:
        code, out, err = run_main(monkeypatch, capsys, "report", "--experiment", "ro", "--tracking-uri", uri)
    finally:
        subprocess.run(["chattr", "-i", str(work / "reports")], check=True)
    line = one_error_line(err)
    assert code == 2 and "reports/ro is not writable" in line, line
    assert list((work / "reports").iterdir()) == []


def test_no_password_in_the_error_tag_of_a_failed_run(uri):
    from nanoact.tracking import MlflowTracker, ensure_experiment

    secret_uri = f"postgresql+psycopg2://nanoact:{PASSWORD}@db.example:5432/mlflow"
    tracker = MlflowTracker(uri, ensure_experiment(uri, "tags"))
    tracker.tracking_uri = secret_uri  # the store as the user named it (the driver's message echoes it)
    tracker.start("cell", {})
    tracker.finish("FAILED", f"OperationalError: could not translate host name \"et@x y%41@db.example\" "
                             f"for {secret_uri}")
    tag = Store(uri).client.get_run(tracker.run_id).data.tags["nanoact.error"]
    assert "nanoact:***@db.example" in tag
    for piece in PIECES:
        assert piece not in tag, piece


@pytest.mark.parametrize("opt, value", [("--pd-margin", "0"), ("--loss-margin", "-0.01"), ("--pd-margin", "nan")])
def test_a_non_positive_margin_is_one_error_line_and_writes_nothing(monkeypatch, capsys, tmp_path, opt, value):
    monkeypatch.chdir(tmp_path)
    code, _, err = run_main(monkeypatch, capsys, "report", "--experiment", "x", "--tracking-uri",
                            f"sqlite:///{tmp_path}/none.db", opt, value)
    # a bad option is click's usage error, as for --where: exit 2 and one "Error: Invalid value for ..." line
    assert code == 2 and [ln for ln in err.splitlines() if ln.startswith("Error: ")] == [
        f"Error: Invalid value for {opt}: {float(value)}: must be a positive number"]
    assert list(tmp_path.iterdir()) == []  # no store, no reports folder


def test_margins_reach_the_equivalence_tests(uri, artifacts, tmp_path):
    from nanoact.analysis.equivalence import Margins

    log_synthetic_runs(uri, SyntheticSpec(experiment="m", **SMALL), artifact_root=artifacts)
    res = run_report(["m"], tracking_uri=uri, out_dir=tmp_path / "out", log_to_parent=False,
                     margins=Margins(pd_rel=0.25, loss=0.5))
    e = json.loads(res.summary_json.read_text())["per_experiment"]["m"]
    assert e["margins"] == {"pd_rel": 0.25, "loss": 0.5}
    eq = {h["id"]: h for h in e["hypotheses"] if h["kind"] == "tost"}
    assert eq["final_val_loss/equivalence/gelu-relu"]["margin"] == 0.5
    assert eq["pd_tv/reproducibility_equivalence/gelu-relu"]["margin"] == 0.25


def test_runs_at_different_cpu_thread_counts_get_a_note_not_an_error():
    """A thread count changes a relu run's bits (scripts/thread_bits.py); the report says when counts are mixed."""
    from types import SimpleNamespace

    from nanoact.analysis.comparable import note_thread_counts

    def runs(*devices):
        return SimpleNamespace(runs=[SimpleNamespace(tags={"nanoact.device": d}) for d in devices])

    notes: list[str] = []
    note_thread_counts(runs("cpu (x86_64, 2 threads)", "cpu (x86_64, 1 threads)", "cpu (x86_64, 2 threads)"), notes)
    assert notes == ["the CPU runs were trained at different thread counts (1 run(s) at 1, 2 run(s) at 2; tag "
                     "nanoact.device): a rerun reproduces a run bit for bit only at its recorded thread count"]
    same: list[str] = []
    note_thread_counts(runs("cpu (x86_64, 2 threads)", "cpu (x86_64, 2 threads)", "cuda (NVIDIA H100)"), same)
    assert same == []
