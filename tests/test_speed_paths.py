"""The fast paths: nothing read back from the device per step, and the token convolution, bf16, torch.compile
and the CUDA-graph acting step equal the plain path."""

import dataclasses
import os
import re
import subprocess
import sys
import time
from collections import Counter

import pytest
import torch
from tensordict import TensorDict
from test_policies import rollout

from envs import make_env
from envs.spec import EMPTY_TOKEN
from policies import make_policy
from policies.tokens import TokenConv, TokensToBox
from trainer import TrainConfig, Trainer
from trainer.config import METTA, PRESETS, cpu_has_native_bf16
from trainer.cuda_graph import GraphedActing, GraphedRollout, GraphedUpdate
from trainer.host_reads import HostOps, HostReads

SPEC_ARENA = make_env("arena", num_envs=1).spec
SPEC_GLOBAL_OUTSIDE = dataclasses.replace(SPEC_ARENA, global_location=0xFE)  # as MettaGrid 0.26 places them
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def small_trainer(tmp_path, **overrides) -> Trainer:
    cfg = TrainConfig(**METTA).replace(num_envs=4, bptt=16, minibatch_size=64, total_steps=10**6, device="cpu", seed=3,
                                       log_dir=str(tmp_path), **overrides)
    return Trainer(cfg)


def test_host_reads_sees_every_kind_of_read():
    x = torch.arange(6)
    with HostReads() as reads:
        bool(x.any()), int(x[0]), float(x[1]), x[2].item(), x.tolist(), x.nonzero(), x[x > 2], [0, 1][x[1]]
        torch.where(x > 2, x, 0).sum()  # no read: stays a tensor
    assert [s.split()[-1] for s in reads.sites] == [
        "__bool__", "__int__", "__float__", "item", "tolist", "nonzero", "__getitem__", "__index__"]


@pytest.mark.parametrize("task", ["arena", "memory"])
def test_everything_an_env_step_changes_is_in_its_state(task):
    """A recorded rollout copies the env's STATE to where the graph reads it before every replay: a tensor a step
    changes but STATE leaves out would replay from where it was at recording (and a resumed run would lose it)."""
    env = make_env(task, num_envs=3, seed=0, max_steps=5)
    env.reads_are_free = False  # as on an accelerator: every step draws its resets
    pairs = env.spec.action_pairs()
    g = torch.Generator().manual_seed(0)
    for _ in range(12):  # episodes end and restart
        before = {k: (v, v.clone()) for k, v in vars(env).items() if isinstance(v, torch.Tensor)}
        env.step(pairs[torch.randint(len(pairs), (env.num_agents,), generator=g)], final_obs=True)
        changed = {k for k, (was, copy) in before.items()
                   if getattr(env, k) is not was or not torch.equal(getattr(env, k), copy)}
        assert changed <= set(env.STATE), changed - set(env.STATE)


@pytest.mark.parametrize("token_conv", [False, True])
def test_rollout_reads_nothing_back_from_the_device(tmp_path, token_conv):
    trainer = small_trainer(tmp_path, env_overrides={"max_steps": 20}, token_conv=token_conv)  # episodes end inside
    for part in (trainer.env, *trainer.policy.modules()):  # what an accelerator runs
        if hasattr(part, "reads_are_free"):
            part.reads_are_free = False
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
    assert where == {"loop.py tolist": 1}  # the metrics, once per update


def test_host_ops_per_acting_step_and_per_minibatch_stay_within_budget(tmp_path):
    """What the host dispatches on an accelerator's path (each op a kernel launch or more): per acting step (env,
    policy, buffer store) and per minibatch, split into the gradient step a CUDA graph records and what runs
    around it (the advantages with the latest ratios, sampling). Budgets a little above what the code dispatched
    when they were set (622, 3622 and 384 at the gpu preset's settings): more host work fails here, anywhere."""
    cfg = PRESETS["gpu"].replace(env="arena", num_envs=4, minibatches=4, device="cpu", log_dir=str(tmp_path),
                                 total_steps=10**9)
    trainer = Trainer(cfg)
    trainer.train_step = GraphedUpdate(trainer.minibatch_step, trainer.policy, trainer.optimizer)  # static shapes
    trainer.env.reads_are_free = False
    trainer.rollout()
    trainer.learn()  # Adam's first step creates its state
    with HostOps() as acting:
        trainer.rollout()
    with HostOps() as around:
        drawn = list(trainer.minibatches(trainer.vtrace_ratio))
    steps = []
    for minibatch in drawn:
        with HostOps() as step:
            trainer.train_step(*minibatch)
        steps.append(step.count)
    assert len(set(steps)) == 1  # the same ops whatever the data: what lets a graph record them
    assert acting.count / cfg.bptt <= 640
    assert steps[0] <= 3700
    assert around.count / len(drawn) <= 400


def test_rollout_and_learn_make_every_tensor_on_the_trainers_device(tmp_path):
    """A tensor made without a device lands on the default one, the CPU, and on CUDA fails where it meets the policy's
    tensors (the first GPU run found one in learn()). Here the default device is "meta" while the trainer runs on the
    CPU, so such a tensor fails the same way on a machine without a GPU."""
    trainer = small_trainer(tmp_path, env_overrides={"max_steps": 20})
    with torch.device("meta"):
        trainer.rollout()
        trainer.learn()


@pytest.mark.parametrize("policy", ["fast", "example"])
def test_the_static_unroll_equals_the_cut_one(policy):
    """One LSTM call per step (what a CUDA graph can record) against one per stretch between episode starts (what
    reads them back): the same outputs, final state and gradients."""
    env = make_env("nav", num_envs=6, max_steps=7, seed=1)  # episodes end every <= 7 steps: many cuts
    net = make_policy(policy, env)
    td = rollout(net, env, steps=20)
    assert (td["dones"] | td["truncateds"])[:, 1:].any(0).sum() > 5
    results = []
    for static in (False, True):
        net.memory.static_unroll = static
        net.zero_grad()
        net.reset_memory()
        out = net(td.select("env_obs", "actions", "dones", "truncateds").clone())
        (out["act_log_prob"].sum() + out["values"].sum()).backward()
        results.append([out["act_log_prob"], out["values"], *net.get_memory()[0],
                        *(p.grad.clone() for p in net.memory.parameters())])
    for cut, static in zip(*results):
        torch.testing.assert_close(static, cut, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("options", [{}, {"kl_coef": 1.0, "lr_follows_advantages": True}],
                         ids=["preset", "kl_rate_follows_advantages"])
def test_training_on_the_graphed_updates_computation_equals_the_plain_trainer(tmp_path, options):
    """Off CUDA the graphed update runs its step eagerly, with the static unroll and fixed-shape token convolution
    a graph records: eight gradient steps on one rollout give the plain trainer's losses, KL and gradient norms, with
    the KL penalty in the loss and the rate set from the advantages' spread too.
    (Not its weights: Adam's first steps are ±lr wherever a gradient is near 0, so rounding flips them.)"""
    runs = []
    for graphed in (False, True):
        trainer = small_trainer(tmp_path, env_overrides={"max_steps": 20}, token_conv=True, update_epochs=4,
                                memory="carry", horizon_bootstrap=True, run_name=str(graphed), **options)
        if graphed:
            trainer.train_step = GraphedUpdate(trainer.minibatch_step, trainer.policy, trainer.optimizer)
        runs.append(trainer.train(updates=1, quiet=True)[0])
    assert runs[1]["ratio_deviation_first_minibatch"] < 1e-5
    for key in ("policy_loss", "value_loss", "entropy", "approx_kl", "grad_norm", "clipfrac", "explained_variance",
                "advantage_std", "learning_rate"):
        assert runs[1][key] == pytest.approx(runs[0][key], rel=1e-4, abs=1e-7), key


def random_tokens(spec, n: int, g: torch.Generator) -> torch.Tensor:
    """`n` observations of distinct (location, feature) tokens anywhere in the window, plus the cases the box
    skips or moves: global tokens (to the centre), locations outside the window, unknown features, padding."""
    obs = torch.full((n, spec.num_tokens, 3), EMPTY_TOKEN, dtype=torch.uint8)
    centre = ((spec.obs_height // 2) << 4) | (spec.obs_width // 2)  # global tokens' place: not also a cell's
    window = torch.tensor([(r << 4) | c for r in range(spec.obs_height) for c in range(spec.obs_width)
                           if (r << 4) | c != centre])
    locations = torch.cat([window, torch.tensor([spec.global_location, 0xC3, 0x3C])])  # the last two outside
    pairs = torch.cartesian_prod(locations, torch.arange(spec.num_features + 2))  # two unknown features
    for i in range(n):
        real = int(torch.randint(0, 80, (), generator=g))  # 0: an observation with no token at all
        chosen = pairs[torch.randperm(len(pairs), generator=g)[:real]]
        obs[i, :real, :2] = chosen.to(torch.uint8)
        obs[i, :real, 2] = torch.randint(0, 256, (real,), generator=g).to(torch.uint8)
    return obs


def env_tokens(task: str, steps: int = 6) -> tuple[torch.Tensor, object]:
    """What the env shows over a few steps of random play."""
    env = make_env(task, num_envs=8, seed=0)
    pairs = env.spec.action_pairs()
    g = torch.Generator().manual_seed(0)
    td, seen = env.reset(), []
    for _ in range(steps):
        seen.append(td["env_obs"])
        td = env.step(pairs[torch.randint(len(pairs), (env.num_agents,), generator=g)])
    return torch.cat(seen), env.spec


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("reads_are_free", [None, False])  # None: a CPU skips the padding first; False: fixed shape
@pytest.mark.parametrize("source", ["random", "arena", "nav", "memory"])
def test_token_conv_equals_the_convolution_over_the_box(source, reads_are_free, device):
    g = torch.Generator().manual_seed(0)
    spec = SPEC_GLOBAL_OUTSIDE
    obs, spec = env_tokens(source) if source != "random" else (random_tokens(spec, 64, g), spec)
    obs = obs.to(device)
    conv = torch.nn.Conv2d(spec.num_features, 64, 5, stride=3).to(device)
    token_conv = TokenConv(spec, kernel=5, stride=3).to(device)
    token_conv.reads_are_free = reads_are_free
    with torch.backends.cudnn.flags(allow_tf32=False):  # CUDA's convolution rounds to TF32 by default: 1e-3
        dense = conv(TokensToBox(spec).to(device)(obs))
    sparse = token_conv(obs, conv.weight, conv.bias)
    torch.testing.assert_close(sparse, dense, atol=1e-5, rtol=1e-5)
    probe = torch.randn(dense.shape, generator=g).to(device)  # gradients of an arbitrary loss
    for grad_sparse, grad_dense in zip(torch.autograd.grad((sparse * probe).sum(), [conv.weight, conv.bias]),
                                       torch.autograd.grad((dense * probe).sum(), [conv.weight, conv.bias])):
        torch.testing.assert_close(grad_sparse, grad_dense, atol=1e-4, rtol=1e-5)


@pytest.mark.parametrize("options", [{}, {"inventory_norm": 1.0}, {"inventory_norm": 1.0, "one_hot_ids": True}])
def test_fast_with_token_conv_acts_and_trains_as_with_the_box(options):
    env = make_env("arena", num_envs=4, seed=0)
    torch.manual_seed(0)
    box = make_policy("fast", env, **options)
    tokens = make_policy("fast", env, token_conv=True, **options)
    tokens.load_state_dict(box.state_dict())  # checkpoints are interchangeable: the same parameters
    assert sum(p.numel() for p in tokens.parameters()) == sum(p.numel() for p in box.parameters())
    torch.manual_seed(1)
    plain = policy_outputs(box, make_env("arena", num_envs=4, seed=0))
    torch.manual_seed(1)
    fast = policy_outputs(tokens, make_env("arena", num_envs=4, seed=0))
    for p, f in zip(plain, fast):
        torch.testing.assert_close(f, p, atol=1e-5, rtol=1e-5)


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


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("policy", ["fast", "latent_attn_tiny"])
def test_graphed_acting_equals_the_policys_acting_step(policy, device):
    """Two slices of agents acting in turn over steps where episodes start: the graphed step (on a CPU its function
    runs eagerly, which checks the state going in and out; on a GPU it replays the recorded graph) gives the policy's log-probs, values and next memory. Actions are compared on a CPU only: a graph draws
    its random numbers at other offsets of the generator than the eager calls."""
    env = make_env("arena", num_envs=4, seed=0, device=device)
    torch.manual_seed(0)
    net = make_policy(policy, env).to(device)
    plain = make_policy(policy, env).to(device)
    plain.load_state_dict(net.state_dict())
    graphed = GraphedActing(net)
    pairs = env.spec.action_pairs().to(device)
    g = torch.Generator(device).manual_seed(0)
    half = env.num_agents // 2
    td = env.reset()
    with torch.no_grad():
        for step in range(6):
            if step == 3:  # these agents' episodes start here: their memory must be zeroed in the graph too
                td["dones"][::3] = True
            for start in (0, half):
                rows = td[start:start + half].select("env_obs", "dones", "truncateds")
                one, two = rows.clone(), rows.clone()
                one.set_non_tensor("training_env_id_start", start)
                two.set_non_tensor("training_env_id_start", start)
                torch.manual_seed(step)
                expected = plain(one)
                torch.manual_seed(step)
                got = graphed(two)
                for k in ("full_log_probs", "values"):
                    torch.testing.assert_close(got[k], expected[k], atol=1e-5, rtol=1e-5)
                assert got["actions"].shape == expected["actions"].shape
                chosen = got["full_log_probs"].gather(-1, net.actions.to_index(got["actions"])[:, None]).squeeze(-1)
                torch.testing.assert_close(got["act_log_prob"], chosen)
                if device == "cpu":
                    assert torch.equal(got["actions"], expected["actions"])
            for key, (h, c) in plain.get_memory().items():
                torch.testing.assert_close(net.get_memory()[key][0], h, atol=1e-5, rtol=1e-5)
                torch.testing.assert_close(net.get_memory()[key][1], c, atol=1e-5, rtol=1e-5)
            assert net.get_memory().keys() == {0, half}
            td = env.step(pairs[torch.randint(len(pairs), (env.num_agents,), device=device, generator=g)])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a CUDA device")
@pytest.mark.parametrize("bf16", [False, True])
def test_training_with_a_graphed_rollout_recomputes_its_log_probs(tmp_path, bf16):
    """Replays act with the weights of the update they are in (under bf16 too, where a graph recorded with cached
    casts would keep acting with the first weights): training recomputes what they acted with."""
    cfg = TrainConfig(**METTA).replace(num_envs=4, bptt=16, minibatch_size=64, total_steps=10**6, device="cuda", seed=3,
                      log_dir=str(tmp_path), cuda_graphs=True, bf16=bf16, learning_rate=0.01)
    trainer = Trainer(cfg)
    for _ in range(4):  # the first rollout records the graph at its second step; later ones only replay it
        metrics = trainer.train(updates=1, quiet=True)[0]
        assert metrics["ratio_deviation_first_minibatch"] < (0.05 if bf16 else 1e-5)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a CUDA device")
def test_the_recorded_update_equals_the_eager_one_and_reads_the_learning_rate(tmp_path):
    """Eight gradient steps on one rollout, the last five replayed from the graph: the eager step's losses, KL and
    gradient norms. Then a learning rate of 0, set after recording, must reach the replays: no weight moves."""
    runs, trainers = [], []
    for graphed in (False, True):
        cfg = TrainConfig(**METTA).replace(num_envs=4, bptt=16, minibatch_size=64, total_steps=10**6, device="cuda", seed=3,
                          log_dir=str(tmp_path), update_epochs=4, memory="carry", horizon_bootstrap=True,
                          run_name=str(graphed))
        trainer = Trainer(cfg)
        if graphed:
            trainer.train_step = GraphedUpdate(trainer.minibatch_step, trainer.policy, trainer.optimizer)
        runs.append(trainer.train(updates=1, quiet=True)[0])
        trainers.append(trainer)
    assert trainers[1].train_step.graph is not None
    for key in ("policy_loss", "value_loss", "entropy", "approx_kl", "grad_norm", "clipfrac", "explained_variance"):
        assert runs[1][key] == pytest.approx(runs[0][key], rel=1e-3, abs=1e-6), key
    graphed = trainers[1]
    graphed.cfg.learning_rate = 0.0
    before = {k: v.clone() for k, v in graphed.policy.state_dict().items()}
    graphed.train(updates=1, quiet=True)
    for key, value in graphed.policy.state_dict().items():
        assert torch.equal(value, before[key]), key


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a CUDA device")
def test_recorded_rollouts_continue_where_the_last_one_stopped_and_repeat_exactly(tmp_path):
    """The whole rollout as one graph: each replay starts from the observations, memory and env state the last
    rollout left (eager or replayed), training on it recomputes its log-probs, and the same seed gives the same
    weights bit for bit."""
    cfg = TrainConfig(**METTA).replace(num_envs=4, bptt=16, minibatch_size=64, total_steps=10**6, device="cuda", seed=3,
                      log_dir=str(tmp_path), cuda_graphs=True, memory="carry", horizon_bootstrap=True,
                      truncation_bootstrap="final", env_overrides={"max_steps": 20}, learning_rate=0.01)
    runs = []
    for name in ("one", "two"):
        trainer = Trainer(cfg.replace(run_name=name))
        assert isinstance(trainer.rollout, GraphedRollout)
        for update in range(4):  # eager, recorded and replayed, then replayed
            obs, steps = trainer.next_obs["env_obs"].clone(), trainer.env.steps.clone()
            carried = [x.clone() for x in trainer.carried.get(0, ())]
            trainer.rollout()
            data = trainer.buffer.data
            assert torch.equal(data["env_obs"][:, 0], obs)
            if carried:
                assert torch.equal(trainer.buffer.initial_state["h"], carried[0].transpose(0, 1))
            ended = (data["dones"] | data["truncateds"]).view(4, -1, 16)[:, 0].any(1)  # per map
            assert torch.equal(trainer.env.steps[~ended], steps[~ended] + 16)
            assert trainer.buffer.ready
            assert trainer.learn()["ratio_deviation_first_minibatch"] < 1e-5
        assert trainer.rollout.graph is not None
        runs.append(trainer.policy.state_dict())
    for key, value in runs[0].items():
        assert torch.equal(runs[1][key], value), key


def test_cuda_graphs_are_refused_on_a_cpu_and_with_faults(tmp_path):
    with pytest.raises(ValueError, match="cuda_graphs=True needs a CUDA device.*leave --cuda-graphs out"):
        small_trainer(tmp_path, cuda_graphs=True)
    with pytest.raises(ValueError, match="cuda_graphs=True with the faults .*leave --cuda-graphs out"):
        TrainConfig(cuda_graphs=True, faults="no_relu").check()
    with pytest.raises(ValueError, match="cuda_graphs=True with nonfinite='skip'.*use --nonfinite stop"):
        TrainConfig(cuda_graphs=True, nonfinite="skip").check()


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
    done = subprocess.run([sys.executable, script, "--out", str(tmp_path), "--tiny", "--no-tests", "--device", "cpu"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    report = (tmp_path / "report.md").read_text()
    assert "| sync | done |" in report and "| e2e | done |" in report and "| profile | done |" in report
    rows = [line.split(" | ") for line in report.splitlines() if line.startswith("| 2 | plain |")]
    assert len(rows) == 2 and rows[0][3].replace(",", "").isdigit()  # e2e agent steps/s
    assert rows[1][-2].replace(",", "").isdigit()  # the profile's host ops per acting step
    assert os.path.exists(tmp_path / "logs.tar.gz")


def test_gpu_checks_learning_run_stops_on_time_and_reports_its_curve(tmp_path):
    """--learn: a run stopped by its clock (SIGINT: it saves), and a report of its curve, on the CPU at tiny size."""
    script = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "scripts", "gpu_check.py")
    start = time.monotonic()
    done = subprocess.run([sys.executable, script, "--out", str(tmp_path), "--learn", "0.3", "--no-scripted",
                           "--train-args=--device cpu --num-envs 2 --minibatches 2 --torch-threads 1"], capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert time.monotonic() - start < 0.3 * 60 + 20
    report = (tmp_path / "report.md").read_text()
    assert "exit 130" in report  # stopped by the signal, not by an error
    assert re.search(r"- \d+ updates, [\d,]+ agent steps", report) and "| agent steps | return | hearts |" in report


def test_the_overlap_measurement_runs_and_refuses_an_odd_map_count():
    """benchmarks/overlap.py (why the rollout does not step the env in a thread, docs/benchmarks.md) at tiny sizes."""
    script = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks", "overlap.py")
    done = subprocess.run([sys.executable, script, "--num-envs", "2", "--steps", "2", "--repeats", "1"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "overlapped / serial:" in done.stdout and "act only" in done.stdout
    odd = subprocess.run([sys.executable, script, "--num-envs", "3"], capture_output=True, text=True, timeout=300)
    assert odd.returncode != 0 and "--num-envs must be even" in odd.stderr


def test_bf16_is_refused_on_a_cpu_without_native_bfloat16(tmp_path, monkeypatch):
    import trainer.config

    monkeypatch.setattr(trainer.config, "cpu_has_native_bf16", lambda: False)
    with pytest.raises(ValueError, match="no native bfloat16 .* leave --bf16 out"):
        small_trainer(tmp_path, bf16=True)
    small_trainer(tmp_path)  # fp32 is fine
