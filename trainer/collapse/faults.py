"""The fault catalogue: every defect blamed for the collapse of Metta's recurrent PyTorch port, as a switch.

Each fault is implemented at the one place it breaks, next to the correct code, behind `if "<name>" in faults`
(search for its name to find it). All are off by default; `scripts/train.py --faults a,b` turns them on and
`scripts/reproduce_collapse.py` measures them side by side. The history is in the reference
(`metta-2025.md` section 1): the port collapsed with the "history" faults and was fixed on 2025-08-15
(commits 4922856a70, 4ae59d4a4e, 4a4041e3b1, a581b6d0a3); the audits written while chasing it blamed the
"audit" ones. docs/collapse.md has what each one measurably does.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Fault:
    origin: str
    """history (a real defect of the collapsing version) or audit (blamed by the audits)."""
    where: str
    """The file and function that implement it."""
    what: str
    """Its origin and mechanism, for a reader."""
    policies: tuple[str, ...] = ()
    """The policies it applies to (empty: all)."""


FAULTS: dict[str, Fault] = {
    "memoryless_rollout": Fault("history", "policies/memory.py LSTMMemory.step", """
        The collapsing port stored no LSTM state between acting steps: every rollout step ran the LSTM from
        zero state, so the agent acted without memory, while training unrolled 64-step segments with memory.
        The rollout's log-probs then come from a different policy than the one trained: the importance ratio
        is not 1 even before the first update, and the clipped objective mostly trains on noise."""),
    "wrong_action_index": Fault("history", "policies/actions.py ActionTable.to_index", """
        Training scored the stored action (type, arg) at logit cum[type] + arg instead of
        type + cum[type] + arg. For the 19 arena pairs, 10 (every pair after the first type with no
        argument) were scored at the log-prob of a different action, so the gradient pushed up actions the
        agent never took. Acting was correct, which hides it: returns still rise for a while."""),
    "sixteen_logits": Fault("history", "policies/base.py metta_heads, with policies/actions.py TypeArgHeads", """
        The port's actor had two independent heads, one logit per action type (7) and one per argument (9),
        concatenated and put through ONE softmax over 16 entries, read as indices into the 19-pair table.
        The last three pairs (rotate left, rotate right, swap) could never be chosen: an agent can face only
        up or down, so it moves only vertically.""", ("fast", "latent_attn_tiny", "latent_attn_small", "latent_attn_med")),
    "no_relu": Fault("history", "policies/fast.py FastEncoder", """
        The port's conv/fc stack had no nonlinearities: two convolutions and two linear layers collapsed
        into one linear map of the observation box before the LSTM.""", ("fast",)),
    "obs_zero_255_inplace": Fault("history", "policies/base.py RecurrentPolicy.forward", """
        The port ran `obs[obs == 255] = 0` on the observation tensor in place. Padding tokens [255, 255, 255]
        become [0, 0, 0]: real-looking type_id tokens at window cell (0, 0), which may overwrite a real one
        there, and which attention policies can no longer mask. Because it is in place, the stored
        experience is rewritten too. (The port also hard-coded 22 input channels for the env's 25; not
        reproduced here: our encoders read the count from the env.)"""),
    "no_detach": Fault("audit", "policies/memory.py LSTMMemory._store", """
        The audits' main claim: stored LSTM state kept its autograd graph, "accumulating gradients across
        episodes". The collapsing version stored no state at all (see memoryless_rollout), so it cannot have
        mattered there. Here the state is stored with its graph; acting runs without grad and the trainer
        resets memory before every minibatch, so the graph is dropped unless no_memory_reset keeps it."""),
    "no_done_reset": Fault("audit", "policies/memory.py LSTMMemory.step", """
        Acting never zeroes an agent's state when its episode ends: the next episode starts with the last
        one's memory. Training still resets at episode starts, so acting and training disagree after the
        first episode end in a segment."""),
    "no_train_done_reset": Fault("audit", "policies/memory.py LSTMMemory.unroll", """
        Training ignores episode starts inside a segment and carries the state across them. This is Metta's
        and PufferLib 3.0's own semantics, in both the collapsing and the fixed versions; acting did reset,
        so the recomputed log-probs differ from the rollout's after the first episode end in a segment."""),
    "no_memory_reset": Fault("audit", "trainer/ppo.py Trainer.rollout and Trainer.learn", """
        The trainer never calls reset_memory(): each minibatch starts from the state the previous minibatch
        ended with (other agents' segments, other times), and a rollout starts from whatever state of its
        batch size is stored. With no_detach, the second minibatch backpropagates into the first one's freed
        graph, and training crashes."""),
    "bptt_reshape": Fault("audit", "policies/memory.py LSTMMemory.unroll", """
        The audits blamed missing td["bptt"] / td["batch"] fields for wrong reshapes of the training unroll.
        The port derived both from the observation's shape, so it did not have this bug; here is what the
        bug would be: the [B, T] segments are reshaped to the LSTM's [T, B] instead of transposed, so the
        LSTM reads steps of different agents and times as one sequence."""),
    "no_clip_weights": Fault("audit", "trainer/ppo.py Trainer.learn", """
        The audits said weight clipping was on in ComponentPolicy and off in the port. The history says
        clip_range was 0 in both: off everywhere. The trainer skips clip_weights() after the optimizer step,
        which changes nothing unless --clip-range is above 0."""),
}

# The combination the collapsing version had (reference section 1). Its training also did not reset at episode
# starts inside segments (Metta's semantics) and clip_range was 0 (the default, so no_clip_weights is moot).
PRESETS: dict[str, tuple[str, ...]] = {
    "prefix": ("memoryless_rollout", "wrong_action_index", "sixteen_logits", "no_relu", "obs_zero_255_inplace",
               "no_train_done_reset"),
}


def parse_faults(text: str | tuple[str, ...] | list[str] | frozenset[str], policy: str | None = None) -> frozenset[str]:
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
