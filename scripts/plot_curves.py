"""Plot a TensorBoard scalar (default: episode return) of one or more runs against agent steps, as a PNG.
Needs the plots extra: pip install -e ".[plots]".

    python scripts/plot_curves.py runs/nav_fast_0 runs/memory_fast_0 --out docs/curves.png
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass

import tyro

from trainer.runs import read_scalars


@dataclass
class Args:
    runs: tyro.conf.Positional[list[str]]
    """Run directories (log_dir/run_name) to plot."""
    out: str = "curves.png"
    """PNG to write."""
    tag: str = "episode/return"
    """Scalar to plot."""
    title: str = ""
    """Figure title."""
    per: str = ""
    """Plot tag / this scalar instead, e.g. episode/length (return per step when desynchronised first episodes
    are short)."""
    scale: float = 1.0
    """Multiply the plotted values by this (e.g. 1000 with --per episode/length: per 1000 steps)."""
    ylabel: str = ""
    """Y-axis label (default: the tag)."""
    hline: float | None = None
    """Draw a dashed reference line at this value (e.g. chance)."""
    hline_label: str = "chance"
    """Legend label of the reference line."""


def main(args: Args) -> None:
    try:
        import matplotlib
    except ImportError:
        sys.exit('error: plotting needs matplotlib: pip install -e ".[plots]"')
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for run in args.runs:
        scalars = read_scalars(run)
        for tag in filter(None, (args.tag, args.per)):
            if tag not in scalars:
                sys.exit(f"error: {run} has no scalar {tag!r}; it has {sorted(scalars)}")
        steps, values = scalars[args.tag]
        divisors = scalars[args.per][1] if args.per else [1.0] * len(values)
        values = [v / d * args.scale for v, d in zip(values, divisors)]
        ax.plot(steps, values, label=os.path.basename(os.path.normpath(run)))
    if args.hline is not None:
        ax.axhline(args.hline, linestyle="--", color="gray", label=args.hline_label)
    ax.set_xlabel("agent steps")
    ax.set_ylabel(args.ylabel or args.tag)
    ax.set_title(args.title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(args.out, dpi=100)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main(tyro.cli(Args))
