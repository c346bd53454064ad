"""Fast: Metta's `fast.yaml` ComponentPolicy as plain PyTorch (574,978 parameters with 25 features, 19 actions).

tokens -> box [25, 11, 11] -> conv 64 k5 s3 + ReLU -> conv 64 k3 + ReLU -> flatten -> 128 + ReLU
-> 128 + ReLU -> LSTM(128, 2 layers) -> critic / bilinear actor (policies.base.metta_heads)

With token_conv the first convolution is computed from the real tokens without building the box
(policies.tokens.TokenConv): the same weights and values, less work on a CPU.
"""

from __future__ import annotations

import torch
from torch import nn

from envs.spec import EnvSpec
from policies.base import RecurrentPolicy, init_layer, metta_heads
from policies.memory import LSTMMemory
from policies.tokens import TokenConv, TokensToBox


class FastEncoder(nn.Module):
    def __init__(self, spec: EnvSpec, hidden: int = 128, token_conv: bool = False):
        super().__init__()
        side = min(spec.obs_height, spec.obs_width)
        if (side - 5) // 3 + 1 < 3:  # the 5x5 stride-3 convolution must leave room for the 3x3 one
            raise ValueError(f"fast's convolutions need an observation window of at least 11x11, the env's is "
                             f"{spec.obs_height}x{spec.obs_width}: raise obs_window, or use a latent_attn policy")
        self.box = TokensToBox(spec)
        self.token_conv = TokenConv(spec, kernel=5, stride=3) if token_conv else None
        self.cnn = nn.Sequential(
            init_layer(nn.Conv2d(spec.num_features, 64, 5, stride=3)), nn.ReLU(),
            init_layer(nn.Conv2d(64, 64, 3, stride=1)), nn.ReLU(), nn.Flatten())
        with torch.no_grad():  # the flattened size depends on the window
            flat = self.cnn(torch.zeros(1, spec.num_features, spec.obs_height, spec.obs_width)).shape[1]
        self.fc = nn.Sequential(init_layer(nn.Linear(flat, hidden)), nn.ReLU(), init_layer(nn.Linear(hidden, hidden)), nn.ReLU())

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        if self.token_conv is None:
            return self.fc(self.cnn(self.box(obs)))
        first = self.cnn[0]
        return self.fc(self.cnn[1:](self.token_conv(obs, first.weight, first.bias)))


class Fast(RecurrentPolicy):
    def __init__(self, spec: EnvSpec, clip_range: float = 0.0, lstm_init: str = "metta", token_conv: bool = False):
        critic, actor = metta_heads(spec)
        memory = LSTMMemory(128, 128, 2, lstm_init)
        super().__init__(spec, FastEncoder(spec, token_conv=token_conv), memory, critic, actor, clip_range)
