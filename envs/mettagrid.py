"""The real MettaGrid (PyPI `mettagrid` 0.26) behind the same interface as our GridEnv.

    pip install -e ".[mettagrid]"
    python scripts/train.py --policy fast --env mettagrid.arena

`num_envs` C++ simulations write into slices of ONE preallocated buffer per field (observations
`uint8 [agents, tokens, 3]`, rewards, terminals, truncations, actions): no per-agent Python objects per step.
The spec carries the package's own features (ids, names, normalisations), its action list and its global-token
location (0xFE), so the same policies run unchanged. What differs from the 2025 MettaGrid our gridworld
reproduces, and what the tasks add, is in docs/mettagrid.md.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import torch
from tensordict import TensorDict

from envs.config import unknown_options
from envs.grid import check_actions
from envs.spec import EnvSpec

os.environ.setdefault("METTAGRID_LOG_LEVEL", "WARNING")  # importing mettagrid otherwise turns root logging to INFO
try:
    from mettagrid.builder.envs import make_arena, make_navigation
    from mettagrid.config.handler_config import Handler, updateActor
    from mettagrid.config.mettagrid_config import GridObjectConfig
    from mettagrid.mettagrid_c import dtype_actions, dtype_observations, dtype_rewards, dtype_terminals, dtype_truncations
    from mettagrid.policy.policy_env_interface import PolicyEnvInterface
    from mettagrid.simulator import Simulator
    from mettagrid.simulator.simulator import Buffers
except ImportError as e:
    raise ImportError(f"the real MettaGrid needs its extra: pip install -e \".[mettagrid]\" (Python 3.11 or 3.12) ({e})") from None

STATS = ("return", "length", "heart_gained")
TASKS = ("arena", "nav")


@dataclass
class MettaGridConfig:
    task: str = "arena"
    """arena (make_arena + heart altars) or nav (make_navigation, walled, heart altars)."""
    num_envs: int = 16
    """Simulations stepped together."""
    agents_per_env: int = 0
    """Agents per simulation (0: the task's default, 24 for arena, 4 for nav)."""
    max_steps: int = 1000
    """Episode length; at this step every agent is truncated."""
    desync_episodes: bool = True
    """Draw each simulation's first episode length from 1..max_steps, so resets spread out."""
    altars: int = 0
    """Heart altars placed on each map (0: the task's default, 10 for arena, 4 for nav)."""
    obs_window: int = 11
    """Side of the observation window (0.26's default is 13)."""
    obs_tokens: int = 200
    """Tokens per observation (0.26's default is 500). The package raises if an agent needs more."""
    seed: int = 0
    """Seeds the map sequence of every simulation."""
    device: str = "cpu"
    """Where the returned tensors live (the simulations run on the CPU)."""


def heart_altar() -> GridObjectConfig:
    """An object that gives the agent that moves into it one heart: the reward source 0.26's envs lack."""
    return GridObjectConfig(name="altar", on_use_handler=Handler(mutations=[updateActor({"heart": 1})]))


def build_task(cfg: MettaGridConfig):
    """The package's own builder, plus heart altars, our window, episode length and truncation at the limit."""
    if cfg.task == "arena":
        game = make_arena(cfg.agents_per_env or 24)
        game.game.map_builder.instance.objects["altar"] = cfg.altars or 10
    else:  # nav
        game = make_navigation(cfg.agents_per_env or 4)
        game.game.actions.change_vibe.enabled = False  # 152 extra actions a plain policy never uses
        builder = game.game.map_builder
        builder.width = builder.height = 15
        builder.border_width = 1
        builder.objects = {"wall": 10, "altar": cfg.altars or 4}
    game.game.objects["altar"] = heart_altar()
    game.game.obs.width = game.game.obs.height = cfg.obs_window
    game.game.obs.num_tokens = cfg.obs_tokens
    game.game.max_steps = cfg.max_steps
    game.game.episode_truncates = True  # the time limit is a truncation (bootstrapped), not a terminal
    return game


def task_spec(game) -> EnvSpec:
    """The EnvSpec of a built task: the package's own features (ids, names, normalisations) and action list."""
    interface = PolicyEnvInterface.from_mg_cfg(game)
    features = {f.id: f for f in interface.obs_features}
    obs = game.game.obs
    return EnvSpec(
        feature_names=tuple(features[i].name if i in features else f"unused_{i}" for i in range(max(features) + 1)),
        feature_normalizations=tuple(float(features[i].normalization) if i in features else 1.0
                                     for i in range(max(features) + 1)),
        action_names=tuple(interface.action_names), action_max_args=(0,) * len(interface.action_names),
        obs_width=obs.width, obs_height=obs.height, num_tokens=obs.num_tokens, global_location=0xFE)


def make_mettagrid_env(task: str, **overrides) -> MettaGridEnv:
    """MettaGrid task `task` ("arena" or "nav") with MettaGridConfig `overrides`."""
    unknown = unknown_options(MettaGridConfig, overrides)
    if unknown:
        raise ValueError(f"unknown MettaGrid options {unknown}; see envs/mettagrid.py MettaGridConfig")
    return MettaGridEnv(MettaGridConfig(task=task, **overrides))


class MettaGridEnv:
    """`num_envs` simulations × `agents_per_env` agents; agent i of simulation e is row e * agents_per_env + i."""

    exact_resume = False  # the C++ core's state cannot be saved: a resumed run starts fresh episodes

    def __init__(self, cfg: MettaGridConfig):
        if cfg.task not in TASKS:
            raise ValueError(f"unknown MettaGrid task {cfg.task!r}; choose one of {['mettagrid.' + t for t in TASKS]}")
        if cfg.num_envs < 1 or cfg.max_steps < 1:
            raise ValueError("num_envs and max_steps must be at least 1")
        if not 3 <= cfg.obs_window <= 15 or cfg.obs_window % 2 == 0:
            raise ValueError(f"obs_window={cfg.obs_window}: use an odd size from 3 to 15 (row and col are 4-bit)")
        self.cfg = cfg
        self.device = torch.device(cfg.device)
        self.game = build_task(cfg)
        self.spec = task_spec(self.game)
        self.agents_per_env = A = self.game.game.num_agents
        self.num_envs = E = cfg.num_envs
        self.num_agents = N = E * A
        # one buffer per field for all simulations; each simulation writes into its slice of rows
        self.obs = np.zeros((N, cfg.obs_tokens, 3), dtype_observations)
        self.rewards = np.zeros(N, dtype_rewards)
        self.terminals = np.zeros(N, dtype_terminals)
        self.truncations = np.zeros(N, dtype_truncations)
        self.actions = np.zeros(N, dtype_actions)
        self.no_vibes = np.zeros(N, dtype_actions)
        self.simulators: list = [None] * E
        self.sims: list = [None] * E
        self.episode = np.zeros((N, 2))  # running return and length per agent
        self.finished = np.zeros(len(STATS) + 1)  # sums + count of finished agent-episodes
        self.reset()

    def _rows(self, e: int) -> slice:
        return slice(e * self.agents_per_env, (e + 1) * self.agents_per_env)

    def _start(self, e: int, max_steps: int) -> None:
        """A new episode (a new map) in simulation e; it writes its first observations into e's rows."""
        if self.sims[e] is not None:
            self.sims[e].close()
        rows, A = self._rows(e), self.agents_per_env
        self.game.game.max_steps = max_steps  # both read when the simulation is created; the simulator adds
        self.game.game.map_builder.seed = self.cfg.seed * 1_000_003 + e * 100_000  # its episode count to the seed
        buffers = Buffers(observations=self.obs[rows], terminals=self.terminals[rows], truncations=self.truncations[rows],
                          rewards=self.rewards[rows], masks=np.ones(A, bool), actions=self.actions[rows],
                          teacher_actions=np.zeros(A, dtype_actions), vibe_actions=self.no_vibes[rows])
        self.sims[e] = self.simulators[e].new_simulation(self.game, seed=int(self.rng.integers(2 ** 31)), buffers=buffers)

    def reset(self, seed: int | None = None) -> TensorDict:
        """Start a fresh episode in every simulation (reseeding first if `seed` is given)."""
        if seed is not None:
            self.cfg.seed = seed
        self.rng = np.random.default_rng(self.cfg.seed)
        for e in range(self.num_envs):
            if self.sims[e] is not None:
                self.sims[e].close()
                self.sims[e] = None
            self.simulators[e] = Simulator()  # restarts simulation e's map sequence
            first = int(self.rng.integers(1, self.cfg.max_steps + 1)) if self.cfg.desync_episodes else self.cfg.max_steps
            self._start(e, first)
        self.episode[:] = 0
        self.finished[:] = 0
        zeros = np.zeros(self.num_agents, bool)
        return self._output(np.zeros(self.num_agents, np.float32), zeros, zeros)

    def step(self, actions: torch.Tensor, final_obs: bool = False) -> TensorDict:
        """Apply `actions [num_agents, 2]` ((type, 0): 0.26's actions take no argument); reset finished episodes.
        With `final_obs`, also return `final_env_obs`: what each agent saw before its episode was reset."""
        check_actions(actions, self.num_agents)
        self.actions[:] = actions[:, 0].cpu().numpy()
        for sim in self.sims:
            sim.step()
        rewards, dones, truncateds = self.rewards.copy(), self.terminals.copy(), self.truncations.copy()
        final = torch.from_numpy(self.obs.copy()) if final_obs else None  # a restart overwrites its rows
        self.episode += np.stack([rewards, np.ones_like(rewards)], 1)
        for e in range(self.num_envs):
            rows = self._rows(e)
            if dones[rows].all() or truncateds[rows].all():
                hearts = [agent.get("heart.gained", 0.0) for agent in self.sims[e].episode_stats["agent"]]
                self.finished[:-1] += [*self.episode[rows].sum(0), sum(hearts)]
                self.finished[-1] += self.agents_per_env
                self.episode[rows] = 0
                self._start(e, self.cfg.max_steps)
        td = self._output(rewards, dones, truncateds)
        if final_obs:
            td["final_env_obs"] = final.to(self.device)
        return td

    def _output(self, rewards, dones, truncateds) -> TensorDict:
        return TensorDict({"env_obs": torch.from_numpy(self.obs.copy()), "rewards": torch.from_numpy(rewards),
                           "dones": torch.from_numpy(dones), "truncateds": torch.from_numpy(truncateds)},
                          batch_size=[self.num_agents]).to(self.device)

    def episode_stats(self) -> dict[str, float]:
        """Mean of each statistic over the agent-episodes finished since the last call (empty if none)."""
        count, sums = self.finished[-1], self.finished[:-1].copy()
        self.finished[:] = 0
        return {name: float(s / count) for name, s in zip(STATS, sums)} if count else {}

    def state_dict(self) -> dict:
        return {"seed": self.cfg.seed}

    def load_state_dict(self, state: dict) -> None:
        self.reset(int(state["seed"]))
