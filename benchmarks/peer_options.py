"""The command line every peer script shares (benchmarks/*/train_fast.py), so that compare.py can run each the same
way: the work (maps, bptt, minibatch, epochs, lr) and the timing (updates after a warm-up, threads, seed, device)."""

from __future__ import annotations

import argparse

import torch


def peer_parser(doc: str, maps: int, maps_help: str) -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--num-envs", type=int, default=maps, help=maps_help)
    ap.add_argument("--bptt", type=int, default=64, help="steps per segment (rollout length and training unroll)")
    ap.add_argument("--minibatch-size", type=int, default=1024, help="agent steps per minibatch (x bptt segments)")
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--updates", type=int, default=5, help="timed updates")
    ap.add_argument("--warmup", type=int, default=1, help="untimed updates first")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="cpu", help="cpu or cuda")
    ap.add_argument("--lr", type=float, default=3e-3)
    return ap


def parse_peer_args(ap: argparse.ArgumentParser) -> argparse.Namespace:
    """Parse, then set torch's CPU threads and seed as every peer run does."""
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    return args
