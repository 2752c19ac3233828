"""validate_model_config rejects exactly what build_model rejects, with the same message, building nothing.

    python -m pytest tests/test_validate_model.py -q
"""

from __future__ import annotations

import dataclasses
import itertools

import pytest
import torch.nn as nn

from nanoact import activations, models
from nanoact.config import ModelConfig
from nanoact.errors import NanoactError
from nanoact.models import build_model, model_names, register_model, validate_model_config
from nanoact.models.transformers import MiniGPT


def _outcome(fn, cfg, vocab=8):
    try:
        fn(cfg, vocab)
    except NanoactError as e:
        return type(e).__name__, str(e)
    return None


BAD = [
    dict(name="nosuchmodel"),
    dict(name="minigpt", n_embd=10, n_head=4),
    dict(name="nanotransformer", n_embd=30, n_head=4),
    dict(name="charlm", n_embd=6, n_head=4),
    dict(name="convlm", n_embd=9, n_head=2),
    dict(name="hybridlm", n_embd=9, n_head=2),
    dict(name="tinylstm", n_head=2),  # n_head is unused by an LSTM: setting it is an error
    dict(activation="nosuch"),
    dict(activation="smelu(beta=-1)"),
    dict(activation="relu,gelu", n_layer=3),
    dict(activation="gelu(beta=1)"),
    dict(activation="relu,"),
    dict(activation="smelu(beta=0.5"),
    dict(activation="Relu"),
]


@pytest.mark.parametrize("bad", BAD, ids=[str(b) for b in BAD])
def test_every_config_build_model_rejects_is_rejected_with_the_same_error(bad):
    cfg = dataclasses.replace(ModelConfig(n_layer=2, n_embd=16, n_head=2, block_size=8), **bad)
    want = _outcome(build_model, cfg)
    assert want is not None, "build_model accepted a config listed as bad"
    assert _outcome(validate_model_config, cfg) == want


def test_agrees_with_build_model_over_a_grid_of_shapes_and_models():
    specs = ["relu", "swiglu", "gelu,smelu_05", "smelu(beta=2)", "identity"]
    for name, n_embd, n_head, act in itertools.product(model_names(), (6, 8, 12), (1, 3, 4), specs):
        cfg = ModelConfig(name=name, n_layer=2, n_embd=n_embd, n_head=n_head, block_size=8, activation=act)
        assert _outcome(validate_model_config, cfg) == _outcome(build_model, cfg), cfg


def test_a_factory_that_rejects_its_values_is_caught_without_building_a_model(monkeypatch):
    class Picky(nn.Module):
        def __init__(self, k: float = 1.0):
            super().__init__()
            if k > 2:
                raise ValueError("k must be <= 2")

    activations.register_activation("picky_t", Picky, params={"k": 1.0})
    try:
        cfg = ModelConfig(n_layer=1, n_embd=8, n_head=2, activation="picky_t(k=3)")
        want = _outcome(build_model, cfg)
        assert want is not None and "k must be <= 2" in want[1]
        built = []
        monkeypatch.setattr(MiniGPT, "__init__", lambda *a, **k: built.append(1) or None)
        assert _outcome(validate_model_config, cfg) == want
        assert built == []  # no model was constructed
    finally:
        activations.unregister_activation("picky_t")


def test_a_registered_model_states_its_own_shape_rule():
    class Even(MiniGPT):
        @classmethod
        def check_config(cls, cfg, vocab_size):
            super().check_config(cfg, vocab_size)
            if cfg.n_layer % 2:
                raise ValueError("model.n_layer must be even for evenlm")

    register_model("evenlm_t", Even, overwrite=True)
    try:
        cfg = ModelConfig(name="evenlm_t", n_layer=3, n_embd=8, n_head=2)
        assert _outcome(validate_model_config, cfg) == ("ConfigError", "model.n_layer must be even for evenlm")
        assert _outcome(build_model, cfg) == ("ConfigError", "model.n_layer must be even for evenlm")
    finally:
        models._MODELS.pop("evenlm_t")


def test_vocab_size_must_be_positive():
    with pytest.raises(NanoactError, match="vocab_size"):
        validate_model_config(ModelConfig(), 0)
