"""End-to-end training throughput (rollout + PPO update) per policy: agent steps per second.

    python scripts/bench_train.py --policies fast example --env arena --num-envs 16
"""

from __future__ import annotations

import os
import sys
import tempfile
from dataclasses import dataclass, field

import torch
import tyro

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from policies import POLICIES  # noqa: E402
from trainer import TrainConfig, Trainer  # noqa: E402


@dataclass
class Args:
    policies: list[str] = field(default_factory=lambda: sorted(POLICIES))
    """Policies to measure."""
    env: str = "arena"
    """Task."""
    num_envs: int = 16
    """Maps (arena: 6 agents each)."""
    minibatch_size: int = 1024
    """Agent steps per minibatch."""
    updates: int = 4
    """Updates to time (after one warm-up update); the median is reported."""
    device: str = "auto"
    """cuda, cpu or auto."""


def main(args: Args) -> None:
    print(f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads, env {args.env}, "
          f"{args.num_envs} maps, bptt 64, minibatch {args.minibatch_size}, 1 epoch, median of {args.updates} updates")
    with tempfile.TemporaryDirectory() as logs:
        for name in args.policies:
            cfg = TrainConfig(policy=name, env=args.env, num_envs=args.num_envs, minibatch_size=args.minibatch_size,
                              total_steps=10**12, device=args.device, log_dir=logs, run_name=name)
            trainer = Trainer(cfg)
            sps = sorted(h["SPS"] for h in trainer.train(updates=args.updates + 1, quiet=True)[1:])
            print(f"{name:<18} {trainer.env.num_agents} agents on {trainer.device}: {sps[len(sps) // 2]:>8,.0f} agent steps/s")


if __name__ == "__main__":
    main(tyro.cli(Args))
