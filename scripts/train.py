"""Train a recurrent policy with PPO.

    python scripts/train.py --policy fast --env nav
    python scripts/train.py --preset gpu --policy latent_attn_small
    python scripts/train.py --resume runs/nav_fast_0/checkpoint.pt

--preset cpu|gpu picks the batch sizes and the tuned settings (default: gpu when CUDA is available);
--preset metta is Metta's hyperparameters and semantics at the cpu size. Every option below overrides the
preset. Logs go to TensorBoard (tensorboard --logdir runs).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys

import tyro

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import torch  # noqa: E402

from trainer.config import PRESETS, TrainConfig  # noqa: E402
from trainer.loop import NonFiniteError, Trainer  # noqa: E402


def main() -> None:
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--preset", choices=sorted(PRESETS), default="gpu" if torch.cuda.is_available() else "cpu")
    known, rest = pre.parse_known_args()
    cfg, given = parse_config(known.preset, rest)
    try:
        trainer = Trainer(cfg, given=given)
    except (ValueError, FileNotFoundError, ImportError, OSError) as e:
        sys.exit(f"error: {e}")
    c, ranks = trainer.cfg, trainer.ranks
    if ranks.main:
        per_rank = f" ({ranks.world} ranks x {trainer.env.num_agents} agents)" if ranks.world > 1 else ""
        print(f"{c.policy} on {c.env}: {ranks.world * trainer.env.num_agents} agents{per_rank}, batch "
              f"{trainer.batch_size:,}, minibatch {trainer.minibatch_segments * c.bptt:,} per rank, {trainer.num_updates} updates, device "
              f"{trainer.device}, logs {trainer.run_dir}" + (f", resumed at update {trainer.update}" if c.resume else "")
              + (f", policy weights from {c.init_from}" if c.init_from and not c.resume else ""))
    try:
        trainer.train()
    except (NonFiniteError, OSError) as e:
        sys.exit(f"error: {e}")
    finally:
        ranks.close()
    if ranks.main:
        print(f"saved {trainer.checkpoint_path}")
    if trainer.interrupted:
        sys.exit(128 + trainer.interrupted)  # the shell's code for the signal: whoever started the run can tell


def parse_config(preset: str, args: list[str]) -> tuple[TrainConfig, tuple[str, ...]]:
    """The preset with the command line's options over it, and the options the command line named."""
    cfg = tyro.cli(TrainConfig, default=PRESETS[preset], args=args, description=__doc__)
    given = options_given(args)
    if "minibatch_size" in given and "minibatches" not in given:  # a size asked for replaces a preset's count
        cfg = cfg.replace(minibatches=0)
    return cfg, given


def options_given(args: list[str]) -> tuple[str, ...]:
    """The TrainConfig fields named on the command line (--total-steps -> total_steps, --no-bf16 -> bf16)."""
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    names = [a[2:].split("=")[0].replace("-", "_") for a in args if a.startswith("--")]
    return tuple(n if n in fields else n.removeprefix("no_") for n in names
                 if n in fields or n.removeprefix("no_") in fields)


if __name__ == "__main__":
    main()
