"""How much of the memory task's cue reaches a policy's memory before any training, per seed.

    python scripts/cue_signal.py --policy fast
    python scripts/cue_signal.py --policy fast --train-args="--encoder-gain 1.4142 --lstm-forget-bias 2"

On the memory task the cue (which of two altars pays) is shown for cue_steps steps while the agent is frozen, then
hidden for cue_delay more; the agent acts from the next step. Policy-gradient learning of the cue starts from
how much the memory's output already differs between the two cues there, and grows it: a difference that starts
small takes longer to grow. Each seed's policy is built as train.py builds it (the preset, then --train-args), the
frozen steps are played on --maps maps, and between the maps whose cue says up and those whose cue says down this
reports the distance between the mean encoder outputs on the first step and between the mean memory outputs on the
first step the agent may act, each beside the mean norm of those outputs for scale.
"""

from __future__ import annotations

import os
import shlex
import sys
import tempfile
from dataclasses import dataclass

import torch
import tyro

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from train import parse_config  # noqa: E402
from trainer.config import PRESETS  # noqa: E402
from trainer.loop import Trainer  # noqa: E402


@dataclass
class Args:
    policy: str = "fast"
    """The policy (scripts/train.py --policy)."""
    seeds: int = 10
    """Seeds 0 to seeds - 1: each one's initial weights, as train.py --seed draws them."""
    maps: int = 256
    """Memory maps played per seed (half show each cue, about)."""
    preset: str = "cpu"
    """The preset the policy's options come from, as in scripts/train.py."""
    train_args: str = ""
    """More train.py options (e.g. --encoder-gain 1.4142); the env is memory unless they name another with a cue."""


def cue_signal(trainer: Trainer) -> tuple[float, float, float, float]:
    """(encoder difference, encoder norm, memory difference, memory norm), as the docstring above says."""
    env, policy = trainer.env, trainer.policy
    if getattr(env, "cue_row", -1) < 0:
        raise ValueError(f"the env {trainer.cfg.env!r} shows no cue: use --env memory, or a layout with a cue cell 'c'")
    frozen = env.cfg.cue_steps + env.cfg.cue_delay
    td = env.reset()
    up = (env.decoy[:, env.altar_rows[0]] == 0).repeat_interleave(env.agents_per_env)  # the cue says up, per agent
    if up.all() or not up.any():
        raise ValueError("every map drew the same cue: play more --maps")
    noop = torch.zeros(env.num_agents, 2, dtype=torch.long, device=env.device)
    policy.memory.reset_memory()
    with torch.no_grad():
        for step in range(frozen + 1):
            x = policy.encode(td["env_obs"])
            h = policy.memory.step(x, td["dones"].bool() | td["truncateds"].bool(), 0)
            if step == 0:
                first = x
            if step < frozen:
                td = env.step(noop)

    def between_cues(t: torch.Tensor) -> tuple[float, float]:
        return float((t[up].mean(0) - t[~up].mean(0)).norm()), float(t.norm(dim=-1).mean())

    return (*between_cues(first), *between_cues(h))


def main(args: Args) -> None:
    if args.preset not in PRESETS:
        raise SystemExit(f"error: --preset {args.preset!r}: choose one of {sorted(PRESETS)}")
    if args.seeds < 1 or args.maps < 2:
        raise SystemExit("error: --seeds needs at least 1 and --maps at least 2")
    rows = []
    print("seed | encoder: difference, norm | memory at the first free step: difference, norm")
    with tempfile.TemporaryDirectory() as logs:
        for seed in range(args.seeds):
            # one minibatch: a batch of any number of maps divides into it (nothing here trains)
            argv = ["--policy", args.policy, "--env", "memory", "--num-envs", str(args.maps), "--seed", str(seed),
                    "--minibatches", "1", *shlex.split(args.train_args)]
            try:
                cfg, _ = parse_config(args.preset, argv)
                rows.append(cue_signal(Trainer(cfg.replace(log_dir=logs, device="cpu"))))
            except ValueError as e:
                raise SystemExit(f"error: {e}") from None
            print(f"{seed} | {rows[-1][0]:.4f}, {rows[-1][1]:.3f} | {rows[-1][2]:.5f}, {rows[-1][3]:.3f}")
    mean = [sum(r[i] for r in rows) / len(rows) for i in range(4)]
    print(f"mean | {mean[0]:.4f}, {mean[1]:.3f} | {mean[2]:.5f}, {mean[3]:.3f}")


if __name__ == "__main__":
    main(tyro.cli(Args, description=__doc__))
