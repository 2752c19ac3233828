"""Model registry: every model is built by name from a ``ModelConfig`` and honours one contract,
``forward(idx, targets=None) -> (logits, loss)``.

Initialisation is done here, not in the constructors: each parameter is drawn from its own generator, seeded
from (seed, parameter name). Two models built with the same seed therefore have identical parameters wherever
names and shapes agree, whatever activation (and MLP shape) they use, which is what makes the activation the
only difference between the arms of an experiment.
"""

from __future__ import annotations

import math
import zlib
from dataclasses import fields
from typing import Callable

import torch
import torch.nn as nn

from nanoact import activations
from nanoact.config import ModelConfig
from nanoact.errors import ConfigError
from nanoact.models.base import CharLM, layer_activations

_MODELS: dict[str, Callable[[ModelConfig, int], CharLM]] = {}


def register_model(name: str, cls: Callable[[ModelConfig, int], CharLM], *, overwrite: bool = False) -> None:
    """Register a model class (``cls(cfg, vocab_size)``) under ``name``: the public extension point."""
    if name in _MODELS and not overwrite:
        raise ConfigError(f"model {name!r} is already registered; pass overwrite=True to replace it")
    _MODELS[name] = cls


def model_names() -> list[str]:
    _ensure_builtins()
    return sorted(_MODELS)


def get_model_class(name: str) -> Callable[[ModelConfig, int], CharLM]:
    _ensure_builtins()
    if name not in _MODELS:
        from nanoact.errors import did_you_mean

        raise ConfigError(f"unknown model {name!r}{did_you_mean(name, _MODELS)}; valid models: "
                          f"{', '.join(sorted(_MODELS))}")
    return _MODELS[name]


def _ensure_builtins() -> None:
    # The built-in modules register themselves on first use, not at import of nanoact.
    if "minigpt" not in _MODELS:
        from nanoact.models import conv, recurrent, transformers  # noqa: F401

        for mod in (transformers, recurrent, conv):
            for name, cls in mod.MODELS.items():
                _MODELS.setdefault(name, cls)


def check_fields(cfg: ModelConfig, cls: type) -> None:
    """A field the model does not use must stay at its default: otherwise the user set it for nothing."""
    unused = getattr(cls, "unused_fields", frozenset())
    default = ModelConfig()
    for f in fields(ModelConfig):
        if f.name in unused and getattr(cfg, f.name) != getattr(default, f.name):
            raise ConfigError(
                f"model.{f.name} has no effect on model {cfg.name!r}; leave it at its default "
                f"({getattr(default, f.name)!r})"
            )


def _param_seed(seed: int, name: str) -> int:
    return (seed * 1_000_003 + zlib.crc32(name.encode())) % (2**63 - 1)


@torch.no_grad()
def init_parameters(model: CharLM, seed: int) -> None:
    """Initialise every parameter from a generator seeded by (seed, name); see the module docstring."""
    owners: dict[int, nn.Module] = {}
    for m in model.modules():
        for p in m.parameters(recurse=False):
            owners.setdefault(id(p), m)
    for name, p in model.named_parameters():
        g = torch.Generator().manual_seed(_param_seed(seed, name))
        owner = owners[id(p)]
        leaf = name.rsplit(".", 1)[-1]
        if isinstance(owner, nn.LSTM):
            # PyTorch's own LSTM init: U(-1/sqrt(h), 1/sqrt(h)) for weights and biases.
            k = 1.0 / math.sqrt(owner.hidden_size)
            p.copy_(torch.empty_like(p).uniform_(-k, k, generator=g))
        elif type(owner).__name__ == "LayerNorm" or isinstance(owner, nn.LayerNorm):
            p.fill_(1.0 if leaf == "weight" else 0.0)
        elif leaf == "bias":
            p.zero_()
        else:
            std = model.init_std(name)
            p.copy_(torch.empty_like(p).normal_(0.0, std, generator=g))


def validate_model_config(cfg: ModelConfig, vocab_size: int) -> None:
    """Raise the ``ConfigError`` that ``build_model(cfg, vocab_size)`` would raise, without building a model.

    Checks the model name (registry lookup), fields the model ignores, the activation spec (parsed, one entry
    per layer, each activation's factory called once: the activation alone, no weights) and the shape
    arithmetic the model class states in ``check_config`` (``n_embd % n_head`` for attention). Microseconds
    per config, so a sweep validates every cell of a large grid without building any.
    """
    if isinstance(vocab_size, bool) or not isinstance(vocab_size, int) or vocab_size < 1:
        raise ConfigError(f"vocab_size must be a positive int, got {vocab_size!r}")
    cls = get_model_class(cfg.name)
    check_fields(cfg, cls)
    specs = layer_activations(cfg)
    try:
        check = getattr(cls, "check_config", None)
        if check is not None:
            check(cfg, vocab_size)
        for spec in dict.fromkeys(specs):  # a factory may reject values its registry entry does not validate
            activations.build_activation(spec)
    except ValueError as e:  # as build_model words them
        raise ConfigError(str(e)) from None


def build_model(cfg: ModelConfig, vocab_size: int, seed: int = 0) -> CharLM:
    """Build ``cfg.name`` for ``vocab_size`` characters, with parameters drawn from ``seed``."""
    validate_model_config(cfg, vocab_size)  # fail before building anything
    cls = get_model_class(cfg.name)
    try:
        model = cls(cfg, vocab_size)
    except ValueError as e:  # constraints a registered class checks only in its constructor
        raise ConfigError(str(e)) from None
    init_parameters(model, seed)
    return model


__all__ = [
    "CharLM",
    "build_model",
    "get_model_class",
    "init_parameters",
    "layer_activations",
    "model_names",
    "register_model",
    "validate_model_config",
]
