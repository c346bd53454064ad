"""The fast paths: nothing read back from the device per step, and bf16 / torch.compile equal the plain path."""

import os
import re
import subprocess
import sys
from collections import Counter

import pytest
import torch
from tensordict import TensorDict

from envs import make_env
from policies import make_policy
from trainer import TrainConfig, Trainer
from trainer.config import cpu_has_native_bf16
from trainer.host_reads import HostReads


def small_trainer(tmp_path, **overrides) -> Trainer:
    cfg = TrainConfig(num_envs=4, bptt=16, minibatch_size=64, total_steps=10**6, device="cpu", seed=3,
                      log_dir=str(tmp_path), **overrides)
    return Trainer(cfg)


def test_host_reads_sees_every_kind_of_read():
    x = torch.arange(6)
    with HostReads() as reads:
        bool(x.any()), int(x[0]), float(x[1]), x[2].item(), x.tolist(), x.nonzero(), x[x > 2], [0, 1][x[1]]
        torch.where(x > 2, x, 0).sum()  # no read: stays a tensor
    assert [s.split()[-1] for s in reads.sites] == [
        "__bool__", "__int__", "__float__", "item", "tolist", "nonzero", "__getitem__", "__index__"]


def test_rollout_reads_nothing_back_from_the_device(tmp_path):
    trainer = small_trainer(tmp_path, env_overrides={"max_steps": 20})  # episodes end inside the rollout
    trainer.env.reads_are_free = False  # what an accelerator runs
    with HostReads() as reads:
        trainer.rollout()
    assert reads.sites == []
    assert trainer.buffer.data["truncateds"].any()


def test_learn_reads_back_once_per_minibatch_and_once_at_the_end(tmp_path):
    trainer = small_trainer(tmp_path, env_overrides={"max_steps": 20})
    trainer.rollout()
    with HostReads() as reads:
        trainer.learn()
    minibatches = trainer.buffer.segments // trainer.minibatch_segments
    where = Counter(re.sub(r":\d+", "", s.split("/")[-1]) for s in reads.sites)  # "file op"
    # per minibatch: where episodes start inside the segments, to cut the unroll into the fewest LSTM calls
    assert where.pop("memory.py nonzero") == where.pop("memory.py tolist") == minibatches
    assert where == {"ppo.py tolist": 1}  # the metrics, once per update


def test_rollout_and_learn_make_every_tensor_on_the_trainers_device(tmp_path):
    """A tensor made without a device lands on the default one, the CPU, and on CUDA fails where it meets the policy's
    tensors (the first GPU run found one in learn()). Here the default device is "meta" while the trainer runs on the
    CPU, so such a tensor fails the same way on a machine without a GPU."""
    trainer = small_trainer(tmp_path, env_overrides={"max_steps": 20})
    with torch.device("meta"):
        trainer.rollout()
        trainer.learn()


def policy_outputs(policy, env, steps=6):
    """Acting log-probs and values over a few steps, then the training recomputation of them."""
    g = torch.Generator().manual_seed(0)
    pairs = env.spec.action_pairs()
    td, acted, rows = env.reset(), [], []
    policy.reset_memory()
    with torch.no_grad():
        for _ in range(steps):
            td.set_non_tensor("training_env_id_start", 0)
            td = policy(td)
            td["actions"] = pairs[torch.randint(len(pairs), (env.num_agents,), generator=g)]
            rows.append(td.select("env_obs", "actions", "dones", "truncateds").clone())
            acted.append(torch.stack([td["values"], td["full_log_probs"].max(-1).values], -1))
            td = env.step(td["actions"])
        policy.reset_memory()
        trained = policy(torch.stack(rows, 1))
    return torch.stack(acted, 1), torch.stack([trained["values"], trained["full_log_probs"].max(-1).values], -1)


@pytest.mark.parametrize("policy", ["fast", "latent_attn_tiny"])
def test_bf16_autocast_matches_fp32(policy):
    env = make_env("arena", num_envs=4, seed=0)
    torch.manual_seed(0)
    net = make_policy(policy, env)
    torch.manual_seed(1)
    plain = policy_outputs(net, make_env("arena", num_envs=4, seed=0))
    with torch.autocast("cpu", torch.bfloat16):
        torch.manual_seed(1)
        fast = policy_outputs(net, make_env("arena", num_envs=4, seed=0))
    for p, f in zip(plain, fast):
        assert f.dtype == torch.float32
        torch.testing.assert_close(f, p, atol=0.05, rtol=0.02)


@pytest.mark.skipif(not cpu_has_native_bf16(), reason="this CPU has no native bfloat16: the trainer refuses --bf16")
def test_bf16_training_matches_fp32(tmp_path):
    runs = {}
    for bf16 in (False, True):
        trainer = small_trainer(tmp_path, bf16=bf16)
        runs[bf16] = [trainer.train(updates=1, quiet=True)[0], trainer.policy.state_dict()]
    (plain, plain_w), (fast, fast_w) = runs[False], runs[True]
    assert fast["ratio_deviation_first_minibatch"] < 0.05  # training recomputes acting within bf16 precision
    for k in ("value_loss", "entropy"):
        assert fast[k] == pytest.approx(plain[k], rel=0.05)
    for k in plain_w:
        torch.testing.assert_close(fast_w[k], plain_w[k], atol=0.02, rtol=0.02)


def test_compiled_policy_matches_eager():
    env = make_env("arena", num_envs=2, seed=0)
    torch.manual_seed(0)
    net = make_policy("example", env)
    eager = policy_outputs(net, make_env("arena", num_envs=2, seed=0), steps=3)
    names = [k for k, _ in net.named_parameters()]
    net.compile_parts()
    assert [k for k, _ in net.named_parameters()] == names  # checkpoints load either way
    compiled = policy_outputs(net, make_env("arena", num_envs=2, seed=0), steps=3)
    for e, c in zip(eager, compiled):
        torch.testing.assert_close(c, e, atol=1e-5, rtol=1e-5)


def test_tensor_slice_key_still_works():
    env = make_env("arena", num_envs=2, seed=0)
    net = make_policy("example", env)
    td = env.reset()
    td["training_env_id_start"] = torch.zeros(env.num_agents, dtype=torch.long)  # as Metta passes it
    with torch.no_grad():
        out = net(td)
    assert isinstance(out, TensorDict) and 0 in net.get_memory()


PAGE_FAULTS_PER_REALLOCATION = """
import resource, sys, torch
from trainer.host_memory import keep_freed_memory

def faults_per_reallocation():
    # median page faults of allocating a 64 MB buffer that was allocated and freed before
    faults = []
    for _ in range(11):
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        torch.zeros(16 << 20)
        faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    return sorted(faults)[5]

default = faults_per_reallocation()
print(default, keep_freed_memory(), faults_per_reallocation())
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_keep_freed_memory_stops_the_page_faults_of_a_reallocated_buffer():
    out = subprocess.run([sys.executable, "-c", PAGE_FAULTS_PER_REALLOCATION], capture_output=True, text=True,
                         cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))), check=True)
    default, applied, kept = out.stdout.split()
    assert applied == "True"
    assert float(default) > 10_000  # glibc's default: a 64 MB block goes back to the OS, 16,384 pages fault back in
    assert float(kept) < 100


def test_gpu_check_runs_on_cpu_with_tiny_sizes(tmp_path):
    """scripts/gpu_check.py, the one command for a GPU machine, end to end on the CPU (tiny sizes, no test run)."""
    script = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "scripts", "gpu_check.py")
    done = subprocess.run([sys.executable, script, "--out", str(tmp_path), "--tiny", "--no-tests"], capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    report = (tmp_path / "report.md").read_text()
    assert "| sync check at 4 maps | no read while acting |" in report
    assert all(f"| {maps} | {6 * maps} | plain |" in report for maps in (2, 4, 8))


def test_bf16_is_refused_on_a_cpu_without_native_bfloat16(tmp_path, monkeypatch):
    import trainer.config

    monkeypatch.setattr(trainer.config, "cpu_has_native_bf16", lambda: False)
    with pytest.raises(ValueError, match="no native bfloat16 .* leave --bf16 out"):
        small_trainer(tmp_path, bf16=True)
    small_trainer(tmp_path)  # fp32 is fine
