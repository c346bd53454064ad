"""Token-observation gridworlds as batched tensor operations."""

from envs.config import TASKS, ConfigError, GridConfig, make_config
from envs.grid import GridEnv
from envs.spec import EnvSpec


def make_env(task: str = "arena", **overrides):
    """A batched env for `task` with config `overrides`: our gridworld ("arena", "nav", "memory"; GridConfig
    fields) or the real MettaGrid ("mettagrid.arena", "mettagrid.nav"; envs/mettagrid.py MettaGridConfig
    fields, needs the mettagrid extra)."""
    if task.startswith("mettagrid."):
        import dataclasses

        from envs.mettagrid import MettaGridConfig, MettaGridEnv  # imported only when asked for: an optional extra

        unknown = sorted(set(overrides) - {f.name for f in dataclasses.fields(MettaGridConfig)})
        if unknown:
            raise ValueError(f"unknown MettaGrid options {unknown}; see envs/mettagrid.py MettaGridConfig")
        return MettaGridEnv(MettaGridConfig(task=task.removeprefix("mettagrid."), **overrides))
    return GridEnv(make_config(task, **overrides))


__all__ = ["TASKS", "ConfigError", "EnvSpec", "GridConfig", "GridEnv", "make_config", "make_env"]
