"""Wiring guarantees for every model x activation pair (issue: the activation must really run)."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn as nn

from nanoact import activations
from nanoact import models as models_mod
from nanoact.config import ModelConfig
from nanoact.errors import ConfigError
from nanoact.models import build_model, model_names, register_model
from nanoact.models.base import CharLM
from nanoact.models.layers import lm_loss
from nanoact.wiring import check_model

MODELS = model_names()
ACTS = activations.activation_names()
V = 11


def tiny(name: str, act: str, **kw) -> ModelConfig:
    # models that ignore n_head reject a non-default value, so they keep the default (4)
    heads = 4 if "n_head" in getattr(models_mod.get_model_class(name), "unused_fields", ()) else 2
    return ModelConfig(name=name, activation=act, n_layer=2, n_head=heads, n_embd=12, block_size=8, **kw)


def batch(seed: int = 0) -> torch.Tensor:
    return torch.randint(V, (2, 8), generator=torch.Generator().manual_seed(seed))


def test_all_six_models_registered():
    assert set(MODELS) >= {"minigpt", "nanotransformer", "charlm", "tinylstm", "convlm", "hybridlm"}


@pytest.mark.parametrize("name", MODELS)
def test_contract_forward_returns_logits_and_loss(name):
    m = build_model(tiny(name, "gelu"), V, seed=1)
    x = batch()
    logits, loss = m(x)
    assert logits.shape == (2, 8, V) and loss is None
    logits, loss = m(x, x)
    assert loss.ndim == 0 and torch.isfinite(loss)
    loss.backward()
    assert all(p.grad is not None for p in m.parameters())


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("act", ACTS)
def test_activation_is_wired(name, act):
    """Same seed, other activation: identical parameters where shapes agree, different logits, and the
    activation modules found in the model are exactly the configured ones."""
    cfg = tiny(name, act)
    ref_act = "identity" if act != "identity" else "relu"
    a = build_model(cfg, V, seed=7).eval()
    b = build_model(dataclasses.replace(cfg, activation=ref_act), V, seed=7).eval()
    pa, pb = dict(a.named_parameters()), dict(b.named_parameters())
    shared = [k for k in pa if k in pb and pa[k].shape == pb[k].shape]
    assert len(shared) >= len(pa) // 2
    for k in shared:
        assert torch.equal(pa[k], pb[k]), k
    x = batch()
    with torch.no_grad():
        assert not torch.equal(a(x)[0], b(x)[0])
    found = activations.activation_modules(a)
    assert set(found) == activations.expected_modules(act)
    assert len(found) == cfg.n_layer  # one per layer: nothing hard-coded beside it
    assert check_model(a, cfg, V, seed=7).ok


@pytest.mark.parametrize("name", MODELS)
def test_same_seed_same_model_different_seed_different_model(name):
    a = build_model(tiny(name, "relu"), V, seed=3)
    b = build_model(tiny(name, "relu"), V, seed=3)
    c = build_model(tiny(name, "relu"), V, seed=4)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    assert not all(torch.equal(p, q) for p, q in zip(a.parameters(), c.parameters()))


@pytest.mark.parametrize("name", MODELS)
def test_dropout_takes_effect(name):
    m0 = build_model(tiny(name, "gelu", dropout=0.0), V, seed=1).train()
    m1 = build_model(tiny(name, "gelu", dropout=0.5), V, seed=1).train()
    x = batch()
    torch.manual_seed(0)
    y0a = m0(x)[0]
    torch.manual_seed(1)
    y0b = m0(x)[0]
    assert torch.equal(y0a, y0b)  # no dropout: train mode is deterministic
    torch.manual_seed(0)
    y1a = m1(x)[0]
    torch.manual_seed(1)
    y1b = m1(x)[0]
    assert not torch.equal(y1a, y1b)
    m1.eval()
    with torch.no_grad():
        assert torch.equal(m1(x)[0], m1(x)[0])


@pytest.mark.parametrize("name", MODELS)
def test_every_model_field_takes_effect(name):
    """Changing any ModelConfig field changes the model (or is rejected for models that do not use it)."""
    base = tiny(name, "gelu")
    x = batch()
    ref = build_model(base, V, seed=1).eval()
    variants = {"n_layer": 3, "n_head": 3 if base.n_head == 2 else 6, "n_embd": 24, "bias": True, "activation": "relu"}
    for field, value in variants.items():
        cfg = dataclasses.replace(base, **{field: value})
        cls = models_mod.get_model_class(name)
        if field in cls.unused_fields:
            with pytest.raises(ConfigError, match=field):
                build_model(cfg, V, seed=1)
            continue
        m = build_model(cfg, V, seed=1).eval()
        changed = m.num_params() != ref.num_params()
        if not changed:
            with torch.no_grad():
                changed = not torch.equal(m(x)[0], ref(x)[0])
        assert changed, f"{name}: model.{field} had no effect"
    # block_size: position embeddings or at least the accepted length
    longer = build_model(dataclasses.replace(base, block_size=16), V, seed=1)
    assert longer.block_size == 16


def test_per_layer_activations():
    cfg = tiny("minigpt", "relu,smelu(beta=0.5)")
    m = build_model(cfg, V, seed=1)
    assert activations.activation_modules(m) == ["ReLU", "SmeLU(beta=0.5)"]
    with pytest.raises(ConfigError, match="n_layer"):
        build_model(tiny("minigpt", "relu,gelu,relu"), V)


def test_model_modules_never_import_their_own_package():
    # the registry (nanoact/models/__init__.py) imports the model modules; an import back from them is an
    # upward arrow (and a cycle hidden inside function bodies)
    import ast
    from pathlib import Path

    folder = Path(models_mod.__file__).parent
    upward = []
    for f in sorted(folder.glob("*.py")):
        if f.name == "__init__.py":
            continue
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module == "nanoact.models" and node.level == 0:
                upward.append(f"{f.name}:{node.lineno}")
            if isinstance(node, ast.ImportFrom) and node.level and not node.module:
                upward.append(f"{f.name}:{node.lineno}")
    assert upward == []


def test_unknown_names_are_errors_never_fallbacks():
    with pytest.raises(ConfigError, match="valid models"):
        build_model(tiny("gpt5", "relu"), V)
    with pytest.raises(activations.ActivationError, match="relu"):
        build_model(tiny("minigpt", "reLU"), V)


class IgnoresActivation(CharLM):
    """A broken model that hard-codes ReLU: exactly the flawed report's failure."""

    def __init__(self, cfg, vocab_size):
        super().__init__(cfg, vocab_size)
        self.emb = nn.Embedding(vocab_size, cfg.n_embd)
        self.fc = nn.Linear(cfg.n_embd, cfg.n_embd)
        self.act = nn.ReLU()  # ignores cfg.activation
        self.head = nn.Linear(cfg.n_embd, vocab_size)

    def forward(self, idx, targets=None):
        logits = self.head(self.act(self.fc(self.emb(idx))))
        return logits, lm_loss(logits, targets)


class DeadActivation(CharLM):
    """Builds the configured activation but never calls it."""

    def __init__(self, cfg, vocab_size):
        super().__init__(cfg, vocab_size)
        self.emb = nn.Embedding(vocab_size, cfg.n_embd)
        self.act = activations.build_activation(cfg.activation)
        self.head = nn.Linear(cfg.n_embd, vocab_size)

    def forward(self, idx, targets=None):
        logits = self.head(torch.relu(self.emb(idx)))
        return logits, lm_loss(logits, targets)


@pytest.fixture
def broken_models():
    register_model("ignores_act", IgnoresActivation)
    register_model("dead_act", DeadActivation)
    yield
    models_mod._MODELS.pop("ignores_act")
    models_mod._MODELS.pop("dead_act")


@pytest.mark.parametrize("broken", ["ignores_act", "dead_act"])
def test_wiring_check_catches_a_model_that_ignores_its_activation(broken_models, broken):
    cfg = tiny(broken, "gelu")
    m = build_model(cfg, V, seed=1)
    result = check_model(m, cfg, V, seed=1)
    assert not result.ok
    # ... and the same assertions the wiring test above makes fail for it
    a = build_model(cfg, V, seed=7).eval()
    b = build_model(dataclasses.replace(cfg, activation="identity"), V, seed=7).eval()
    x = batch()
    with torch.no_grad():
        logits_equal = torch.equal(a(x)[0], b(x)[0])
    modules_ok = set(activations.activation_modules(a)) == activations.expected_modules("gelu")
    assert logits_equal or not modules_ok


def test_nanotransformer_full_size_parameter_count():
    cfg = ModelConfig(name="nanotransformer", n_layer=6, n_embd=384, n_head=6, block_size=256, bias=True)
    n = build_model(cfg, 65).num_params()
    assert abs(n - 10.78e6) / 10.78e6 < 0.01, n


def test_swiglu_parameter_count_is_comparable():
    relu = build_model(ModelConfig(name="minigpt", activation="relu", n_embd=48, n_head=4), 65).num_params()
    glu = build_model(ModelConfig(name="minigpt", activation="swiglu", n_embd=48, n_head=4), 65).num_params()
    assert abs(glu - relu) / relu < 0.01
