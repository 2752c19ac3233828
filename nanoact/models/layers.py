"""Layers shared by every model. ``MLP`` is the one place where an activation enters a model."""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from nanoact import activations


class LayerNorm(nn.Module):
    """LayerNorm with an optional bias (PyTorch's has no ``bias=False`` before 2.1 everywhere)."""

    def __init__(self, ndim: int, bias: bool):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(ndim))
        self.bias = nn.Parameter(torch.zeros(ndim)) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x, self.weight.shape, self.weight, self.bias, 1e-5)


class MLP(nn.Module):
    """d -> h -> d feed-forward with the configured activation in the middle.

    This is where every model routes its nonlinearity through the activation registry. For ungated activations
    h = 4d; for gated ones (swiglu) the first projection is d -> 2h with h = int(8d/3), so both have about 8d²
    weights (see ``activations.mlp_hidden``).
    """

    def __init__(self, n_embd: int, activation: str, dropout: float, bias: bool):
        super().__init__()
        hidden = activations.mlp_hidden(n_embd, activation)
        self.c_fc = nn.Linear(n_embd, activations.mlp_in_features(hidden, activation), bias=bias)
        self.act = activations.build_activation(activation)
        self.c_proj = nn.Linear(hidden, n_embd, bias=bias)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.c_proj(self.act(self.c_fc(x))))


def check_heads(n_embd: int, n_head: int) -> None:
    """Multi-head attention splits n_embd into n_head equal heads."""
    if n_embd % n_head != 0:
        raise ValueError(f"model.n_embd ({n_embd}) must be divisible by model.n_head ({n_head})")


class CausalSelfAttention(nn.Module):
    """Multi-head causal self-attention through ``scaled_dot_product_attention``."""

    def __init__(self, n_embd: int, n_head: int, dropout: float, bias: bool):
        super().__init__()
        check_heads(n_embd, n_head)
        self.n_head = n_head
        self.c_attn = nn.Linear(n_embd, 3 * n_embd, bias=bias)
        self.c_proj = nn.Linear(n_embd, n_embd, bias=bias)
        self.attn_dropout = dropout
        self.resid_dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.resid_dropout(self.c_proj(self._attend(x)))

    def forward_last(self, x: torch.Tensor) -> torch.Tensor:
        """The output at the last position only, (B, 1, C); every position is still attended over."""
        return self.resid_dropout(self.c_proj(self._attend(x)[:, -1:]))

    def _attend(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.size()
        q, k, v = self.c_attn(x).split(C, dim=2)
        q = q.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, nh, T, hs)
        k = k.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        v = v.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        y = F.scaled_dot_product_attention(
            q, k, v, dropout_p=self.attn_dropout if self.training else 0.0, is_causal=True
        )
        return y.transpose(1, 2).contiguous().view(B, T, C)


class Block(nn.Module):
    """Pre-LN transformer block: x + attn(ln(x)), then x + mlp(ln(x))."""

    def __init__(self, n_embd: int, n_head: int, activation: str, dropout: float, bias: bool):
        super().__init__()
        self.ln_1 = LayerNorm(n_embd, bias)
        self.attn = CausalSelfAttention(n_embd, n_head, dropout, bias)
        self.ln_2 = LayerNorm(n_embd, bias)
        self.mlp = MLP(n_embd, activation, dropout, bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))

    def forward_last(self, x: torch.Tensor) -> torch.Tensor:
        """``forward(x)[:, -1:]`` without the MLP and projections of the other positions."""
        x = x[:, -1:] + self.attn.forward_last(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


def lm_loss(logits: torch.Tensor, targets: torch.Tensor | None) -> torch.Tensor | None:
    """Mean next-token cross-entropy over all positions, or None without targets."""
    if targets is None:
        return None
    return F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1))


def residual_proj_std(n_layer: int) -> float:
    """GPT-2's scaled init for projections into the residual stream."""
    return 0.02 / math.sqrt(2 * n_layer)
