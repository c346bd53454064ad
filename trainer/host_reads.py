"""Count the places where code reads a tensor's value back to Python: on a GPU each one stalls the host
until the device catches up (a synchronisation), so the per-step loop must have none.

CUDA's own check (`torch.cuda.set_sync_debug_mode`) only runs on a GPU; this counter sees the same reads on
any device, so a CPU test can prove the acting loop free of them. `scripts/bench.py --sync-check` uses both.
"""

from __future__ import annotations

import traceback

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

# Tensor -> Python conversions, and ops whose output size depends on the values (the host must see them)
READS = frozenset({"item", "tolist", "numpy", "__bool__", "__int__", "__float__", "__index__",
                   "nonzero", "argwhere", "unique", "masked_select"})


class HostReads(TorchFunctionMode):
    """`with HostReads() as reads: ...` then `reads.sites`: one "file:line op" per read, in order."""

    def __init__(self):
        super().__init__()
        self.sites: list[str] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        name = getattr(func, "__name__", "")
        masked = name in ("__getitem__", "__setitem__") and len(args) > 1 and _has_bool_tensor(args[1])
        if name in READS or masked:
            stack = traceback.extract_stack()
            caller = next((f for f in reversed(stack) if _outside_torch(f.filename)), stack[-1])
            self.sites.append(f"{caller.filename}:{caller.lineno} {name}")
        return func(*args, **(kwargs or {}))


def _outside_torch(filename: str) -> bool:
    return filename != __file__ and "/torch/" not in filename and "/tensordict/" not in filename


def _has_bool_tensor(index) -> bool:
    items = index if isinstance(index, tuple) else (index,)
    return any(isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in items)


class HostOps(TorchDispatchMode):
    """`with HostOps() as ops: ...` then `ops.count`: the aten ops the host dispatched, each a kernel launch (or
    more) on a GPU. What the host does per acting step and per minibatch, measured on any device."""

    def __init__(self):
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.count += 1
        return func(*args, **(kwargs or {}))
