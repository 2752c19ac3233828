"""Transformer models: ``minigpt`` (nanoGPT), ``nanotransformer`` (the flawed report's model), ``charlm``."""

from __future__ import annotations

import torch
import torch.nn as nn

from nanoact.config import ModelConfig
from nanoact.models.base import CharLM
from nanoact.models.layers import MLP, Block, CausalSelfAttention, LayerNorm, lm_loss, residual_proj_std


def _layer_specs(cfg: ModelConfig) -> list[str]:
    from nanoact.models import layer_activations

    return layer_activations(cfg)


class MiniGPT(CharLM):
    """GPT-2 as in nanoGPT's ``model.py``: pre-LN blocks, learned positions, tied embeddings, dropout on
    embeddings, attention and residuals, causal SDPA, scaled init of residual projections.

    Activation: the MLP of every block (``Block.mlp.act``).
    """

    has_attention = True

    def __init__(self, cfg: ModelConfig, vocab_size: int):
        super().__init__(cfg, vocab_size)
        self.transformer = nn.ModuleDict(
            dict(
                wte=nn.Embedding(vocab_size, cfg.n_embd),
                wpe=nn.Embedding(cfg.block_size, cfg.n_embd),
                drop=nn.Dropout(cfg.dropout),
                h=nn.ModuleList(
                    Block(cfg.n_embd, cfg.n_head, act, cfg.dropout, cfg.bias) for act in _layer_specs(cfg)
                ),
                ln_f=LayerNorm(cfg.n_embd, cfg.bias),
            )
        )
        self.lm_head = nn.Linear(cfg.n_embd, vocab_size, bias=False)
        self.lm_head.weight = self.transformer.wte.weight  # weight tying

    def init_std(self, name: str) -> float:
        return residual_proj_std(self.cfg.n_layer) if name.endswith("c_proj.weight") else 0.02

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None):
        b, t = idx.size()
        assert t <= self.block_size, f"Cannot forward sequence of length {t}, block size is only {self.block_size}"
        pos = torch.arange(0, t, dtype=torch.long, device=idx.device)
        x = self.transformer.drop(self.transformer.wte(idx) + self.transformer.wpe(pos))
        for block in self.transformer.h:
            x = block(x)
        logits = self.lm_head(self.transformer.ln_f(x))  # (B, T, vocab)
        return logits, lm_loss(logits, targets)


class NanoTransformer(CharLM):
    """The architecture of the report nanoact re-examines: pre-LN blocks, learned positions, an untied output
    head, N(0, 0.02) init everywhere. Unlike the original, ``model.dropout`` is applied (embeddings, attention,
    residuals). With 6 layers, n_embd 384, 6 heads, block 256 and biases it has 10.80M parameters.

    Activation: the MLP of every block (``blocks[i].mlp.act``).
    """

    has_attention = True

    block_cls: type[nn.Module] = Block
    final_norm = True  # pre-LN blocks leave the residual stream unnormalised

    def __init__(self, cfg: ModelConfig, vocab_size: int):
        super().__init__(cfg, vocab_size)
        self.tok_emb = nn.Embedding(vocab_size, cfg.n_embd)
        self.pos_emb = nn.Embedding(cfg.block_size, cfg.n_embd)
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(
            self.block_cls(cfg.n_embd, cfg.n_head, act, cfg.dropout, cfg.bias) for act in _layer_specs(cfg)
        )
        self.ln_f = LayerNorm(cfg.n_embd, cfg.bias) if self.final_norm else nn.Identity()
        self.head = nn.Linear(cfg.n_embd, vocab_size, bias=cfg.bias)

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None):
        t = idx.size(1)
        assert t <= self.block_size, f"Cannot forward sequence of length {t}, block size is only {self.block_size}"
        pos = torch.arange(t, device=idx.device)
        x = self.drop(self.tok_emb(idx) + self.pos_emb(pos))
        for block in self.blocks:
            x = block(x)
        logits = self.head(self.ln_f(x))
        return logits, lm_loss(logits, targets)


class PostLNBlock(nn.Module):
    """Original (Vaswani) post-LN block: ln(x + attn(x)), then ln(x + mlp(x))."""

    def __init__(self, n_embd: int, n_head: int, activation: str, dropout: float, bias: bool):
        super().__init__()
        self.attn = CausalSelfAttention(n_embd, n_head, dropout, bias)
        self.ln_1 = LayerNorm(n_embd, bias)
        self.mlp = MLP(n_embd, activation, dropout, bias)
        self.ln_2 = LayerNorm(n_embd, bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.ln_1(x + self.attn(x))
        return self.ln_2(x + self.mlp(x))


class CharLMModel(NanoTransformer):
    """CharLM of the original study: a small (2 layers there; ``model.n_layer`` here) post-LN transformer with
    dropout, learned positions and an untied head. Same embedding and head as ``nanotransformer``; the blocks
    are post-LN, so no final norm.

    Activation: the MLP of every block (``blocks[i].mlp.act``).
    """

    block_cls = PostLNBlock
    final_norm = False  # each post-LN block already ends in a LayerNorm


MODELS = {"minigpt": MiniGPT, "nanotransformer": NanoTransformer, "charlm": CharLMModel}
