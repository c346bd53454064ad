"""The acting step as a CUDA graph (`--cuda-graphs`): recorded once, then replayed every step.

On a GPU one acting step of Fast is dozens of small kernels, each launched from Python; a graph replays all
of them with one launch (what that saves is for scripts/gpu_check.py to measure). The step must then be a fixed
function of fixed-shape tensors, so the per-slice recurrent state goes in and comes out as tensors, and the
policy's own acting branch (`RecurrentPolicy.forward`) runs inside unchanged: what is recorded is exactly
what an eager step computes. tensordict's CudaGraphModule does the recording, the copies into the graph's
input buffers, and the clones of its outputs; actions are sampled with the default CUDA generator, whose
state a graph advances like an eager call.
"""

from __future__ import annotations

import torch
from tensordict import TensorDict
from tensordict.nn import CudaGraphModule

from policies.base import RecurrentPolicy, slice_key

OUTPUTS = ("actions", "act_log_prob", "values", "full_log_probs")


class GraphedActing:
    """Call it as the policy on an acting batch `[B]`: it writes the same keys and advances the same memory."""

    def __init__(self, policy: RecurrentPolicy, warmup: int = 2):
        self.policy = policy
        self.graph = CudaGraphModule(self._step, warmup=warmup)  # eager for warmup - 1 calls, then record

    def _step(self, obs: torch.Tensor, dones: torch.Tensor, truncateds: torch.Tensor, h: torch.Tensor,
              c: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """The policy's acting step from state (h, c): its outputs and the next state. Python here runs only
        while recording; a replay runs the kernels it launched, on the graph's copies of the inputs."""
        memory = self.policy.memory
        memory.set_memory({0: (h, c)})
        td = self.policy(TensorDict({"env_obs": obs, "dones": dones, "truncateds": truncateds}, batch_size=[len(obs)]))
        h, c = memory.get_memory()[0]
        # the state in fp32 both ways: under bf16 autocast the LSTM returns bf16 and casts it back, losing nothing
        return (*(td[k] for k in OUTPUTS), h.float(), c.float())

    def __call__(self, td: TensorDict) -> TensorDict:
        memory, key = self.policy.memory, slice_key(td)
        states = memory.get_memory()  # every slice's; the step sees only this one
        h, c = memory.load(key, len(td), torch.empty(0, device=td["env_obs"].device))
        *outputs, h, c = self.graph(td["env_obs"], td["dones"], td["truncateds"], h, c)
        memory.set_memory({**states, key: (h, c)})
        td.update(dict(zip(OUTPUTS, outputs)))
        return td
