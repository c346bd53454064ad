"""Policies: sizes, tables, token shaping, recurrent state per slice and at episode starts, and the check
that training recomputes exactly the log-probs and values recorded while acting."""

import dataclasses

import pytest
import torch
from tensordict import TensorDict

from envs import make_env
from envs.spec import EMPTY_TOKEN, F
from policies import POLICIES, make_policy
from policies.memory import LSTMMemory
from policies.tokens import TokensToBox

ENV = make_env("nav", num_envs=1)
SPEC = ENV.spec


def acting_td(obs, starts=None, key=0):
    B = obs.shape[0]
    starts = torch.zeros(B, dtype=torch.bool, device=obs.device) if starts is None else starts
    return TensorDict({"env_obs": obs, "dones": starts, "truncateds": torch.zeros_like(starts),
                       "training_env_id_start": torch.full((B,), key, device=obs.device)}, batch_size=[B])


def rollout(policy, env, steps):
    """Act for `steps` steps from zero state; return the [B, T] record of what acting saw and did."""
    policy.reset_memory()
    td = env.reset()
    record = []
    with torch.no_grad():
        for _ in range(steps):
            step = policy(acting_td(td["env_obs"], td["dones"]).update({"truncateds": td["truncateds"]}))
            record.append(step.select("env_obs", "dones", "truncateds", "actions", "act_log_prob", "values"))
            td = env.step(step["actions"])
    return torch.stack(record, 1)


def test_fast_has_metta_parameter_count():
    assert sum(p.numel() for p in make_policy("fast", SPEC).parameters()) == 574_978


@pytest.mark.parametrize("name, count", [("latent_attn_tiny", 504_156), ("latent_attn_small", 517_514),
                                         ("latent_attn_med", 785_838), ("example", 522_004)])
def test_other_parameter_counts(name, count):
    assert sum(p.numel() for p in make_policy(name, SPEC).parameters()) == count


def test_action_table_round_trips_all_pairs():
    table = make_policy("fast", SPEC).actions
    pairs = SPEC.action_pairs()
    assert len(pairs) == 19
    assert torch.equal(table.to_index(pairs), torch.arange(19))
    assert torch.equal(table.to_pairs(torch.arange(19)), pairs)
    # type + cum[type] + arg: attack 0..8, get_items 9, move 10-11, noop 12, put_items 13, rotate 14-17, swap 18
    assert table.to_index(torch.tensor([[5, 3], [6, 0], [2, 1]])).tolist() == [17, 18, 11]


def test_tokens_to_box_on_a_hand_built_observation():
    obs = torch.full((1, SPEC.num_tokens, 3), EMPTY_TOKEN, dtype=torch.uint8)
    obs[0, 0] = torch.tensor([0x55, F["last_action"], 5])  # global, at the centre
    obs[0, 1] = torch.tensor([0x23, F["type_id"], 2])  # row 2, col 3
    obs[0, 2] = torch.tensor([0x23, F["inv:ore_red"], 50])
    obs[0, 3] = torch.tensor([0xA0, F["group"], 4])  # row 10, col 0
    box = TokensToBox(SPEC)(obs)[0]
    expected = torch.zeros_like(box)
    expected[F["last_action"], 5, 5] = 5 / 10
    expected[F["type_id"], 2, 3] = 2.0
    expected[F["inv:ore_red"], 2, 3] = 0.5
    expected[F["group"], 10, 0] = 0.4
    assert torch.equal(box, expected)  # padding wrote nothing, cell (0,0,0) included


def test_global_tokens_outside_the_window_go_to_the_centre():
    from dataclasses import replace
    spec = replace(SPEC, global_location=0xFE)
    obs = torch.full((1, SPEC.num_tokens, 3), EMPTY_TOKEN, dtype=torch.uint8)
    obs[0, 0] = torch.tensor([0xFE, F["last_reward"], 100])
    assert TokensToBox(spec)(obs)[0, F["last_reward"], 5, 5] == 1.0


@pytest.mark.parametrize("options", [{}, {"one_hot_ids": True}, {"encoder_leak": 0.01}, {"encoder_gain": 2 ** 0.5},
                                     {"lstm_init": "forget", "lstm_forget_bias": 2.0}],
                         ids=["env_input", "one_hot_ids", "encoder_leak", "encoder_gain", "lstm_forget_bias"])
@pytest.mark.parametrize("name", sorted(POLICIES))
def test_training_recomputes_acting_log_probs_with_episode_ends_inside(name, options):
    if "encoder_gain" in options and name.startswith("latent_attn"):
        pytest.skip("encoder_gain refuses latent_attn's encoder (test_encoder_gain_refuses_...)")
    torch.manual_seed(0)
    env = make_env("nav", num_envs=6, max_steps=7, seed=1)  # episodes end every <= 7 steps
    policy = make_policy(name, env, **options)
    record = rollout(policy, env, 24)
    starts = record["dones"] | record["truncateds"]
    assert starts[:, 1:].any(1).all()  # every row has episode starts inside its segment
    policy.reset_memory()
    out = policy(record.select("env_obs", "actions", "dones", "truncateds").clone())
    assert (out["act_log_prob"] - record["act_log_prob"]).abs().max() < 1e-5
    assert (out["values"] - record["values"]).abs().max() < 1e-5
    assert out["entropy"].shape == (6, 24) and out["full_log_probs"].shape == (6, 24, 19)


def test_chunked_unroll_equals_step_by_step_loop():
    torch.manual_seed(0)
    memory = LSTMMemory(8, 16, 2)
    x = torch.randn(5, 30, 8)
    starts = torch.rand(5, 30) < 0.1
    fast = memory.unroll(x, starts, key=0)
    memory.reset_memory()
    slow = torch.stack([memory.step(x[:, t], starts[:, t], key=0) for t in range(30)], 1)
    assert (fast - slow).abs().max() < 1e-5


def test_env_slices_never_mix_state():
    torch.manual_seed(0)
    policy = make_policy("fast", SPEC)
    env = make_env("nav", num_envs=4, seed=2)
    obs = env.reset()["env_obs"]
    a, b = obs[:2], obs[2:]

    def values(sequence):
        policy.reset_memory()
        out = {}
        with torch.no_grad():
            for key, o in sequence:
                out.setdefault(key, []).append(policy(acting_td(o, key=key))["values"])
        return {k: torch.stack(v) for k, v in out.items()}

    together = values([(0, a), (2, b), (0, a), (2, b), (0, a)])
    alone = values([(0, a), (0, a), (0, a)])
    assert torch.equal(together[0], alone[0])
    assert not torch.equal(together[0][0], together[0][2])  # the state does carry over between steps


def test_dones_and_truncateds_restart_from_zero_state():
    torch.manual_seed(0)
    policy = make_policy("example", SPEC)
    obs = make_env("nav", num_envs=3, seed=4).reset()["env_obs"]
    with torch.no_grad():
        policy.reset_memory()
        fresh = policy(acting_td(obs))["values"]
        policy(acting_td(obs))
        td = acting_td(obs, starts=torch.tensor([True, False, False]))
        td["truncateds"] = torch.tensor([False, True, False])
        again = policy(td)["values"]
    assert torch.equal(again[:2], fresh[:2]) and not torch.equal(again[2], fresh[2])


def test_stored_state_is_detached_after_training_and_reset_memory_clears_it():
    policy = make_policy("fast", SPEC)
    env = make_env("nav", num_envs=2, seed=0)
    record = rollout(policy, env, 5)
    policy.reset_memory()
    out = policy(record.select("env_obs", "actions", "dones", "truncateds").clone())
    out["values"].sum().backward()  # a graph exists for the loss ...
    for h, c in policy.get_memory().values():  # ... but not on what is kept between calls
        assert not h.requires_grad and not c.requires_grad and h.grad_fn is None
    assert policy.has_memory() and policy.get_memory()
    policy.reset_memory()
    assert policy.get_memory() == {}


def test_clip_weights_bounds_and_no_op():
    policy = make_policy("fast", SPEC, clip_range=0.5)
    conv = policy.encoder.cnn[0]
    bound = 0.5 * conv.initial_weight_bound
    lstm = policy.memory.lstm.weight_hh_l0
    with torch.no_grad():
        conv.weight.mul_(10)
        bias = conv.bias.fill_(100).clone()
        lstm.mul_(10)
    lstm_before = lstm.detach().clone()
    policy.clip_weights()
    assert float(conv.weight.detach().abs().max()) == pytest.approx(float(bound)) and torch.equal(conv.bias, bias)
    assert torch.equal(lstm, lstm_before)  # only Linear and Conv weights are clipped, never biases
    off = make_policy("fast", SPEC)
    with torch.no_grad():
        off.encoder.cnn[0].weight.mul_(10)
    before = {k: v.clone() for k, v in off.state_dict().items()}
    off.clip_weights()
    assert all(torch.equal(before[k], v) for k, v in off.state_dict().items())


def test_bad_input_gets_clear_errors():
    policy = make_policy("fast", SPEC)
    with pytest.raises(ValueError, match=r"unknown policy 'fastest'; choose one of \['example', 'fast'"):
        make_policy("fastest", SPEC)
    with pytest.raises(ValueError, match=r"env_obs must be uint8 \[..., 200, 3\].*got torch.float32"):
        policy(acting_td(torch.zeros(2, 200, 3)))
    with pytest.raises(ValueError, match=r"got torch.uint8 \[2, 100, 3\]"):
        policy(acting_td(torch.zeros(2, 100, 3, dtype=torch.uint8)))
    with pytest.raises(ValueError, match="lstm_init='zeros'"):
        make_policy("fast", SPEC, lstm_init="zeros")
    with pytest.raises(ValueError, match="unknown LatentAttn size"):
        POLICIES["latent_attn_tiny"].func(SPEC, size="huge")


def test_inventory_norm_changes_only_the_inventory_features():
    """Under the env's divisor (Metta's 100) an altar's one heart reads 0.01; with inventory_norm 1 it reads 1,
    and every other feature reads as before."""
    env = make_env("nav", num_envs=8, seed=0)  # three altars holding one heart each
    obs = env.reset()["env_obs"]
    metta, unit = (make_policy("fast", env, **options).encoder.box(obs) for options in ({}, {"inventory_norm": 1.0}))
    heart = F["inv:heart"]
    assert metta[:, heart].max() == pytest.approx(0.01) and unit[:, heart].max() == 1
    inventory = torch.tensor([name.startswith("inv:") for name in SPEC.feature_names])
    torch.testing.assert_close(unit[:, inventory], metta[:, inventory] * 100)
    assert torch.equal(unit[:, ~inventory], metta[:, ~inventory])
    with pytest.raises(ValueError, match="inventory_norm=0: use a positive divisor"):
        SPEC.with_inventory_norm(0)
    no_inventory = dataclasses.replace(SPEC, feature_names=tuple(n.replace("inv:", "held ") for n in SPEC.feature_names))
    with pytest.raises(ValueError, match="declares no inventory features"):
        make_policy("fast", no_inventory, inventory_norm=1.0)


def test_one_hot_ids_gives_each_id_its_own_channel():
    """With one_hot_ids a generator (type_id 4) and a wall (type_id 2) land on channels type_id=4 and type_id=2
    with value 1, where the env's box holds them as 4 and 2 on one channel; every other feature is unchanged, and
    every policy builds and acts on the wider input."""
    env = make_env("arena", num_envs=8, seed=0)
    obs = env.reset()["env_obs"]
    plain, spread = (make_policy("fast", env, one_hot_ids=flag) for flag in (False, True))
    before, after = plain.encoder.box(obs), spread.encoder.box(spread.read_ids(obs))
    names = spread.spec.feature_names
    assert names[:SPEC.num_features] == SPEC.feature_names
    for name, count in SPEC.id_features:
        f = F[name]
        assert after[:, f].abs().sum() == 0  # every id token moved to its own channel
        value = (before[:, f] * SPEC.feature_normalizations[f]).round()
        for k in range(1, count):
            assert torch.equal(after[:, names.index(f"{name}={k}")], (value == k).float())
    assert (after[:, names.index("type_id=4")] == 1).any() and (after[:, names.index("orientation=3")] == 1).any()
    ids = [F[name] for name, _ in SPEC.id_features]
    rest = [f for f in range(SPEC.num_features) if f not in ids]
    assert torch.equal(after[:, rest], before[:, rest])
    for name in POLICIES:
        make_policy(name, env, one_hot_ids=True)(acting_td(obs))
    with pytest.raises(ValueError, match="declares no id features"):
        make_policy("fast", dataclasses.replace(SPEC, id_features=()), one_hot_ids=True)


@pytest.mark.parametrize("name", ["fast", "example"])
def test_a_leaky_encoder_passes_gradient_through_a_unit_dead_for_every_input(name):
    """encoder_leak swaps each ReLU of the encoder for a LeakyReLU: the same parameters, drawn the same; a unit pushed
    below zero for every observation outputs 0 and gets no gradient under the ReLU, and under the leak outputs
    slope x its input and gets a gradient, so it can come back."""
    obs = ENV.reset()["env_obs"].expand(4, -1, -1)
    torch.manual_seed(0)
    plain = make_policy(name, ENV)
    torch.manual_seed(0)
    leaky = make_policy(name, ENV, encoder_leak=0.01)
    assert all(torch.equal(a, b) for a, b in zip(plain.state_dict().values(), leaky.state_dict().values()))
    acts = [type(m) for m in leaky.encoder.modules() if isinstance(m, (torch.nn.ReLU, torch.nn.LeakyReLU))]
    assert acts and set(acts) == {torch.nn.LeakyReLU}
    assert sum(isinstance(m, torch.nn.ReLU) for m in plain.encoder.modules()) == len(acts)
    last = {}
    for policy in (plain, leaky):
        last[policy] = [m for m in policy.encoder.modules() if isinstance(m, torch.nn.Linear)][-1]
        with torch.no_grad():
            last[policy].bias[:8] = -1e3  # units 0-7 are below zero for any observation
        policy.encode(obs)[:, :8].sum().backward()
    assert plain.encode(obs)[:, :8].eq(0).all() and last[plain].weight.grad[:8].eq(0).all()
    assert leaky.encode(obs)[:, :8].lt(0).all() and last[leaky].weight.grad[:8].ne(0).any()


@pytest.mark.parametrize("name", ["fast", "example"])
def test_encoder_gain_scales_the_encoders_initial_weights_and_nothing_else(name):
    """encoder_gain g: the encoder's Linear/Conv weights are g times the policy's own draws (orthogonal with gain g),
    clip_weights' bounds with them; every other parameter is the same draw."""
    torch.manual_seed(0)
    plain = make_policy(name, ENV)
    torch.manual_seed(0)
    scaled = make_policy(name, ENV, encoder_gain=2.0)
    layers = {id(m.weight) for m in scaled.encoder.modules() if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d))}
    assert layers
    for (key, a), b in zip(plain.named_parameters(), scaled.parameters()):
        assert torch.equal(b, 2 * a if id(b) in layers else a), key
    for m, n in zip(plain.encoder.modules(), scaled.encoder.modules()):
        if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d)):
            assert n.initial_weight_bound == 2 * m.initial_weight_bound


@pytest.mark.parametrize("name", ["fast", "example"])
def test_lstm_forget_bias_sets_every_layers_forget_gate_and_nothing_else(name):
    """The forget gate's slice of each layer's input bias (gates: input, forget, cell, output) and nothing else;
    refused over Metta's init, where every bias is 1 and the forget gate's is not one number."""
    torch.manual_seed(0)
    plain = make_policy(name, ENV, lstm_init="forget")
    torch.manual_seed(0)
    longer = make_policy(name, ENV, lstm_init="forget", lstm_forget_bias=2.0)
    H = plain.memory.hidden_size
    changed = 0
    for (key, a), b in zip(plain.state_dict().items(), longer.state_dict().values()):
        if key.startswith("memory.lstm.bias_ih"):
            assert a[H:2 * H].eq(1).all() and b[H:2 * H].eq(2).all(), key
            a, b = torch.cat([a[:H], a[2 * H:]]), torch.cat([b[:H], b[2 * H:]])
            changed += 1
        assert torch.equal(a, b), key
    assert changed == plain.memory.num_layers
    with pytest.raises(ValueError, match=r"lstm_forget_bias=2.0 sets the forget gate.*'metta'.*\(--lstm-init forget\)"):
        make_policy(name, ENV, lstm_init="metta", lstm_forget_bias=2.0)


def test_encoder_gain_refuses_an_encoder_it_would_not_scale_whole():
    """latent_attn's encoder has attention and LayerNorms: scaling its Linear layers would not be a gain."""
    with pytest.raises(ValueError, match="LatentAttn's has other parameters.*leave encoder_gain at 1"):
        make_policy("latent_attn_tiny", ENV, encoder_gain=2.0)


def test_metta_lstm_init_saturates_and_forget_init_does_not():
    """The claim in docs/policies.md: with every LSTM bias 1 (two bias vectors: +2 per gate) the cell
    saturates and the output hardly depends on the observation."""
    env = make_env("nav", num_envs=64, seed=3)
    obs = env.reset()["env_obs"]
    spread = {}
    for init in ("metta", "forget"):
        torch.manual_seed(0)
        policy = make_policy("fast", env, lstm_init=init)
        with torch.no_grad():
            x = policy.encoder(obs)
            for _ in range(10):  # the same observation for 10 steps
                h = policy.memory.step(x, torch.zeros(64, dtype=torch.bool), key=0)
        spread[init] = float(h.std(0).mean())
        if init == "metta":
            assert float(policy.memory.state[0][1].abs().mean()) > 3  # |c| far into tanh's flat part
    assert spread["forget"] > 20 * spread["metta"]
