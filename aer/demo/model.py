"""A small decoder-only Transformer: the policy."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .tasks import PAD


class _Block(nn.Module):
    """Pre-norm block: ``x + attn(ln(x))`` then ``x + mlp(ln(x))``."""

    def __init__(self, width: int, heads: int):
        super().__init__()
        self.heads = heads
        self.attn_norm = nn.LayerNorm(width)
        self.qkv = nn.Linear(width, 3 * width)
        self.attn_out = nn.Linear(width, width)
        self.mlp_norm = nn.LayerNorm(width)
        self.mlp = nn.Sequential(nn.Linear(width, 4 * width), nn.GELU(), nn.Linear(4 * width, width))

    def forward(self, x: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
        batch, length, width = x.shape
        q, k, v = self.qkv(self.attn_norm(x)).view(batch, length, 3, self.heads, -1).permute(2, 0, 3, 1, 4)
        attended = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed)  # [B, heads, S, width/heads]
        x = x + self.attn_out(attended.transpose(1, 2).reshape(batch, length, width))
        return x + self.mlp(self.mlp_norm(x))


class TinyTransformer(nn.Module):
    """Causal Transformer over token ids; ``PAD`` tokens are invisible to every other position.

    Sequences may be left-padded: positions count real tokens only, so a prompt's tokens get the same
    position embeddings whatever the padding.
    """

    def __init__(self, vocab_size: int, max_len: int, width: int, layers: int, heads: int):
        super().__init__()
        self.token_embedding = nn.Embedding(vocab_size, width)
        self.position_embedding = nn.Embedding(max_len, width)
        self.blocks = nn.ModuleList(_Block(width, heads) for _ in range(layers))
        self.final_norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, vocab_size)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """Logits ``[B, S, V]``; position ``t`` predicts token ``t + 1``."""
        return self.head(self.hidden_states(tokens))

    def hidden_states(self, tokens: torch.Tensor) -> torch.Tensor:
        """The final hidden states ``[B, S, width]``, the LM head's input: ``forward`` is ``head(hidden_states)``."""
        real = tokens != PAD
        positions = (real.long().cumsum(-1) - 1).clamp_min(0)
        length = tokens.shape[1]
        causal = torch.ones(length, length, dtype=torch.bool, device=tokens.device).tril()
        # A query may see earlier real keys and always itself (so a PAD row is never empty, never NaN).
        allowed = (causal & real[:, None, :]) | torch.eye(length, dtype=torch.bool, device=tokens.device)
        x = self.token_embedding(tokens) + self.position_embedding(positions)
        for block in self.blocks:
            x = block(x, allowed[:, None])
        return self.final_norm(x)
