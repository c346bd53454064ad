"""Recurrent policies over token observations, and `make_policy` to build one by name."""

from __future__ import annotations

from functools import partial

from torch import nn

from envs.spec import EnvSpec
from policies.base import RecurrentPolicy, replace_encoder_relus, scale_encoder_weights
from policies.example import Example
from policies.fast import Fast
from policies.latent_attn import LatentAttn

POLICIES = {
    "fast": Fast,
    "latent_attn_tiny": partial(LatentAttn, size="tiny"),
    "latent_attn_small": partial(LatentAttn, size="small"),
    "latent_attn_med": partial(LatentAttn, size="med"),
    "example": Example,
}


def make_policy(name: str, env, inventory_norm: float = 0.0, one_hot_ids: bool = False, encoder_leak: float = 0.0,
                encoder_gain: float = 1.0, lstm_forget_bias: float = 1.0, **config) -> RecurrentPolicy:
    """Build policy `name` for `env` (an env with a `.spec`, or an EnvSpec); `config` goes to its constructor
    (clip_range, lstm_init). `inventory_norm` > 0 replaces the env's divisor of its inventory features
    (EnvSpec.with_inventory_norm); 0 keeps the env's. `one_hot_ids` reads each id feature (type_id, ...) as one
    channel per id (EnvSpec.with_one_hot_ids). `encoder_leak` > 0 makes the encoder's ReLUs leaky with that negative
    slope (the same parameters). `encoder_gain` multiplies the encoder's initial Linear/Conv weights (the same draws,
    another scale). `lstm_forget_bias` starts the forget gate of lstm_init forget at that bias instead of 1."""
    if name not in POLICIES:
        raise ValueError(f"unknown policy {name!r}; choose one of {sorted(POLICIES)}")
    spec = env if isinstance(env, EnvSpec) else env.spec
    if inventory_norm:
        spec = spec.with_inventory_norm(inventory_norm)
    if one_hot_ids:
        spec = spec.with_one_hot_ids()
    policy = POLICIES[name](spec, **config)
    if encoder_leak:
        replace_encoder_relus(policy, nn.LeakyReLU, encoder_leak)
    if encoder_gain != 1:
        scale_encoder_weights(policy, encoder_gain)
    if lstm_forget_bias != 1:
        policy.memory.set_forget_bias(lstm_forget_bias)
    return policy


__all__ = ["POLICIES", "RecurrentPolicy", "make_policy"]
