"""The faster prediction eval stores exactly the numbers the full forward pass gave.

    python -m pytest tests/test_trainer_eval.py -q
"""

from __future__ import annotations

import contextlib

import numpy as np
import pytest
import torch

from nanoact.config import ModelConfig
from nanoact.models import build_model, model_names
from nanoact.trainer import predict


@torch.no_grad()
def _full_forward_probs(model, contexts, chunk=512):
    """The eval as it was: the whole forward pass, last position sliced afterwards."""
    out = []
    for i in range(0, len(contexts), chunk):
        logits, _ = model(contexts[i : i + chunk])
        out.append(torch.softmax(logits[:, -1, :].float(), dim=-1))
    return torch.cat(out).numpy()


@pytest.mark.parametrize("name", model_names())
def test_forward_last_is_bit_identical_to_the_full_forward(name, tiny_data):
    cfg = ModelConfig(name=name, n_layer=3, n_embd=32, n_head=4, block_size=16, dropout=0.1,
                      activation="relu,gelu,smelu_05")
    model = build_model(cfg, tiny_data.vocab.size, seed=3).eval()
    es = tiny_data.eval_set(300, 16, seed=0)
    want = _full_forward_probs(model, es.contexts)
    got = predict(model, es, torch.device("cpu"), contextlib.nullcontext)
    assert got.dtype == np.float32 and got.shape == want.shape
    assert np.array_equal(got, want)  # bit for bit, so also after the float16 cast of the artifact
    assert np.array_equal(predict(model, es, torch.device("cpu"), contextlib.nullcontext, chunk=7), want)


def test_cpu_recipe_predictions_are_bit_identical_at_the_default_chunk(tiny_data):
    """At the size a ``cpu`` cell runs (minigpt 4x128, block 64), in the default chunks, on this machine's BLAS."""
    model = build_model(ModelConfig(activation="gelu"), tiny_data.vocab.size, seed=1).eval()
    es = tiny_data.eval_set(96, 64, seed=0)  # three chunks of 32
    want = _full_forward_probs(model, es.contexts)
    before = torch.get_num_threads()
    try:
        for threads in (1, 2):  # every op on one core, or whole chunks per core
            torch.set_num_threads(threads)
            assert np.array_equal(predict(model, es, torch.device("cpu"), contextlib.nullcontext), want)
            assert torch.get_num_threads() == threads  # the process's setting is restored
    finally:
        torch.set_num_threads(before)


def test_forward_last_skips_work_but_not_positions(tiny_data):
    """Changing an early token still changes the last position's output: attention saw every position."""
    cfg = ModelConfig(n_layer=2, n_embd=16, n_head=2, block_size=8)
    model = build_model(cfg, tiny_data.vocab.size, seed=0).eval()
    x = torch.zeros(1, 8, dtype=torch.long)
    y = x.clone()
    y[0, 0] = 1
    with torch.inference_mode():
        assert not torch.equal(model.forward_last(x), model.forward_last(y))
        assert model.forward_last(x).shape == (1, tiny_data.vocab.size)
