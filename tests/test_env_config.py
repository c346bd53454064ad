"""Rejected configurations get a clear error naming the fix; the gymnasium interfaces conform."""

import gymnasium
import numpy as np
import pytest
import torch
from gymnasium.utils.env_checker import check_env

from envs import ConfigError, make_config, make_env
from envs.gymnasium_api import GridGymEnv, GridVectorEnv


@pytest.mark.parametrize("overrides, message", [
    ({"obs_window": 17}, "odd size from 3 to 15"),
    ({"obs_window": 10}, "odd size from 3 to 15"),
    ({"obs_tokens": 4}, "must exceed the 4 global tokens"),
    ({"agents_per_env": 500}, "do not fit in the 529 free cells"),
    ({"height": 2}, "at least 3"),
    ({"num_envs": 0}, "num_envs must be at least 1"),
    ({"mines": -1}, "mines must be 0 or more"),
    ({"max_steps": 0}, "max_steps must be at least 1"),
    ({"max_inventory": 300}, "use at most 255"),
    ({"initial_lasers": 101}, "must not exceed max_inventory"),
    ({"reward_caps": (1.0, 0.0, 1.0)}, "must be positive"),
    ({"device": "gpu0"}, "is not a torch device"),
    ({"layout": ("###", "#x#", "###")}, "unknown characters"),
    ({"layout": ("###", "#>.", "###")}, "enclosed by walls"),
    ({"layout": ("####", "#..#", "####")}, "places no agent"),
    ({"layout": ("######", "#>c.a#", "######"), "cue_steps": 1}, "exactly two altars"),
    ({"cue_steps": 2}, "need a layout with a cue"),
    ({"layout": ("#####", "#>c.#", "#.a.#", "#.a.#", "#####"), "cue_steps": 2, "cue_delay": 5, "max_steps": 7},
     "leaves no step to act"),
    ({"nonsense": 1}, "unknown env option"),
])
def test_rejected_configurations(overrides, message):
    with pytest.raises(ConfigError, match=message):
        make_config("arena", **overrides)


def test_unknown_task_lists_the_valid_ones():
    with pytest.raises(ConfigError, match=r"unknown task 'maze'; choose one of \['arena', 'memory', 'nav'\]"):
        make_env("maze")


def test_registered_single_agent_envs_pass_gymnasium_checks():
    for task in ("Arena", "Nav", "Memory"):
        env = gymnasium.make(f"minippo/{task}-v0")
        check_env(env.unwrapped, skip_render_check=True)
        obs, _ = env.reset(seed=3)
        assert obs.shape == (200, 3) and obs.dtype == np.uint8
        assert env.unwrapped.render_mode is None
    with pytest.raises(ConfigError, match="a gymnasium.Env has one"):
        GridGymEnv("memory", layout=("####", "#>>#", "####"), cue_steps=0, cue_delay=0)


def test_single_agent_env_returns_the_final_observation_and_stops():
    env = GridGymEnv("nav", max_steps=5, render_mode="ansi")
    env.reset(seed=0)
    for t in range(5):
        obs, reward, terminated, truncated, _ = env.step(np.array([3, 0]))  # noop
    assert truncated and not terminated
    assert obs[0, 2] == round(5 / 5 * 255)  # the ended episode's last observation, not the next one's first
    assert "agent 0" in env.render()


def test_vector_env_batches_agents_and_reports_final_obs():
    env = GridVectorEnv("nav", num_envs=6, max_steps=4, desync_episodes=False)
    obs, _ = env.reset(seed=1)
    assert env.num_envs == 6 and obs.shape == (6, 200, 3)
    assert env.single_action_space.shape == (2,) and env.action_space.shape == (6, 2)
    for t in range(4):
        obs, rewards, terminated, truncated, infos = env.step(np.tile([3, 0], (6, 1)))
    assert truncated.all() and infos["_final_obs"].all()
    assert (infos["final_obs"][:, 0, 2] == 255).all() and (obs[:, 0, 2] == 0).all()
    assert rewards.dtype == np.float32 and torch.as_tensor(obs).dtype == torch.uint8


def test_gymnasium_make_works_after_import_envs_alone():
    import subprocess
    import sys

    code = "import gymnasium, envs; env = gymnasium.make('minippo/Nav-v0'); print(env.reset(seed=0)[0].shape)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0 and done.stdout.strip() == "(200, 3)", done.stderr
