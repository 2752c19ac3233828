"""Acceptance: nanoGPT's CPU recipe on minigpt reaches nanoGPT's quality on Tiny Shakespeare.

nanoGPT's own train.py gets val loss 1.8857 after 2000 iterations with this recipe on a 2-core machine; nanoact
must reach <= 1.90. About 70 s on an idle 2-core machine, so it is marked slow (CI runs it).
"""

from __future__ import annotations

import os

import pytest

from nanoact.config import RunConfig
from nanoact.data import resolve_corpus
from nanoact.errors import DataError
from nanoact.tracking import MemoryTracker
from nanoact.trainer import train


@pytest.mark.slow
def test_cpu_recipe_matches_nanogpt_quality():
    try:
        resolve_corpus("tinyshakespeare", download=False)
    except DataError as e:
        if os.environ.get("CI") == "true":
            raise
        pytest.skip(f"Tiny Shakespeare not available offline: {e}")
    cfg = RunConfig()  # the defaults are nanoGPT's CPU recipe (seed 1337 as nanoGPT)
    cfg.train.device = "cpu"
    cfg.train.checkpoint = False
    tracker = MemoryTracker()
    res = train(cfg, tracker=tracker)
    assert res.iters == 2000
    assert [h["step"] for h in res.history] == list(range(0, 2001, 250))
    assert res.metrics["final/val_loss"] <= 1.90, res.metrics
    assert tracker.tags["nanoact.wiring_check"] == "passed"
