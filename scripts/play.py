"""Play a few random steps on one task and print the map after each: `python scripts/play.py --task memory`."""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass

import torch
import tyro

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from envs import make_env  # noqa: E402
from envs.render import LEGEND, render  # noqa: E402


@dataclass
class Args:
    task: str = "arena"
    """Task to play: arena, nav or memory."""
    steps: int = 5
    """Random steps to take."""
    seed: int = 0
    """Seeds the map and the random actions."""


def main(args: Args) -> None:
    env = make_env(args.task, num_envs=1, seed=args.seed, desync_episodes=False)
    pairs = env.spec.action_pairs()  # sample among the valid (type, arg) pairs
    g = torch.Generator().manual_seed(args.seed)
    print(LEGEND)
    print(render(env))
    for _ in range(args.steps):
        actions = pairs[torch.randint(len(pairs), (env.num_agents,), generator=g)]
        td = env.step(actions)
        print()
        print(render(env))
        if td["dones"].any() or td["truncateds"].any():
            print("(episode ended; the map above is the next episode's start)")


if __name__ == "__main__":
    main(tyro.cli(Args))
