"""A CPU run keeps freed memory for reuse (``nanoact.runtime``), so its fresh activation tensors are not faulted in
page by page; measured in fresh processes, where the allocator starts from glibc's defaults.

    python -m pytest tests/test_runtime.py -q
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest
from conftest import TEXT

from nanoact import runtime, trainer

PAGE_FAULTS = """
    import contextlib, json, resource, sys, torch
    from nanoact import runtime, trainer
    from nanoact.config import ModelConfig
    from nanoact.data import CharDataset
    from nanoact.models import build_model
    kept = runtime.keep_freed_memory() if sys.argv[1] == "keep" else False
    torch.set_num_threads(2)
    data = CharDataset({text!r} * 10)
    model = build_model(ModelConfig(), data.vocab.size, seed=0).eval()  # the cpu recipe's minigpt 4x128
    es = data.eval_set(1024, 64, seed=0)
    trainer.predict(model, es, torch.device("cpu"), contextlib.nullcontext)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    trainer.predict(model, es, torch.device("cpu"), contextlib.nullcontext)
    print(json.dumps({{"kept": kept, "faults": resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before}}))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's allocator")
def test_keeping_freed_memory_removes_the_page_faults_of_a_prediction_eval():
    def run(mode: str) -> dict:
        code = textwrap.dedent(PAGE_FAULTS.format(text=TEXT))
        done = subprocess.run([sys.executable, "-c", code, mode], capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-2000:]
        return json.loads(done.stdout.strip().splitlines()[-1])

    default, kept = run("default"), run("keep")
    assert kept["kept"] is True
    assert default["faults"] > 1000  # every 4 MB activation of a 32-context chunk is faulted in afresh
    assert kept["faults"] < default["faults"] / 4  # about 1/50 on an idle machine, 1/10 beside the test suite


def test_a_cpu_run_applies_it_before_training(tiny_cfg, tiny_data, monkeypatch):
    calls = []
    monkeypatch.setattr(runtime, "keep_freed_memory", lambda: calls.append(1) or True)
    trainer.train(tiny_cfg, data=tiny_data)
    assert calls == [1]
