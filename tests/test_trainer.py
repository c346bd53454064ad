"""The trainer's mechanisms: buffer rows, segment sampling, advantage, call order, ratio 1, exact resume."""

import math
import os
import re

import pytest
import torch
from conftest import DEVICE
from tensordict import TensorDict

from envs import make_env
from envs.spec import ACTIONS
from experience import SegmentedBuffer, prio_beta, sample_segments, shuffled_minibatches
from trainer import TrainConfig, Trainer
from trainer.config import METTA, PRESETS
from trainer.advantage import compute_advantages
from trainer.checkpoint import load_checkpoint


def small_config(**changes) -> TrainConfig:
    """A small nav run with Metta's semantics (memory reset, no horizon value, Metta's init and loss settings),
    which most tests were written against; each test names what it changes."""
    base = TrainConfig(**METTA).replace(env="nav", num_envs=8, bptt=16, minibatch_size=64, total_steps=8 * 16 * 4,
                                        env_overrides={"max_steps": 10}, log_dir="/tmp/minippo-tests",
                                        checkpoint_interval=1000, device=DEVICE)
    return base.replace(**changes)


def step_td(n, value, t):
    return TensorDict({"env_obs": torch.full((n, 200, 3), value, dtype=torch.uint8), "rewards": torch.full((n,), float(t)),
                       "dones": torch.zeros(n, dtype=torch.bool), "truncateds": torch.zeros(n, dtype=torch.bool),
                       "actions": torch.full((n, 2), value), "act_log_prob": torch.zeros(n),
                       "values": torch.full((n,), float(value))}, batch_size=[n])


def test_buffer_rows_with_several_slices():
    spec = make_env("nav", num_envs=1).spec
    buffer = SegmentedBuffer(spec, num_agents=5, bptt=3, device="cpu")
    for t in range(3):
        assert not buffer.ready
        buffer.store(step_td(3, 7, t), start=2)  # the slice of agents 2..4 comes first: rows 0..2
        buffer.store(step_td(2, 9, t), start=0)  # agents 0..1: rows 3..4
    assert buffer.ready
    assert torch.equal(buffer.data["values"][:3], torch.full((3, 3), 7.0))
    assert torch.equal(buffer.data["values"][3:], torch.full((2, 3), 9.0))
    assert torch.equal(buffer.data["rewards"][0], torch.tensor([0.0, 1.0, 2.0]))  # one column per step
    assert buffer.data["env_obs"].dtype == torch.uint8
    with pytest.raises(ValueError, match="already wrote all 3 steps"):
        buffer.store(step_td(3, 7, 3), start=2)
    with pytest.raises(ValueError, match="does not fit"):
        buffer.store(step_td(1, 1, 0), start=5)
    buffer.reset()
    assert not buffer.ready


def test_prioritized_sampling_matches_the_formula():
    g = torch.Generator().manual_seed(0)
    advantages = torch.tensor([[1.0, -1.0], [0.5, 0.5], [3.0, 1.0], [0.0, 0.0]])  # |A| sums: 2, 1, 4, 0
    alpha, beta = 0.5, 0.7
    p = torch.tensor([2.0, 1.0, 4.0, 0.0]).pow(alpha)
    p = p / p.sum()
    draws = torch.cat([sample_segments(advantages, 1, alpha, beta, g)[0] for _ in range(20000)])
    freq = torch.bincount(draws, minlength=4) / len(draws)
    assert (freq - p).abs().max() < 0.01 and freq[3] == 0
    index, weights = sample_segments(advantages, 3, alpha, beta, g)
    assert len(set(index.tolist())) == 3  # no replacement inside a minibatch
    assert torch.allclose(weights, (4 * p[index]).pow(-beta))


def test_uniform_sampling_shuffled_partition_and_beta():
    g = torch.Generator().manual_seed(1)
    index, weights = sample_segments(torch.randn(6, 4), 6, 0.0, 0.6, g)
    assert sorted(index.tolist()) == list(range(6)) and torch.equal(weights, torch.ones(6))
    parts = shuffled_minibatches(12, 4, g, "cpu")
    assert len(parts) == 3 and sorted(torch.cat(parts).tolist()) == list(range(12))
    assert prio_beta(0.6, 0.5, 0, 10) == 0.6 and prio_beta(0.6, 0.5, 10, 10) == pytest.approx(0.8)


def reference_advantages(values, rewards, dones, truncateds, ratio, gamma, lam, rho_clip, c_clip):
    """One segment at a time, one step at a time, in plain floats."""
    S, T = values.shape
    out = [[0.0] * T for _ in range(S)]
    for s in range(S):
        for t in range(T - 2, -1, -1):
            d, u = bool(dones[s, t + 1]), bool(truncateds[s, t + 1])
            v = float(values[s, t])
            nxt = 0.0 if d else (v if u else float(values[s, t + 1]))
            rho, c = min(float(ratio[s, t]), rho_clip), min(float(ratio[s, t]), c_clip)
            delta = rho * (float(rewards[s, t + 1]) + gamma * nxt - v)
            out[s][t] = delta + (0.0 if d or u else gamma * lam * c * out[s][t + 1])
    return torch.tensor(out)


def test_advantage_equals_reference_loop():
    g = torch.Generator().manual_seed(0)
    S, T = 7, 12
    values, rewards = torch.randn(S, T, generator=g), torch.randn(S, T, generator=g)
    dones, truncateds = torch.rand(S, T, generator=g) < 0.15, torch.rand(S, T, generator=g) < 0.1
    truncateds &= ~dones
    ratio = torch.rand(S, T, generator=g) * 2
    args = (0.977, 0.916, 1.0, 0.9)
    fast = compute_advantages(values, rewards, dones, truncateds, ratio, *args)
    assert torch.allclose(fast, reference_advantages(values, rewards, dones, truncateds, ratio, *args), atol=1e-5)
    ones = torch.ones(S, T)  # with ratio 1 and no episode end it is textbook GAE
    plain = compute_advantages(values, rewards, torch.zeros_like(dones), torch.zeros_like(dones), ones, 0.9, 0.8, 1, 1)
    gae, last = torch.zeros(S), torch.zeros(S)
    for t in range(T - 2, -1, -1):
        last = rewards[:, t + 1] + 0.9 * values[:, t + 1] - values[:, t] + 0.9 * 0.8 * last
        gae = last
        assert torch.allclose(plain[:, t], gae, atol=1e-5)


def test_first_minibatch_ratio_is_one_with_episode_ends_inside_segments():
    trainer = Trainer(small_config())
    trainer.rollout()
    starts = trainer.buffer.data["dones"] | trainer.buffer.data["truncateds"]
    assert starts[:, 1:].any(1).all()  # every segment has an episode start inside
    metrics = trainer.learn()
    assert metrics["ratio_deviation_first_minibatch"] < 1e-5


def test_reset_memory_before_rollout_and_minibatch_clip_weights_after_each_step():
    trainer = Trainer(small_config(update_epochs=2))
    calls = []
    policy, optimizer = trainer.policy, trainer.optimizer
    for name, obj in (("reset", policy), ("clip", policy), ("step", optimizer)):
        method = {"reset": "reset_memory", "clip": "clip_weights", "step": "step"}[name]
        original = getattr(obj, method)
        setattr(obj, method, lambda *a, _o=original, _n=name, **k: (calls.append(_n), _o(*a, **k))[1])
    original_forward = policy.forward
    policy.forward = lambda td: (calls.append("act" if td.batch_dims == 1 else "train"), original_forward(td))[1]
    trainer.train(updates=1, quiet=True)
    minibatches = 2 * (8 // (64 // 16))
    assert calls[0] == "reset" and calls[1:17] == ["act"] * 16
    assert calls[17:] == ["reset", "train", "step", "clip"] * minibatches


@pytest.mark.parametrize("options", [{}, {"encoder_lr_scale": 0.5, "anneal_lr": True}, {"lr_follows_advantages": True}],
                         ids=["one_rate", "encoder_rate", "rate_follows_advantages"])
def test_resume_continues_exactly_like_an_uninterrupted_run(tmp_path, options):
    cfg = small_config(log_dir=str(tmp_path), total_steps=8 * 16 * 4, prio_alpha=0.5, **options)
    straight = Trainer(cfg.replace(run_name="straight"))
    straight.train(quiet=True)
    first = Trainer(cfg.replace(run_name="split"))
    first.train(updates=2, quiet=True)
    resumed = Trainer(cfg.replace(run_name="ignored", resume=first.checkpoint_path, num_envs=99))
    assert resumed.update == 2 and resumed.cfg.num_envs == 8  # the checkpoint's configuration wins
    resumed.train(quiet=True)
    a, b = straight.state_dict(), resumed.state_dict()
    assert a["update"] == b["update"] == 4 and a["global_step"] == b["global_step"]
    assert a["advantage_std_peak"] == b["advantage_std_peak"]
    for key in a["policy"]:
        assert torch.equal(a["policy"][key], b["policy"][key]), key
    (a,), (b,) = a["ranks"], b["ranks"]  # one rank: its envs, memory and random streams
    for key in a["env"]:
        assert torch.equal(a["env"][key], b["env"][key]), key
    assert torch.equal(a["rng"]["torch"], b["rng"]["torch"])


def test_init_from_starts_a_new_run_from_another_runs_policy_weights(tmp_path):
    first = Trainer(small_config(log_dir=str(tmp_path), run_name="stage1", env_overrides={"max_steps": 10, "walls": 0}))
    first.train(updates=2, quiet=True)
    path = first.save()
    second = Trainer(small_config(log_dir=str(tmp_path), run_name="stage2", init_from=path, seed=1))
    fresh = Trainer(small_config(log_dir=str(tmp_path), run_name="fresh", seed=1))
    for key, value in first.policy.state_dict().items():
        assert torch.equal(second.policy.state_dict()[key], value), key
    assert any(not torch.equal(fresh.policy.state_dict()[k], v) for k, v in first.policy.state_dict().items())
    assert second.update == second.global_step == 0 and not second.optimizer.state  # only the weights carry over
    assert second.env.cfg.walls == 4  # its own env (nav's 4 interior walls), not the first stage's
    second.train(updates=1, quiet=True)
    path2 = second.save()
    os.remove(path)  # a resumed run keeps its own weights: stage 1's checkpoint is not read again
    resumed = Trainer(small_config(log_dir=str(tmp_path), resume=path2))
    for key, value in second.policy.state_dict().items():
        assert torch.equal(resumed.policy.state_dict()[key], value), key


def test_init_from_errors_name_the_fix(tmp_path):
    first = Trainer(small_config(log_dir=str(tmp_path), run_name="stage1"))
    path = first.save()
    with pytest.raises(ValueError, match=r"policy built otherwise \(policy 'fast' there, 'example' here\)"):
        Trainer(small_config(log_dir=str(tmp_path), init_from=path, policy="example"))
    with pytest.raises(ValueError, match="one_hot_ids False there, True here"):
        Trainer(small_config(log_dir=str(tmp_path), init_from=path, one_hot_ids=True))
    state = torch.load(path, weights_only=True)
    state["policy"] = {k: v[..., :1] if v.dim() > 1 else v for k, v in state["policy"].items()}
    torch.save(state, tmp_path / "other_env.pt")
    with pytest.raises(ValueError, match="its weights do not fit this policy on nav .*size mismatch"):
        Trainer(small_config(log_dir=str(tmp_path), init_from=str(tmp_path / "other_env.pt")))
    with pytest.raises(FileNotFoundError, match="no checkpoint at"):
        Trainer(small_config(log_dir=str(tmp_path), init_from=str(tmp_path / "missing.pt")))
    state = torch.load(path, weights_only=True)
    del state["config"]["one_hot_ids"]  # a checkpoint from before the option: its default, not a mismatch
    torch.save(state, tmp_path / "older.pt")
    Trainer(small_config(log_dir=str(tmp_path), init_from=str(tmp_path / "older.pt")))


def test_an_older_checkpoints_missing_options_take_metta_values_it_ran_with():
    """TrainConfig's defaults are the tuned ones; a checkpoint written before an option existed ran at its default
    then, Metta's (memory reset, the env's inventory divisor, no token convolution)."""
    cfg = TrainConfig.from_dict({"policy": "fast", "env": "nav", "learning_rate": 3e-3})
    assert (cfg.memory, cfg.horizon_bootstrap, cfg.inventory_norm, cfg.token_conv) == ("reset", False, 0.0, False)
    assert cfg.learning_rate == 3e-3 and TrainConfig().memory == "carry"


def test_a_checkpoint_holds_the_learning_rate_as_a_number(tmp_path):
    """A recorded update keeps the learning rate on the device (trainer/cuda_graph.py); the checkpoint does not."""
    trainer = Trainer(small_config(log_dir=str(tmp_path)))
    for group in trainer.optimizer.param_groups:  # as GraphedUpdate leaves them
        group["lr"], group["capturable"] = torch.tensor(0.002, device=DEVICE), True
    groups = trainer.state_dict()["optimizer"]["param_groups"]
    assert all(type(g["lr"]) is float and g["lr"] == pytest.approx(0.002) and not g["capturable"] for g in groups)


def test_checkpoint_errors_name_the_fix(tmp_path):
    with pytest.raises(FileNotFoundError, match="no checkpoint at"):
        load_checkpoint(str(tmp_path / "missing.pt"))
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint at all")
    with pytest.raises(ValueError, match="not a readable checkpoint"):
        load_checkpoint(str(bad))
    other = tmp_path / "other.pt"
    torch.save({"weights": torch.zeros(1)}, other)
    with pytest.raises(ValueError, match="not a minippo checkpoint"):
        load_checkpoint(str(other))
    with pytest.raises(ValueError, match=r"options this version of minippo does not know \(\['train_reset'\]\)"):
        TrainConfig.from_dict({"policy": "fast", "train_reset": "none"})


@pytest.mark.parametrize("changes, message", [
    ({"minibatch_size": 60}, "not a multiple of bptt=16"),
    ({"minibatch_size": 48}, "must divide it"),
    ({"minibatches": 3}, "minibatches=3 must divide the batch's 8 segments"),
    ({"minibatches": -1}, r"minibatches=-1: use 0"),
    ({"total_steps": 10}, "less than one batch"),
    ({"sampling": "random"}, "choose one of"),
    ({"device": "tpu"}, "cannot be used here"),
    ({"policy": "nope"}, "unknown policy 'nope'"),
    ({"env": "maze"}, "unknown task 'maze'"),
    ({"faults": "no_relu,typo"}, "unknown fault 'typo'"),
    ({"inventory_norm": -1.0}, r"inventory_norm=-1.0: use 0 \(the env's divisor\)"),
    ({"kl_coef": -0.5}, r"kl_coef=-0.5: use a KL weight of 0 \(off\) or more"),
    ({"adam_update_clip": -1.0}, r"adam_update_clip=-1.0: use 0 \(off\) or a positive RMS"),
    ({"encoder_leak": 1.0}, r"encoder_leak=1.0: use a negative slope in \[0, 1\)"),
    ({"encoder_gain": 0.0}, r"encoder_gain=0.0: use a positive gain"),
    ({"lstm_forget_bias": float("inf")}, r"lstm_forget_bias=inf: use a finite bias"),
    ({"lstm_forget_bias": 2.0}, r"this LSTM's init is 'metta'"),
    ({"encoder_lr_scale": 0.0}, r"encoder_lr_scale=0.0: use a positive multiple of the learning rate"),
    ({"encoder_leak": 0.01, "faults": "no_relu"}, "encoder_leak with the fault no_relu"),
])
def test_bad_configurations(changes, message):
    with pytest.raises(ValueError, match=message):
        Trainer(small_config(**changes))


def test_the_gpu_presets_minibatches_follow_the_batch():
    """Its optimizer steps per update are the same at any map count: 256 nav maps (one agent each) are not one
    minibatch of 16,384 steps but 16 of 1,024, as the cpu preset has them; 1024 arena maps (6 agents) 16 of 24,576."""
    gpu, cpu = PRESETS["gpu"], PRESETS["cpu"]
    assert gpu.segments_per_minibatch(256) * gpu.bptt == cpu.segments_per_minibatch(256) * cpu.bptt == 1024
    assert gpu.segments_per_minibatch(6144) * gpu.bptt == 24576
    trainer = Trainer(small_config(minibatches=4, minibatch_size=1))  # the count decides; the size is not read
    assert trainer.minibatch_segments == 2
    assert len(list(trainer.minibatches(torch.ones(8, 16, device=DEVICE)))) == 4


def test_the_input_and_encoder_options_reach_the_policy():
    heart = make_env("nav", num_envs=1).spec.feature_id("inv:heart")
    for divisor, expected in ((0.0, 100.0), (1.0, 1.0)):
        assert Trainer(small_config(inventory_norm=divisor)).policy.spec.feature_normalizations[heart] == expected
    assert "type_id=4" in Trainer(small_config(one_hot_ids=True)).policy.spec.feature_names
    assert isinstance(Trainer(small_config(encoder_leak=0.01)).policy.encoder.fc[-1], torch.nn.LeakyReLU)
    bound = [Trainer(small_config(encoder_gain=g)).policy.encoder.fc[0].initial_weight_bound for g in (1.0, 2.0)]
    assert bound[1] == 2 * bound[0]  # the same draw (the same seed), twice the scale
    lstm = Trainer(small_config(lstm_init="forget", lstm_forget_bias=2.0)).policy.memory.lstm
    assert lstm.bias_ih_l0[lstm.hidden_size] == 2


def test_the_encoders_first_adam_step_is_its_multiple_of_the_learning_rate():
    """Adam's first step moves each parameter with a gradient by the learning rate (its update is g / |g|): with
    encoder_lr_scale 0.25 the encoder's parameters move by a quarter of it and the rest by all of it."""
    run = Trainer(small_config(encoder_lr_scale=0.25, minibatches=1, learning_rate=1e-3))
    before = {name: p.detach().clone() for name, p in run.policy.named_parameters()}
    run.rollout()
    run.learn()
    moved = {part: max((p.detach() - before[name]).abs().max().item() for name, p in run.policy.named_parameters()
                       if name.startswith(part)) for part in ("encoder.", "memory.", "actor.", "critic.")}
    assert moved["encoder."] == pytest.approx(0.25e-3, rel=1e-3), moved
    for part in ("memory.", "actor.", "critic."):
        assert moved[part] == pytest.approx(1e-3, rel=1e-3), moved


def test_explained_variance_and_metrics_are_finite():
    history = Trainer(small_config()).train(updates=2, quiet=True)
    for key in ("SPS", "approx_kl", "clipfrac", "policy_loss", "value_loss", "entropy", "learning_rate"):
        assert math.isfinite(history[-1][key]), key


def test_dead_encoder_units_are_counted_on_the_current_observations():
    trainer = Trainer(small_config())
    dead = trainer.health()["encoder/dead_units"].item()
    last = trainer.policy.encoder.fc[2]  # Fast's last encoder layer, before its ReLU
    with torch.no_grad():
        last.bias[:32] = -1e6  # these 32 of 128 units are now 0 for any observation
        more = trainer.health()["encoder/dead_units"].item()
        last.bias[:] = -1e6
        blind = trainer.health()["encoder/dead_units"].item()
    assert dead < 0.75 and blind == 1.0
    assert max(dead, 0.25) <= more <= dead + 0.25


def load_script(name: str):
    """scripts/<name>.py loaded as a module (a script that imports another beside it finds it on sys.path)."""
    import importlib.util
    import sys

    path = os.path.join(os.path.dirname(__file__), "..", "scripts", f"{name}.py")
    spec = importlib.util.spec_from_file_location(name, path)
    module = sys.modules[name] = importlib.util.module_from_spec(spec)  # dataclasses look the module up
    spec.loader.exec_module(module)
    return module


def trained_checkpoint_and_evaluate(tmp_path):
    """A checkpoint after one update of a small nav run, and scripts/evaluate.py loaded as a module."""
    trainer = Trainer(small_config(log_dir=str(tmp_path)))
    trainer.train(updates=1, quiet=True)
    return trainer, load_script("evaluate")


def test_evaluate_runs_episodes_from_a_checkpoint(tmp_path):
    trainer, evaluate = trained_checkpoint_and_evaluate(tmp_path)
    means = evaluate.evaluate(evaluate.Args(checkpoint=trainer.checkpoint_path, episodes=12, num_envs=4))
    assert 0 <= means["return"] <= 3 and means["length"] == 10  # nav's max_steps, overridden to 10


def test_evaluate_writes_an_episode_as_an_animated_gif(tmp_path):
    from PIL import Image

    trainer, evaluate = trained_checkpoint_and_evaluate(tmp_path)
    gif = str(tmp_path / "episode.gif")
    evaluate.evaluate(evaluate.Args(checkpoint=trainer.checkpoint_path, episodes=4, num_envs=2, gif=gif))
    assert Image.open(gif).n_frames == 11  # the first observation and the 10 steps of an episode (max_steps 10)


def test_action_table_counts_each_choice_by_what_the_agent_faces():
    from envs import GridEnv, make_config
    from envs.spec import A, INV0, ITEM

    env = GridEnv(make_config("arena", num_envs=1, desync_episodes=False, mine_initial_output=1, layout=("#######",
                                                                                  "#>m#g<#",
                                                                                  "#^....#",
                                                                                  "#######")))
    env.reset()
    env.obj[0, 4, INV0 + ITEM["ore_red"]] = 2  # the agent facing the generator holds ore
    table = load_script("evaluate").ActionTable(env)
    table.add(torch.tensor([[A["get_items"], 0], [A["put_items"], 0], [A["move"], 0]]))
    table.add(torch.tensor([[A["get_items"], 0], [A["rotate"], 1], [A["move"], 0]]))
    chosen = {table.label(key): {name: int(n) for (name, _), n in zip(ACTIONS, row) if n}
              for key, row in enumerate(table.counts) if row.any()}
    assert chosen == {"mine_red with ore_red": {"get_items": 2},
                      "generator_red without battery_red, holding ore_red": {"put_items": 1, "rotate": 1},
                      "agent": {"move": 2}}  # the third faces the first
    text = str(table).splitlines()
    assert text[2].startswith("mine_red with ore_red") and "33.3%" in text[2] and "100.0%" in text[2]


def test_evaluate_prints_the_action_table(tmp_path, capsys):
    trainer, evaluate = trained_checkpoint_and_evaluate(tmp_path)
    evaluate.evaluate(evaluate.Args(checkpoint=trainer.checkpoint_path, episodes=4, num_envs=2, actions=True))
    rows = capsys.readouterr().out.split("what the policy chooses")[1].splitlines()[2:]
    steps = [float(row.split("%")[0].split()[-1]) for row in rows if row.strip()]
    assert {"altar with heart", "empty"} <= {row[:52].strip() for row in rows} and abs(sum(steps) - 100) < 0.5


def test_credit_groups_gets_and_puts_by_what_the_agent_faces_and_holds():
    from envs import GridEnv, make_config
    from envs.spec import A, INV0, ITEM

    env = GridEnv(make_config("arena", num_envs=1, desync_episodes=False, layout=("#######",
                                                                                  "#>a#g<#",
                                                                                  "#^....#",
                                                                                  "#######")))
    env.reset()
    env.obj[0, 3, INV0 + ITEM["battery_red"]] = 1  # facing the altar with one battery
    env.obj[0, 4, INV0 + ITEM["ore_red"]] = 12  # facing the generator with ore over the reward's cap and 2 batteries
    env.obj[0, 4, INV0 + ITEM["battery_red"]] = 2
    env.obj[0, 5, INV0 + ITEM["heart"]] = 4  # facing the first agent: no converter, its hearts not told apart
    credit = load_script("credit")
    table = credit.CreditTable(env)
    key, held_in, held_out = table.table.situations()
    actions = torch.tensor([A["put_items"], A["put_items"], A["move"]])
    for z in (1.0, -3.0):  # the same choices twice, with these standardised advantages; the move is not counted
        table.add(key.flatten(), held_in.flatten(), held_out.flatten(), actions, torch.full((3,), z),
                  torch.tensor([-0.8, 0.0, 0.0]))
    table.add(key.flatten(), held_in.flatten(), held_out.flatten(), torch.full((3,), A["get_items"]),
              torch.tensor([0.5, 2.0, -1.0]), torch.zeros(3))
    rows = {f"{label} | {act}": rest.split() for label, act, rest in
            (re.match(r"(.*?)\s+(get_items|put_items)(.*)", line).groups() for line in str(table).splitlines()[1:])}
    assert rows == {
        "altar without heart, holding 1 battery_red | put_items": ["2", "-1.00", "50%", "-0.800"],
        "altar without heart, holding 1 battery_red | get_items": ["1", "0.50", "100%", "0.000"],
        "generator_red without battery_red, holding 3+ ore_red and 2 battery_red | put_items": ["2", "-1.00", "50%", "0.000"],
        "generator_red without battery_red, holding 3+ ore_red and 2 battery_red | get_items": ["1", "2.00", "100%", "0.000"],
        "agent | get_items": ["1", "-1.00", "0%", "0.000"]}


def test_credit_reports_the_trainers_own_advantages(tmp_path, capsys):
    """Every get and put of the rollout is counted once, with the advantage the trainer computes for it."""
    from envs.spec import A

    trainer = Trainer(small_config(env="arena", num_envs=2, env_overrides={}, log_dir=str(tmp_path)))
    trainer.train(updates=1, quiet=True)
    credit = load_script("credit")
    table = credit.credit(credit.Args(checkpoint=trainer.checkpoint_path, rollouts=1, min_count=1))
    assert "lambda 0.916" in capsys.readouterr().out

    resumed = Trainer(small_config(resume=trainer.checkpoint_path, log_dir=str(tmp_path / "again")), given=("log_dir",))
    resumed.rollout()  # the same rollout: the checkpoint holds the envs, the memory and the random streams
    data = resumed.buffer.data
    advantages = resumed.advantages(torch.ones_like(data["values"]))
    z = ((advantages - advantages.mean()) / (advantages.std() + 1e-8))[:, :-1]
    chosen = torch.isin(data["actions"][:, :-1, 0], torch.tensor([A["get_items"], A["put_items"]], device=DEVICE))
    n, z_sum = table.sums[0].sum().item(), table.sums[1].sum().item()
    assert n == chosen.sum().item() > 0 and z_sum == pytest.approx(z[chosen].sum().item(), abs=1e-6)
    other = credit.credit(credit.Args(checkpoint=trainer.checkpoint_path, rollouts=1, min_count=1, gae_lambda=0.5))
    assert "lambda 0.5" in capsys.readouterr().out and not torch.allclose(other.sums[1], table.sums[1])
    for bad, named in (({"gae_lambda": 1.5}, "gae_lambda=1.5"), ({"rollouts": 0}, "rollouts=0")):
        with pytest.raises(ValueError, match=named):
            credit.credit(credit.Args(checkpoint=trainer.checkpoint_path, **bad))


def test_cue_across_segments_counts_the_episodes_a_segments_start_cuts_the_cue_from_its_choice():
    """scripts/cue_across_segments.py, behind docs/learning.md's "Memory across a segment's start": segments no
    longer than the cue's wait (cue_delay + 1 steps from the cue's last step to the first free one) cut every
    episode, segments as long as the whole play none, and one in between some."""
    cut = load_script("cue_across_segments")
    args = cut.Args(bptt=[9, 16, 60], env_overrides={"cue_delay": 8}, maps=8, rollouts=1)  # 60 steps of play
    fractions = cut.cut_fractions(args)
    assert fractions[9][1] == 1.0 and fractions[60][1] == 0.0 and 0 < fractions[16][1] < 1
    assert fractions[9][0] == fractions[16][0] > 8  # the same episodes, each counted once per bptt
    with pytest.raises(ValueError, match="desync_episodes=1 starts episodes mid-way"):
        cut.cut_fractions(cut.Args(env_overrides={"desync_episodes": 1}, maps=2, rollouts=1))


def test_cue_signal_sees_the_cue_larger_with_hes_gain_and_a_longer_forget(tmp_path, monkeypatch):
    """scripts/cue_signal.py, behind docs/learning.md's "The cue's size at the start": the gain reaches every one of
    Fast's four ReLU layers (the encoder's output is gain ** 4 times as large: ReLUs are homogeneous), and the cue
    reaches the memory's output at the first free step larger with the gain, and larger again with the longer
    forget. Margins from seed 0 on a CPU (x3.7 and x1.9 there); the device is stated."""
    monkeypatch.syspath_prepend(os.path.join(os.path.dirname(__file__), "..", "scripts"))  # it imports train.py
    cue = load_script("cue_signal")

    def signal(**changes):
        cfg = TrainConfig(env="memory", num_envs=64, seed=0, log_dir=str(tmp_path), device="cpu").replace(**changes)
        trainer = Trainer(cfg)
        trainer.rollout()  # the policy's memory now holds the rollout's state, which measuring must leave as it is
        before = {k: tuple(t.clone() for t in v) for k, v in trainer.policy.get_memory().items()}
        measured = cue.cue_signal(trainer.policy, trainer.env)
        after = trainer.policy.get_memory()
        assert before.keys() == after.keys() and all(torch.equal(a, b) for k in before
                                                      for a, b in zip(before[k], after[k]))
        assert cue.cue_signal(trainer.policy, trainer.env) == measured  # the same maps every time
        return measured

    plain, gain, both = signal(), signal(encoder_gain=2 ** 0.5), signal(encoder_gain=2 ** 0.5, lstm_forget_bias=2.0)
    assert gain.encoder_gap == pytest.approx(4 * plain.encoder_gap, rel=1e-4)
    assert gain.encoder_norm == pytest.approx(4 * plain.encoder_norm, rel=1e-4)
    assert gain.memory_gap > 2 * plain.memory_gap and both.memory_gap > 1.5 * gain.memory_gap
    assert all(0 <= s.action_gap < 0.01 for s in (plain, gain, both))  # untrained: about the same actions either way
    with pytest.raises(ValueError, match="shows no cue: use --env memory"):
        signal(env="nav")
