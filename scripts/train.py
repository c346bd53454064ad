"""Train a recurrent policy with PPO.

    python scripts/train.py --policy fast --env nav
    python scripts/train.py --preset gpu --policy latent_attn_small
    python scripts/train.py --resume runs/nav_fast_0/checkpoint.pt

--preset cpu|gpu picks the batch sizes (default: gpu when CUDA is available); every option below
overrides it. Logs go to TensorBoard (tensorboard --logdir runs).
"""

from __future__ import annotations

import argparse
import os
import sys

import tyro

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import torch  # noqa: E402

from trainer.config import PRESETS, TrainConfig  # noqa: E402
from trainer.ppo import NonFiniteError, Trainer  # noqa: E402


def main() -> None:
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--preset", choices=sorted(PRESETS), default="gpu" if torch.cuda.is_available() else "cpu")
    known, rest = pre.parse_known_args()
    cfg = tyro.cli(TrainConfig, default=PRESETS[known.preset], args=rest, description=__doc__)
    try:
        trainer = Trainer(cfg)
    except (ValueError, FileNotFoundError, ImportError) as e:
        sys.exit(f"error: {e}")
    c = trainer.cfg
    print(f"{c.policy} on {c.env}: {trainer.env.num_agents} agents, batch {trainer.batch_size:,}, "
          f"minibatch {c.minibatch_size:,}, {trainer.num_updates} updates, device {trainer.device}, "
          f"logs {trainer.run_dir}" + (f", resumed at update {trainer.update}" if c.resume else ""))
    try:
        trainer.train()
    except NonFiniteError as e:
        sys.exit(f"error: {e}")
    print(f"saved {trainer.checkpoint_path}")
    if trainer.interrupted:
        sys.exit(130)  # the shell's code for a Ctrl-C: whoever started the run can tell it did not finish


if __name__ == "__main__":
    main()
