"""What the trainer's advantages teach about each get and put. From rollouts of a checkpoint, made by the trainer's
own rollout and valued by its own GAE (trainer/ppo.py, trainer/advantage.py), every get_items and put_items is
grouped by what the agent faced (scripts/evaluate.py's ActionTable) and how many of that converter's input and
output it held (where the reward caps the output: a second battery pays less than the first, a third nothing).
Per group: how often it happened, its mean advantage standardised over the rollout (what the per-minibatch
normalisation makes of it), the share of those advantages above 0, and the reward the step itself paid. A group
whose advantages are below 0 is taught away, whatever the behaviour would be worth later.

    python scripts/credit.py runs/arena_fast_0/checkpoint.pt
    python scripts/credit.py runs/arena_fast_0/checkpoint.pt --gae-lambda 0.95   # the same rollouts, another lambda
"""

from __future__ import annotations

import os
import sys
import tempfile
from dataclasses import dataclass

import torch
import tyro

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from envs.grid import GridEnv  # noqa: E402
from envs.spec import A  # noqa: E402
from evaluate import ActionTable  # noqa: E402
from trainer.config import TrainConfig  # noqa: E402
from trainer.loop import Trainer  # noqa: E402

ACTS = ("get_items", "put_items")
HELD = ("", "1", "2", "3+")  # how many of an item an agent holds, by bucket (0: none, or no such item)


@dataclass
class Args:
    checkpoint: tyro.conf.Positional[str]
    """A checkpoint written by scripts/train.py on our gridworld."""
    rollouts: int = 6
    """Rollouts of the checkpoint's batch to collect; the policy does not change between them."""
    gamma: float = 0.0
    """Discount of the advantages (0: the checkpoint's)."""
    gae_lambda: float = 0.0
    """GAE lambda of the advantages (0: the checkpoint's)."""
    min_count: int = 10
    """Leave out groups seen fewer times."""


class CreditTable:
    """Sums over every get and put of: 1, the standardised advantage, whether it is above 0, the step's reward."""

    def __init__(self, env: GridEnv, min_count: int = 1):
        self.table, self.min_count = ActionTable(env), min_count
        # the output held is told apart only where the reward caps it (a battery), not where each pays alike (a heart)
        out = [int(env.row_out[env.kinds.index(kind)]) for kind in self.table.kinds]
        capped = [o >= 0 and bool(env.reward_cap[o].isfinite()) for o in out]
        self.out_capped = torch.tensor([c for c in capped for _ in range(4)], device=env.device)  # per ActionTable key
        self.groups = len(self.table.kinds) * 4 * len(HELD) ** 2 * len(ACTS)
        self.sums = torch.zeros(4, self.groups, dtype=torch.float64)

    def add(self, key: torch.Tensor, held_in: torch.Tensor, held_out: torch.Tensor, action: torch.Tensor,
            z: torch.Tensor, reward: torch.Tensor):
        """All per event, flat: ActionTable key, input and output held, action type, standardised advantage, reward."""
        act = torch.full_like(action, -1)
        for i, name in enumerate(ACTS):
            act[action == A[name]] = i
        keep = act >= 0
        held_out = torch.where(self.out_capped[key], held_out, 0)
        top = len(HELD) - 1
        group = (((key * len(HELD) + held_in.clamp(max=top)) * len(HELD) + held_out.clamp(max=top)) * len(ACTS) + act)[keep]
        values = torch.stack([torch.ones_like(z), z, (z > 0).double(), reward]).double()[:, keep]
        self.sums.index_add_(1, group.cpu(), values.cpu())

    def __str__(self) -> str:
        rows = []
        for g in range(self.groups):
            n, z, positive, reward = self.sums[:, g].tolist()
            if n >= self.min_count:
                act, rest = ACTS[g % len(ACTS)], g // len(ACTS)
                held_in, held_out = HELD[rest // len(HELD) % len(HELD)], HELD[rest % len(HELD)]
                rows.append((self.table.label(rest // len(HELD) ** 2, held_in, held_out), act, n, z, positive, reward))
        width = max([len(r[0]) for r in rows] + [14]) + 2
        lines = [f"{'faces, holding':<{width}}{'action':<11}{'n':>7}{'z':>8}{'z > 0':>8}{'reward':>8}"]
        for label, act, n, z, positive, reward in sorted(rows):
            lines.append(f"{label:<{width}}{act:<11}{int(n):>7}{z / n:>8.2f}{positive / n:>8.0%}{reward / n:>8.3f}")
        return "\n".join(lines)


def credit(args: Args) -> CreditTable:
    if args.rollouts < 1 or args.min_count < 1:
        raise ValueError(f"rollouts={args.rollouts}, min_count={args.min_count}: both must be at least 1")
    with tempfile.TemporaryDirectory() as log_dir:  # the resumed trainer makes its run folder; nothing is written
        # eagerly: a recorded rollout's replays would not run the env.step this counts through
        trainer = Trainer(TrainConfig(resume=args.checkpoint, log_dir=log_dir, cuda_graphs=False),
                          given=("log_dir", "cuda_graphs"))
    if not isinstance(trainer.env, GridEnv):
        raise ValueError(f"credit reads our gridworld's maps; {trainer.cfg.env} is not one: use a checkpoint of a run "
                         "on arena, nav or memory")
    trainer.cfg = trainer.cfg.replace(**{k: v for k, v in (("gamma", args.gamma), ("gae_lambda", args.gae_lambda)) if v})
    trainer.cfg.check()  # a gamma or lambda out of range is named, with the fix
    env, table = trainer.env, CreditTable(trainer.env, args.min_count)
    seen, env_step = [], env.step

    def step(actions, **kwargs):  # what each agent faced and held when it chose, before the env applies its action
        seen.append((*table.table.situations(), actions[:, 0].clone()))
        return env_step(actions, **kwargs)

    env.step = step
    for _ in range(args.rollouts):
        seen.clear()
        trainer.rollout()
        data = trainer.buffer.data
        advantages = trainer.advantages(torch.ones_like(data["values"]))
        z = (advantages - advantages.mean()) / (advantages.std() + 1e-8)
        for t, (key, held_in, held_out, action) in enumerate(seen[:-1]):  # the last column's reward: next rollout
            table.add(key.flatten(), held_in.flatten(), held_out.flatten(), action, z[:, t], data["rewards"][:, t + 1])
    print(f"{args.rollouts} rollouts of {trainer.batch_size:,} agent steps; advantages with gamma {trainer.cfg.gamma}, "
          f"lambda {trainer.cfg.gae_lambda}; z: standardised over each rollout")
    return table


def main(args: Args) -> None:
    try:
        table = credit(args)
    except (ValueError, FileNotFoundError) as e:
        sys.exit(f"error: {e}")
    print(table)


if __name__ == "__main__":
    main(tyro.cli(Args))
