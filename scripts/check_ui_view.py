"""Headless-Chromium check of the view `nanoact ui --experiment` links to: with two studies in one experiment, the
page shows the newest study's FINISHED cells and nothing of the other study (nor a KILLED attempt).

Usage: .venv/bin/python scripts/check_ui_view.py [--keep DIR] [--screenshot PNG]
Needs chromium (Debian: apt-get install chromium) and the corpus (NANOACT_DATA_DIR or ~/.cache/nanoact).
Prints what it found and exits 0 when the check passes, 1 when it fails, 2 when chromium is missing.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SWEEP = """name = "twostudies"
description = "two studies, one experiment"
[config.model]
name = "minigpt"
n_layer = 1
n_head = 2
n_embd = 16
block_size = 16
[config.train]
max_iters = 10
batch_size = 4
eval_interval = 5
eval_iters = 2
warmup_iters = 2
lr_decay_iters = 10
threads = 1
[config.eval]
n_contexts = 32
[grid]
"model.activation" = ["relu", "gelu"]
"train.seed" = [1, 2]
"""
NAMES = ["minigpt-relu-s1", "minigpt-relu-s2", "minigpt-gelu-s1", "minigpt-gelu-s2"]


def nanoact(*args: str, cwd: Path) -> str:
    r = subprocess.run([sys.executable, "-m", "nanoact.cli", *args], cwd=cwd, capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"nanoact {' '.join(args)} failed ({r.returncode}): {r.stderr.strip()}")
    return r.stdout


def chromium(url: str, *args: str) -> subprocess.CompletedProcess:
    exe = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    profile = tempfile.mkdtemp(prefix="nanoact-chromium-")
    try:
        return subprocess.run([exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                               "--disable-background-networking", "--disable-component-update", "--disable-sync",
                               f"--user-data-dir={profile}", "--window-size=1600,900",
                               "--virtual-time-budget=20000", *args, url],
                              capture_output=True, text=True, timeout=180)
    finally:
        shutil.rmtree(profile, ignore_errors=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--keep", type=Path, help="work in this folder and keep it (default: a temporary one)")
    ap.add_argument("--screenshot", type=Path, help="also save a screenshot of the view here")
    a = ap.parse_args()
    if not (shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")):
        print("chromium is not installed (Debian: apt-get install chromium); nothing checked", file=sys.stderr)
        return 2
    work = a.keep or Path(tempfile.mkdtemp(prefix="nanoact-ui-check-"))
    work.mkdir(parents=True, exist_ok=True)
    (work / "twostudies.toml").write_text(SWEEP)
    t0 = time.monotonic()
    nanoact("sweep", "--file", "twostudies.toml", "--study", "older", "--set", "train.max_iters=6", cwd=work)
    nanoact("sweep", "--file", "twostudies.toml", cwd=work)  # the default study, started last: the newest
    from mlflow import MlflowClient

    c = MlflowClient(f"sqlite:///{work.resolve()}/mlruns/mlflow.db")
    exp = c.get_experiment_by_name("twostudies")
    killed = c.create_run(exp.experiment_id, run_name="killed-attempt",
                          tags={"nanoact.study": "twostudies", "nanoact.role": "cell"})
    c.set_terminated(killed.info.run_id, "KILLED")
    print(f"two studies swept in {time.monotonic() - t0:.0f} s ({work})")

    from nanoact import server

    port = server.free_port()
    ui = subprocess.Popen([sys.executable, "-m", "nanoact.cli", "ui", "--experiment", "twostudies", "--port",
                           str(port)], cwd=work, stdout=subprocess.PIPE, text=True, start_new_session=True)
    try:
        url = ""
        while not url:
            line = ui.stdout.readline()
            if not line:
                sys.exit("nanoact ui exited before it was ready")
            m = re.search(r"ready: (\S+)", line)
            url = m.group(1) if m else ""
        print(f"linked view: {url}")
        for _ in range(3):  # the page may still be loading when the virtual time budget ends: try again
            dom = chromium(url, "--dump-dom").stdout
            if "matching runs" in dom:
                break
        if a.screenshot:
            chromium(url, f"--screenshot={a.screenshot.resolve()}")
    finally:
        os.killpg(ui.pid, signal.SIGINT)
        ui.wait(timeout=60)
    shown = [n for n in NAMES if re.search(re.escape(n) + r"\s*<", dom)]
    other = re.findall(r"minigpt-\w+-s\d \(older\)", dom)
    problems = []
    if sorted(shown) != sorted(NAMES):
        problems.append(f"expected the newest study's 4 runs, found {shown}")
    if other:
        problems.append(f"runs of the other study are shown: {sorted(set(other))}")
    if "killed-attempt" in dom:
        problems.append("a KILLED attempt is shown")
    count = re.search(r"(\d+)\s*matching runs", re.sub(r"<[^>]+>", "", dom))
    if not count or count.group(1) != "4":
        problems.append(f"the page says {count.group(0) if count else 'no run count'!r}, not '4 matching runs'")
    for p in problems:
        print(f"FAIL: {p}")
    if not problems:
        print("ok: the linked view shows only the newest study's 4 FINISHED runs")
    if a.keep is None:
        shutil.rmtree(work, ignore_errors=True)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
