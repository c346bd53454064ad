"""Game rules on hand-built maps: every action, contests, converters, rewards, episode ends, seeding."""

import pytest
import torch

from envs import GridEnv, make_config, make_env
from envs.grid import BLOCK, EMPTY
from envs.spec import A, F, INV0, ITEM


def env_from(layout, **overrides) -> GridEnv:
    cfg = make_config("arena", layout=tuple(layout), num_envs=1, desync_episodes=False, **overrides)
    return GridEnv(cfg)


def act(env, *pairs):
    return env.step(torch.tensor(pairs))


def cell(env, agent=0):
    r, c = divmod(int(env.pos[0, agent]), env.Wp)
    return r - env.pad, c - env.pad


def inv(env, row, item):
    return int(env.obj[0, row, INV0 + ITEM[item]])


def facing(env, agent=0):
    return int(env.obj[0, 3 + agent, F["orientation"]])


def test_move_forward_back_and_walls():
    env = env_from(["#####",
                    "#>..#",
                    "#####"])
    act(env, (A["move"], 0))
    assert cell(env) == (1, 2)
    act(env, (A["move"], 0))
    assert cell(env) == (1, 3)
    td = act(env, (A["move"], 0))  # wall ahead: fails harmlessly
    assert cell(env) == (1, 3) and td["rewards"][0] == 0
    act(env, (A["move"], 1))  # back keeps the facing
    assert cell(env) == (1, 2) and facing(env) == 3
    assert int(env.grid[0].view(env.Hp, env.Wp)[1 + env.pad, 3 + env.pad]) == EMPTY


def test_rotate_sets_orientation():
    env = env_from(["###", "#^#", "###"])
    for arg in (3, 1, 2, 0):
        act(env, (A["rotate"], arg))
        assert facing(env) == arg


def test_get_and_put_move_items_and_reward_potential():
    env = env_from(["#####",
                    "#>m.#",
                    "#g..#",
                    "#####"], mine_initial_output=2)
    mine, gen = env.conv0, env.conv0 + 1
    td = act(env, (A["get_items"], 0))  # the 2 it started with and the one it made at the start of step 1
    assert inv(env, 3, "ore_red") == 3 and inv(env, mine, "ore_red") == 0
    assert td["rewards"][0] == pytest.approx(0.3)
    act(env, (A["rotate"], 1))  # face the generator below
    td = act(env, (A["put_items"], 0))  # one conversion's input (one ore), as MettaGrid's put_recipe_items
    assert inv(env, 3, "ore_red") == 2 and td["rewards"][0] == pytest.approx(-0.1)
    # the generator started on it at once
    assert inv(env, gen, "ore_red") == 0 and int(env.timer[0, gen]) == env.cfg.conversion_ticks
    td = act(env, (A["put_items"], 0))  # the second waits in its input while the generator cools down
    assert inv(env, 3, "ore_red") == 1 and td["rewards"][0] == pytest.approx(-0.1)
    assert inv(env, gen, "ore_red") == 1 and inv(env, gen, "battery_red") == 1 and bool(env.cooling[0, gen])
    act(env, (A["put_items"], 0))
    td = act(env, (A["put_items"], 0))  # nothing left to put: fails
    assert inv(env, 3, "ore_red") == 0 and td["rewards"][0] == 0


def test_converter_chain_cooldowns_and_limits():
    env = env_from(["######",
                    "#>m..#",
                    "######"], mine_initial_output=0, mine_cooldown=3, mine_max_output=2)
    mine = env.conv0
    assert int(env.obj[0, mine, F["converting"]]) == 1  # placed, it starts at once, as MettaGrid's
    seen = []
    for _ in range(10):
        act(env, (A["noop"], 0))
        seen.append(inv(env, mine, "ore_red"))
    # conversion_ticks (1) after the start the ore is there, then 3 steps of cooldown (the flag stays up), a new
    # start and one more step: one ore every 4 steps, until it holds its limit of 2
    assert seen == [1, 1, 1, 1, 2, 2, 2, 2, 2, 2]
    assert int(env.obj[0, mine, F["converting"]]) == 0  # idle while full
    act(env, (A["get_items"], 0))
    assert inv(env, 3, "ore_red") == 2 and int(env.obj[0, mine, F["converting"]]) == 1


def test_full_chain_nets_one_per_heart():
    env = env_from(["######",
                    "#m>g.#",
                    "#..a.#",
                    "######"])
    script = [  # (action, reward it earns)
        ((A["rotate"], 2), 0.0), ((A["get_items"], 0), 0.1),  # ore from the mine
        ((A["rotate"], 3), 0.0), ((A["put_items"], 0), -0.1),  # ore into the generator
        ((A["get_items"], 0), 0.8),  # the battery, made at the start of the next step (conversion_ticks 1)
        ((A["rotate"], 1), 0.0), ((A["move"], 0), 0.0), ((A["rotate"], 3), 0.0),  # step down, face the altar
        ((A["put_items"], 0), -0.8), ((A["get_items"], 0), 1.0),
    ]
    rewards = [float(act(env, pair)["rewards"][0]) for pair, _ in script]
    assert rewards == pytest.approx([r for _, r in script])
    assert sum(rewards) == pytest.approx(1.0) and inv(env, 3, "heart") == 1


def test_reward_caps():
    env = env_from(["#####",
                    "#>m.#",
                    "#####"], mine_initial_output=15)
    td = act(env, (A["get_items"], 0))
    assert td["rewards"][0] == pytest.approx(1.0)  # 15 ore x 0.1, capped at 1


def test_swap_exchanges_agent_and_block():
    env = env_from(["#####",
                    "#>b.#",
                    "#####"])
    act(env, (A["swap"], 0))
    grid = env.grid[0].view(env.Hp, env.Wp)
    assert cell(env) == (1, 2) and int(grid[1 + env.pad, 1 + env.pad]) == BLOCK
    act(env, (A["swap"], 0))  # nothing swappable ahead now
    assert cell(env) == (1, 2)


def test_attack_costs_a_laser_and_freezes():
    env = env_from(["######",
                    "#>.<.#",
                    "######"], initial_lasers=1, freeze_duration=2)
    # arg = 3 * (distance - 1) + (column + 1): arg 4 is 2 ahead, centre; the target's own move is cancelled
    act(env, (A["attack"], 4), (A["move"], 1))
    assert inv(env, 3, "laser") == 0 and cell(env, 1) == (1, 3)
    assert int(env.obj[0, 4, F["frozen"]]) == 2
    td = act(env, (A["attack"], 4), (A["rotate"], 0))  # no laser left; the frozen target cannot act
    assert int(env.obj[0, 4, F["frozen"]]) == 1 and facing(env, 1) == 2
    assert td["env_obs"][1, 1, 2] == A["noop"]  # a frozen agent's last action reads noop
    act(env, (A["noop"], 0), (A["noop"], 0))
    act(env, (A["noop"], 0), (A["rotate"], 0))
    assert facing(env, 1) == 0
    stats = None
    for _ in range(env.cfg.max_steps):
        td = act(env, (A["attack"], 4), (A["noop"], 0))
        if td["truncateds"][0]:
            stats = env.episode_stats()
            break
    assert stats["failed_actions"] > 0


def test_contested_cell_goes_to_one_agent():
    env = env_from(["#####",
                    "#>.<#",
                    "#####"], seed=0)
    winners = []
    for seed in range(20):
        env.reset(seed)
        act(env, (A["move"], 0), (A["move"], 0))
        moved = [cell(env, 0) == (1, 2), cell(env, 1) == (1, 2)]
        assert sum(moved) == 1
        winners.append(moved.index(True))
    assert 0 < sum(winners) < 20  # the random order favours neither agent


def test_no_move_into_a_cell_vacated_this_step():
    env = env_from(["######",
                    "#>>..#",
                    "######"])
    act(env, (A["move"], 0), (A["move"], 0))
    assert cell(env, 0) == (1, 1) and cell(env, 1) == (1, 3)


def test_invalid_actions_fail_harmlessly_and_are_counted():
    env = env_from(["####", "#>.#", "####"], max_steps=2)
    before = env.obj.clone()
    act(env, (A["rotate"], 7))  # arg over rotate's max of 3
    assert torch.equal(env.obj, before)
    act(env, (9, 0))  # no such type
    stats = env.episode_stats()
    assert stats["invalid_actions"] == 2 and stats["length"] == 2
    with pytest.raises(ValueError, match=r"actions must have shape \[1, 2\]"):
        env.step(torch.zeros(2, 2, dtype=torch.long))


@pytest.mark.parametrize("reads_are_free", [True, False])  # False: the accelerator's path, no read back per step
def test_truncation_desync_and_autoreset(reads_are_free):
    env = make_env("arena", num_envs=64, max_steps=50, seed=0)
    env.reads_are_free = reads_are_free
    assert 1 <= int(env.limit.min()) and int(env.limit.max()) <= 50 and len(env.limit.unique()) > 10
    noop = torch.tensor([[A["noop"], 0]]).expand(env.num_agents, 2)
    first_end = env.limit.clone()
    for t in range(1, 51):
        td = env.step(noop)
        ended = td["truncateds"].view(64, -1)[:, 0]
        assert torch.equal(ended, first_end == t)
        assert not td["dones"].any()  # arena never terminates
        # an ended map's returned observation is its next episode's first: completion pct 0
        assert (td["env_obs"].view(64, -1, 200, 3)[ended, :, 0, 2] == 0).all()
    assert (env.limit == 50).all()  # later episodes run the full length


def test_nav_terminates_when_all_altars_are_taken():
    env = env_from(["#######",
                    "#a>a..#",
                    "#..a..#",
                    "#######"], altar_initial_output=1, end_after_altar_takes=3, max_steps=20)
    rewards = []
    # take right, turn left and take, step down, face the third altar
    for pair in [(A["get_items"], 0), (A["rotate"], 2), (A["get_items"], 0), (A["rotate"], 1), (A["move"], 0),
                 (A["rotate"], 3)]:
        td = act(env, pair)
        rewards.append(float(td["rewards"][0]))
        assert not td["dones"][0] and not td["truncateds"][0]
    td = act(env, (A["get_items"], 0))
    assert bool(td["dones"][0]) and not bool(td["truncateds"][0]) and float(td["rewards"][0]) == 1.0
    assert rewards[0] == 1.0 and rewards[2] == 1.0


def test_same_seed_same_run_and_different_seed_differs():
    def run(seed):
        env = make_env("arena", num_envs=4, seed=seed, initial_lasers=1)
        g = torch.Generator().manual_seed(7)
        pairs = env.spec.action_pairs()
        out = []
        for _ in range(30):
            td = env.step(pairs[torch.randint(len(pairs), (env.num_agents,), generator=g)])
            out.append(td["env_obs"].clone())
        return torch.stack(out)

    assert torch.equal(run(1), run(1))
    assert not torch.equal(run(1), run(2))


@pytest.mark.parametrize("reads_are_free", [True, False])
def test_memory_cue_leaves_the_view_and_nothing_else_tells(reads_are_free):
    env = make_env("memory", num_envs=32, seed=0)
    env.reads_are_free = reads_are_free
    history = [env.reset(0)["env_obs"]]
    cue = env.obj[:, env.cue_row, F["orientation"]].clone()
    assert set(cue.tolist()) == {0, 1}
    frozen = env.cfg.cue_steps + env.cfg.cue_delay
    pairs = [(A["move"], 0)] * frozen + [(A["rotate"], 0)]  # frozen: ignored; then face the upper altar
    for p in pairs:
        history.append(env.step(torch.tensor([p]).expand(32, 2))["env_obs"])
    cue_type = 7
    for t, obs in enumerate(history):
        shown = ((obs[:, :, 1] == F["type_id"]) & (obs[:, :, 2] == cue_type)).any(1)
        assert shown.all() if t < env.cfg.cue_steps else not shown.any()
        if t >= env.cfg.cue_steps:  # every map looks the same whatever its cue: only memory can tell
            assert (obs == obs[0]).all()
    # facing the upper altar: it pays iff the cue faced up
    td = env.step(torch.tensor([[A["get_items"], 0]]).expand(32, 2))
    assert torch.equal(td["rewards"] == 1.0, cue == 0) and td["dones"].all()
    # every map starts over: step 0, a new cue, and the altar it faces is the one that pays
    cue = env.obj[:, env.cue_row, F["orientation"]]
    assert (env.steps == 0).all() and torch.equal(env.decoy[:, env.altar_rows], torch.stack([cue == 1, cue == 0], 1))


def test_a_converted_output_shows_the_step_after_the_put_as_in_mettagrid():
    # MettaGrid runs its events at the start of a step and observes at the end: the put's step shows the generator
    # busy and empty, the next step can take the battery, and the generator makes no other for cooldown steps
    env = env_from(["#####",
                    "#>g.#",
                    "#####"], generator_cooldown=3)
    gen = env.conv0
    env.obj[0, 3, INV0 + ITEM["ore_red"]] = 3
    act(env, (A["put_items"], 0))
    assert int(env.obj[0, gen, F["converting"]]) == 1 and inv(env, gen, "battery_red") == 0
    batteries = []
    for action in ("put_items", "noop", "noop", "noop", "noop", "noop"):  # the second ore waits in its input
        act(env, (A[action], 0))
        batteries.append(inv(env, gen, "battery_red"))
    # step 2: the first battery; it cools down through steps 2-4, starts again at step 5, the second comes at step 6
    assert batteries == [1, 1, 1, 1, 2, 2]


def test_env_state_from_an_older_version_is_refused_with_the_fix():
    env = env_from(["#####", "#>m.#", "#####"])
    state = env.state_dict()
    del state["cooling"]
    with pytest.raises(ValueError, match=r"lacks \['cooling'\]: an older version of the env wrote it"):
        env.load_state_dict(state)
