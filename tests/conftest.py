"""Shared fixtures: a tiny inline corpus, tiny configs, and no writes outside tmp_path."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from nanoact.config import RunConfig, apply_overrides
from nanoact.data import CharDataset

SHARED_CORPUS = Path(__file__).resolve().parents[2] / "shared" / "data" / "tinyshakespeare.txt"

TEXT = (
    "First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\nSpeak, speak.\n\n"
    "First Citizen:\nYou are all resolved rather to die than to famish?\n\nAll:\nResolved. resolved.\n\n"
    "First Citizen:\nFirst, you know Caius Marcius is chief enemy to the people.\n"
) * 20


def tiny_overrides(**extra) -> dict:
    base = {
        "model.n_layer": 2, "model.n_head": 2, "model.n_embd": 16, "model.block_size": 16,
        "train.max_iters": 20, "train.batch_size": 4, "train.eval_interval": 10, "train.eval_iters": 2,
        "train.warmup_iters": 2, "train.lr_decay_iters": 20, "train.device": "cpu",
        "eval.n_contexts": 32, "train.threads": 1,
    }
    base.update(extra)
    return base


@pytest.fixture
def tiny_cfg() -> RunConfig:
    return apply_overrides(RunConfig(), tiny_overrides())


@pytest.fixture(scope="session")
def tiny_data() -> CharDataset:
    return CharDataset(TEXT)


@pytest.fixture
def corpus_file(tmp_path) -> Path:
    p = tmp_path / "corpus.txt"
    p.write_text(TEXT, encoding="utf-8")
    return p


@pytest.fixture(autouse=True)
def _isolate(tmp_path, monkeypatch):
    """Never touch ./mlruns or the user's cache: every test runs in its own folder."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    if "NANOACT_DATA_DIR" not in os.environ and SHARED_CORPUS.exists():
        monkeypatch.setenv("NANOACT_DATA_DIR", str(SHARED_CORPUS.parent))
    threads = torch.get_num_threads()
    det = torch.are_deterministic_algorithms_enabled()
    yield
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(det)
