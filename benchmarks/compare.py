"""minippo against its peers on the same work, one after the other in one run, printed as ratios.

    bash benchmarks/torchrl/install.sh; bash benchmarks/pufferlib/install.sh   # each peer in its own venv
    python benchmarks/compare.py                                               # one table

- TorchRL: our arena, Fast built from TorchRL's parts (LSTMModule, GAE, ClipPPOLoss), 64 maps (384 agents),
  bptt 64, minibatches of 1,024 steps, 1 epoch (benchmarks/torchrl/README.md lists what differs).
- PufferLib: PuffeRL on the real MettaGrid arena (our task definition), the same Fast architecture, 16
  simulations (384 agents), bptt 64, minibatches of 1,024 steps, 1 epoch (benchmarks/pufferlib/README.md).
Each side runs plain (fp32, eager), then with its own speed switches where it has them (minippo: --bf16
--compile; PuffeRL: precision=bfloat16, compile=True; TorchRL has no trainer switch), and each ratio compares
like with like. The peers run with the glibc memory settings minippo's trainer sets in-process
(trainer/host_memory.py), so the ratios measure the trainers, not the allocator. End-to-end agent steps per
second: each run's median over its timed updates, then the median over rounds, taken in turns (on a shared
machine one run differs from the next by 10-30%).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from trainer.host_memory import THRESHOLD  # noqa: E402
PEERS = {  # name: (env for minippo, maps, venv, script, the peer's own speed switches or None)
    "torchrl": ("arena", 64, "benchmarks/.venv-torchrl", "benchmarks/torchrl/train_fast.py", None),
    "pufferlib": ("mettagrid.arena", 16, "benchmarks/.venv-puffer", "benchmarks/pufferlib/train_fast.py",
                  ["--bf16", "--compile"]),
}
SWITCHES = ["--bf16", "--compile"]
# what trainer/host_memory.py sets inside minippo's process, given to the peers' processes
PEER_ENV = {**os.environ, "MALLOC_MMAP_THRESHOLD_": str(THRESHOLD), "MALLOC_TRIM_THRESHOLD_": str(THRESHOLD)}


def run(cmd: list[str], env: dict | None = None) -> str:
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=env)
    if done.returncode:
        raise RuntimeError(f"{' '.join(cmd)} failed ({done.returncode}):\n{done.stdout[-2000:]}{done.stderr[-3000:]}")
    return done.stdout


def minippo_sps(env: str, maps: int, args, fast: bool) -> float:
    with tempfile.NamedTemporaryFile(suffix=".json") as out:
        run([sys.executable, "scripts/bench.py", "--what", "e2e", "--env", env, "--num-envs", str(maps),
             "--minibatch-size", "1024", "--update-epochs", "1", "--repeats", str(args.updates),
             "--device", args.device, "--threads", str(args.threads), "--json", out.name] + (SWITCHES if fast else []))
        return json.load(open(out.name))["results"][0]["e2e"]


def peer_sps(name: str, maps: int, args, switches: list[str]) -> tuple[float, str]:
    _, _, venv, script, _ = PEERS[name]
    python = os.path.join(ROOT, venv, "bin", "python")
    if not os.path.exists(python):
        raise FileNotFoundError(f"{venv} is missing: run bash benchmarks/{name}/install.sh")
    out = run([python, script, "--num-envs", str(maps), "--updates", str(args.updates), "--threads",
               str(args.threads), "--device", args.device] + switches, env=PEER_ENV)
    result = json.loads(out.strip().splitlines()[-1])
    return result["sps"], result["version"]


def comparisons(peers: list[str]) -> list[tuple[str, str, list[str] | None, bool]]:
    """(peer, work, the peer's switches, minippo's switches on): plain against plain, switches against switches."""
    rows = []
    for name in peers:
        env, maps, _, _, switches = PEERS[name]
        rows.append((name, f"{env}, Fast, {maps} maps", [], False))
        rows.append((name, f"{env}, Fast, {maps} maps", switches, True))
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--peers", nargs="+", default=list(PEERS), choices=list(PEERS))
    ap.add_argument("--updates", type=int, default=5, help="timed updates per run (after a warm-up)")
    ap.add_argument("--rounds", type=int, default=3,
                    help="runs of every runner, taken in turns so that the machine's drift hits all alike")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads for every run (0: torch's default)")
    ap.add_argument("--device", default="cpu", help="cpu or cuda, for every run")
    args = ap.parse_args()
    import torch  # only for the header

    from scripts.bench import device_name

    print(f"{datetime.date.today()} | torch {torch.__version__} | {device_name(torch.device(args.device))} | "
          f"{args.updates} timed updates per run, {args.rounds} rounds in turns, medians", flush=True)
    rows = comparisons(args.peers)
    peer_runs: dict[tuple[str, bool], list[float]] = {}
    ours: dict[tuple[str, bool], list[float]] = {}
    missing: dict[str, str] = {}
    versions: dict[str, str] = {}
    for _ in range(args.rounds):
        for name, _, switches, fast in rows:
            env, maps = PEERS[name][:2]
            if name in missing:
                continue
            if switches is not None:
                try:
                    sps, versions[name] = peer_sps(name, maps, args, switches)
                    peer_runs.setdefault((name, fast), []).append(sps)
                except (FileNotFoundError, RuntimeError) as e:
                    missing[name] = str(e)
                    continue
            ours.setdefault((name, fast), []).append(minippo_sps(env, maps, args, fast))

    print(f"{'work':<32} {'runner':<36} {'agent steps/s':>14} {'minippo / peer':>15}   per round")
    for name, work, switches, fast in rows:
        if name in missing:
            print(f"{work:<32} {name:<36} {'skipped':>14}  {missing[name]}")
            continue
        peer = statistics.median(peer_runs[(name, False if switches is None else fast)])
        if switches is not None:
            label = " ".join([name, versions[name]] + switches)
            runs = peer_runs[(name, fast)]
            print(f"{work:<32} {label:<36} {peer:>14,.0f} {'':>15}   {', '.join(f'{r:,.0f}' for r in runs)}")
        mine = ours[(name, fast)]
        label = " ".join(["minippo"] + (SWITCHES if fast else []))
        print(f"{'':<32} {label:<36} {statistics.median(mine):>14,.0f} {statistics.median(mine) / peer:>14.2f}x"
              f"   {', '.join(f'{r:,.0f}' for r in mine)}", flush=True)


if __name__ == "__main__":
    main()
