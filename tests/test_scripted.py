"""The scripted player (envs/scripted.py), the ceiling learning is judged against, plays each task near its best."""

import math

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


def test_learning_bench_reports_fractions_of_the_scripted_score_and_the_time_to_reach_them(tmp_path):
    import json
    import os
    import sys

    sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "scripts"))
    import learning_bench

    (tmp_path / "reference.json").write_text(json.dumps({"scripted": 2.0, "random": 0.2}))
    (tmp_path / "runs.csv").write_text("config,seed,seconds,error,commit,machine,command\n"
                                       "a,0,1,,x,m,c\na,1,1,,x,m,c\n")
    tags = ["charts/SPS", "episode/return", "losses/approx_kl", "losses/clipfrac", "losses/explained_variance"]
    lines = ["config,seed,step," + ",".join(tags)]
    for seed, rise_at in ((0, 3), (1, 5)):  # 1,000 steps and 1,000 steps/s per update: one second each
        for i in range(10):
            ret = 1.9 if i >= rise_at else 0.2
            lines.append(f"a,{seed},{1000 * (i + 1)},1000,{ret},0.01,0.1,0.5")
    (tmp_path / "curves.csv").write_text("\n".join(lines) + "\n")
    rows, scores, _ = learning_bench.task_rows("nav", str(tmp_path), 0.1)
    (row,) = rows
    assert row["final"] == (0.95, 0.0) and row["best"] == (0.95, 0.0)
    # 50% and 90% of 2.0 are first reached at update 4 (seed 0) and 6 (seed 1): steps 5,000 on average, 5 s
    assert row["to50%"] == (5000, 5 / 60) and row["to90%"] == (5000, 5 / 60)
    assert (row["ev"], row["kl"], row["clip"]) == (0.5, 0.01, 0.1)
    text = learning_bench.table([(rows, scores)], "header")
    assert "| nav | a | 2 | 95% ± 0% | 95% ± 0% | 0.01M, 0.1 |" in text and "random 0.200 (10%)" in text


def test_learning_bench_names_each_seeds_pass_and_every_collapse_after_it():
    import os
    import sys

    sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "scripts"))
    import learning_bench

    steps = [1000 * (i + 1) for i in range(9)]
    #                  passes at 3,000; falls 0.3 below 1.0 at 5,000 (one collapse), again at 8,000 after recovering
    first, falls = learning_bench.passed(steps, [0.2, 0.5, 0.96, 1.0, 0.7, 0.6, 0.95, 0.75, 0.9], 0.95, 0.2)
    assert first == 3000 and falls == [(5000, 1.0, 0.7, 7000), (8000, 1.0, 0.75, None)]  # back at 7,000; not again
    assert learning_bench.passed(steps, [0.2, 0.5, 0.9, 0.3] + [0.9] * 5, 0.95, 0.2) == (None, [])  # never passed
    assert learning_bench.passed(steps, [0.9, 0.3, 0.96, 1.0] + [0.9] * 5, 0.95, 0.2) == (3000, [])  # a fall before it
    assert learning_bench.passed(steps, [0.96, 0.77] + [0.9] * 7, 0.95, 0.2) == (1000, [])  # 0.19 below: not one
    nan = float("nan")  # a NaN neither falls nor recovers: one fall, counted once
    assert learning_bench.passed(steps, [1.0, 0.5, nan, 0.5, 1.0] + [1.0] * 4, 0.95, 0.2) == (1000,
                                                                                         [(2000, 1.0, 0.5, 5000)])
    # updates shorter than the pool are judged together: a lucky 1.0 of a few episodes is no pass; NaNs are left out
    # (NaN where a pool has no return at all), and a last pool shorter than the rest is dropped
    ends, means = learning_bench.pooled(steps, [1.0, 0.0, 0.5, nan, 0.5, nan, nan, nan, 1.0], 2500)
    assert ends == [3000, 6000, 9000] and means[:2] == [0.5, 0.5] and means[2] == 1.0
    ends, means = learning_bench.pooled(steps, [nan, nan, nan, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0], 3000)
    assert ends == [3000, 6000, 9000] and math.isnan(means[0]) and means[1:] == [1.0, 1.0]
    assert learning_bench.pooled(steps, [0.5] * 9, 4000) == ([4000, 8000], [0.5, 0.5])  # 9,000 is a short tail
    assert learning_bench.passed(*learning_bench.pooled(steps, [1.0, 0.0, 0.5] + [0.5] * 6, 3000), 0.95, 0.2) == (None, [])
    assert learning_bench.pooled(steps, [0.5] * 9, 1000) == (steps, [0.5] * 9)  # updates as long as the pool: unchanged

    row = {"task": "memory", "config": "a", "seeds": 2, "final": (0.9, 0.1), "best": (1.0, 0.0), "ev": 0.5, "kl": 0.01,
           "clip": 0.1, "passed": {0: (3000, [(5000, 1.0, 0.7, 6000), (8000, 1.0, 0.75, None)]), 1: (None, [])}}
    text = learning_bench.table([([row], {"scripted": 1.0, "random": 0.1})], "header")
    assert ("- memory a: past 95% in 1 of 2 (0.00M, -); collapses: seed 0 at 0.01M (1.00 -> 0.70, back at 0.01M); "
            "seed 0 at 0.01M (1.00 -> 0.75, not back)") in text
