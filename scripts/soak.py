"""Soak test: a small run for thousands of updates, watching what a long run must keep flat.

    python scripts/soak.py                          # 2,000 updates of a small nav run, on CPU
    python scripts/soak.py --updates 300 --every 25 # a short one

It trains in chunks of --every updates through `Trainer.train` (so TensorBoard writing and checkpointing are
exercised as in a real run) and after each chunk records the resident memory of the process, the GPU memory
torch holds (on a GPU), the open file handles and the chunk's agent steps/s. It reports the growth of each from
update --settle to the end (the goal: under 5%) and the SPS of the first and last fifth, and writes
--out/soak.csv and --out/soak.png (with the plots extra).
"""

from __future__ import annotations

import csv
import os
import resource
import sys
import time
from dataclasses import dataclass

import torch
import tyro

from trainer import Trainer, TrainConfig
from trainer.config import METTA


@dataclass
class Args:
    updates: int = 2000
    """Updates to run."""
    every: int = 50
    """Updates per chunk (one measurement, one checkpoint each)."""
    settle: int = 100
    """Growth is measured from the first chunk at or after this update (allocators and caches warm up first)."""
    num_envs: int = 32
    """Maps of the nav task."""
    device: str = "cpu"
    """Device to run on."""
    torch_threads: int = 0
    """CPU threads for torch (0: its default)."""
    out: str = "runs/soak"
    """Folder for the run, soak.csv and soak.png."""


def resident_mb() -> float:
    """The process's resident memory now (Linux /proc; elsewhere the peak, which cannot shrink)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2 ** 20
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 10


def open_files() -> int:
    return len(os.listdir("/proc/self/fd")) if os.path.isdir("/proc/self/fd") else -1


def main(args: Args) -> None:
    if args.updates < 2 * args.every or args.every < 1:
        sys.exit("error: --updates must be at least 2 x --every, and --every at least 1")
    cfg = TrainConfig(**METTA).replace(  # Metta's settings, as docs/benchmarks.md's soak measured them
        env="nav", num_envs=args.num_envs, bptt=16, minibatch_size=16 * args.num_envs // 4,
        total_steps=args.num_envs * 16 * args.updates, device=args.device, log_dir=args.out, run_name="soak",
        torch_threads=args.torch_threads, checkpoint_interval=args.every)
    trainer = Trainer(cfg)
    gpu = trainer.device.type == "cuda"
    rows = []
    while trainer.update < args.updates:
        start, steps = time.perf_counter(), trainer.global_step
        trainer.train(updates=args.every, quiet=True)
        rows.append({"update": trainer.update, "rss_mb": resident_mb(), "open_files": open_files(),
                     "gpu_mb": torch.cuda.memory_allocated() / 2 ** 20 if gpu else 0.0,
                     "sps": (trainer.global_step - steps) / (time.perf_counter() - start)})
        print(f"update {trainer.update}: rss {rows[-1]['rss_mb']:.0f} MB, files {rows[-1]['open_files']}, "
              f"SPS {rows[-1]['sps']:,.0f}", flush=True)
    with open(os.path.join(args.out, "soak.csv"), "w", newline="") as f:
        writer = csv.DictWriter(f, list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    settled = next(r for r in rows if r["update"] >= args.settle)
    fifth = max(1, len(rows) // 5)
    first, last = (sum(r["sps"] for r in part) / len(part) for part in (rows[:fifth], rows[-fifth:]))
    print(f"\n{args.updates} updates of nav ({args.num_envs} maps, bptt 16) on {trainer.device}; from update "
          f"{settled['update']} to {rows[-1]['update']}:")
    for key, unit in (("rss_mb", "MB"), ("open_files", "files"), ("gpu_mb", "MB")):
        if key != "gpu_mb" or gpu:
            growth = (rows[-1][key] - settled[key]) / max(settled[key], 1e-9)
            print(f"  {key}: {settled[key]:.0f} -> {rows[-1][key]:.0f} {unit} ({growth:+.1%})")
    print(f"  SPS: first fifth {first:,.0f}, last fifth {last:,.0f} ({last / first - 1:+.1%})")
    try:
        import matplotlib
    except ImportError:
        return print('no figure: it needs matplotlib (pip install -e ".[plots]")')
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = ["rss_mb", "open_files", "sps"] + (["gpu_mb"] if gpu else [])
    fig, axes = plt.subplots(1, len(keys), figsize=(4 * len(keys), 3))
    for ax, key in zip(axes, keys):
        ax.plot([r["update"] for r in rows], [r[key] for r in rows])
        ax.set_title(key, fontsize=9)
        ax.set_xlabel("update")
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(os.path.join(args.out, "soak.png"), dpi=90)
    print(f"wrote {os.path.join(args.out, 'soak.csv')} and soak.png")


if __name__ == "__main__":
    main(tyro.cli(Args, description=__doc__))
