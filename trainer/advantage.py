"""GAE with V-trace clipping over all segments at once (a loop over time, never over segments).

Column t+1 holds what the transition from t produced: its reward r_{t+1} and whether it ended the episode
(d_{t+1} terminal, u_{t+1} truncated). With rho_t = min(ratio_t, rho_clip) and c_t = min(ratio_t, c_clip):

    delta_t = rho_t (r_{t+1} + gamma V_next - V_t)
    A_t     = delta_t + gamma lambda c_t (1 - d_{t+1})(1 - u_{t+1}) A_{t+1},     A_{T-1} = 0

where V_next = V_{t+1}, except: a terminal cuts the bootstrap (V_next = 0); a truncation bootstraps from the
value of the final observation the time limit cut, `final_values[t+1]`, when the rollout computed it, and else
from V_t, the value of the last state seen before the time limit (Metta's choice: with same-step autoreset,
V_{t+1} is already the next episode's first state). With every ratio 1 this is plain GAE. The last column has no
successor here: to give it a real advantage, pass one more column (the step after the last) and drop its result.
"""

from __future__ import annotations

import torch


def compute_advantages(values: torch.Tensor, rewards: torch.Tensor, dones: torch.Tensor, truncateds: torch.Tensor,
                       ratio: torch.Tensor, gamma: float, gae_lambda: float, rho_clip: float, c_clip: float,
                       final_values: torch.Tensor | None = None) -> torch.Tensor:
    """All arguments `[segments, bptt]`; returns the advantages, same shape."""
    rho, c = ratio[:, :-1].clamp(max=rho_clip), ratio[:, :-1].clamp(max=c_clip)
    not_terminal, not_truncated = 1 - dones[:, 1:].float(), 1 - truncateds[:, 1:].float()
    cut_off = values[:, :-1] if final_values is None else final_values[:, 1:]  # what a truncation bootstraps from
    next_value = torch.where(truncateds[:, 1:], cut_off, values[:, 1:]) * not_terminal
    # every delta and carry at once; only the recursion itself walks back in time, one op per step
    delta = (rho * (rewards[:, 1:] + gamma * next_value - values[:, :-1])).T.contiguous()
    carry = (gamma * gae_lambda * c * not_terminal * not_truncated).T.contiguous()
    advantages = torch.zeros(values.shape[1], values.shape[0], dtype=values.dtype, device=values.device)
    for t in range(values.shape[1] - 2, -1, -1):  # time-major rows: each step reads and writes contiguous memory
        torch.addcmul(delta[t], carry[t], advantages[t + 1], out=advantages[t])
    return advantages.T
