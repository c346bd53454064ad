"""How often a segment's start falls between the memory task's cue and the first step the agent may act.

    python scripts/cue_across_segments.py --bptt 8 16 64 --env-overrides cue_delay 8

The trainer cuts every agent's steps into segments of bptt steps, one per rollout, and training's gradient stops at
a segment's start. Where the cue (shown for cue_steps steps) and the first free step lie in different segments,
only the state carried across the start can bring the cue to the choice: reset mode, which starts every segment
from zeros while acting too, answers those episodes by chance. The scripted player (envs/scripted.py) plays the
task on --maps maps for --rollouts rollouts of the longest bptt, and this counts, per bptt, the episodes (those that
start after the first step) with a segment's start in that stretch, and what reset mode could score at best if
it answered every other episode right: (1 - cut) + cut / 2 of the scripted score.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field

import torch
import tyro

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from envs import ConfigError, make_env  # noqa: E402
from envs.scripted import ScriptedPlayer  # noqa: E402


@dataclass
class Args:
    bptt: list[int] = field(default_factory=lambda: [16, 64])
    """Segment lengths to count for (scripts/train.py --bptt)."""
    env_overrides: dict[str, int] = field(default_factory=dict)
    """Memory task options, as scripts/train.py --env-overrides takes them (e.g. cue_delay 8)."""
    maps: int = 256
    """Memory maps played at once."""
    rollouts: int = 4
    """How long to play, in rollouts of the longest bptt."""
    seed: int = 0


def cut_fractions(args: Args) -> dict[int, tuple[int, float]]:
    """bptt -> (episodes counted, the fraction of them with a segment's start between the cue and the first free
    step)."""
    if min(args.bptt) < 2 or args.maps < 1 or args.rollouts < 1:
        raise ValueError("use a bptt of 2 or more, and at least 1 map and 1 rollout")
    env = make_env("memory", num_envs=args.maps, seed=args.seed, device="cpu", **args.env_overrides)
    if env.cfg.desync_episodes:
        raise ValueError("desync_episodes=1 starts episodes mid-way, so the cue is not at their start: leave it out")
    player, cue, free = ScriptedPlayer(env), env.cfg.cue_steps, env.cfg.cue_steps + env.cfg.cue_delay
    starts = torch.zeros(env.num_agents, dtype=torch.long)  # the step each agent's episode began at
    env.reset()
    counts = {b: [0, 0] for b in args.bptt}
    for t in range(max(args.bptt) * args.rollouts):
        td = env.step(player.act())
        ended = (td["dones"] | td["truncateds"]).bool()  # this observation is a new episode's first
        for s in starts[ended & (starts > 0)].tolist():  # the first episodes, started together, are left out
            for b in args.bptt:  # a segment starts at every multiple of b; one at s + cue or later cuts the cue off
                counts[b][0] += 1
                counts[b][1] += (s + free) // b * b >= s + cue
        starts[ended] = t + 1
    return {b: (n, cut / n if n else float("nan")) for b, (n, cut) in counts.items()}


def main(args: Args) -> None:
    try:
        fractions = cut_fractions(args)
    except (ValueError, ConfigError) as e:
        raise SystemExit(f"error: {e}") from None
    print("bptt | episodes | cue and first free step in different segments | reset mode's best")
    for b, (n, cut) in fractions.items():
        print(f"{b} | {n} | {cut:.2f} | {1 - cut / 2:.2f}")


if __name__ == "__main__":
    main(tyro.cli(Args, description=__doc__))
