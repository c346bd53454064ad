"""Token observations -> what networks eat: a box for convolutions, per-token features for attention.

Both read the feature count, normalisations, window and global-token location from the env's `EnvSpec`.
Global tokens are placed at the window centre wherever the env puts them (MettaGrid 0.26 uses 0xFE,
outside the window), so a box policy sees them on any env.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn.functional import embedding, embedding_bag, pad

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


class OneHotIds(nn.Module):
    """Tokens of an id feature -> a token of that id's own feature with value 1, for a spec made by
    EnvSpec.with_one_hot_ids: (type_id, 4) becomes (type_id=4, 1), so that a generator is not a wall with a larger
    value. Other tokens, and ids past the declared count, pass unchanged. One lookup per token."""

    def __init__(self, spec: EnvSpec):
        super().__init__()
        feature, value = (t.clone() for t in torch.meshgrid(torch.arange(256), torch.arange(256), indexing="ij"))
        for name, count in spec.id_features:
            f = spec.feature_id(name)
            for k in range(1, count):
                feature[f, k], value[f, k] = spec.feature_id(f"{name}={k}"), 1
        self.register_buffer("table", torch.stack([feature, value], -1).flatten(0, 1).to(torch.uint8), persistent=False)

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        pair = self.table[obs[..., 1].long() * 256 + obs[..., 2].long()]
        return torch.cat([obs[..., :1], pair], -1)


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


class TokenConv(nn.Module):
    """A convolution over TokensToBox's box, computed from the tokens alone: `(obs, weight [C, features, k, k],
    bias [C]) -> [N, C, out_h, out_w]` (channels-last), what `conv2d(box(obs), weight, bias, stride)` gives.
    The box is mostly zeros (about 35 of the 200 tokens are real, the box has 25 x 11 x 11 cells), and a real
    token only adds value x the kernel's weights at its feature and offset to the output cells whose window
    covers it. So each observation is one embedding bag: a table with a row per box position holding that
    position's weights for every output cell (zero where no window covers it), rebuilt from `weight` on each call
    so that gradients reach it, summed over the observation's tokens with their values as weights. The same sums
    in another order: equal to the dense convolution within float rounding, except that a feature repeated at one
    location is summed where the box keeps one of them (no env here emits that)."""

    def __init__(self, spec: EnvSpec, kernel: int, stride: int):
        super().__init__()
        Fs, H, W, k = spec.num_features, spec.obs_height, spec.obs_width, kernel
        self.out_shape = ((H - k) // stride + 1, (W - k) // stride + 1)
        # the weight row (feature, dr, dc) that box position (feature, row, col) meets in output cell (i, j)
        f, r, c = (t[..., None, None] for t in torch.meshgrid(torch.arange(Fs), torch.arange(H), torch.arange(W),
                                                              indexing="ij"))
        i, j = torch.meshgrid(torch.arange(self.out_shape[0]), torch.arange(self.out_shape[1]), indexing="ij")
        dr, dc = r - stride * i, c - stride * j
        covered = (dr >= 0) & (dr < k) & (dc >= 0) & (dc < k)
        zero_row = Fs * k * k
        index = torch.where(covered, (f * k + dr) * k + dc, zero_row).flatten(0, 2).flatten(1)
        self.padding = Fs * H * W  # the position of tokens the box skips: its table row is all zero rows
        self.register_buffer("weight_index", torch.cat([index, torch.full_like(index[:1], zero_row)]), persistent=False)
        # (location byte, feature byte) -> box position, or the padding position (TokenFields' rules)
        loc = torch.arange(256)
        shown = torch.where(loc == spec.global_location, ((H // 2) << 4) | (W // 2), loc)
        row, col, feature = shown[:, None] >> 4, shown[:, None] & 0xF, torch.arange(256)[None, :]
        real = (loc[:, None] != EMPTY_TOKEN) & (feature < Fs) & (row < H) & (col < W)
        self.register_buffer("position", torch.where(real, (feature * H + row) * W + col, self.padding).flatten(),
                             persistent=False)
        norm = torch.ones(256)
        norm[:Fs] = torch.tensor(spec.feature_normalizations, dtype=torch.float32)
        self.register_buffer("norm", norm, persistent=False)
        # whether to skip the padding tokens first, which needs their count on the host: None, only on a CPU
        # (there it is free, and the backward then sorts ~6x fewer indices); off, the shape stays fixed
        self.reads_are_free: bool | None = None

    def forward(self, obs: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        N, C = obs.shape[0], weight.shape[0]
        feature = obs[..., 1].long()
        position = self.position[obs[..., 0].long() * 256 + feature]  # [N, tokens]
        value = obs[..., 2].float() / self.norm[feature]
        rows = pad(weight.permute(1, 2, 3, 0).reshape(-1, C), (0, 0, 0, 1))  # [(feature, dr, dc) + zero row, C]
        table = embedding(self.weight_index, rows).flatten(1)  # [positions + padding, out cells x C]
        skip_padding = obs.device.type == "cpu" if self.reads_are_free is None else self.reads_are_free
        if skip_padding:
            real = position != self.padding
            keep, count = real.flatten().nonzero().squeeze(1), real.sum(1)
            out = embedding_bag(position.flatten()[keep], table, count.cumsum(0) - count, mode="sum",
                                per_sample_weights=value.flatten()[keep])
        else:
            out = embedding_bag(position, table, mode="sum", per_sample_weights=value, padding_idx=self.padding)
        return (out.view(N, *self.out_shape, C) + bias).permute(0, 3, 1, 2)


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
