"""Evaluate a checkpoint: run episodes with the trained policy, threading its LSTM state through each
episode (reset at episode starts), and print the mean return and task statistics.

The memory follows the checkpoint's training semantics: with --memory reset (Metta's) the state is also wiped
every bptt steps, as every rollout started from zero state; with --memory carry it never is.

    python scripts/evaluate.py runs/nav_fast_0/checkpoint.pt --episodes 100 --replay
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass

import torch
import tyro

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from envs import make_env  # noqa: E402
from envs.grid import GridEnv  # noqa: E402
from envs.render import LEGEND, render, write_gif  # noqa: E402
from policies import make_policy  # noqa: E402
from trainer.checkpoint import load_checkpoint  # noqa: E402
from trainer.collapse.faults import apply_faults  # noqa: E402
from trainer.config import TrainConfig  # noqa: E402


@dataclass
class Args:
    checkpoint: tyro.conf.Positional[str]
    """A checkpoint written by scripts/train.py."""
    episodes: int = 100
    """Agent-episodes to finish before reporting."""
    num_envs: int = 16
    """Maps played at once."""
    seed: int = 1
    """Seeds the maps and the policy's action sampling."""
    replay: bool = False
    """Print map 0 after every step of its first episode."""
    gif: str = ""
    """Also write map 0's first episode to this animated GIF (our gridworld; needs the plots extra)."""
    device: str = "cpu"
    """Device to run on."""


def evaluate(args: Args) -> dict[str, float]:
    state = load_checkpoint(args.checkpoint)
    cfg = TrainConfig.from_dict(state["config"])
    torch.manual_seed(args.seed)
    env = make_env(cfg.env, num_envs=args.num_envs, seed=args.seed, device=args.device,
                   **{**cfg.env_overrides, "desync_episodes": False})  # full-length episodes only
    if (args.replay or args.gif) and not isinstance(env, GridEnv):
        raise ValueError(f"--replay and --gif draw our gridworld's maps; {cfg.env} is not one: leave them out")
    policy = apply_faults(make_policy(cfg.policy, env, **cfg.policy_options), cfg.fault_set).to(args.device)
    policy.load_state_dict(state["policy"])
    td = env.reset()
    finished, totals, replaying = 0, {}, args.replay or bool(args.gif)
    frames = [LEGEND + "\n" + render(env, 0)] if replaying else []
    if args.replay:
        print(frames[0])
    wipe_every = cfg.bptt if cfg.memory == "reset" else 0
    print(f"memory: {cfg.memory}, as trained" + (f" (wiped every {wipe_every} steps)" if wipe_every else ""))
    step = 0
    with torch.no_grad():
        while finished < args.episodes:
            if wipe_every and step % wipe_every == 0:  # where each training rollout began from zero state
                policy.reset_memory()
            step += 1
            td["training_env_id_start"] = torch.zeros(len(td), dtype=torch.long, device=env.device)
            td = env.step(policy(td)["actions"])  # the policy zeroes a row's state when its episode restarts
            if replaying:
                frames.append(LEGEND + "\n" + render(env, 0))
                if args.replay:
                    print(f"\n{render(env, 0)}")
                replaying = not bool(td["dones"][0] | td["truncateds"][0])
            ended = int((td["dones"] | td["truncateds"]).sum())
            if ended:
                stats = env.episode_stats()
                for k, v in stats.items():
                    totals[k] = totals.get(k, 0.0) + v * ended
                finished += ended
    if args.gif:
        write_gif(frames, args.gif)
    return {k: v / finished for k, v in totals.items()}


def main(args: Args) -> None:
    try:
        means = evaluate(args)
    except (ValueError, FileNotFoundError, ImportError) as e:
        sys.exit(f"error: {e}")
    print(f"{args.checkpoint}: means over {args.episodes}+ agent-episodes")
    for k, v in means.items():
        print(f"  {k:<20} {v:.3f}")


if __name__ == "__main__":
    main(tyro.cli(Args))
