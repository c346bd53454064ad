"""The acting step and the update's gradient step as CUDA graphs (`--cuda-graphs`): recorded once, then replayed.

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
        on_gpu = next(policy.parameters()).is_cuda  # elsewhere the same step runs eagerly: what tests check on a CPU
        self.graph = CudaGraphModule(self._step, warmup=warmup) if on_gpu else self._step  # eager warmup - 1 calls

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


class GraphedUpdate:
    """Call it as `Trainer.minibatch_step(index, weights, advantages)`: the same gradient step (forward, loss, backward,
    gradient clip, Adam, clip_weights), replayed as one CUDA graph on copies of the three tensors.

    Everything else the step reads or writes (the buffer, returns, V-trace ratios, weights, gradients, Adam's
    state and learning rate) stays at one address for the whole run, so the replay sees its current values. The
    first `warmup` calls run eagerly on a side stream, as capture requires, and create Adam's state; the next
    records. Off CUDA the same computation runs eagerly every time (what a CPU test can check).
    """

    def __init__(self, step, policy: RecurrentPolicy, optimizer: torch.optim.Optimizer, warmup: int = 3):
        self.step, self.optimizer, self.warmup, self.calls = step, optimizer, warmup, 0
        self.on_gpu = next(policy.parameters()).is_cuda
        self.graph: torch.cuda.CUDAGraph | None = None
        policy.memory.static_unroll = True  # shapes that do not depend on the data: nothing read back
        for module in policy.modules():
            if hasattr(module, "reads_are_free"):
                module.reads_are_free = False

    def __call__(self, *inputs: torch.Tensor) -> dict[str, torch.Tensor]:
        if not self.on_gpu:
            return self.step(*inputs)
        if self.calls < self.warmup:
            self.calls += 1
            return on_side_stream(self.step, *inputs)
        if self.graph is None:
            self._record(inputs)
        for static, value in zip(self.inputs, inputs):
            static.copy_(value)
        self.graph.replay()
        return {k: v.clone() for k, v in self.outputs.items()}  # the next replay overwrites them

    def _record(self, inputs: tuple[torch.Tensor, ...]) -> None:
        for group in self.optimizer.param_groups:
            group["capturable"] = True  # Adam's step count stays on the device
            group["lr"] = torch.tensor(float(group["lr"]), device=inputs[0].device)  # annealing reaches replays
        self.inputs = [x.clone() for x in inputs]
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):  # records the kernels; nothing runs until replay
            self.outputs = self.step(*self.inputs)


class GraphedRollout:
    """Call it as `Trainer.rollout()`: the whole rollout (bptt acting steps, env steps and buffer stores, and the
    horizon's value) replayed as one CUDA graph, one launch per rollout. For a torch env (GridEnv): its state is
    tensors, and nothing is read back while acting (scripts/bench.py --sync-check).

    A replay runs the recorded kernels on the recorded addresses. The buffer and the weights stay put; what the
    rollout starts from and leaves behind (the env's state, the next observations, the carried memory) the step code
    reassigns: before each replay the current values are copied to where the recording read them, and after it the
    trainer's references point to where it left them. The Python bookkeeping (the buffer's rows, the step count) is
    set as the recording left it. The first rollout runs eagerly on a side stream, as capture requires; the second
    records and replays. Off CUDA every rollout runs eagerly.
    """

    def __init__(self, trainer, rollout):
        self.trainer, self.rollout, self.calls = trainer, rollout, 0
        self.on_gpu = trainer.device.type == "cuda"
        self.graph: torch.cuda.CUDAGraph | None = None

    def __call__(self) -> None:
        t = self.trainer
        if not self.on_gpu:
            return self.rollout()
        if self.graph is None and self.calls < 1:
            self.calls += 1
            return on_side_stream(self.rollout)
        if self.graph is None:
            self._record()
        for name, value in self._state().items():
            if value.data_ptr() != self.inputs[name].data_ptr():
                self.inputs[name].copy_(value)
        self.graph.replay()
        self._point(self.outputs, self.out_td, self.out_carried)
        t.policy.set_memory(self.out_memory)  # where the rollout left the memory (an update may have reset it since)
        t.buffer.rows, t.buffer.column, t.buffer.next_row = dict(self.rows), dict(self.column), t.buffer.segments
        t.global_step += t.batch_size

    def _state(self) -> dict[str, torch.Tensor]:
        """Every tensor the rollout starts from, by name."""
        t = self.trainer
        state = {f"env.{name}": getattr(t.env, name) for name in t.env.STATE}
        state.update({f"obs.{key}": t.next_obs[key] for key in self.obs_keys})
        for key, (h, c) in t.carried.items():
            state[f"carried.{key}.h"], state[f"carried.{key}.c"] = h, c
        return state

    def _point(self, state: dict[str, torch.Tensor], td, carried: dict) -> None:
        t = self.trainer
        for name in t.env.STATE:
            setattr(t.env, name, state[f"env.{name}"])
        t.next_obs, t.carried = td, dict(carried)

    def _record(self) -> None:
        t = self.trainer
        self.obs_keys = [k for k in t.next_obs.keys() if isinstance(t.next_obs.get(k), torch.Tensor)]
        self.inputs, in_td, in_carried = self._state(), t.next_obs, dict(t.carried)
        step = t.global_step
        self.graph = torch.cuda.CUDAGraph()
        self.graph.register_generator_state(t.env.generator)  # the env's draws advance with every replay
        with torch.cuda.graph(self.graph):  # records the kernels; nothing runs until replay
            self.rollout()
        t.global_step = step
        self.outputs, self.out_td, self.out_carried = self._state(), t.next_obs, dict(t.carried)
        self.out_memory = t.policy.get_memory()
        self.rows, self.column = dict(t.buffer.rows), dict(t.buffer.column)
        self._point(self.inputs, in_td, in_carried)  # the state to start from is still where the recording read it


def on_side_stream(fn, *args):
    """`fn(*args)` eagerly on a side stream: what capture requires of the calls before it (warm-up)."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        out = fn(*args)
    torch.cuda.current_stream().wait_stream(side)
    return out
