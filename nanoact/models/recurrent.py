"""Recurrent models: ``tinylstm`` and ``hybridlm`` (LSTM + attention)."""

from __future__ import annotations

import torch
import torch.nn as nn

from nanoact.config import ModelConfig
from nanoact.models.base import CharLM, layer_activations
from nanoact.models.layers import MLP, Block, LayerNorm, lm_loss


class LSTMLayer(nn.Module):
    """One LSTM layer followed by a residual MLP: x + lstm(x), then x + mlp(ln(x))."""

    def __init__(self, n_embd: int, activation: str, dropout: float, bias: bool):
        super().__init__()
        self.lstm = nn.LSTM(n_embd, n_embd, batch_first=True)
        self.drop = nn.Dropout(dropout)
        self.ln = LayerNorm(n_embd, bias)
        self.mlp = MLP(n_embd, activation, dropout, bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, _ = self.lstm(x)
        x = x + self.drop(h)
        return x + self.mlp(self.ln(x))


class TinyLSTM(CharLM):
    """A stack of ``n_layer`` LSTM layers (hidden = n_embd) over character embeddings, with dropout.

    Activation: the LSTM gates keep their fixed sigmoid/tanh (they are part of the cell's definition); the
    configured activation is the nonlinearity of the residual MLP after each LSTM layer (``layers[i].mlp.act``).
    ``block_size`` is the training window (the LSTM itself has no length limit); ``n_head`` is unused.
    """

    unused_fields = frozenset({"n_head"})

    def __init__(self, cfg: ModelConfig, vocab_size: int):
        super().__init__(cfg, vocab_size)
        self.tok_emb = nn.Embedding(vocab_size, cfg.n_embd)
        self.drop = nn.Dropout(cfg.dropout)
        self.layers = nn.ModuleList(
            LSTMLayer(cfg.n_embd, act, cfg.dropout, cfg.bias) for act in layer_activations(cfg)
        )
        self.ln_f = LayerNorm(cfg.n_embd, cfg.bias)
        self.head = nn.Linear(cfg.n_embd, vocab_size, bias=cfg.bias)

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None):
        x = self.drop(self.tok_emb(idx))
        for layer in self.layers:
            x = layer(x)
        logits = self.head(self.ln_f(x))
        return logits, lm_loss(logits, targets)


class HybridLM(CharLM):
    """One LSTM layer (positions come from recurrence) followed by ``n_layer`` pre-LN attention blocks.

    Activation: the MLP of every attention block (``blocks[i].mlp.act``).
    """

    has_attention = True

    def __init__(self, cfg: ModelConfig, vocab_size: int):
        super().__init__(cfg, vocab_size)
        self.tok_emb = nn.Embedding(vocab_size, cfg.n_embd)
        self.drop = nn.Dropout(cfg.dropout)
        self.lstm = nn.LSTM(cfg.n_embd, cfg.n_embd, batch_first=True)
        self.blocks = nn.ModuleList(
            Block(cfg.n_embd, cfg.n_head, act, cfg.dropout, cfg.bias) for act in layer_activations(cfg)
        )
        self.ln_f = LayerNorm(cfg.n_embd, cfg.bias)
        self.head = nn.Linear(cfg.n_embd, vocab_size, bias=cfg.bias)

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None):
        x = self.drop(self.tok_emb(idx))
        h, _ = self.lstm(x)
        x = x + self.drop(h)
        for block in self.blocks:
            x = block(x)
        logits = self.head(self.ln_f(x))
        return logits, lm_loss(logits, targets)


MODELS = {"tinylstm": TinyLSTM, "hybridlm": HybridLM}
