"""Where experiments come from: the top-level sweeps/ folder (shipped in the wheel), and the user's ./sweeps/."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from click.testing import CliRunner

from nanoact import sweep
from nanoact.cli import cli

REPO = Path(__file__).resolve().parents[1]
BUILTINS = {"cpu", "full", "partial", "smoke", "sources", "zoo"}


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
