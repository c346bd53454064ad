"""Data-parallel training under torchrun: `torchrun --nproc-per-node N scripts/train.py ...` (and `--nnodes`,
`--rdzv-endpoint` across machines). Without torchrun (no WORLD_SIZE in the environment) there is one rank and
everything here does nothing.

Each rank (process) runs its own envs and rollout; after every backward the ranks average their gradients (one
all-reduce of the flat gradient), so they take the same optimizer step and their weights stay identical.

    per rank   envs (seeded seed + rank), rollout, buffer, carried memory, advantages and their per-minibatch
               normalisation, prioritized sampling, action sampling (seed + rank)
    global     weights (rank 0's, broadcast at the start), optimizer state, the averaged gradient, the
               learning-rate schedule, the update count, the batch (world x the per-rank batch), the logged
               metrics (means over ranks; SPS counts every rank), the decision to stop (any rank's signal)

Only rank 0 writes TensorBoard logs, progress lines and checkpoints; a checkpoint gathers every rank's envs, memory
and random streams, so resuming with the same number of ranks is exact. A collective that waits longer than
`timeout` (a rank died) raises instead of hanging.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist


def rank_seed(seed: int, rank: int) -> int:
    """The seed of a rank's envs, minibatch sampling and action sampling."""
    return seed + rank


@dataclass(frozen=True)
class Ranks:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    def device(self, device: torch.device) -> torch.device:
        """This rank's GPU on a CUDA device (torchrun's LOCAL_RANK), else the device as it is."""
        return torch.device("cuda", self.local_rank) if device.type == "cuda" and self.world > 1 else device

    def average_gradients(self, parameters) -> None:
        """Replace every gradient by its mean over the ranks: one all-reduce of all of them, flattened."""
        if self.world == 1:
            return
        grads = [p.grad for p in parameters if p.grad is not None]
        flat = torch.cat([g.flatten() for g in grads])
        dist.all_reduce(flat)
        flat /= self.world
        for g, mean in zip(grads, flat.split([g.numel() for g in grads])):
            g.copy_(mean.view_as(g))

    def mean(self, values: torch.Tensor) -> torch.Tensor:
        """The mean over ranks of a float tensor of the same shape on every rank."""
        if self.world == 1:
            return values
        values = values.clone()
        dist.all_reduce(values)
        return values / self.world

    def all(self, flag: bool | torch.Tensor) -> bool:
        """True when `flag` holds on every rank."""
        flag = torch.as_tensor(flag, dtype=torch.float32, device=self._device)
        if self.world > 1:
            dist.all_reduce(flag, op=dist.ReduceOp.MIN)
        return bool(flag)

    def max(self, value: int) -> int:
        """The largest of every rank's `value`."""
        if self.world == 1:
            return value
        value = torch.tensor(value, device=self._device)
        dist.all_reduce(value, op=dist.ReduceOp.MAX)
        return int(value)

    def mean_dict(self, values: dict[str, float | torch.Tensor]) -> dict[str, float]:
        """Each value's mean over ranks (every rank passes the same keys), as plain floats."""
        keys = sorted(values)  # float64: an env's episode statistics are Python floats, kept exactly
        flat = torch.stack([torch.as_tensor(values[k], dtype=torch.float64, device=self._device) for k in keys])
        return dict(zip(keys, self.mean(flat).tolist()))

    def cpu_share(self) -> int:
        """CPU threads per rank when this node's ranks share its cores."""
        return max(1, (os.cpu_count() or 1) // int(os.environ.get("LOCAL_WORLD_SIZE", self.world)))

    def gather(self, obj) -> list | None:
        """Every rank's `obj`, in rank order, on rank 0 (None elsewhere)."""
        if self.world == 1:
            return [obj]
        out = [None] * self.world if self.main else None
        dist.gather_object(obj, out, dst=0)
        return out

    def broadcast(self, module: torch.nn.Module) -> None:
        """Give every rank rank 0's weights and buffers."""
        if self.world > 1:
            for tensor in [*module.parameters(), *module.buffers()]:
                dist.broadcast(tensor.data, src=0)

    @property
    def _device(self) -> torch.device:
        return torch.device("cuda", self.local_rank) if dist.is_initialized() and dist.get_backend() == "nccl" \
            else torch.device("cpu")

    def close(self) -> None:
        if self.world > 1 and dist.is_initialized():
            dist.destroy_process_group()


def setup(device: torch.device, timeout_s: float = 600.0) -> Ranks:
    """This process's place in a torchrun job (one rank of one when not launched by torchrun); joins the process
    group: NCCL on GPUs, gloo on CPU. ValueError for more ranks on a node than it has GPUs."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return Ranks()
    ranks = Ranks(int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", "0")))
    if device.type == "cuda":
        if ranks.local_rank >= torch.cuda.device_count():
            raise ValueError(f"rank {ranks.rank} is local rank {ranks.local_rank} but this node has "
                             f"{torch.cuda.device_count()} GPUs: launch at most that many processes per node "
                             "(torchrun --nproc-per-node)")
        torch.cuda.set_device(ranks.local_rank)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", timeout=timedelta(seconds=timeout_s))
    return ranks
