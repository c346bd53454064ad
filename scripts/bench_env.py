"""Env-only throughput: agent steps per second with random valid actions, for several batch sizes.

    python scripts/bench_env.py --task arena --num-envs 64 256 1024
"""

from __future__ import annotations

import os
import platform
import sys
import time
from dataclasses import dataclass, field

import torch
import tyro

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from envs import make_env  # noqa: E402


@dataclass
class Args:
    task: str = "arena"
    """Task to step: arena, nav, memory, or mettagrid.arena / mettagrid.nav (the real MettaGrid, on the CPU)."""
    num_envs: list[int] = field(default_factory=lambda: [64, 256, 1024])
    """Map counts to measure (agents = maps x agents per map)."""
    steps: int = 200
    """Timed steps per measurement."""
    repeats: int = 3
    """Measurements per size; the median is reported."""
    device: str = "cuda" if torch.cuda.is_available() else "cpu"
    """Device holding the env."""
    threads: int = 0
    """torch CPU threads (0: torch's default)."""


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(task: str, num_envs: int, steps: int, device: str) -> tuple[int, float]:
    env = make_env(task, num_envs=num_envs, device=device)
    pairs = env.spec.action_pairs().to(env.device)
    g = torch.Generator(env.device).manual_seed(0)
    actions = [pairs[torch.randint(len(pairs), (env.num_agents,), device=env.device, generator=g)] for _ in range(16)]
    for i in range(10):  # warm-up
        env.step(actions[i % 16])
    sync(env.device)
    start = time.perf_counter()
    for i in range(steps):
        env.step(actions[i % 16])
    sync(env.device)
    return env.num_agents, env.num_agents * steps / (time.perf_counter() - start)


def main(args: Args) -> None:
    if args.threads:
        torch.set_num_threads(args.threads)
    name = torch.cuda.get_device_name(args.device) if args.device.startswith("cuda") else platform.processor() or "cpu"
    print(f"device {args.device} ({name}), torch {torch.__version__}, {torch.get_num_threads()} CPU threads, "
          f"task {args.task}, {args.steps} steps, median of {args.repeats}")
    print(f"{'maps':>6} {'agents':>8} {'agent steps/s':>14}")
    for n in args.num_envs:
        runs = [measure(args.task, n, args.steps, args.device) for _ in range(args.repeats)]
        agents, sps = runs[0][0], sorted(r[1] for r in runs)[len(runs) // 2]
        print(f"{n:>6} {agents:>8} {sps:>14,.0f}")


if __name__ == "__main__":
    main(tyro.cli(Args))
