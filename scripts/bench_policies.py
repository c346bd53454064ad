"""Policy throughput on real arena observations: acting (one step), training (forward + backward on a
[B, T] minibatch), and the cost of resetting at episode starts inside training segments.

    python scripts/bench_policies.py --policies fast example
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass, field

import torch
import tyro
from tensordict import TensorDict

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from envs import make_env  # noqa: E402
from policies import POLICIES, make_policy  # noqa: E402
from policies.memory import LSTMMemory  # noqa: E402


@dataclass
class Args:
    policies: list[str] = field(default_factory=lambda: sorted(POLICIES))
    """Policies to measure."""
    acting_batch: int = 1024
    """Agents per acting step."""
    train_batch: int = 256
    """Segments per training minibatch."""
    bptt: int = 64
    """Steps per segment."""
    repeats: int = 5
    """Timed calls per measurement; the median is reported."""
    device: str = "cuda" if torch.cuda.is_available() else "cpu"
    """Device to measure on."""


def timed(fn, repeats: int, device: torch.device) -> float:
    """Median seconds of `fn()` over `repeats` calls, after one warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def arena_observations(agents: int, steps: int, device: str) -> torch.Tensor:
    """`[agents, steps, 200, 3]` tokens from the arena under random actions."""
    env = make_env("arena", num_envs=-(-agents // 6), device=device, seed=0)
    pairs = env.spec.action_pairs().to(env.device)
    obs = []
    for _ in range(steps):
        obs.append(env.step(pairs[torch.randint(len(pairs), (env.num_agents,), device=env.device)])["env_obs"][:agents])
    return torch.stack(obs, 1)


def main(args: Args) -> None:
    device = torch.device(args.device)
    torch.manual_seed(0)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"device {device} ({name}), torch {torch.__version__}, {torch.get_num_threads()} CPU threads, median of {args.repeats}")
    spec = make_env("arena", num_envs=1).spec
    act_obs = arena_observations(args.acting_batch, 1, args.device)[:, 0]
    train_obs = arena_observations(args.train_batch, args.bptt, args.device)
    B, T = args.train_batch, args.bptt
    no = torch.zeros(B, T, dtype=torch.bool, device=device)
    starts = torch.rand(B, T, device=device) < 1 / 64  # an episode start every 64 steps per row on average
    print(f"{'policy':<18} {'acting (agent steps/s)':>23} {'training fwd+bwd (samples/s)':>29}")
    for policy_name in args.policies:
        policy = make_policy(policy_name, spec).to(device)
        n = len(act_obs)
        act_td = TensorDict({"env_obs": act_obs, "dones": torch.zeros(n, dtype=torch.bool, device=device),
                             "truncateds": torch.zeros(n, dtype=torch.bool, device=device),
                             "training_env_id_start": torch.zeros(n, dtype=torch.long, device=device)}, batch_size=[n])

        def act():
            with torch.no_grad():
                policy(act_td.clone(False))

        actions = torch.zeros(B, T, 2, dtype=torch.long, device=device)
        train_td = TensorDict({"env_obs": train_obs, "actions": actions, "dones": starts, "truncateds": no},
                              batch_size=[B, T])

        def train():
            policy.reset_memory()
            out = policy(train_td.clone(False))
            (out["act_log_prob"].mean() + out["values"].mean() + out["entropy"].mean()).backward()

        t_act, t_train = timed(act, args.repeats, device), timed(train, args.repeats, device)
        print(f"{policy_name:<18} {len(act_obs) / t_act:>23,.0f} {B * T / t_train:>29,.0f}")

    # resets inside segments: the chunked unroll against one plain LSTM call, forward + backward
    print(f"\nLSTM(128, 2 layers) unroll of [{B}, {T}], forward + backward:")
    memory = LSTMMemory(128, 128, 2).to(device)
    x = torch.randn(B, T, 128, device=device, requires_grad=True)

    def plain():
        out, _ = memory.lstm(x.transpose(0, 1))
        out.sum().backward()

    t_plain = timed(plain, args.repeats, device)
    print(f"  one plain nn.LSTM call             {t_plain * 1e3:8.1f} ms")
    for label, rate in (("no episode start inside", 0.0), ("starts every ~1000 steps", 1 / 1000),
                        ("starts every ~64 steps", 1 / 64)):
        s = torch.rand(B, T, device=device) < rate

        def chunked():
            memory.reset_memory()
            memory.unroll(x, s, key=0).sum().backward()

        pieces = 1 + int(s[:, 1:].any(0).sum())
        t = timed(chunked, args.repeats, device)
        print(f"  unroll, {label:<26} {t * 1e3:8.1f} ms  ({pieces} LSTM calls, {t / t_plain:.2f}x)")


if __name__ == "__main__":
    main(tyro.cli(Args))
