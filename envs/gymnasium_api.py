"""The gridworld through gymnasium's interfaces (numpy in and out), for tools that expect them.

The trainer does not use these: it steps `GridEnv` directly and keeps everything on the device.
- `GridVectorEnv`: a `gymnasium.vector.VectorEnv` whose sub-envs are the agents (agent i of map e is
  sub-env e * agents_per_env + i), with same-step autoreset: an ended episode's last observation is in
  `infos["final_obs"]`, masked by `infos["_final_obs"]`.
- `GridGymEnv`: one map with one agent as a `gymnasium.Env`, registered by `import envs` as minippo/Arena-v0,
  Nav-v0 and Memory-v0.
"""

from __future__ import annotations

import gymnasium
import numpy as np
import torch
from gymnasium import spaces
from gymnasium.vector import AutoresetMode, VectorEnv
from gymnasium.vector.utils import batch_space

from envs.config import ConfigError, make_config
from envs.grid import GridEnv
from envs.render import render


def observation_space(env: GridEnv) -> spaces.Box:
    return spaces.Box(0, 255, (env.spec.num_tokens, 3), np.uint8)


def action_space(env: GridEnv) -> spaces.MultiDiscrete:
    """(type, arg); pairs with arg above the type's max are valid to send and fail harmlessly."""
    return spaces.MultiDiscrete([len(env.spec.action_names), max(env.spec.action_max_args) + 1])


class GridVectorEnv(VectorEnv):
    metadata = {"autoreset_mode": AutoresetMode.SAME_STEP, "render_modes": ["ansi"]}

    def __init__(self, task: str = "arena", render_mode: str | None = None, **overrides):
        self.env = GridEnv(make_config(task, **overrides))
        self.num_envs = self.env.num_agents
        self.render_mode = render_mode
        self.single_observation_space = observation_space(self.env)
        self.single_action_space = action_space(self.env)
        self.observation_space = batch_space(self.single_observation_space, self.num_envs)
        self.action_space = batch_space(self.single_action_space, self.num_envs)

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        td = self.env.reset(seed)
        return td["env_obs"].cpu().numpy(), {}

    def step(self, actions):
        td = self.env.step(torch.as_tensor(np.asarray(actions)), final_obs=True)
        terminated, truncated = td["dones"].cpu().numpy(), td["truncateds"].cpu().numpy()
        infos = {}
        ended = terminated | truncated
        if ended.any():
            infos = {"final_obs": td["final_env_obs"].cpu().numpy(), "_final_obs": ended}
        return td["env_obs"].cpu().numpy(), td["rewards"].cpu().numpy(), terminated, truncated, infos

    def render(self):
        return render(self.env, 0) if self.render_mode == "ansi" else None


class GridGymEnv(gymnasium.Env):
    metadata = {"render_modes": ["ansi"]}

    def __init__(self, task: str = "nav", render_mode: str | None = None, **overrides):
        cfg = make_config(task, **{"desync_episodes": False, **overrides, "num_envs": 1})
        if cfg.layout is None:
            cfg = cfg.replace(agents_per_env=1)
        self.env = GridEnv(cfg)
        if self.env.num_agents != 1:
            raise ConfigError(f"task {task!r} places {self.env.num_agents} agents; a gymnasium.Env has one: "
                              "use GridVectorEnv for several")
        self.render_mode = render_mode
        self.observation_space = observation_space(self.env)
        self.action_space = action_space(self.env)

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        td = self.env.reset(seed)
        return td["env_obs"][0].cpu().numpy(), {}

    def step(self, action):
        td = self.env.step(torch.as_tensor(np.asarray(action)).view(1, 2), final_obs=True)
        terminated, truncated = bool(td["dones"][0]), bool(td["truncateds"][0])
        obs = td["final_env_obs" if terminated or truncated else "env_obs"][0]
        return obs.cpu().numpy(), float(td["rewards"][0]), terminated, truncated, {}

    def render(self):
        return render(self.env, 0) if self.render_mode == "ansi" else None
