"""The fault catalogue: every defect blamed for the collapse of Metta's recurrent PyTorch port, as an override.

The correct code names none of them. Each fault is a function that takes a built policy and overrides the one
correct piece it breaks (a method of the memory, of the action table or of the policy, the actor's head, the
encoder's activations, a hook on the observation): `apply_faults(make_policy(...), "a,b")`, which the trainer
does once when `--faults a,b` is given. An override wraps the method it replaces (a functools.partial of a module
function, so a faulty policy still deep-copies and pickles), so faults that override one method compose.
`scripts/reproduce_collapse.py` measures them side by side. The history is in the reference (`metta-2025.md`
section 1): the port collapsed with the "history" faults and was fixed on 2025-08-15 (commits 4922856a70,
4ae59d4a4e, 4a4041e3b1, a581b6d0a3); the audits written while chasing it blamed the "audit" ones.
docs/collapse.md has what each one measurably does.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import partial

import torch
from torch import nn

from envs.spec import EnvSpec
from policies.actions import BilinearActionHead
from policies.base import RecurrentPolicy, record_weight_bounds, replace_encoder_relus


# --- history: what the collapsing port really had -------------------------------------------------------------
def memoryless_rollout(policy: RecurrentPolicy) -> None:
    """The collapsing port stored no LSTM state between acting steps: every rollout step ran the LSTM from zero
    state, so the agent acted without memory, while training unrolled 64-step segments with memory. The
    rollout's log-probs then come from a different policy than the one trained: the importance ratio is not 1
    even before the first update, and the clipped objective mostly trains on noise."""
    policy.memory.step = partial(_step_from_zero_state, policy.memory, policy.memory.step)


def _step_from_zero_state(memory, step, x, starts, key):
    memory.state.pop(key, None)  # no stored state: the step starts from zeros
    return step(x, starts, key)


def wrong_action_index(policy: RecurrentPolicy) -> None:
    """Training scored the stored action (type, arg) at logit cum[type] + arg instead of type + cum[type] + arg.
    For the 19 arena pairs, 10 (every pair after the first type with no argument) were scored at the log-prob of
    a different action, so the gradient pushed up actions the agent never took. Acting was correct, which hides
    it: returns still rise for a while."""
    policy.actions.to_index = partial(_index_without_type_offset, policy.actions)


def _index_without_type_offset(table, actions):
    actions = actions.long()
    return table.cum[actions[..., 0]] + actions[..., 1]


class TypeArgHeads(nn.Module):
    """The port's actor head: one logit per action type and one per argument, concatenated (7 + 9 = 16 for the
    arena) and read by the policy as ONE softmax over indices into the pair table."""

    def __init__(self, hidden: int, spec: EnvSpec):
        super().__init__()
        if len(spec.action_names) + max(spec.action_max_args) + 1 > spec.num_action_pairs:
            raise ValueError("sixteen_logits needs at least as many (type, arg) pairs as type + arg logits")
        self.types = nn.Linear(hidden, len(spec.action_names))
        self.args = nn.Linear(hidden, max(spec.action_max_args) + 1)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.types(h), self.args(h)], -1)


def sixteen_logits(policy: RecurrentPolicy) -> None:
    """The port's actor had two independent heads, one logit per action type (7) and one per argument (9),
    concatenated and put through ONE softmax over 16 entries, read as indices into the 19-pair table. The last
    three pairs (rotate left, rotate right, swap) could never be chosen: an agent can face only up or down, so it
    moves only vertically. Here Metta's bilinear head is swapped for the port's after the policy is built."""
    head = policy.actor[-1] if isinstance(policy.actor, nn.Sequential) else None
    if not isinstance(head, BilinearActionHead):
        raise ValueError("sixteen_logits replaces Metta's bilinear action head, which this policy does not have")
    policy.actor[-1] = TypeArgHeads(head.W.shape[0], policy.spec).to(head.W.device)
    record_weight_bounds(policy.actor[-1])  # clip_weights bounds the new layers by their initial weights too


def no_relu(policy: RecurrentPolicy) -> None:
    """The port's conv/fc stack had no nonlinearities: two convolutions and two linear layers collapsed into one
    linear map of the observation box before the LSTM."""
    replace_encoder_relus(policy, nn.Identity)


def obs_zero_255_inplace(policy: RecurrentPolicy) -> None:
    """The port ran `obs[obs == 255] = 0` on the observation tensor in place. Padding tokens [255, 255, 255] become
    [0, 0, 0]: real-looking type_id tokens at window cell (0, 0), which may overwrite a real one there, and which
    attention policies can no longer mask. Because it is in place, the stored experience is rewritten too. (The
    port also hard-coded 22 input channels for the env's 25; not reproduced here: our encoders read the count
    from the env.)"""
    policy.register_forward_pre_hook(_zero_padding_in_place)


def _zero_padding_in_place(policy, args):
    obs = args[0]["env_obs"]
    obs[obs == 255] = 0


# --- audits: what the audits blamed ----------------------------------------------------------------------------
def no_detach(policy: RecurrentPolicy) -> None:
    """The audits' main claim: stored LSTM state kept its autograd graph, "accumulating gradients across
    episodes". The collapsing version stored no state at all (see memoryless_rollout), so it cannot have mattered
    there. Here the state is stored with its graph; acting runs without grad and the trainer resets memory before
    every minibatch, so the graph is dropped unless no_memory_reset keeps it."""
    policy.memory._store = partial(_store_with_graph, policy.memory)


def _store_with_graph(memory, key, h, c):
    memory.state[key] = (h, c)


def no_done_reset(policy: RecurrentPolicy) -> None:
    """Acting never zeroes an agent's state when its episode ends: the next episode starts with the last one's
    memory. Training still resets at episode starts, so acting and training disagree after the first episode end
    in a segment."""
    policy.memory.step = partial(_without_starts, policy.memory.step)


def no_train_done_reset(policy: RecurrentPolicy) -> None:
    """Training ignores episode starts inside a segment and carries the state across them. This is Metta's and
    PufferLib 3.0's own semantics, in both the collapsing and the fixed versions; acting did reset, so the
    recomputed log-probs differ from the rollout's after the first episode end in a segment."""
    policy.memory.unroll = partial(_without_starts, policy.memory.unroll)


def _without_starts(call, x, starts, key):
    return call(x, torch.zeros_like(starts), key)  # as if no episode started: no state is zeroed


def no_memory_reset(policy: RecurrentPolicy) -> None:
    """The policy's reset_memory() does nothing: in the trainer, each minibatch starts from the state the previous minibatch
    ended with (other agents' segments, other times), and a rollout starts from whatever state of its batch size
    is stored. With no_detach, the second minibatch backpropagates into the first one's freed graph, and training
    crashes."""
    policy.reset_memory = _nothing


def bptt_reshape(policy: RecurrentPolicy) -> None:
    """The audits blamed missing td["bptt"] / td["batch"] fields for wrong reshapes of the training unroll. The
    port derived both from the observation's shape, so it did not have this bug; here is what the bug would be:
    the [B, T] segments are reshaped to the LSTM's [T, B] instead of transposed, so the LSTM reads steps of
    different agents and times as one sequence."""
    policy.memory.unroll = partial(_unroll_reshaped, policy.memory.unroll)


def _unroll_reshaped(unroll, x, starts, key):
    B, T = starts.shape
    # the correct unroll transposes its input to [T, B]: hand it what makes that transpose x.reshape(T, B)
    out = unroll(x.reshape(T, B, -1).transpose(0, 1), starts, key)
    return out.transpose(0, 1).reshape(B, T, -1)  # and read its [T, B] output back as [B, T] the same way


def no_clip_weights(policy: RecurrentPolicy) -> None:
    """The audits said weight clipping was on in ComponentPolicy and off in the port. The history says clip_range
    was 0 in both: off everywhere. Here clip_weights() does nothing after the optimizer step, which changes
    nothing unless --clip-range is above 0."""
    policy.clip_weights = _nothing


def _nothing() -> None:
    pass


# --- the catalogue ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Fault:
    origin: str
    """history (a real defect of the collapsing version) or audit (blamed by the audits)."""
    where: str
    """The file and the correct code it overrides."""
    apply: Callable[[RecurrentPolicy], None]
    """Overrides that piece of a built policy, in place."""
    policies: tuple[str, ...] = ()
    """The policies it applies to (empty: all)."""

    @property
    def what(self) -> str:
        """Its origin and mechanism, for a reader."""
        return inspect.getdoc(self.apply)


METTA_HEADS = ("fast", "latent_attn_tiny", "latent_attn_small", "latent_attn_med")
FAULTS: dict[str, Fault] = {
    "memoryless_rollout": Fault("history", "policies/memory.py LSTMMemory.step", memoryless_rollout),
    "wrong_action_index": Fault("history", "policies/actions.py ActionTable.to_index", wrong_action_index),
    "sixteen_logits": Fault("history", "policies/actions.py BilinearActionHead", sixteen_logits, METTA_HEADS),
    "no_relu": Fault("history", "policies/fast.py FastEncoder", no_relu, ("fast",)),
    "obs_zero_255_inplace": Fault("history", "policies/base.py RecurrentPolicy.forward", obs_zero_255_inplace),
    "no_detach": Fault("audit", "policies/memory.py LSTMMemory._store", no_detach),
    "no_done_reset": Fault("audit", "policies/memory.py LSTMMemory.step", no_done_reset),
    "no_train_done_reset": Fault("audit", "policies/memory.py LSTMMemory.unroll", no_train_done_reset),
    "no_memory_reset": Fault("audit", "policies/base.py RecurrentPolicy.reset_memory", no_memory_reset),
    "bptt_reshape": Fault("audit", "policies/memory.py LSTMMemory.unroll", bptt_reshape),
    "no_clip_weights": Fault("audit", "policies/base.py RecurrentPolicy.clip_weights", no_clip_weights),
}

# The combination the collapsing version had (reference section 1). Its training also did not reset at episode
# starts inside segments (Metta's semantics) and clip_range was 0 (the default, so no_clip_weights is moot).
PRESETS: dict[str, tuple[str, ...]] = {
    "prefix": ("memoryless_rollout", "wrong_action_index", "sixteen_logits", "no_relu", "obs_zero_255_inplace",
               "no_train_done_reset"),
}


def parse_faults(text: str | Iterable[str], policy: str | None = None) -> frozenset[str]:
    """"a,b,prefix" (or a sequence of names) -> the set of fault names, presets expanded; raise ValueError
    naming the valid choices for an unknown name or a fault that does not apply to `policy`."""
    names = [n.strip() for n in text.split(",")] if isinstance(text, str) else list(text)
    faults: set[str] = set()
    for name in filter(None, names):
        if name in PRESETS:
            faults.update(PRESETS[name])
        elif name in FAULTS:
            faults.add(name)
        else:
            raise ValueError(f"unknown fault {name!r}; choose from {sorted(FAULTS)} or the presets {sorted(PRESETS)}")
    for name in sorted(faults):
        allowed = FAULTS[name].policies
        if policy is not None and allowed and policy not in allowed:
            raise ValueError(f"fault {name!r} applies to the policies {list(allowed)}, not {policy!r}")
    return frozenset(faults)


def apply_faults(policy: RecurrentPolicy, faults: str | Iterable[str]) -> RecurrentPolicy:
    """Switch the named faults (and presets) on in `policy`, in place and in the catalogue's order; return it."""
    chosen = parse_faults(faults)
    for name, fault in FAULTS.items():
        if name in chosen:
            fault.apply(policy)
    return policy
