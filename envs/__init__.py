"""Token-observation gridworlds as batched tensor operations."""

import gymnasium

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


for _task in TASKS:  # gymnasium.make("minippo/Nav-v0") after `import envs`; the module loads on first use
    gymnasium.register(f"minippo/{_task.capitalize()}-v0", entry_point="envs.gymnasium_api:GridGymEnv",
                       kwargs={"task": _task})

__all__ = ["TASKS", "ConfigError", "EnvSpec", "GridConfig", "GridEnv", "make_config", "make_env"]
