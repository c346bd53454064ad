"""Token-observation gridworlds as batched tensor operations."""

from envs.config import TASKS, ConfigError, GridConfig, make_config
from envs.grid import GridEnv
from envs.spec import EnvSpec


def make_env(task: str = "arena", **overrides) -> GridEnv:
    """A batched env for `task` ("arena", "nav" or "memory") with GridConfig `overrides`."""
    return GridEnv(make_config(task, **overrides))


__all__ = ["TASKS", "ConfigError", "EnvSpec", "GridConfig", "GridEnv", "make_config", "make_env"]
