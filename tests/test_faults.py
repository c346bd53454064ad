"""Each fault of trainer/collapse/faults.py does what its paragraph says, and the default configuration has none."""

import importlib
import os
import runpy
import sys

import pytest
import torch
from test_policies import acting_td, rollout
from test_trainer import small_config

from envs import make_env
from policies import make_policy
from policies.actions import BilinearActionHead
from trainer import TrainConfig, Trainer
from trainer.collapse.faults import FAULTS, PRESETS, apply_faults, parse_faults

ARENA = make_env("arena", num_envs=1).spec


def faults(*names):
    return frozenset(names)


def overrides(policy) -> list[str]:
    """The correct code a built policy no longer runs, named as the catalogue names it: methods replaced on an
    instance, forward pre-hooks, the bilinear head swapped out, the encoder's ReLUs removed."""
    found = []
    for part in (policy, policy.memory, policy.actions):
        for name in vars(part):
            owner = next((c for c in type(part).__mro__ if name in vars(c)), None)
            if owner is not None and callable(vars(owner)[name]):
                found.append(f"{owner.__name__}.{name}")
    found += ["RecurrentPolicy.forward"] * len(policy._forward_pre_hooks)
    found += ["BilinearActionHead"] * (not any(isinstance(m, BilinearActionHead) for m in policy.modules()))
    found += [type(policy.encoder).__name__] * (not any(isinstance(m, torch.nn.ReLU) for m in policy.encoder.modules()))
    return found


def test_default_configuration_has_no_fault_active():
    assert TrainConfig().fault_set == frozenset()
    assert overrides(Trainer(small_config()).policy) == []


@pytest.mark.parametrize("name", FAULTS)
def test_every_fault_overrides_exactly_the_correct_code_the_catalogue_names(name):
    fault = FAULTS[name]
    path, qualname = fault.where.split()
    owner = importlib.import_module(path.removesuffix(".py").replace("/", "."))
    for attr in qualname.split("."):
        owner = getattr(owner, attr)  # the correct code it names exists there
    assert fault.origin in ("history", "audit") and len(fault.what.split()) > 20
    assert overrides(apply_faults(make_policy("fast", ARENA), name)) == [qualname]


def test_parse_faults_expands_presets_and_rejects_unknown_or_inapplicable_names(monkeypatch):
    assert parse_faults("") == frozenset()
    assert parse_faults("no_relu, no_detach") == {"no_relu", "no_detach"}
    assert parse_faults("prefix,no_detach") == {*PRESETS["prefix"], "no_detach"}
    with pytest.raises(ValueError, match=r"unknown fault 'no_reul'; choose from \['bptt_reshape'"):
        parse_faults("no_reul")
    with pytest.raises(ValueError, match="fault 'no_relu' applies to the policies \\['fast'\\], not 'example'"):
        parse_faults("no_relu", "example")
    with pytest.raises(ValueError, match="unknown fault 'nope'"):
        Trainer(small_config(faults="nope"))
    with pytest.raises(ValueError, match="unknown fault 'nope'"):  # before any work starts
        small_config(faults="nope").check()
    with pytest.raises(ValueError, match="obs_zero_255_inplace: .* add --no-token-conv"):  # would not do what it did
        small_config(faults="prefix", token_conv=True).check()
    with pytest.raises(SystemExit, match="unknown fault 'nope'"):  # --faults on the command line: the same, no traceback
        monkeypatch.setattr(sys, "argv", ["train.py", "--faults", "nope", "--env", "nav"])
        runpy.run_path(os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "scripts", "train.py"),
                       run_name="__main__")


def test_memoryless_rollout_acts_from_zero_state():
    torch.manual_seed(0)
    env = make_env("nav", num_envs=3, seed=2)
    obs = env.reset()["env_obs"]
    for names, remembers in ((faults(), True), (faults("memoryless_rollout"), False)):
        policy = apply_faults(make_policy("example", env), names)
        with torch.no_grad():
            policy.reset_memory()
            fresh = policy(acting_td(obs))["full_log_probs"]
            second = policy(acting_td(obs))["full_log_probs"]  # same observation, one step of memory later
        assert remembers == (not torch.allclose(second, fresh))


def test_wrong_action_index_scores_a_different_action_for_ten_arena_pairs():
    right = make_policy("fast", ARENA).actions
    wrong = apply_faults(make_policy("fast", ARENA), "wrong_action_index").actions
    pairs = right.pairs
    assert torch.equal(right.to_index(pairs), torch.arange(19))
    moved = wrong.to_index(pairs) != torch.arange(19)
    assert int(moved.sum()) == 10
    assert torch.equal(wrong.to_index(pairs), right.cum[pairs[:, 0]] + pairs[:, 1])


def test_sixteen_logits_can_never_choose_rotate_left_right_or_swap():
    torch.manual_seed(0)
    env = make_env("arena", num_envs=4, seed=0)
    policy = apply_faults(make_policy("fast", env), "sixteen_logits")
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
        encoder = apply_faults(make_policy("fast", ARENA), names).encoder
        stack = lambda x: encoder.fc(encoder.cnn(x))  # noqa: E731
        zero = stack(torch.zeros_like(box))
        assert affine == torch.allclose(stack(-box) - zero, zero - stack(box), atol=1e-4)  # odd around 0


def test_obs_zero_255_inplace_rewrites_the_stored_observation():
    env = make_env("nav", num_envs=2, seed=0)
    for names, padding_kept in ((faults(), True), (faults("obs_zero_255_inplace"), False)):
        record = rollout(apply_faults(make_policy("fast", env), names), env, 3)
        assert padding_kept == bool((record["env_obs"] == 255).any())


def test_no_detach_leaves_a_graph_on_the_stored_state():
    env = make_env("nav", num_envs=2, seed=0)
    for names, graph in ((faults(), False), (faults("no_detach"), True)):
        policy = apply_faults(make_policy("fast", env), names)
        record = rollout(policy, env, 5)
        policy.reset_memory()
        policy(record.select("env_obs", "actions", "dones", "truncateds").clone())
        h, c = policy.memory.state[0]
        assert graph == (h.grad_fn is not None) == (c.grad_fn is not None)


def test_no_done_reset_carries_state_into_the_next_episode():
    torch.manual_seed(0)
    x, starts = torch.randn(3, 128), torch.ones(3, dtype=torch.bool)
    for names, resets in ((faults(), True), (faults("no_done_reset"), False)):
        memory = apply_faults(make_policy("example", ARENA), names).memory
        fresh = memory.step(x, starts, key=0)
        again = memory.step(x, starts, key=0)  # a new episode starts: state should be zero again
        assert resets == torch.allclose(again, fresh)


def test_no_train_done_reset_disagrees_with_acting_after_the_first_episode_end():
    torch.manual_seed(0)
    env = make_env("nav", num_envs=6, max_steps=7, seed=1)
    policy = apply_faults(make_policy("fast", env), "no_train_done_reset")
    record = rollout(policy, env, 24)
    policy.reset_memory()
    out = policy(record.select("env_obs", "actions", "dones", "truncateds").clone())
    gap = (out["act_log_prob"] - record["act_log_prob"]).abs()
    first = (record["dones"] | record["truncateds"]).float().cumsum(1) == 0  # before the first episode end
    assert gap[first].max() < 1e-5 and gap[~first].max() > 1e-3


def test_bptt_reshape_feeds_the_lstm_a_permuted_sequence():
    torch.manual_seed(0)
    B, T = 3, 5
    x, starts = torch.randn(B, T, 128), torch.zeros(B, T, dtype=torch.bool)
    memory = apply_faults(make_policy("example", ARENA), "bptt_reshape").memory
    out = memory.unroll(x, starts, key=0)
    wrong, _ = memory.lstm(x.reshape(T, B, 128))
    right, _ = memory.lstm(x.transpose(0, 1))
    assert torch.equal(out, wrong.reshape(B, T, 128))
    assert not torch.allclose(out, right.transpose(0, 1))


@pytest.mark.parametrize("fault", ["", "no_memory_reset"])
def test_no_memory_reset_keeps_the_state(fault):
    env = make_env("nav", num_envs=2, seed=0)
    policy = apply_faults(make_policy("fast", env), fault)
    rollout(policy, env, 2)
    policy.reset_memory()
    assert bool(policy.get_memory()) == (fault == "no_memory_reset")


@pytest.mark.parametrize("fault", ["", "no_clip_weights"])
def test_no_clip_weights_leaves_weights_past_their_bound(fault):
    policy = apply_faults(make_policy("fast", ARENA, clip_range=0.5), fault)
    layer = policy.critic[0]
    with torch.no_grad():
        layer.weight.mul_(10)
    policy.clip_weights()
    over = layer.weight.abs().max() > 0.5 * layer.initial_weight_bound * 1.0001
    assert bool(over) == (fault == "no_clip_weights")


def test_faults_refuse_a_policy_without_the_piece_they_break():
    with pytest.raises(ValueError, match="bilinear action head, which this policy does not have"):
        apply_faults(make_policy("example", ARENA), "sixteen_logits")


def test_no_detach_with_no_memory_reset_crashes_on_the_second_minibatch():
    trainer = Trainer(small_config(faults="no_detach,no_memory_reset"))
    trainer.rollout()
    with pytest.raises(RuntimeError, match="backward through the graph a second time"):
        trainer.learn()


def test_a_faulty_policy_deep_copies_and_pickles_with_its_faults():
    import copy
    import pickle

    env = make_env("nav", num_envs=2, seed=0)
    names = "prefix,no_detach,no_done_reset,bptt_reshape,no_memory_reset,no_clip_weights"
    policy = apply_faults(make_policy("fast", env), names)
    for twin in (copy.deepcopy(policy), pickle.loads(pickle.dumps(policy))):
        assert overrides(twin) == overrides(policy)
        torch.manual_seed(0)
        theirs = rollout(twin, env, 3)
        assert twin.get_memory() and not policy.get_memory()  # the copy's overrides act on the copy
        torch.manual_seed(0)
        env = make_env("nav", num_envs=2, seed=0)
        mine = rollout(policy, env, 3)
        assert torch.equal(mine["act_log_prob"], theirs["act_log_prob"])
        policy.memory.state.clear()
        env = make_env("nav", num_envs=2, seed=0)
