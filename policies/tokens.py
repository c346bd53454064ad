"""Token observations -> what networks eat: a box for convolutions, per-token features for attention.

Both read the feature count, normalisations, window and global-token location from the env's `EnvSpec`.
Global tokens are placed at the window centre wherever the env puts them (MettaGrid 0.26 uses 0xFE,
outside the window), so a box policy sees them on any env.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from envs.spec import EMPTY_TOKEN, EnvSpec


def check_tokens(obs: torch.Tensor, spec: EnvSpec) -> None:
    if obs.dtype != torch.uint8 or obs.dim() < 3 or obs.shape[-2:] != (spec.num_tokens, 3):
        raise ValueError(f"env_obs must be uint8 [..., {spec.num_tokens}, 3] tokens (location, feature, value); "
                         f"got {obs.dtype} {list(obs.shape)}: pass the env's observations unchanged")


class TokenFields(nn.Module):
    """Split tokens into row, col, feature id, normalised value and a mask of real tokens."""

    def __init__(self, spec: EnvSpec):
        super().__init__()
        self.spec = spec
        self.register_buffer("norm", torch.tensor(spec.feature_normalizations, dtype=torch.float32), persistent=False)
        self.centre = ((spec.obs_height // 2) << 4) | (spec.obs_width // 2)

    def forward(self, obs: torch.Tensor):
        loc, feature, value = obs[..., 0].long(), obs[..., 1].long(), obs[..., 2].float()
        loc = torch.where(loc == self.spec.global_location, self.centre, loc)
        row, col = loc >> 4, loc & 0xF
        real = (obs[..., 0] != EMPTY_TOKEN) & (feature < self.spec.num_features)
        feature = torch.where(real, feature, 0)
        value = torch.where(real, value / self.norm[feature], 0.0)
        return row, col, feature, value, real


class TokensToBox(nn.Module):
    """`uint8 [N, tokens, 3]` -> `float [N, features, height, width]`: each value at (feature, row, col),
    divided by that feature's normalisation; padding tokens (0xFF) and tokens outside the window are skipped.
    The box is laid out channels-last (features innermost in memory): oneDNN's convolutions run ~1.5x faster
    on it than on the contiguous (channels-first) layout, and the values are the same."""

    def __init__(self, spec: EnvSpec):
        super().__init__()
        self.fields = TokenFields(spec)
        self.shape = (spec.num_features, spec.obs_height, spec.obs_width)

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        F, H, W = self.shape
        row, col, feature, value, real = self.fields(obs)
        inside = real & (row < H) & (col < W)
        # one flat buffer with a spare last cell where skipped tokens land, so that the boxes before it are
        # exactly channels-last contiguous (a spare cell per row would make the convolution copy the box)
        N, size = obs.shape[0], F * H * W
        row_start = torch.arange(0, N * size, size, device=obs.device)[:, None]
        index = torch.where(inside, row_start + (row * W + col) * F + feature, N * size)
        box = torch.zeros(N * size + 1, device=obs.device)
        box.scatter_(0, index.flatten(), value.flatten())
        return box[:-1].view(N, H, W, F).permute(0, 3, 1, 2)


class TokenFeatures(nn.Module):
    """Per-token vectors for attention: [feature-id embedding, Fourier features of row and col, value],
    and `padding [N, tokens]` (True for 0xFF tokens) for the attention's key-padding mask."""

    def __init__(self, spec: EnvSpec, embed_dim: int, frequencies: int):
        super().__init__()
        self.fields = TokenFields(spec)
        self.embed = nn.Embedding(spec.num_features, embed_dim)
        # frequencies 1, 2, 4, ... cycles across the window
        span = max(spec.obs_height, spec.obs_width)
        self.register_buffer("omega", math.pi * 2.0 ** torch.arange(frequencies) / span, persistent=False)
        self.dim = embed_dim + 4 * frequencies + 1

    def forward(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        row, col, feature, value, real = self.fields(obs)
        angles = torch.stack([row, col], -1).float()[..., None] * self.omega  # [N, T, 2, freq]
        fourier = torch.cat([angles.sin(), angles.cos()], -1).flatten(-2)
        x = torch.cat([self.embed(feature), fourier, value[..., None]], -1)
        return x * real[..., None], ~real
