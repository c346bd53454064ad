"""Evaluate a checkpoint: run episodes with the trained policy, threading its LSTM state through each
episode (reset at episode starts), and print the mean return and task statistics.

The memory follows the checkpoint's training semantics: with --memory reset (Metta's) the state is also wiped
every bptt steps, as every rollout started from zero state; with --memory carry it never is.

    python scripts/evaluate.py runs/nav_fast_0/checkpoint.pt --episodes 100 --replay
    python scripts/evaluate.py runs/arena_fast_0/checkpoint.pt --actions   # what it does in front of each thing
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
from envs.spec import ACTIONS, INV0, INVENTORY_ITEMS  # noqa: E402
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
    actions: bool = False
    """Also print what the policy chooses by what it faces: the thing in front, whether a converter holds its output,
    whether the agent holds the converter's input (our gridworld)."""
    device: str = "cpu"
    """Device to run on."""


class ActionTable:
    """Counts the action types the policy chooses (carried out or not) by what each agent faces."""

    def __init__(self, env: GridEnv):
        self.env, self.kinds = env, sorted(set(env.kinds))
        self.kind_of_row = torch.tensor([self.kinds.index(k) for k in env.kinds], device=env.device)
        self.counts = torch.zeros(len(self.kinds) * 4, len(ACTIONS), dtype=torch.long, device=env.device)

    def situations(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per agent ([num_envs, agents_per_env]): the table's key for what it faces (the thing in front, whether a
        converter there holds its output, whether the agent holds its input), and how many of that converter's input
        and of its output the agent holds (0 where what is in front converts nothing)."""
        env = self.env
        _, _, row = env.facing()
        items = slice(INV0, INV0 + len(INVENTORY_ITEMS))
        agent_items = env.obj[:, 3:3 + env.agents_per_env, items]
        front_items = env.obj.gather(1, row[..., None].expand(-1, -1, env.obj.shape[-1]))[..., items]
        out_item, in_item = env.row_out[row], env.row_in[row]  # -1 where what is in front converts nothing
        loaded = (out_item >= 0) & (front_items.gather(2, out_item.clamp(min=0)[..., None]).squeeze(2) > 0)
        held_in, held_out = (torch.where(item >= 0, agent_items.gather(2, item.clamp(min=0)[..., None]).squeeze(2), 0).long()
                             for item in (in_item, out_item))
        return self.kind_of_row[row] * 4 + loaded.long() * 2 + (held_in > 0).long(), held_in, held_out

    def add(self, actions: torch.Tensor) -> None:
        key, _, _ = self.situations()
        self.counts += torch.bincount((key.flatten() * len(ACTIONS) + actions[:, 0]),
                                      minlength=self.counts.numel()).view_as(self.counts)

    def label(self, key: int, held_in: str = "", held_out: str = "") -> str:
        """What key names; `held_in` and `held_out`, where given, are how many of the converter's input and output
        the agent holds."""
        kind, loaded, holds_input = self.kinds[key // 4], key // 2 % 2, key % 2
        rows = [r for r, k in enumerate(self.env.kinds) if k == kind]
        out_item, in_item = int(self.env.row_out[rows[0]]), int(self.env.row_in[rows[0]])
        if out_item < 0:
            return kind
        text = f"{kind} {'with' if loaded else 'without'} {INVENTORY_ITEMS[out_item]}"
        held = [f"{held_in + ' ' if held_in else ''}{INVENTORY_ITEMS[in_item]}"] if in_item >= 0 and holds_input else []
        held += [f"{held_out} {INVENTORY_ITEMS[out_item]}"] if held_out else []
        return text + (f", holding {' and '.join(held)}" if held else "")

    def __str__(self) -> str:
        total, names = self.counts.sum(), [name for name, _ in ACTIONS]
        lines = ["what the policy chooses by what it faces: share of all agent steps, then each action type's share"
                 " of those steps", f"{'faces':<52}{'steps':>7}" + "".join(f"{n:>10}" for n in names)]
        for key in self.counts.sum(1).argsort(descending=True).tolist():
            steps = self.counts[key]
            if steps.sum():
                lines.append(f"{self.label(key):<52}{steps.sum() / total:>7.1%}"
                             + "".join(f"{n / steps.sum():>10.1%}" for n in steps))
        return "\n".join(lines)


def evaluate(args: Args) -> dict[str, float]:
    state = load_checkpoint(args.checkpoint)
    cfg = TrainConfig.from_dict(state["config"])
    torch.manual_seed(args.seed)
    env = make_env(cfg.env, num_envs=args.num_envs, seed=args.seed, device=args.device,
                   **{**cfg.env_overrides, "desync_episodes": False})  # full-length episodes only
    if (args.replay or args.gif or args.actions) and not isinstance(env, GridEnv):
        raise ValueError(f"--replay, --gif and --actions read our gridworld's maps; {cfg.env} is not one: leave them out")
    policy = apply_faults(make_policy(cfg.policy, env, **cfg.policy_options), cfg.fault_set).to(args.device)
    policy.load_state_dict(state["policy"])
    td = env.reset()
    table = ActionTable(env) if args.actions else None
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
            actions = policy(td)["actions"]  # the policy zeroes a row's state when its episode restarts
            if table is not None:
                table.add(actions)
            td = env.step(actions)
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
    if table is not None:
        print(table)
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
