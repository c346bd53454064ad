"""Adam with update clipping (Wortsman et al. 2023's StableAdamW, after Adafactor): each tensor's step is divided by
max(1, RMS(g^2 / v) / max_rms), with v Adam's bias-corrected second moment after this gradient (max_rms 1: theirs).

Adam scales every coordinate's step by its own gradient history, so a gradient far larger than that history (a
spike after quiet updates, as a solved policy's are) moves each coordinate it reaches by up to
(1 - beta1) / (1 - beta2) ** 0.5, about 3 learning rates, at once. The RMS is about 1 or less while gradients are as
large as they have been and up to (1 / (1 - beta2)) ** 0.5, about 32, for such a spike, whose step the clip at 1
brings to about a tenth of a learning rate; a larger max_rms lets more through before it acts.
"""

from __future__ import annotations

import torch


def update_rms(grad: torch.Tensor, exp_avg_sq: torch.Tensor, step: torch.Tensor | float, beta2: float,
               eps: float) -> torch.Tensor:
    """RMS over a tensor of grad^2 / v, v = exp_avg_sq / (1 - beta2^step) (Adam's state after this gradient's step),
    floored at eps^2 where v is 0 (a coordinate that never had a gradient)."""
    v = exp_avg_sq / (1 - beta2 ** step)
    return (grad.square() / v.clamp_min(eps * eps)).mean().sqrt()


class UpdateClippedAdam(torch.optim.Adam):
    """torch.optim.Adam, then each tensor's step divided by max(1, update_rms / max_rms); max_rms 0: Adam's step as
    it is. The state is Adam's, so a checkpoint of either loads into the other."""

    def __init__(self, params, max_rms: float = 0.0, **adam_options):
        super().__init__(params, **adam_options)
        self.max_rms = max_rms

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:  # first, so that the steps start from the gradients it makes
            with torch.enable_grad():
                loss = closure()
        if not self.max_rms:
            super().step()
            return loss
        stepped = [[p for p in group["params"] if p.grad is not None] for group in self.param_groups]
        starts = [[p.clone() for p in params] for params in stepped]
        super().step()
        for group, params, params_before in zip(self.param_groups, stepped, starts):
            for p, start in zip(params, params_before):
                state = self.state[p]
                rms = update_rms(p.grad, state["exp_avg_sq"], state["step"], group["betas"][1], group["eps"])
                scale = (rms / self.max_rms).clamp_min(1)
                p.lerp_(start, 1 - 1 / scale)  # start + (p - start) / scale
        return loss
