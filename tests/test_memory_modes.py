"""Memory across rollouts (reset, Metta's, or carry) and the bootstraps (the step after a rollout's last column, the
final observation a time limit cut): exact acting-vs-training agreement, references, resume and evaluation."""

import importlib.util
import os
import sys

import pytest
import torch
from conftest import DEVICE
from tensordict import TensorDict
from test_policies import acting_td
from test_trainer import small_config

from envs import make_env
from experience import SegmentedBuffer
from policies import POLICIES, make_policy
from trainer import Trainer
from trainer.advantage import compute_advantages

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def reference_advantages(values, rewards, dones, truncateds, final_values, gamma, lam):
    """One segment, one step at a time, in plain floats; the inputs have one column more than the result (the step
    after the last), and a truncation bootstraps from the final observation's value."""
    S, T = values.shape[0], values.shape[1] - 1
    out = [[0.0] * (T + 1) for _ in range(S)]
    for s in range(S):
        for t in range(T - 1, -1, -1):
            d, u = bool(dones[s, t + 1]), bool(truncateds[s, t + 1])
            nxt = 0.0 if d else float(final_values[s, t + 1]) if u else float(values[s, t + 1])
            delta = float(rewards[s, t + 1]) + gamma * nxt - float(values[s, t])
            out[s][t] = delta + (0.0 if d or u else gamma * lam * out[s][t + 1])
    return torch.tensor(out)[:, :T]


def test_advantages_with_the_horizon_column_and_final_values_equal_a_reference_loop():
    g = torch.Generator().manual_seed(3)
    S, T = 6, 8  # T + 1 columns in: the last is the step after the segment
    values, rewards, final = (torch.randn(S, T + 1, generator=g) for _ in range(3))
    dones, truncateds = torch.zeros(S, T + 1, dtype=torch.bool), torch.zeros(S, T + 1, dtype=torch.bool)
    dones[0, T] = truncateds[1, T] = True  # ends in the horizon column
    dones[2, T - 1] = truncateds[3, T - 1] = True  # and in the last column
    dones[4, 0] = truncateds[5, 0] = truncateds[5, 1] = True  # and at the first (read by nothing)
    ones = torch.ones(S, T + 1)
    fast = compute_advantages(values, rewards, dones, truncateds, ones, 0.9, 0.8, 1.0, 1.0, final)[:, :T]
    assert torch.allclose(fast, reference_advantages(values, rewards, dones, truncateds, final, 0.9, 0.8), atol=1e-5)
    assert (fast[:, -1] != 0).all()  # every last column has a real advantage


def test_trainer_advantages_with_the_horizon_bootstrap_line_up_with_their_columns():
    """Trainer.advantages on a real rollout against the reference loop over the buffer's columns and the horizon
    step: guards against keeping the wrong T of the T + 1 columns (each step given the next one's advantage, the last
    step the horizon column's 0)."""
    run = Trainer(small_config(horizon_bootstrap=True, truncation_bootstrap="final", device="cpu",
                               env_overrides={"max_steps": 6}))
    run.rollout()
    data, horizon = run.buffer.data, run.buffer.horizon
    assert data["truncateds"][:, 1:].any()  # time limits inside the rows: the final values are read
    columns = [torch.cat([data[k], horizon[k][:, None]], 1)
               for k in ("values", "rewards", "dones", "truncateds", "final_values")]
    expected = reference_advantages(*columns, run.cfg.gamma, run.cfg.gae_lambda)
    advantages = run.advantages(torch.ones_like(data["values"]))  # ratio 1: the V-trace clips change nothing
    assert torch.allclose(advantages, expected, atol=1e-5)
    assert (advantages[:, -1] != 0).all()  # the last column bootstraps from the horizon's value


@pytest.mark.parametrize("policy", sorted(POLICIES))
@pytest.mark.parametrize("sampling", ["prioritized", "shuffled"])
def test_carry_mode_trains_on_exactly_what_acting_did(policy, sampling):
    trainer = Trainer(small_config(policy=policy, sampling=sampling, prio_alpha=0.5 if sampling == "prioritized" else 0,
                                   memory="carry", horizon_bootstrap=True, truncation_bootstrap="final"))
    for update in range(2):
        trainer.rollout()
        starts = trainer.buffer.data["dones"] | trainer.buffer.data["truncateds"]
        assert starts[:, 1:].any(1).all()  # episode ends inside every segment
        carried = trainer.buffer.initial_state["c"].abs().max()
        assert (carried > 0) == (update > 0)  # the second rollout starts from where the first ended
        assert trainer.learn()["ratio_deviation_first_minibatch"] < 1e-5


def test_carry_mode_with_several_env_slices():
    """Two slices of agents act with their own memory keys across two rollouts; training restores each sampled
    segment's initial state from the buffer and recomputes the acting log-probs."""
    torch.manual_seed(0)
    env = make_env("nav", num_envs=6, max_steps=7, seed=2)
    policy = make_policy("example", env)
    T, slices = 5, ((0, 2), (2, 6))
    buffer = SegmentedBuffer(env.spec, 6, T, "cpu", (1, 128))
    td, carried = env.reset(), {}
    for _ in range(3):
        policy.reset_memory()
        policy.set_memory(carried)
        buffer.reset()
        for start, end in slices:
            h, c = carried.get(start, (torch.zeros(1, end - start, 128),) * 2)
            buffer.store_initial_state(start, h, c)
        with torch.no_grad():
            for _ in range(T):
                actions = []
                for start, end in slices:
                    step = policy(acting_td(td["env_obs"][start:end], td["dones"][start:end], key=start).update(
                        {"truncateds": td["truncateds"][start:end], "rewards": td["rewards"][start:end]}))
                    buffer.store(step, start)
                    actions.append(step["actions"])
                td = env.step(torch.cat(actions))
        carried = policy.get_memory()
    assert buffer.initial_state["h"].abs().min() > 0
    for index in (torch.tensor([0, 3, 5]), torch.tensor([4, 1]), torch.arange(6)):
        policy.reset_memory()
        policy.set_memory({0: buffer.state_of(index)})
        segments = buffer.data[index]
        with torch.no_grad():
            out = policy(segments.select("env_obs", "actions", "dones", "truncateds").clone())
        assert (out["act_log_prob"] - segments["act_log_prob"]).abs().max() < 1e-5


@pytest.mark.parametrize("memory", ["reset", "carry"])
def test_the_horizon_value_leaves_the_next_rollout_as_it_was(memory):
    second = []
    for on in (False, True):  # one after the other: each Trainer seeds the global generator actions are drawn from
        run = Trainer(small_config(memory=memory, horizon_bootstrap=on))
        run.rollout()
        horizon = run.buffer.horizon["values"].clone()
        run.rollout()
        second.append(run.buffer.data.clone())
    assert (second[0] == second[1]).all()
    if memory == "carry":  # the horizon is valued from the very state the next rollout's first step acts with
        assert torch.equal(horizon, second[1]["values"][:, 0])


def test_final_values_are_the_value_of_the_cut_observation_before_its_reset():
    """The rollout's final_values against a plain loop that values each final observation with the memory as the
    step that produced it left it."""
    run = Trainer(small_config(truncation_bootstrap="final", env_overrides={"max_steps": 6}))
    torch.manual_seed(5)
    run.rollout()
    torch.manual_seed(5)
    policy, env = run.policy, make_env("nav", num_envs=8, seed=0, max_steps=6, device=DEVICE)  # the same policy object: same kernels
    policy.reset_memory()
    td, finals = env.reset(), []
    with torch.no_grad():
        for _ in range(16):
            td = policy(acting_td(td["env_obs"], td["dones"]).update({"truncateds": td["truncateds"]}))
            td = env.step(td["actions"], final_obs=True)
            no = torch.zeros(8, dtype=torch.bool, device=DEVICE)
            finals.append(policy.value(TensorDict({"env_obs": td["final_env_obs"], "dones": no, "truncateds": no},
                                                  batch_size=[8])))
    cut = run.buffer.data["truncateds"][:, 1:]
    assert cut.any()
    assert torch.equal(run.buffer.data["final_values"][:, 1:][cut], torch.stack(finals[:-1], 1)[cut])


def test_resume_is_exact_in_carry_mode_with_both_bootstraps(tmp_path):
    cfg = small_config(log_dir=str(tmp_path), memory="carry", horizon_bootstrap=True, truncation_bootstrap="final",
                       prio_alpha=0.5)
    straight = Trainer(cfg.replace(run_name="straight"))
    straight.train(quiet=True)
    first = Trainer(cfg.replace(run_name="split"))
    first.train(updates=2, quiet=True)
    resumed = Trainer(cfg.replace(resume=first.checkpoint_path))
    assert resumed.carried and torch.equal(resumed.carried[0][1], first.carried[0][1])
    resumed.train(quiet=True)
    for a, b in zip(straight.policy.parameters(), resumed.policy.parameters()):
        assert torch.equal(a, b)


@pytest.mark.parametrize("memory, wipes", [("reset", True), ("carry", False)])
def test_evaluate_runs_the_memory_the_checkpoint_trained_with(tmp_path, monkeypatch, capsys, memory, wipes):
    trainer = Trainer(small_config(log_dir=str(tmp_path), memory=memory))
    trainer.train(updates=1, quiet=True)
    spec = importlib.util.spec_from_file_location("evaluate", os.path.join(ROOT, "scripts", "evaluate.py"))
    evaluate = sys.modules["evaluate"] = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(evaluate)
    calls = []
    monkeypatch.setattr(type(trainer.policy), "reset_memory", lambda self: calls.append(1))
    evaluate.evaluate(evaluate.Args(checkpoint=trainer.checkpoint_path, episodes=12, num_envs=4))
    # episodes of 10 steps: 3 rounds of 4 maps take 30 steps, wiped at steps 0 and 16 in reset mode (bptt 16)
    assert len(calls) == (2 if wipes else 0)
    assert f"memory: {memory}, as trained" in capsys.readouterr().out
