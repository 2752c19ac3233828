"""benchmarks/full_gpu.py: refuses without CUDA; its arithmetic, run on a CPU at toy size."""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "full_gpu.py"


def _module():
    spec = importlib.util.spec_from_file_location("full_gpu", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.slow  # a fresh interpreter importing torch
@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_refuses_without_cuda_in_one_line():
    r = subprocess.run([sys.executable, str(SCRIPT)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr.count("\n") == 1 and r.stderr.startswith("error:") and "CUDA" in r.stderr


def test_stated_peaks_pick_the_most_specific_entry():
    mod = _module()
    assert mod.stated_peak("NVIDIA H100 PCIe", "bfloat16") == 756e12
    assert mod.stated_peak("NVIDIA H100 80GB HBM3", "bfloat16") == 989e12
    assert mod.stated_peak("NVIDIA A100-SXM4-80GB", "bfloat16") == 312e12
    assert mod.stated_peak("Tesla T4", "bfloat16") is None


@pytest.mark.slow
def test_measure_prints_every_figure_on_a_cpu_at_toy_size():
    lines = _module().measure("cpu", 4, peak_tflops=1.0, overrides=(
        "model.n_layer=1", "model.n_embd=48", "train.batch_size=2", "train.eval_iters=1", "eval.n_contexts=8"))
    text = "\n".join(lines)
    assert "dtype float32 (train.dtype=auto)" in text and "timed over the last 2" in text
    assert re.search(r"training: [\d.]+ ms/iter, [\d,]+ tokens/s", text)
    assert re.search(r"MFU: [\d.]+% of 1 TFLOP/s", text)
    assert "one prediction eval (8 contexts at block 256)" in text
    cell, grid = map(float, re.search(r"cell \(5000 iterations, 11 eval steps\) ([\d.]+) min; .* ([\d.]+) min",
                                      text).groups())
    assert grid == pytest.approx(9 * cell, abs=9 * 0.05 + 0.05)  # both rounded to 0.1 min
