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
second, median over the timed updates.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PEERS = {  # name: (env for minippo, maps, venv, script, the peer's own speed switches or None)
    "torchrl": ("arena", 64, "benchmarks/.venv-torchrl", "benchmarks/torchrl/train_fast.py", None),
    "pufferlib": ("mettagrid.arena", 16, "benchmarks/.venv-puffer", "benchmarks/pufferlib/train_fast.py",
                  ["--bf16", "--compile"]),
}
SWITCHES = ["--bf16", "--compile"]
# what trainer/host_memory.py sets inside minippo's process, given to the peers' processes
PEER_ENV = {**os.environ, "MALLOC_MMAP_THRESHOLD_": str(1 << 30), "MALLOC_TRIM_THRESHOLD_": str(1 << 30)}


def run(cmd: list[str], env: dict | None = None) -> str:
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=env)
    if done.returncode:
        raise RuntimeError(f"{' '.join(cmd)} failed ({done.returncode}):\n{done.stdout[-2000:]}{done.stderr[-3000:]}")
    return done.stdout


def minippo_sps(env: str, maps: int, args, fast: bool) -> float:
    with tempfile.NamedTemporaryFile(suffix=".json") as out:
        run([sys.executable, "scripts/bench.py", "--what", "e2e", "--env", env, "--num-envs", str(maps),
             "--minibatch-size", "1024", "--repeats", str(args.updates), "--device", args.device,
             "--threads", str(args.threads), "--json", out.name] + (SWITCHES if fast else []))
        return json.load(open(out.name))["results"][0]["e2e"]


def peer_result(name: str, maps: int, args, switches: list[str]) -> dict:
    _, _, venv, script, _ = PEERS[name]
    python = os.path.join(ROOT, venv, "bin", "python")
    if not os.path.exists(python):
        raise FileNotFoundError(f"{venv} is missing: run bash benchmarks/{name}/install.sh")
    out = run([python, script, "--num-envs", str(maps), "--updates", str(args.updates), "--threads",
               str(args.threads), "--device", args.device] + switches, env=PEER_ENV)
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--peers", nargs="+", default=list(PEERS), choices=list(PEERS))
    ap.add_argument("--updates", type=int, default=5, help="timed updates per run (after a warm-up)")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads for every run (0: torch's default)")
    ap.add_argument("--device", default="cpu", help="cpu or cuda, for every run")
    args = ap.parse_args()
    import torch  # only for the header

    sys.path.insert(0, os.path.join(ROOT, "scripts"))
    from bench import device_name

    print(f"{datetime.date.today()} | torch {torch.__version__} | {device_name(torch.device(args.device))} | "
          f"{args.updates} timed updates per run")
    print(f"{'work':<34} {'runner':<28} {'agent steps/s':>14} {'minippo / peer':>15}")
    for name in args.peers:
        env, maps, _, _, peer_switches = PEERS[name]
        work = f"{env}, Fast, {maps} maps"
        for fast in (False, True):
            if not fast or peer_switches is not None:
                try:
                    peer = peer_result(name, maps, args, peer_switches if fast else [])
                except (FileNotFoundError, RuntimeError) as e:
                    print(f"{work:<34} {name:<28} {'skipped':>14}  {e}")
                    break
                label = f"{name} {peer.get('version', '')}" + (" " + " ".join(peer_switches) if fast else "")
                print(f"{work:<34} {label:<28} {peer['sps']:>14,.0f}", flush=True)
            sps = minippo_sps(env, maps, args, fast)
            label = "minippo " + " ".join(SWITCHES) if fast else "minippo"
            print(f"{'':<34} {label:<28} {sps:>14,.0f} {sps / peer['sps']:>14.2f}x", flush=True)


if __name__ == "__main__":
    main()
