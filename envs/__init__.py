"""Token-observation gridworlds as batched tensor operations."""

from envs.config import TASKS, ConfigError, GridConfig, make_config
from envs.grid import GridEnv
from envs.spec import EnvSpec


def make_env(task: str = "arena", **overrides):
    """A batched env for `task` with config `overrides`: our gridworld ("arena", "nav", "memory"; GridConfig
    fields) or the real MettaGrid ("mettagrid.arena", "mettagrid.nav"; envs/mettagrid.py MettaGridConfig
    fields, needs the mettagrid extra)."""
    if task.startswith("mettagrid."):
        from envs.mettagrid import make_mettagrid_env  # imported only when asked for: an optional extra

        return make_mettagrid_env(task.removeprefix("mettagrid."), **overrides)
    return GridEnv(make_config(task, **overrides))


__all__ = ["TASKS", "ConfigError", "EnvSpec", "GridConfig", "GridEnv", "make_config", "make_env"]
