"""The PPO loss of one minibatch, a pure function of tensors (tests/test_loss.py pins every term by hand).

    ratio      = exp(log π(a|s) − log μ(a|s))                 π: the policy now, μ: the policy that acted
    Â          = (A − mean A) / (std A + 1e-8) · w            w: the importance weight of prioritized sampling
                                                              (A · w when norm_adv is off)
    pg_loss    = mean max(−Â · ratio, −Â · clip(ratio, 1 − ε, 1 + ε))
    V_clipped  = V_old + clip(V − V_old, −ε_V, ε_V)
    v_loss     = ½ · mean max((V − R)², (V_clipped − R)²)
    kl         = mean((ratio − 1) − log ratio)                KL(μ ‖ π), estimated from the actions taken
    loss       = pg_loss + c_V · v_loss − c_H · mean entropy + c_KL · kl
"""

from __future__ import annotations

from typing import NamedTuple

import torch


class PPOLoss(NamedTuple):
    loss: torch.Tensor  # what backward() runs on
    pg_loss: torch.Tensor
    v_loss: torch.Tensor
    entropy: torch.Tensor
    ratio: torch.Tensor  # per step, with its graph: π/μ of the actions taken
    approx_kl: torch.Tensor  # the rest are statistics, without graph
    clipfrac: torch.Tensor


def normalize(advantages: torch.Tensor) -> torch.Tensor:
    """Mean 0 and standard deviation 1 over the minibatch."""
    return (advantages - advantages.mean()) / (advantages.std() + 1e-8)


def ppo_loss(new_log_prob: torch.Tensor, old_log_prob: torch.Tensor, advantages: torch.Tensor, weights: torch.Tensor,
             values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor, entropy: torch.Tensor, *,
             clip_coef: float, vf_clip_coef: float, vf_coef: float, ent_coef: float, kl_coef: float = 0.0,
             norm_adv: bool = True) -> PPOLoss:
    """Every tensor is per step ([segments, bptt] or any shape) except `weights`, one per segment ([segments])."""
    # policy: the clipped surrogate, on (normalised) advantages weighted by the sampling's importance weights
    log_ratio = new_log_prob - old_log_prob
    ratio = log_ratio.exp()
    adv = (normalize(advantages) if norm_adv else advantages) * weights.view(-1, *([1] * (advantages.dim() - 1)))
    pg_loss = torch.max(-adv * ratio, -adv * ratio.clamp(1 - clip_coef, 1 + clip_coef)).mean()

    # value: squared error, clipped around the values the rollout recorded
    v_clipped = old_values + (values - old_values).clamp(-vf_clip_coef, vf_clip_coef)
    v_loss = 0.5 * torch.max((values - returns) ** 2, (v_clipped - returns) ** 2).mean()

    # entropy bonus; a pull back to the acting policy, whose gradient is not 0 past the clip, where the surrogate's is
    entropy = entropy.mean()
    kl = ((ratio - 1) - log_ratio).mean()  # KL(μ || π), what approx_kl reports
    loss = pg_loss + vf_coef * v_loss - ent_coef * entropy
    if kl_coef:
        loss = loss + kl_coef * kl

    with torch.no_grad():
        approx_kl = kl.detach()
        clipfrac = ((ratio - 1).abs() > clip_coef).float().mean()
    return PPOLoss(loss, pg_loss, v_loss, entropy, ratio, approx_kl, clipfrac)
