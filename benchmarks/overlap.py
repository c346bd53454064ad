"""Can the env step while the policy acts? The question before building issue 17's two-slice rollout, measured.

    python benchmarks/overlap.py                      # our arena, 64 maps in two slices of 32
    python benchmarks/overlap.py --env mettagrid.arena --num-envs 16

One acting step of the rollout, for two slices (each half of the maps, its own env):
    serial      act A, step A, act B, step B                        (what a two-slice rollout does without threads)
    overlapped  act A; then step A in a worker thread while acting B; then step B while acting A ...
Both loops act and step the same things in the same order per slice, so they differ only in time. Printed: agent
steps/s of each, act alone and env alone (for the ceiling: overlap can at best hide the shorter of the two), and
for MettaGrid the share of its Simulation.step spent in the C++ call, the only part that could leave the
interpreter (GIL) to another thread. Run it with nothing else on the machine: a process with more threads than
another gets more of a shared CPU, which makes any threading look faster. What it measured, and why the trainer
has no overlap: docs/benchmarks.md, "The env and the policy at the same time".
"""

from __future__ import annotations

import argparse
import statistics
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from envs import make_env  # noqa: E402
from policies import make_policy  # noqa: E402


def median_time(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--env", default="arena")
    parser.add_argument("--num-envs", type=int, default=64, help="maps in all; each slice gets half")
    parser.add_argument("--steps", type=int, default=64, help="acting steps per timed run (a rollout)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = parser.parse_args()
    if args.num_envs < 2 or args.num_envs % 2:
        sys.exit("error: --num-envs must be even and at least 2 (two slices of half the maps)")
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    envs = [make_env(args.env, num_envs=args.num_envs // 2, seed=i) for i in range(2)]
    policy = make_policy("fast", envs[0])
    tds = [env.reset() for env in envs]
    worker = ThreadPoolExecutor(1)

    def act(i: int):
        tds[i].set_non_tensor("training_env_id_start", i * envs[0].num_agents)
        return policy(tds[i])["actions"]

    def step(i: int, actions) -> None:
        tds[i] = envs[i].step(actions)

    def serial() -> None:
        for _ in range(args.steps):
            for i in (0, 1):
                step(i, act(i))

    def overlapped() -> None:
        pending = None  # the other slice's step, running in the worker
        for _ in range(args.steps):
            for i in (0, 1):
                actions = act(i)  # while the worker steps the other slice
                if pending is not None:
                    pending.result()
                pending = worker.submit(step, i, actions)
        pending.result()

    def act_only() -> None:
        for _ in range(args.steps):
            act(0), act(1)

    pairs = envs[0].spec.action_pairs()
    random_actions = [pairs[torch.randint(len(pairs), (envs[0].num_agents,))] for _ in range(16)]

    def env_only() -> None:
        for t in range(args.steps):
            for i in (0, 1):
                tds[i] = envs[i].step(random_actions[t % 16])

    agents = 2 * envs[0].num_agents * args.steps
    with torch.no_grad():
        rates = {name: agents / median_time(fn, args.repeats) for name, fn in
                 (("serial", serial), ("overlapped", overlapped), ("act only", act_only), ("env only", env_only))}
    print(f"{args.env}, {args.num_envs} maps ({2 * envs[0].num_agents} agents) in two slices, "
          f"{torch.get_num_threads()} torch threads: agent steps/s")
    for name, rate in rates.items():
        print(f"  {name:<11} {rate:>10,.0f}")
    ceiling = 1 / max(1 / rates["act only"], 1 / rates["env only"])
    print(f"  overlapped / serial: {rates['overlapped'] / rates['serial']:.2f}x (perfect overlap: at most "
          f"{ceiling / rates['serial']:.2f}x)")
    if args.env.startswith("mettagrid."):
        sims = [s for env in envs for s in env.sims]
        cores = [s._Simulation__c_sim for s in sims]  # the C++ simulation behind each Python wrapper
        cpu = time.process_time()
        c_only = median_time(lambda: [c.step() for c in cores for _ in range(args.steps)], args.repeats)
        cores_used = (time.process_time() - cpu) / (c_only * (args.repeats + 1))
        wrapped = median_time(lambda: [s.step() for s in sims for _ in range(args.steps)], args.repeats)
        halves = [cores[: len(cores) // 2], cores[len(cores) // 2:]]
        threads = [threading.Thread(target=lambda h=h: [c.step() for c in h for _ in range(args.steps)]) for h in halves]
        start = time.perf_counter()
        [t.start() for t in threads]
        [t.join() for t in threads]
        two = time.perf_counter() - start
        print(f"  MettaGrid: the C++ call is {c_only / wrapped:.0%} of Simulation.step and keeps {cores_used:.1f} "
              f"cores busy; the C++ calls of two halves in two threads run {c_only / two:.2f}x as fast as in one "
              "(2.0x if they left the interpreter and each ran on its own core)")
    worker.shutdown()


if __name__ == "__main__":
    main()
