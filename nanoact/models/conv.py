"""``convlm``: causal 1-D convolutions plus attention."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from nanoact.config import ModelConfig
from nanoact.models.base import CharLM, layer_activations
from nanoact.models.layers import MLP, CausalSelfAttention, LayerNorm, lm_loss

KERNEL_SIZE = 4


class CausalConv1d(nn.Module):
    """Depthwise conv over time, left-padded so position t sees only t-k+1..t."""

    def __init__(self, n_embd: int, kernel_size: int, bias: bool):
        super().__init__()
        self.pad = kernel_size - 1
        self.conv = nn.Conv1d(n_embd, n_embd, kernel_size, groups=n_embd, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, T, C)
        y = self.conv(F.pad(x.transpose(1, 2), (self.pad, 0)))
        return y.transpose(1, 2)


class ConvBlock(nn.Module):
    """x + conv(ln(x)), x + attn(ln(x)), x + mlp(ln(x))."""

    def __init__(self, n_embd: int, n_head: int, activation: str, dropout: float, bias: bool):
        super().__init__()
        self.ln_0 = LayerNorm(n_embd, bias)
        self.conv = CausalConv1d(n_embd, KERNEL_SIZE, bias)
        self.ln_1 = LayerNorm(n_embd, bias)
        self.attn = CausalSelfAttention(n_embd, n_head, dropout, bias)
        self.ln_2 = LayerNorm(n_embd, bias)
        self.mlp = MLP(n_embd, activation, dropout, bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.conv(self.ln_0(x))
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class ConvLM(CharLM):
    """``n_layer`` blocks of causal depthwise Conv1D (kernel 4, local positions) + causal attention + MLP.

    Activation: the MLP of every block (``blocks[i].mlp.act``).
    """

    has_attention = True

    def __init__(self, cfg: ModelConfig, vocab_size: int):
        super().__init__(cfg, vocab_size)
        self.tok_emb = nn.Embedding(vocab_size, cfg.n_embd)
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(
            ConvBlock(cfg.n_embd, cfg.n_head, act, cfg.dropout, cfg.bias) for act in layer_activations(cfg)
        )
        self.ln_f = LayerNorm(cfg.n_embd, cfg.bias)
        self.head = nn.Linear(cfg.n_embd, vocab_size, bias=cfg.bias)

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None):
        x = self.drop(self.tok_emb(idx))
        for block in self.blocks:
            x = block(x)
        logits = self.head(self.ln_f(x))
        return logits, lm_loss(logits, targets)


MODELS = {"convlm": ConvLM}
