"""Training throughput and its parts, in agent steps per second, per policy.

    python scripts/bench.py                                   # env, act, update and e2e for Fast, preset by device
    python scripts/bench.py --what env --num-envs 64 1024 4096
    python scripts/bench.py --policies fast example --bf16 --compile
    python scripts/bench.py --profile                         # where one update's time goes
    python scripts/bench.py --sync-check                      # fail on any read back from the device while acting

    env     env.step with random valid actions
    act     the policy's acting step on real observations (memory carried), no env
    update  Trainer.learn on a full buffer: advantages, sampling, forward, backward, optimizer
    e2e     Trainer rollout + learn, what a training run sustains (with each half's rate within that loop)
Each figure is the median of `--repeats` timed runs after one warm-up.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field

import torch
import tyro

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from envs import make_env  # noqa: E402
from trainer import Trainer  # noqa: E402
from trainer.config import PRESETS  # noqa: E402
from trainer.host_reads import HostOps, HostReads  # noqa: E402

WHAT = ("env", "act", "update", "e2e")


@dataclass
class Args:
    what: list[str] = field(default_factory=lambda: list(WHAT))
    """Measurements: env, act, update, e2e."""
    policies: list[str] = field(default_factory=lambda: ["fast"])
    """Policies to measure."""
    env: str = "arena"
    """Task (arena, nav, memory, or mettagrid.arena / mettagrid.nav on the CPU)."""
    num_envs: list[int] = field(default_factory=list)
    """Map counts to measure (default: the preset's)."""
    preset: str = ""
    """Training configuration: cpu or gpu (default: by device)."""
    bptt: int = 0
    """Steps per segment (0: the preset's)."""
    minibatch_size: int = 0
    """Agent steps per minibatch (0: the preset's)."""
    update_epochs: int = 0
    """Passes over each rollout (0: the preset's)."""
    bf16: bool = False
    """Policy under bfloat16 autocast."""
    compile: bool = False
    """torch.compile the policy's encoder and heads."""
    cuda_graphs: bool = False
    """Replay the acting step as a CUDA graph (CUDA only)."""
    token_conv: bool | None = None
    """Fast's first convolution from the tokens (True) or over the box (False); None: the preset's."""
    repeats: int = 3
    """Timed runs per figure; the median is reported."""
    device: str = "auto"
    """cuda, cpu or auto."""
    threads: int = 0
    """torch CPU threads (0: torch's default)."""
    profile: bool = False
    """Profile one update (rollout + learn) and print the operators that take the time."""
    sync_check: bool = False
    """Count reads back from the device: none allowed while acting (an error), learn's reported per minibatch.
    On a GPU also torch.cuda.set_sync_debug_mode('error') around the rollout."""
    json: str = ""
    """Also write the results to this JSON file."""


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        with open("/proc/cpuinfo") as f:
            model = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        model = platform.processor() or "CPU"
    return f"{model}, {os.cpu_count()} cores"


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_rate(fn, work: int, repeats: int, device: torch.device) -> float:
    """`work` agent steps per call of `fn`: median agent steps/s over `repeats` calls after a warm-up."""
    fn()
    rates = []
    for _ in range(repeats):
        sync(device)
        start = time.perf_counter()
        fn()
        sync(device)
        rates.append(work / (time.perf_counter() - start))
    return statistics.median(rates)


def training_loop_rates(trainer: Trainer, repeats: int) -> dict[str, float]:
    """e2e: rollout + learn, as a training run alternates them; also each half's rate within the loop."""
    times = []
    for _ in range(repeats + 1):  # the first is a warm-up
        sync(trainer.device)
        t0 = time.perf_counter()
        trainer.rollout()
        sync(trainer.device)
        t1 = time.perf_counter()
        trainer.learn()
        sync(trainer.device)
        times.append((t1 - t0, time.perf_counter() - t1))
    work, timed = trainer.batch_size, times[1:]
    return {"first_update_s": sum(times[0]),  # the warm-up: with --compile, the one-time compilation is in it
            "e2e": work / statistics.median(r + u for r, u in timed),
            "rollout": work / statistics.median(r for r, _ in timed),
            "learn": work / statistics.median(u for _, u in timed)}


def env_rate(task: str, num_envs: int, device: torch.device, repeats: int, steps: int = 64) -> float:
    env = make_env(task, num_envs=num_envs, device=str(device))
    pairs = env.spec.action_pairs().to(env.device)
    g = torch.Generator(env.device).manual_seed(0)
    actions = [pairs[torch.randint(len(pairs), (env.num_agents,), device=env.device, generator=g)] for _ in range(16)]

    def run():
        for i in range(steps):
            env.step(actions[i % 16])
    return median_rate(run, env.num_agents * steps, repeats, device)


def act_rate(trainer: Trainer, repeats: int) -> float:
    """The rollout's policy calls alone, over observations the env produced."""
    T, data = trainer.cfg.bptt, trainer.buffer.data
    steps = [data[:, t].select("env_obs", "dones", "truncateds") for t in range(T)]

    def run():
        trainer.policy.reset_memory()
        with torch.no_grad():
            for td in steps:
                td = td.clone(False)
                td.set_non_tensor("training_env_id_start", 0)
                with trainer.autocast():
                    trainer.act(td)
    return median_rate(run, trainer.batch_size, repeats, trainer.device)


def check_reads(trainer: Trainer) -> dict[str, int]:
    """Acting must read nothing back; learn's reads are counted and returned. On a CPU the env and the token
    convolution take an accelerator's path for the check (reading back is free on a CPU, so they do there)."""
    free_where_cpu = [m for m in trainer.policy.modules() if hasattr(m, "reads_are_free")]
    for m in free_where_cpu:
        m.reads_are_free = False
    trainer.env.reads_are_free = False
    if trainer.device.type == "cuda":
        torch.cuda.set_sync_debug_mode("error")
    try:
        with HostReads() as reads:
            trainer.rollout()
    finally:
        if trainer.device.type == "cuda":
            torch.cuda.set_sync_debug_mode("default")
        trainer.env.reads_are_free = trainer.device.type == "cpu"
        for m in free_where_cpu:
            m.reads_are_free = None
    if reads.sites:
        raise SystemExit("reads back from the device while acting:\n  " + "\n  ".join(sorted(set(reads.sites))))
    with HostReads() as reads:
        trainer.learn()
    return dict(Counter(reads.sites))


def profile_update(trainer: Trainer) -> dict[str, float]:
    """Where one rollout's and one learn's time goes: the profiler's table; on a GPU each half's busy fraction (its
    kernels' time under the profiler over its wall time in a plain timed run, which the profiler would slow); and the
    aten ops the host dispatches per acting step and per minibatch (a graph's replay dispatches none)."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    cuda = trainer.device.type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    minibatches = trainer.buffer.segments // trainer.minibatch_segments * trainer.cfg.update_epochs
    found = {}
    for name, fn, per in (("rollout", trainer.rollout, trainer.cfg.bptt), ("learn", trainer.learn, minibatches)):
        sync(trainer.device)
        start = time.perf_counter()
        fn()
        sync(trainer.device)
        wall = time.perf_counter() - start
        with profile(activities=activities) as prof:
            fn()
            sync(trainer.device)
        if cuda:
            kernels = sum(e.device_time_total for e in prof.events() if e.device_type == DeviceType.CUDA) / 1e6
            found[f"{name}_gpu_busy"] = kernels / wall
        with HostOps() as ops:
            fn()
        found[f"{name}_host_ops_per_{'acting_step' if name == 'rollout' else 'minibatch'}"] = ops.count / per
        found[f"{name}_wall_s"] = wall
        print(f"--- {name}: {wall:.3f} s" + (f", GPU busy {found[f'{name}_gpu_busy']:.0%}" if cuda else "")
              + f", {ops.count / per:,.0f} host ops per {'acting step' if name == 'rollout' else 'minibatch'}")
        print(prof.key_averages().table(sort_by="self_cuda_time_total" if cuda else "self_cpu_time_total",
                                        row_limit=15))
    return found


def main(args: Args) -> None:
    unknown = [w for w in args.what if w not in WHAT]
    if unknown:
        raise SystemExit(f"--what {unknown}: choose from {WHAT}")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = PRESETS["cpu"].replace(device=args.device).resolved_device
    preset = PRESETS[args.preset or ("gpu" if device.type == "cuda" else "cpu")]
    changes = {k: getattr(args, k) for k in ("bptt", "minibatch_size", "update_epochs") if getattr(args, k)}
    if args.minibatch_size:  # a size asked for replaces the preset's count of minibatches
        changes["minibatches"] = 0
    if args.token_conv is not None:
        changes["token_conv"] = args.token_conv
    base = preset.replace(env=args.env, device=str(device), bf16=args.bf16, compile=args.compile,
                          cuda_graphs=args.cuda_graphs, total_steps=10**12, checkpoint_interval=10**9, **changes)
    sizes = args.num_envs or [base.num_envs]
    print(f"{datetime.date.today()} | {device_name(device)} | torch {torch.__version__} | "
          f"{torch.get_num_threads()} threads | env {args.env} | preset {args.preset or device.type}: bptt {base.bptt}, "
          f"minibatch {f'batch / {base.minibatches}' if base.minibatches else base.minibatch_size}, {base.update_epochs} epoch(s) | bf16 {args.bf16} | compile {args.compile} | "
          f"cuda graphs {args.cuda_graphs} | token conv {base.token_conv}")
    print(f"{'policy':<18} {'maps':>6} {'agents':>7}" + "".join(f" {w + ' SPS':>12}" for w in args.what))
    results = []
    with tempfile.TemporaryDirectory() as logs:
        for n in sizes:
            env_sps = env_rate(args.env, n, device, args.repeats) if "env" in args.what else None
            for name in args.policies if set(args.what) - {"env"} or args.profile or args.sync_check else ["-"]:
                row = {"policy": name, "maps": n, "env": env_sps}
                needs_trainer = args.profile or args.sync_check or set(args.what) - {"env"}
                trainer = Trainer(base.replace(policy=name, num_envs=n, log_dir=logs)) if needs_trainer else None
                if trainer:
                    trainer.rollout()  # a full buffer for act and update; compiles when --compile
                    row["agents"] = trainer.env.num_agents
                    row["minibatch"] = trainer.minibatch_segments * trainer.cfg.bptt
                if "act" in args.what:
                    row["act"] = act_rate(trainer, args.repeats)
                if "update" in args.what:
                    row["update"] = median_rate(trainer.learn, trainer.batch_size, args.repeats, device)
                if "e2e" in args.what:
                    row.update(training_loop_rates(trainer, args.repeats))
                agents = row.get("agents") or make_env(args.env, num_envs=n, device=str(device)).num_agents
                print(f"{name:<18} {n:>6} {agents:>7}" + "".join(f" {row[w]:>12,.0f}" for w in args.what))
                if "e2e" in args.what:
                    print(f"  e2e split: rollout {row['rollout']:,.0f} SPS, learn {row['learn']:,.0f} SPS (medians); "
                          f"the first update took {row['first_update_s']:.1f} s (warm-up and any compilation)")
                if args.sync_check:
                    reads = check_reads(trainer)
                    per = trainer.buffer.segments // trainer.minibatch_segments * trainer.cfg.update_epochs
                    print(f"  sync check: no reads while acting; learn reads back {sum(reads.values())} times "
                          f"for {per} minibatches:")
                    for site, count in sorted(reads.items()):
                        print(f"    {count:>5}  {site}")
                if args.profile:
                    row.update(profile_update(trainer))
                results.append(row)
    if args.json:
        meta = {"date": str(datetime.date.today()), "device": device_name(device), "torch": torch.__version__,
                "threads": torch.get_num_threads(), "env": args.env, "config": {
                    k: getattr(base, k) for k in ("bptt", "minibatch_size", "minibatches", "update_epochs", "bf16", "compile", "token_conv")}}
        with open(args.json, "w") as f:
            json.dump({**meta, "results": results}, f, indent=1)


if __name__ == "__main__":
    main(tyro.cli(Args))
