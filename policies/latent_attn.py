"""LatentAttnTiny / Small / Med: attention over the token list instead of a box, then Fast's LSTM and heads.

Each token becomes [feature-id embedding, Fourier features of row and col, value] (policies.tokens), is
projected to `dim`, and learned latent queries cross-attend to the tokens (pre-norm blocks, padding tokens
masked). Small and Med then run self-attention over the latents with a CLS token, whose output is the
encoding; Tiny flattens its single latent.

| | feature embed | frequencies | dim | queries | heads | cross layers | self layers |
|---|---|---|---|---|---|---|---|
| Tiny | 10 | 4 | 32 | 1 | 4 | 2 | 0 |
| Small | 8 | 8 | 32 | 10 | 4 | 1 | 2 (+CLS) |
| Med | 12 | 8 | 64 | 10 | 8 | 3 | 3 (+CLS) |

(`dim` 32 for Tiny is Metta's; Small's and Med's are our choice, the reference does not give them.)
"""

from __future__ import annotations

import torch
from torch import nn

from envs.spec import EnvSpec
from policies.base import RecurrentPolicy, init_layer, metta_heads
from policies.memory import LSTMMemory
from policies.tokens import TokenFeatures

SIZES = {
    "tiny": dict(embed_dim=10, frequencies=4, dim=32, queries=1, heads=4, cross_layers=2, self_layers=0),
    "small": dict(embed_dim=8, frequencies=8, dim=32, queries=10, heads=4, cross_layers=1, self_layers=2),
    "med": dict(embed_dim=12, frequencies=8, dim=64, queries=10, heads=8, cross_layers=3, self_layers=3),
}


class CrossAttentionBlock(nn.Module):
    """Pre-norm: latents += attend(latents -> tokens); latents += MLP(latents)."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.norm_q, self.norm_kv, self.norm_mlp = nn.LayerNorm(dim), nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))

    def forward(self, latents, tokens, padding):
        kv = self.norm_kv(tokens)
        latents = latents + self.attn(self.norm_q(latents), kv, kv, key_padding_mask=padding, need_weights=False)[0]
        return latents + self.mlp(self.norm_mlp(latents))


class LatentAttnEncoder(nn.Module):
    def __init__(self, spec: EnvSpec, embed_dim, frequencies, dim, queries, heads, cross_layers, self_layers, out=128):
        super().__init__()
        self.tokens = TokenFeatures(spec, embed_dim, frequencies)
        self.proj = nn.Linear(self.tokens.dim, dim)
        self.latents = nn.Parameter(torch.randn(queries, dim) * 0.02)
        self.cross = nn.ModuleList(CrossAttentionBlock(dim, heads) for _ in range(cross_layers))
        self.cls = nn.Parameter(torch.randn(1, dim) * 0.02) if self_layers else None
        self.self_attn = nn.ModuleList(
            nn.TransformerEncoderLayer(dim, heads, 4 * dim, dropout=0.0, activation="gelu", batch_first=True, norm_first=True)
            for _ in range(self_layers))
        self.norm = nn.LayerNorm(dim)
        self.out = nn.Sequential(init_layer(nn.Linear(dim if self_layers else queries * dim, out)), nn.ReLU())

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        x, padding = self.tokens(obs)
        x = self.proj(x)
        latents = self.latents.expand(x.shape[0], -1, -1)
        for block in self.cross:
            latents = block(latents, x, padding)
        if self.cls is None:
            return self.out(self.norm(latents).flatten(1))
        latents = torch.cat([self.cls.expand(x.shape[0], -1, -1), latents], 1)
        for block in self.self_attn:
            latents = block(latents)
        return self.out(self.norm(latents[:, 0]))


class LatentAttn(RecurrentPolicy):
    def __init__(self, spec: EnvSpec, size: str = "tiny", clip_range: float = 0.0, lstm_init: str = "metta"):
        if size not in SIZES:
            raise ValueError(f"unknown LatentAttn size {size!r}; choose one of {sorted(SIZES)}")
        critic, actor = metta_heads(spec)
        encoder = LatentAttnEncoder(spec, **SIZES[size])
        super().__init__(spec, encoder, LSTMMemory(128, 128, 2, lstm_init), critic, actor, clip_range)
