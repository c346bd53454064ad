"""Observation tokens: exact format on a hand-built map, and the batched builder equal to a plain loop."""

import torch

from envs import GridEnv, make_config, make_env
from envs.spec import A, EMPTY_TOKEN, F, GLOBAL_FEATURES, INV0, ITEM, TYPE_IDS


def reference_observation(env: GridEnv, agent: int) -> list[tuple[int, int, int]]:
    """The token rule written as plain loops: global tokens, then cells by (distance, row, col), each cell's
    row emitting its nonzero features in id order; cut at obs_tokens, padded with 0xFF."""
    E, i = divmod(agent, env.agents_per_env)
    r = env.cfg.obs_window // 2
    centre = (r << 4) | r
    steps = int(env.steps[E])
    last = env.last_action[E, i].tolist()
    reward = float(env.last_reward[E, i])
    values = [round(steps / env.cfg.max_steps * 255), last[0], last[1], min(max(round(reward * 100), 0), 255)]
    tokens = [(centre, F[name], v) for name, v in zip(GLOBAL_FEATURES, values)]
    row0, col0 = divmod(int(env.pos[E, i]), env.Wp)
    cells = sorted((abs(dr) + abs(dc), dr, dc) for dr in range(-r, r + 1) for dc in range(-r, r + 1))
    grid = env.grid[E].view(env.Hp, env.Wp)
    for _, dr, dc in cells:
        row = int(grid[row0 + dr, col0 + dc])
        for f, v in enumerate(env.obj[E, row].tolist()):
            if v:
                tokens.append((((dr + r) << 4) | (dc + r), f, v))
    tokens = tokens[:env.cfg.obs_tokens]
    return tokens + [(EMPTY_TOKEN,) * 3] * (env.cfg.obs_tokens - len(tokens))


def random_actions(env: GridEnv, g: torch.Generator) -> torch.Tensor:
    pairs = env.spec.action_pairs()
    return pairs[torch.randint(len(pairs), (env.num_agents,), generator=g)]


def test_batched_tokens_equal_reference_loop_on_random_states():
    env = make_env("arena", num_envs=3, obs_tokens=60, initial_lasers=2, seed=3)  # 60 tokens: overflow happens
    g = torch.Generator().manual_seed(0)
    for step in range(40):
        td = env.step(random_actions(env, g))
        if step % 8 == 7:
            obs = td["env_obs"]
            for agent in range(env.num_agents):
                assert [tuple(t) for t in obs[agent].tolist()] == reference_observation(env, agent), (step, agent)


def test_hand_built_map_tokens():
    layout = ("#####",
              "#>m.#",
              "#####")
    env = GridEnv(make_config("arena", layout=layout, num_envs=1, obs_window=5, obs_tokens=16, desync_episodes=False))
    obs = env.reset()["env_obs"][0].tolist()
    c = (2 << 4) | 2  # centre of a 5x5 window
    assert obs[:4] == [[c, F["episode_completion_pct"], 0], [c, F["last_action"], A["noop"]],
                       [c, F["last_action_arg"], 0], [c, F["last_reward"], 0]]
    # own cell: type agent, group 1, orientation right (3); no zero-valued features
    assert obs[4:7] == [[c, F["type_id"], TYPE_IDS["agent"]], [c, F["group"], 1], [c, F["orientation"], 3]]
    # distance 1 in (row, col) order: wall above (1,2), wall left (2,1), mine right (2,3), wall below (3,2)
    up, left, right, down = (1 << 4) | 2, (2 << 4) | 1, (2 << 4) | 3, (3 << 4) | 2
    assert obs[7] == [up, F["type_id"], TYPE_IDS["wall"]]
    assert obs[8] == [left, F["type_id"], TYPE_IDS["wall"]]
    # the mine: converting its first ore (it started when placed), holding none yet
    assert obs[9:11] == [[right, F["type_id"], TYPE_IDS["mine_red"]], [right, F["converting"], 1]]
    after = env.step(torch.tensor([[A["noop"], 0]]))["env_obs"][0].tolist()  # made at step 1, now resting
    assert after[9:12] == [[right, F["type_id"], TYPE_IDS["mine_red"]], [right, F["converting"], 1],
                           [right, INV0 + ITEM["ore_red"], 1]]
    assert obs[11] == [down, F["type_id"], TYPE_IDS["wall"]]
    # distance 2: (0,2) is outside the map (nothing), (1,1) wall, (1,3) wall, (2,0) outside, (2,4) empty, ...
    assert obs[12] == [(1 << 4) | 1, F["type_id"], TYPE_IDS["wall"]]
    assert obs[13] == [(1 << 4) | 3, F["type_id"], TYPE_IDS["wall"]]


def test_overflow_is_dropped_and_counted():
    layout = ("#####",
              "#>..#",
              "#####")
    env = GridEnv(make_config("arena", layout=layout, num_envs=1, obs_tokens=6, max_steps=3, desync_episodes=False))
    obs = env.reset()["env_obs"][0]
    assert (obs[:, 0] != EMPTY_TOKEN).all()  # 4 global + 2 of the agent's 3 tokens, the rest dropped
    for _ in range(3):
        env.step(torch.tensor([[A["noop"], 0]]))
    # per observation: 3 own tokens + 12 border walls (all in the 11x11 window) = 15 object tokens, 2 fit;
    # the episode saw 3 observations (reset, after steps 1 and 2; step 3's is the next episode's first)
    assert env.episode_stats()["tokens_dropped"] == 13 * 3


def test_padding_and_window_edges():
    env = make_env("nav", num_envs=2, obs_window=3, seed=1)
    obs = env.reset()["env_obs"]
    loc = obs[:, :, 0]
    valid = loc != EMPTY_TOKEN
    # valid tokens come first, then only padding [255, 255, 255]
    assert (valid.int().diff(dim=1) <= 0).all()
    assert (obs[~valid] == EMPTY_TOKEN).all()
    rows, cols = loc[valid] >> 4, loc[valid] & 0xF
    assert rows.max() <= 2 and cols.max() <= 2  # a 3x3 window


def test_global_tokens_track_step_action_and_reward():
    layout = ("#####",
              "#>m.#",
              "#####")
    env = GridEnv(make_config("arena", layout=layout, num_envs=1, max_steps=10, desync_episodes=False))
    env.reset()
    obs = env.step(torch.tensor([[A["get_items"], 0]]))["env_obs"][0]
    assert obs[:4, 2].tolist() == [round(1 / 10 * 255), A["get_items"], 0, 10]  # reward 0.1 -> 10
    obs = env.step(torch.tensor([[A["rotate"], 2]]))["env_obs"][0]
    assert obs[:4, 2].tolist() == [round(2 / 10 * 255), A["rotate"], 2, 0]
