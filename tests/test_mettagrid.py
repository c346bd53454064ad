"""The real-MettaGrid adapter agrees with stepping the package directly, and trains. CI installs the extra and
sets MINIPPO_REQUIRE_METTAGRID=1, so there these tests fail rather than skip when the package is missing."""

import os
import subprocess
import sys

import numpy as np
import pytest
import torch

if os.environ.get("MINIPPO_REQUIRE_METTAGRID") != "1":
    pytest.importorskip("mettagrid")

from envs import make_env  # noqa: E402
from envs.mettagrid import MettaGridConfig, build_task  # noqa: E402
from mettagrid.simulator import Simulator  # noqa: E402
from policies import make_policy  # noqa: E402
from trainer import TrainConfig, Trainer  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def direct_simulations(cfg: MettaGridConfig):
    """The same simulations, stepped through the package's own API and buffers, one at a time."""
    game, rng = build_task(cfg), np.random.default_rng(cfg.seed)
    simulators = [Simulator() for _ in range(cfg.num_envs)]

    def start(e):
        game.game.map_builder.seed = cfg.seed * 1_000_003 + e * 100_000
        return simulators[e].new_simulation(game, seed=int(rng.integers(2 ** 31)))

    return start, [start(e) for e in range(cfg.num_envs)]


def test_adapter_agrees_with_the_package_step_by_step():
    cfg = MettaGridConfig(task="nav", num_envs=3, max_steps=15, desync_episodes=False, seed=5)
    env = make_env("mettagrid.nav", **{k: v for k, v in vars(cfg).items() if k != "task"})
    start, sims = direct_simulations(cfg)
    A = env.agents_per_env
    td = env.reset()
    assert np.array_equal(td["env_obs"].numpy(), np.concatenate([s._c_sim.observations() for s in sims]))
    rng, rewarded, truncated = np.random.default_rng(0), 0.0, 0
    for _ in range(40):  # two episode ends, with automatic resets
        actions = rng.integers(0, 5, env.num_agents)
        td = env.step(torch.stack([torch.from_numpy(actions), torch.zeros(env.num_agents, dtype=torch.long)], 1),
                      final_obs=True)
        rewards, truncs, finals = [], [], []
        for e, sim in enumerate(sims):
            sim._c_sim.actions()[:] = actions[e * A:(e + 1) * A]
            sim.step()
            rewards.append(sim._c_sim.rewards().copy())
            truncs.append(sim._c_sim.truncations().copy())
            finals.append(sim._c_sim.observations().copy())  # before any reset: what the episode ended on
            if sim.is_done():
                sim.close()
                sims[e] = start(e)
        assert np.array_equal(td["rewards"].numpy(), np.concatenate(rewards))
        assert np.array_equal(td["truncateds"].numpy(), np.concatenate(truncs))
        assert not td["dones"].any()  # the time limit is a truncation
        assert np.array_equal(td["env_obs"].numpy(), np.concatenate([s._c_sim.observations() for s in sims]))
        assert np.array_equal(td["final_env_obs"].numpy(), np.concatenate(finals))
        rewarded += float(td["rewards"].sum())
        truncated += int(td["truncateds"].sum())
    assert rewarded > 0 and truncated == 2 * env.num_agents
    stats = env.episode_stats()
    assert stats["length"] == 15 and stats["return"] == pytest.approx(stats["heart_gained"])


def test_spec_is_the_packages_own():
    env = make_env("mettagrid.arena", num_envs=1, max_steps=10)
    spec = env.spec
    assert spec.action_names == ("noop", "move_north", "move_south", "move_west", "move_east")
    assert spec.num_action_pairs == 5 and spec.global_location == 0xFE
    assert spec.num_features == 52 and spec.feature_names[1] == "episode_completion_pct"
    assert spec.feature_normalizations[spec.feature_id("inv:heart")] > 1
    obs = env.reset()["env_obs"]
    assert obs.shape == (24, 200, 3) and (obs[:, :, 0] == 0xFE).any(1).all()  # global tokens in every observation
    with pytest.raises(ValueError, match=r"unknown MettaGrid options \['walls'\]"):
        make_env("mettagrid.arena", walls=3)
    with pytest.raises(ValueError, match="unknown MettaGrid task 'maze'"):
        make_env("mettagrid.maze")


@pytest.mark.parametrize("policy", ["fast", "latent_attn_tiny"])
def test_the_same_policies_train_on_it(policy, tmp_path):
    cfg = TrainConfig(policy=policy, env="mettagrid.nav", num_envs=4, bptt=16, minibatch_size=64, total_steps=16 * 16 * 2,
                      env_overrides={"max_steps": 20}, log_dir=str(tmp_path), checkpoint_interval=1000)
    trainer = Trainer(cfg)
    history = trainer.train(quiet=True)
    assert len(history) == 2 and history[-1]["ratio_deviation_first_minibatch"] < 1e-5
    assert "episode/return" in history[-1]
    resumed = Trainer(cfg.replace(resume=trainer.checkpoint_path))
    assert resumed.update == 2 and resumed.next_obs["env_obs"].shape == (16, 200, 3)


def test_missing_extra_gets_an_error_that_names_the_fix():
    code = ("import sys; sys.modules['mettagrid'] = None\n"
            "from envs import make_env\n"
            "make_env('mettagrid.arena')")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode != 0 and 'pip install -e ".[mettagrid]"' in done.stderr


def test_policy_reads_global_tokens_at_0xfe():
    env = make_env("mettagrid.arena", num_envs=1, max_steps=10)
    box = make_policy("fast", env).encoder.box(env.reset()["env_obs"])
    centre = env.spec.obs_height // 2
    pct = env.spec.feature_id("episode_completion_pct")
    assert box.shape == (24, 52, 11, 11) and box[:, pct, centre, centre].eq(0).all()  # step 0 of the episode
    td = env.step(torch.zeros(24, 2, dtype=torch.long))
    assert make_policy("fast", env).encoder.box(td["env_obs"])[:, pct, centre, centre].gt(0).all()
