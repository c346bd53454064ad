"""Each fault of trainer/faults.py does what its paragraph says, and the default configuration has none."""

import os

import pytest
import torch
from test_policies import acting_td, rollout
from test_trainer import small_config

from envs import make_env
from policies import make_policy
from policies.memory import LSTMMemory
from trainer import TrainConfig, Trainer
from trainer.collapse.faults import FAULTS, PRESETS, parse_faults

ARENA = make_env("arena", num_envs=1).spec
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def faults(*names):
    return frozenset(names)


def test_default_configuration_has_no_fault_active():
    assert TrainConfig().fault_set == frozenset()
    trainer = Trainer(small_config())
    assert trainer.faults == frozenset()
    parts = (trainer.policy, trainer.policy.memory, trainer.policy.actions)
    assert all(part.faults == frozenset() for part in parts)


def test_every_fault_is_implemented_where_the_catalogue_says():
    for name, fault in FAULTS.items():
        path = fault.where.split()[0]
        assert f'"{name}"' in open(os.path.join(ROOT, path)).read(), f"{name} is not in {path}"
        assert fault.origin in ("history", "audit") and len(fault.what.split()) > 20


def test_parse_faults_expands_presets_and_rejects_unknown_or_inapplicable_names():
    assert parse_faults("") == frozenset()
    assert parse_faults("no_relu, no_detach") == {"no_relu", "no_detach"}
    assert parse_faults("prefix,no_detach") == {*PRESETS["prefix"], "no_detach"}
    with pytest.raises(ValueError, match=r"unknown fault 'no_reul'; choose from \['bptt_reshape'"):
        parse_faults("no_reul")
    with pytest.raises(ValueError, match="fault 'no_relu' applies to the policies \\['fast'\\], not 'example'"):
        parse_faults("no_relu", "example")
    with pytest.raises(ValueError, match="unknown fault 'nope'"):
        Trainer(small_config(faults="nope"))


def test_memoryless_rollout_acts_from_zero_state():
    torch.manual_seed(0)
    env = make_env("nav", num_envs=3, seed=2)
    obs = env.reset()["env_obs"]
    for names, remembers in ((faults(), True), (faults("memoryless_rollout"), False)):
        policy = make_policy("example", env, faults=names)
        with torch.no_grad():
            policy.reset_memory()
            fresh = policy(acting_td(obs))["full_log_probs"]
            second = policy(acting_td(obs))["full_log_probs"]  # same observation, one step of memory later
        assert remembers == (not torch.allclose(second, fresh))


def test_wrong_action_index_scores_a_different_action_for_ten_arena_pairs():
    right = make_policy("fast", ARENA).actions
    wrong = make_policy("fast", ARENA, faults=faults("wrong_action_index")).actions
    pairs = right.pairs
    assert torch.equal(right.to_index(pairs), torch.arange(19))
    moved = wrong.to_index(pairs) != torch.arange(19)
    assert int(moved.sum()) == 10
    assert torch.equal(wrong.to_index(pairs), right.cum[pairs[:, 0]] + pairs[:, 1])


def test_sixteen_logits_can_never_choose_rotate_left_right_or_swap():
    torch.manual_seed(0)
    env = make_env("arena", num_envs=4, seed=0)
    policy = make_policy("fast", env, faults=faults("sixteen_logits"))
    with torch.no_grad():
        out = policy(acting_td(env.reset()["env_obs"].repeat(50, 1, 1)))
    assert out["full_log_probs"].shape[-1] == 16
    names = [(env.spec.action_names[t], a) for t, a in out["actions"].tolist()]
    assert not {("rotate", 2), ("rotate", 3), ("swap", 0)} & set(names)
    assert len(set(names)) > 10  # the other pairs are reachable
    record = rollout(policy, env, 3)  # training scores the stored actions over the same 16 logits
    policy.reset_memory()
    trained = policy(record.select("env_obs", "actions", "dones", "truncateds").clone())
    assert (trained["act_log_prob"] - record["act_log_prob"]).abs().max() < 1e-5


def test_no_relu_makes_the_encoder_stack_affine():
    torch.manual_seed(0)
    box = torch.rand(2, 25, 11, 11)
    for names, affine in ((faults(), False), (faults("no_relu"), True)):
        encoder = make_policy("fast", ARENA, faults=names).encoder
        stack = lambda x: encoder.fc(encoder.cnn(x))  # noqa: E731
        zero = stack(torch.zeros_like(box))
        assert affine == torch.allclose(stack(-box) - zero, zero - stack(box), atol=1e-4)  # odd around 0


def test_obs_zero_255_inplace_rewrites_the_stored_observation():
    env = make_env("nav", num_envs=2, seed=0)
    for names, padding_kept in ((faults(), True), (faults("obs_zero_255_inplace"), False)):
        record = rollout(make_policy("fast", env, faults=names), env, 3)
        assert padding_kept == bool((record["env_obs"] == 255).any())


def test_no_detach_leaves_a_graph_on_the_stored_state():
    env = make_env("nav", num_envs=2, seed=0)
    for names, graph in ((faults(), False), (faults("no_detach"), True)):
        policy = make_policy("fast", env, faults=names)
        record = rollout(policy, env, 5)
        policy.reset_memory()
        policy(record.select("env_obs", "actions", "dones", "truncateds").clone())
        h, c = policy.memory.state[0]
        assert graph == (h.grad_fn is not None) == (c.grad_fn is not None)


def test_no_done_reset_carries_state_into_the_next_episode():
    torch.manual_seed(0)
    x, starts = torch.randn(3, 8), torch.ones(3, dtype=torch.bool)
    for names, resets in ((faults(), True), (faults("no_done_reset"), False)):
        memory = LSTMMemory(8, 16, 1, faults=names)
        fresh = memory.step(x, starts, key=0)
        again = memory.step(x, starts, key=0)  # a new episode starts: state should be zero again
        assert resets == torch.allclose(again, fresh)


def test_no_train_done_reset_disagrees_with_acting_after_the_first_episode_end():
    torch.manual_seed(0)
    env = make_env("nav", num_envs=6, max_steps=7, seed=1)
    policy = make_policy("fast", env, faults=faults("no_train_done_reset"))
    record = rollout(policy, env, 24)
    policy.reset_memory()
    out = policy(record.select("env_obs", "actions", "dones", "truncateds").clone())
    gap = (out["act_log_prob"] - record["act_log_prob"]).abs()
    first = (record["dones"] | record["truncateds"]).float().cumsum(1) == 0  # before the first episode end
    assert gap[first].max() < 1e-5 and gap[~first].max() > 1e-3


def test_bptt_reshape_feeds_the_lstm_a_permuted_sequence():
    torch.manual_seed(0)
    B, T = 3, 5
    x, starts = torch.randn(B, T, 4), torch.zeros(B, T, dtype=torch.bool)
    memory = LSTMMemory(4, 8, 1, lstm_init="forget", faults=faults("bptt_reshape"))
    out = memory.unroll(x, starts, key=0)
    wrong, _ = memory.lstm(x.reshape(T, B, 4))
    right, _ = memory.lstm(x.transpose(0, 1))
    assert torch.allclose(out, wrong.reshape(B, T, 8))
    assert not torch.allclose(out, right.transpose(0, 1))


@pytest.mark.parametrize("fault", ["", "no_memory_reset", "no_clip_weights"])
def test_trainer_faults_skip_their_calls(fault):
    trainer = Trainer(small_config(faults=fault, clip_range=0.5))
    calls = []
    for method in ("reset_memory", "clip_weights"):
        original = getattr(trainer.policy, method)
        setattr(trainer.policy, method, lambda _o=original, _n=method: (calls.append(_n), _o())[1])
    trainer.train(updates=1, quiet=True)
    minibatches = 8 // (64 // 16)
    assert calls.count("reset_memory") == (0 if fault == "no_memory_reset" else 1 + minibatches)
    assert calls.count("clip_weights") == (0 if fault == "no_clip_weights" else minibatches)


def test_no_detach_with_no_memory_reset_crashes_on_the_second_minibatch():
    trainer = Trainer(small_config(faults="no_detach,no_memory_reset"))
    trainer.rollout()
    with pytest.raises(RuntimeError, match="backward through the graph a second time"):
        trainer.learn()
