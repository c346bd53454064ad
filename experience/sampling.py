"""Which whole segments go into each minibatch.

Prioritized (Metta, PufferLib 3.0): priority_s = (sum_t |A_s,t|)^alpha, P_s = priority_s / sum priority;
draw the minibatch's segments by `multinomial` without replacement, and weight each segment's normalised
advantage by (N P_s)^-beta, with beta annealed from beta0 towards 1 over training. alpha = 0 is uniform
(every weight 1). The shuffled partition is the classic alternative: each segment exactly once per epoch.
"""

from __future__ import annotations

import torch


def prio_beta(beta0: float, alpha: float, update: int, total_updates: int) -> float:
    """beta = beta0 + (1 - beta0) * alpha * update / total_updates."""
    return beta0 + (1 - beta0) * alpha * update / max(total_updates, 1)


def sample_segments(advantages: torch.Tensor, count: int, alpha: float, beta: float,
                    generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """`advantages [segments, bptt]` -> (`count` segment indices, their importance weights)."""
    priority = advantages.abs().sum(1).pow(alpha)
    probs = priority / priority.sum()
    usable = torch.isfinite(probs).all() & (probs.sum() > 0)  # all advantages zero: fall back to uniform
    probs = torch.where(usable, probs, 1 / len(priority))  # a where, not an if: no wait for the device
    index = torch.multinomial(probs, count, replacement=False, generator=generator)
    weights = (len(probs) * probs[index]).pow(-beta)
    return index, weights


def shuffled_minibatches(segments: int, count: int, generator: torch.Generator, device) -> list[torch.Tensor]:
    """A random partition of all segments into minibatches of `count`."""
    return list(torch.randperm(segments, generator=generator, device=device).split(count))
