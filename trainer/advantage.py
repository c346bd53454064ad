"""GAE with V-trace clipping over all segments at once (a loop over time, never over segments).

Column t+1 holds what the transition from t produced: its reward r_{t+1} and whether it ended the episode
(d_{t+1} terminal, u_{t+1} truncated). With rho_t = min(ratio_t, rho_clip) and c_t = min(ratio_t, c_clip):

    delta_t = rho_t (r_{t+1} + gamma V_next - V_t)
    A_t     = delta_t + gamma lambda c_t (1 - d_{t+1})(1 - u_{t+1}) A_{t+1},     A_{T-1} = 0

where V_next = V_{t+1}, except: a terminal cuts the bootstrap (V_next = 0); a truncation bootstraps from
V_t, the value of the last state seen before the time limit. (With same-step autoreset, V_{t+1} is already
the next episode's first state; the true final state was never observed, and V_t is its closest estimate.)
With every ratio 1 this is plain GAE.
"""

from __future__ import annotations

import torch


def compute_advantages(values: torch.Tensor, rewards: torch.Tensor, dones: torch.Tensor, truncateds: torch.Tensor,
                       ratio: torch.Tensor, gamma: float, gae_lambda: float, rho_clip: float, c_clip: float) -> torch.Tensor:
    """All arguments `[segments, bptt]`; returns the advantages, same shape."""
    advantages = torch.zeros_like(values)
    rho, c = ratio.clamp(max=rho_clip), ratio.clamp(max=c_clip)
    terminal, truncated = dones.float(), truncateds.float()
    for t in range(values.shape[1] - 2, -1, -1):
        next_value = torch.where(truncateds[:, t + 1], values[:, t], values[:, t + 1]) * (1 - terminal[:, t + 1])
        delta = rho[:, t] * (rewards[:, t + 1] + gamma * next_value - values[:, t])
        carry = gamma * gae_lambda * c[:, t] * (1 - terminal[:, t + 1]) * (1 - truncated[:, t + 1])
        advantages[:, t] = delta + carry * advantages[:, t + 1]
    return advantages
