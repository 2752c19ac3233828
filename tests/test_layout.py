"""Where experiments come from: the top-level sweeps/ folder (shipped in the wheel), and the user's ./sweeps/."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

from click.testing import CliRunner

from nanoact import sweep
from nanoact.cli import cli

REPO = Path(__file__).resolve().parents[1]
BUILTINS = {"adaptive", "cpu", "full", "partial", "smoke", "sources", "zoo"}


def test_builtin_experiments_live_in_the_top_level_sweeps_folder():
    assert sweep.builtin_sweeps_dir().resolve() == REPO / "sweeps"
    assert BUILTINS <= set(sweep.experiments())
    assert not (REPO / "nanoact" / "sweeps").exists()


def test_users_own_sweeps_folder_wins_and_is_listed(tmp_path):
    (tmp_path / "sweeps").mkdir()
    text = (REPO / "sweeps" / "smoke.toml").read_text().replace('description = "', 'description = "my copy: ')
    (tmp_path / "sweeps" / "smoke.toml").write_text(text)
    (tmp_path / "sweeps" / "mine.toml").write_text(text.replace('name = "smoke"', 'name = "mine"'))
    assert sweep.load_sweep("smoke").description.startswith("my copy")
    assert sweep.load_sweep("mine").name == "mine"
    out = CliRunner().invoke(cli, ["experiments"]).output
    lines = {line.split()[0]: line for line in out.splitlines()}
    assert "[./sweeps/smoke.toml]" in lines["smoke"] and "[./sweeps/mine.toml]" in lines["mine"]
    assert "[built-in]" in lines["cpu"]


def test_the_wheel_ships_the_experiments_and_finds_them_from_an_empty_folder(tmp_path):
    dist, site, empty = tmp_path / "dist", tmp_path / "site", tmp_path / "empty"
    empty.mkdir()
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(dist),
                    str(REPO)], check=True, capture_output=True, timeout=300)
    (wheel,) = dist.glob("nanoact-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {f"nanoact/sweeps/{n}.toml" for n in BUILTINS} <= names
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(site), str(wheel)],
                   check=True, capture_output=True, timeout=300)
    code = (f"import sys; sys.path.insert(0, {str(site)!r}); import nanoact; "
            f"assert nanoact.__file__.startswith({str(site)!r}), nanoact.__file__; "
            "from nanoact.cli import main; sys.argv = ['nanoact', 'experiments']; main()")
    r = subprocess.run([sys.executable, "-c", code], cwd=empty, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert {line.split()[0] for line in r.stdout.splitlines() if "[built-in]" in line} == BUILTINS


def test_listing_experiments_imports_no_pytorch(tmp_path):
    """`nanoact experiments` only reads TOML: no model or activation is resolved, so PyTorch is never imported
    (its import alone takes about a second)."""
    code = ("import sys; from nanoact.cli import main; sys.argv = ['nanoact', 'experiments']\n"
            "try:\n    main()\nexcept SystemExit:\n    pass\nassert 'torch' not in sys.modules, 'torch imported'")
    r = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert {line.split()[0] for line in r.stdout.splitlines()} >= BUILTINS


def _mlflow_uses(path: Path) -> list[str]:
    """Where a module imports MLflow or makes its own MlflowClient (a command line that runs ``mlflow server`` in
    a child process, as nanoact/server.py does, is neither)."""
    import ast

    text = path.read_text()
    found = [f"line {text[:i].count(chr(10)) + 1}: MlflowClient(" for i in range(len(text))
             if text.startswith("MlflowClient(", i)]
    for node in ast.walk(ast.parse(text)):
        names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                 else [node.module or ""] if isinstance(node, ast.ImportFrom) and node.level == 0 else [])
        found += [f"line {node.lineno}: import {n}" for n in names if n == "mlflow" or n.startswith("mlflow.")]
    return found


def test_only_the_tracking_package_talks_to_mlflow():
    """One door to the store: no module outside nanoact/tracking/ imports MLflow or makes an MlflowClient."""
    package = REPO / "nanoact"
    inside = package / "tracking"
    outside = {str(p.relative_to(REPO)): _mlflow_uses(p) for p in sorted(package.rglob("*.py"))
               if inside not in p.parents}
    assert {p: uses for p, uses in outside.items() if uses} == {}
    assert any(_mlflow_uses(p) for p in inside.glob("*.py"))  # the check sees imports where they are
    assert "mlflow" in (package / "server.py").read_text()  # server.py runs `python -m mlflow server`, a child


def test_the_layout_check_finds_an_import_and_a_client(tmp_path):
    f = tmp_path / "m.py"
    f.write_text("def f(uri):\n    from mlflow.entities import Metric\n    import mlflow\n"
                 "    return MlflowClient(uri)\n")
    assert _mlflow_uses(f) == ["line 4: MlflowClient(", "line 2: import mlflow.entities", "line 3: import mlflow"]


def test_tracking_does_not_import_the_server_module():
    """Probing a store is the store's job; nanoact/server.py keeps processes and ports."""
    for p in (REPO / "nanoact" / "tracking").glob("*.py"):
        assert "nanoact.server" not in p.read_text() and "from nanoact import server" not in p.read_text(), p.name


def test_docs_tracking_names_every_name_of_the_schema():
    """docs/TRACKING.md explains the names nanoact/tracking/schema.py defines: none is left unexplained (MLflow's
    own tags that nanoact merely sets are MLflow's to document)."""
    from nanoact.tracking import schema

    doc = (REPO / "docs" / "TRACKING.md").read_text()
    assert "nanoact/tracking/schema.py" in doc
    names = [v for k, v in vars(schema).items() if k.isupper() and isinstance(v, str) and not v.startswith("mlflow.")]
    assert [n for n in names if n not in doc] == []
