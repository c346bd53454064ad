"""How much of the memory task's cue reaches a policy's memory before any training, per seed.

    python scripts/cue_signal.py --policy fast
    python scripts/cue_signal.py --policy fast --train-args="--encoder-gain 1.4142 --lstm-forget-bias 2"

On the memory task the cue (which of two altars pays) is shown for cue_steps steps while the agent is frozen, then
hidden for cue_delay more; the agent acts from the next step. Policy-gradient learning of the cue starts from
how much the memory's output already differs between the two cues there, and grows it: a difference that starts
small takes longer to grow. Each seed's policy is built as train.py builds it (the preset, then --train-args), the
frozen steps are played on --maps maps, and between the maps whose cue says up and those whose cue says down this
reports the distance between the mean encoder outputs on the first step and between the mean memory outputs on the
first step the agent may act, each beside the mean norm of those outputs for scale, and how differently the policy
acts there (the total variation between the two groups' mean action distributions).
"""

from __future__ import annotations

import copy
import os
import shlex
import sys
import tempfile
from dataclasses import dataclass
from typing import NamedTuple

import torch
import tyro

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from train import parse_config  # noqa: E402
from policies.base import RecurrentPolicy  # noqa: E402
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


class CueSignal(NamedTuple):
    """Between the maps whose cue says up and those whose cue says down: the distance between the mean encoder
    outputs on the first step and between the mean memory outputs on the first free step, each beside the outputs'
    mean norm, and the total variation between the two groups' mean action distributions on the first free step
    (0: the policy acts alike whatever the cue; 1: never the same action)."""
    encoder_gap: float
    encoder_norm: float
    memory_gap: float
    memory_norm: float
    action_gap: float


def has_cue(env) -> bool:
    """The env's maps show a cue (the memory task, or a layout with a cue cell)."""
    return getattr(env, "cue_row", -1) >= 0


def cue_signal(policy: RecurrentPolicy, env) -> CueSignal:
    """The cue as `policy` carries it on `env` (a memory env, reset here to the maps of its seed); the policy is left
    as it was (a copy plays the frozen steps), so a training run measured between updates on an env of its own is
    not changed."""
    if not has_cue(env):
        raise ValueError("this env shows no cue: use --env memory, or a layout with a cue cell 'c'")
    policy = copy.deepcopy(policy)
    frozen = env.cfg.cue_steps + env.cfg.cue_delay
    td = env.reset(seed=env.cfg.seed)  # the same maps at every call: measures of one run's updates compare
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
        probs = policy._heads(h)[0].exp()

    def between_cues(t: torch.Tensor) -> tuple[float, float]:
        return float((t[up].mean(0) - t[~up].mean(0)).norm()), float(t.norm(dim=-1).mean())

    action_gap = float((probs[up].mean(0) - probs[~up].mean(0)).abs().sum() / 2)  # total variation
    return CueSignal(*between_cues(first), *between_cues(h), action_gap)


def main(args: Args) -> None:
    if args.preset not in PRESETS:
        raise SystemExit(f"error: --preset {args.preset!r}: choose one of {sorted(PRESETS)}")
    if args.seeds < 1 or args.maps < 2:
        raise SystemExit("error: --seeds needs at least 1 and --maps at least 2")
    rows = []
    print("seed | encoder: difference, norm | memory at the first free step: difference, norm | actions there: "
          "total variation")
    with tempfile.TemporaryDirectory() as logs:
        for seed in range(args.seeds):
            # one minibatch: a batch of any number of maps divides into it (nothing here trains)
            argv = ["--policy", args.policy, "--env", "memory", "--num-envs", str(args.maps), "--seed", str(seed),
                    "--minibatches", "1", *shlex.split(args.train_args)]
            try:
                cfg, _ = parse_config(args.preset, argv)
                trainer = Trainer(cfg.replace(log_dir=logs, device="cpu"))
                rows.append(cue_signal(trainer.policy, trainer.env))
            except ValueError as e:
                raise SystemExit(f"error: {e}") from None
            print(f"{seed} | {format_signal(rows[-1])}")
    print(f"mean | {format_signal(CueSignal(*(sum(column) / len(rows) for column in zip(*rows))))}")


def format_signal(s: CueSignal) -> str:
    return f"{s.encoder_gap:.4f}, {s.encoder_norm:.3f} | {s.memory_gap:.5f}, {s.memory_norm:.3f} | {s.action_gap:.3g}"


if __name__ == "__main__":
    main(tyro.cli(Args, description=__doc__))
