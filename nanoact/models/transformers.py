"""Transformer models: ``minigpt`` (nanoGPT), ``nanotransformer`` (the flawed report's model), ``charlm``."""

from __future__ import annotations

import torch
import torch.nn as nn

from nanoact.config import ModelConfig
from nanoact.models.base import CharLM, layer_activations
from nanoact.models.layers import MLP, Block, CausalSelfAttention, LayerNorm, lm_loss, residual_proj_std


def _run_blocks(blocks: nn.ModuleList, x: torch.Tensor, last_only: bool) -> torch.Tensor:
    """All blocks over every position; with ``last_only`` the last block returns only the last one, (B, 1, C)."""
    for block in blocks[:-1] if last_only else blocks:
        x = block(x)
    return blocks[-1].forward_last(x) if last_only else x


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
                    Block(cfg.n_embd, cfg.n_head, act, cfg.dropout, cfg.bias) for act in layer_activations(cfg)
                ),
                ln_f=LayerNorm(cfg.n_embd, cfg.bias),
            )
        )
        self.lm_head = nn.Linear(cfg.n_embd, vocab_size, bias=False)
        self.lm_head.weight = self.transformer.wte.weight  # weight tying

    def init_std(self, name: str) -> float:
        return residual_proj_std(self.cfg.n_layer) if name.endswith("c_proj.weight") else 0.02

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None):
        logits = self.lm_head(self._hidden(idx))  # (B, T, vocab)
        return logits, lm_loss(logits, targets)

    def forward_last(self, idx: torch.Tensor) -> torch.Tensor:
        return self.lm_head(self._hidden(idx, last_only=True))[:, -1]  # (B, vocab)

    def _hidden(self, idx: torch.Tensor, last_only: bool = False) -> torch.Tensor:
        b, t = idx.size()
        assert t <= self.block_size, f"Cannot forward sequence of length {t}, block size is only {self.block_size}"
        pos = torch.arange(0, t, dtype=torch.long, device=idx.device)
        x = self.transformer.drop(self.transformer.wte(idx) + self.transformer.wpe(pos))
        return self.transformer.ln_f(_run_blocks(self.transformer.h, x, last_only))


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
            self.block_cls(cfg.n_embd, cfg.n_head, act, cfg.dropout, cfg.bias) for act in layer_activations(cfg)
        )
        self.ln_f = LayerNorm(cfg.n_embd, cfg.bias) if self.final_norm else nn.Identity()
        self.head = nn.Linear(cfg.n_embd, vocab_size, bias=cfg.bias)

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None):
        logits = self.head(self._hidden(idx))
        return logits, lm_loss(logits, targets)

    def forward_last(self, idx: torch.Tensor) -> torch.Tensor:
        return self.head(self._hidden(idx, last_only=True))[:, -1]

    def _hidden(self, idx: torch.Tensor, last_only: bool = False) -> torch.Tensor:
        t = idx.size(1)
        assert t <= self.block_size, f"Cannot forward sequence of length {t}, block size is only {self.block_size}"
        pos = torch.arange(t, device=idx.device)
        x = self.drop(self.tok_emb(idx) + self.pos_emb(pos))
        return self.ln_f(_run_blocks(self.blocks, x, last_only))


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

    def forward_last(self, x: torch.Tensor) -> torch.Tensor:
        x = self.ln_1(x[:, -1:] + self.attn.forward_last(x))
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
