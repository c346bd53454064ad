"""Recurrent PPO: configuration, advantage, the training loop and checkpoints."""

from trainer.config import PRESETS, TrainConfig
from trainer.loop import Trainer

__all__ = ["PRESETS", "TrainConfig", "Trainer"]
