"""The scripted player (envs/scripted.py), the ceiling learning is judged against, plays each task near its best."""

import pytest
import torch

from envs import make_env
from envs.scripted import ScriptedPlayer, play, random_actions


@pytest.mark.parametrize("task, maps, episodes, at_least", [
    ("nav", 16, 100, 2.95),  # three hearts is the most there is; a map whose walls cut off an altar allows fewer
    ("memory", 8, 40, 1.0),  # always the cued altar
    ("arena", 1, 6, 5.0),  # one 1,000-step episode of 6 agents: hearts by the mine -> generator -> altar chain
])
def test_scripted_player_scores_near_the_best_and_far_above_random(task, maps, episodes, at_least):
    env = make_env(task, num_envs=maps, seed=3, desync_episodes=False)
    scripted = play(env, ScriptedPlayer(env).act, episodes)
    assert scripted["return"] >= at_least and scripted["invalid_actions"] == 0
    generator = torch.Generator().manual_seed(0)
    randomly = play(env, lambda: random_actions(env, generator), episodes)
    assert randomly["return"] < at_least / 5


def test_scripted_player_refuses_an_env_whose_state_it_cannot_read():
    with pytest.raises(ValueError, match="reads our gridworld's state"):
        ScriptedPlayer(object())
