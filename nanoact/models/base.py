"""The contract every nanoact model follows."""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn as nn

from nanoact import activations
from nanoact.config import ModelConfig
from nanoact.errors import ConfigError
from nanoact.models.layers import check_heads


class CharLM(nn.Module):
    """Base class: ``forward(idx, targets=None) -> (logits, loss)`` with logits (B, T, vocab).

    Subclasses build their layers in ``__init__(cfg, vocab_size)`` and never initialise or seed there:
    ``nanoact.models.init_parameters`` does that. ``unused_fields`` names ``ModelConfig`` fields the model
    ignores; setting one of them away from its default is an error. ``check_config`` states the shape
    constraints, so a config is validated without building the model.
    """

    unused_fields: ClassVar[frozenset[str]] = frozenset()

    def __init__(self, cfg: ModelConfig, vocab_size: int):
        super().__init__()
        self.cfg = cfg
        self.vocab_size = vocab_size
        self.block_size = cfg.block_size

    has_attention: ClassVar[bool] = False
    """True if the model has multi-head attention layers (``n_embd`` must then split into ``n_head`` heads)."""

    @classmethod
    def check_config(cls, cfg: ModelConfig, vocab_size: int) -> None:
        """Raise ValueError for a shape this model cannot be built with (arithmetic only, nothing built)."""
        if cls.has_attention:
            check_heads(cfg.n_embd, cfg.n_head)

    def init_std(self, name: str) -> float:
        """Std of the normal init for weight ``name``; GPT-style N(0, 0.02) unless a model says otherwise."""
        return 0.02

    def forward_last(self, idx: torch.Tensor) -> torch.Tensor:
        """Logits (B, vocab) at the last position only, what the prediction evals keep.

        Equal bit for bit to ``forward(idx)[0][:, -1]`` (on CPU; tests check every model): models override it
        to skip the work only earlier positions need (the last block's MLP, projections and the head).
        """
        return self(idx)[0][:, -1, :]

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None):  # pragma: no cover
        raise NotImplementedError


def layer_activations(cfg: ModelConfig) -> list[str]:
    """One activation spec per layer: a single spec is repeated, a list must have ``n_layer`` entries."""
    specs = activations.split_layer_spec(cfg.activation)
    if len(specs) == 1:
        specs = specs * cfg.n_layer
    if len(specs) != cfg.n_layer:
        raise ConfigError(
            f"model.activation lists {len(specs)} activations but model.n_layer is {cfg.n_layer}; "
            "give one activation or one per layer"
        )
    for s in specs:
        activations.parse_activation(s)
    return specs
