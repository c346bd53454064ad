"""Reproduce the collapse: the correct trainer ("fixed") beside each fault, over several seeds, same budget.

    python scripts/reproduce_collapse.py                  # Fast on nav: fixed, each fault alone, prefix; 3 seeds
    python scripts/reproduce_collapse.py --configs fixed prefix no_detach+no_memory_reset --budget 2000000
    python scripts/reproduce_collapse.py --env memory --train-args="--lstm-init forget --num-envs 256"

A configuration is `fixed`, a fault, a preset (prefix) or faults joined by `+` (trainer/faults.py lists them).
Every run is `scripts/train.py` in its own process, seeds 0..seeds-1 for every configuration (paired
comparisons). Writes to --out: a TensorBoard run per configuration and seed (`tensorboard --logdir <out>`),
`curves.csv`, `summary.md` (the table below) and `collapse.png` (needs the plots extra). A run that crashes is
reported with its error; the others go on.

The table, per configuration, from each seed's `episode/return` curve (one point per update):
    final      mean of the last w points, w = `window` x the number of points (at least 1)
    peak       highest mean of w consecutive points, and the step it ends at
    collapsed  the run rose at least `min_rise` above its first w points, then lost more than half of
               that rise by the end (final - initial < (peak - initial) / 2)
    vs fixed   final minus fixed's final, paired by seed: mean, and its standard error
    verdict    crashes (a seed crashed) > collapses (most seeds collapsed) > degrades (worse than fixed by more
               than `min_rise` and 2 standard errors) > improves (the same, better) > slows (fixed's final
               level reached 1.5x later, or not at all) > no measurable effect
"""

from __future__ import annotations

import csv
import math
import os
import shlex
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field

import tyro

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from plot_curves import read_scalars  # noqa: E402

from trainer.faults import FAULTS, PRESETS, parse_faults  # noqa: E402

METRICS = {"return": "episode/return", "approx_kl": "losses/approx_kl", "clipfrac": "losses/clipfrac",
           "explained_variance": "losses/explained_variance", "entropy": "losses/entropy",
           "ratio_deviation_first_minibatch": "losses/ratio_deviation_first_minibatch"}


@dataclass
class Args:
    configs: list[str] = field(default_factory=lambda: ["fixed", *FAULTS, *PRESETS])
    """Configurations to run: fixed, a fault, a preset, or faults joined by + (e.g. no_detach+no_memory_reset)."""
    seeds: int = 3
    """Seeds per configuration (0, 1, ...)."""
    budget: int = 300_000
    """Agent steps per run (the default set takes about 30 minutes on 2 CPU cores)."""
    env: str = "nav"
    """Task."""
    policy: str = "fast"
    """Policy."""
    preset: str = "cpu"
    """scripts/train.py preset for batch sizes and learning rate."""
    train_args: str = ""
    """More scripts/train.py options for every run, e.g. --train-args="--lstm-init forget --num-envs 256" (with the =)."""
    jobs: int = 2
    """Runs at once; each gets cpu_count / jobs torch threads."""
    out: str = "runs/collapse"
    """Output folder."""
    window: float = 0.1
    """Fraction of a run's points (one per update) averaged for its initial, peak and final return."""
    min_rise: float = 0.05
    """Return a run must gain to count as having learned (and the smallest difference called an effect)."""
    analyze_only: bool = False
    """Train nothing: summarize the runs already in --out again (e.g. with another window or min_rise)."""
    keep_checkpoints: bool = False
    """Keep each run's final checkpoint (about 7 MB each for Fast)."""


@dataclass
class Run:
    config: str
    seed: int
    error: str = ""
    seconds: float = 0.0
    curves: dict[str, tuple[list[int], list[float]]] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return f"{self.config}_seed{self.seed}"


def faults_of(config: str) -> str:
    return "" if config == "fixed" else config.replace("+", ",")


def train(args: Args, run: Run, threads: int) -> Run:
    run_dir = os.path.join(args.out, run.name)
    shutil.rmtree(run_dir, ignore_errors=True)  # a rerun replaces, never appends to, a curve
    os.makedirs(run_dir)
    cmd = [sys.executable, os.path.join(ROOT, "scripts", "train.py"), "--preset", args.preset,
           "--policy", args.policy, "--env", args.env, "--total-steps", str(args.budget), "--seed", str(run.seed),
           "--torch-threads", str(threads), "--log-dir", args.out, "--run-name", run.name,
           "--checkpoint-interval", str(10 ** 9), *shlex.split(args.train_args)]
    if faults_of(run.config):
        cmd += ["--faults", faults_of(run.config)]
    start = time.perf_counter()
    with open(os.path.join(run_dir, "train.log"), "w") as log:
        log.write(shlex.join(cmd) + "\n")
        log.flush()
        done = subprocess.run(cmd, stdout=log, stderr=subprocess.PIPE, text=True)
        log.write(done.stderr)
    run.seconds = time.perf_counter() - start
    if done.returncode != 0:
        lines = [line for line in done.stderr.splitlines() if line.strip()]
        run.error = lines[-1] if lines else f"exit code {done.returncode}"
        with open(os.path.join(run_dir, "error.txt"), "w") as f:
            f.write(run.error)
    if not args.keep_checkpoints and os.path.exists(os.path.join(run_dir, "checkpoint.pt")):
        os.remove(os.path.join(run_dir, "checkpoint.pt"))
    return load(args, run)


def load(args: Args, run: Run) -> Run:
    """The run's curves, and its error if it crashed."""
    run_dir = os.path.join(args.out, run.name)
    if not os.path.isdir(run_dir):
        run.error = f"no run in {run_dir}: run without --analyze-only first"
        return run
    run.curves = read_scalars(run_dir)
    if os.path.exists(os.path.join(run_dir, "error.txt")):
        run.error = open(os.path.join(run_dir, "error.txt")).read()
    return run


# --- per-run and per-configuration numbers -----------------------------------------------------------
def returns(run: Run) -> tuple[list[int], list[float]]:
    return run.curves.get(METRICS["return"], ([], []))


def moving_mean(values: list[float], window: int) -> list[float]:
    return [sum(values[i - window + 1:i + 1]) / window for i in range(window - 1, len(values))]


def run_numbers(run: Run, args: Args) -> dict | None:
    steps, values = returns(run)
    if not values:
        return None
    w = max(1, round(args.window * len(values)))
    smooth = moving_mean(values, w)
    initial, final = smooth[0], smooth[-1]
    best = max(range(len(smooth)), key=smooth.__getitem__)
    peak = smooth[best]
    rise = peak - initial
    return {"initial": initial, "final": final, "peak": peak, "peak_step": steps[best + w - 1],
            "collapsed": rise >= args.min_rise and final - initial < rise / 2,
            "steps": steps[w - 1:], "smooth": smooth}


def mean_sd(xs: list[float]) -> tuple[float, float]:
    m = sum(xs) / len(xs)
    return m, (math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1)) if len(xs) > 1 else 0.0)


def first_reach(numbers: dict, level: float) -> int | None:
    return next((s for s, v in zip(numbers["steps"], numbers["smooth"]) if v >= level), None)


def summarize(args: Args, runs: list[Run]) -> list[dict]:
    numbers = {(r.config, r.seed): run_numbers(r, args) for r in runs if not r.error}
    fixed = {s: numbers.get(("fixed", s)) for s in range(args.seeds)}
    fixed_final = [n["final"] for n in fixed.values() if n]
    target = mean_sd(fixed_final)[0] if fixed_final else None
    fixed_reach = [first_reach(n, target) for n in fixed.values() if n] if target is not None else []
    fixed_reach = [s for s in fixed_reach if s is not None]
    rows = []
    for config in args.configs:
        mine = [r for r in runs if r.config == config]
        crashed = [r for r in mine if r.error]
        ok = [numbers[(r.config, r.seed)] for r in mine if not r.error and numbers.get((r.config, r.seed))]
        row = {"config": config, "seeds": len(mine), "crashed": len(crashed),
               "errors": sorted({r.error for r in crashed}), "verdict": "no measurable effect"}
        if ok:
            row["final"] = mean_sd([n["final"] for n in ok])
            row["peak"] = mean_sd([n["peak"] for n in ok])
            row["peak_step"] = mean_sd([n["peak_step"] for n in ok])[0]
            row["collapsed"] = sum(n["collapsed"] for n in ok)
            for key in ("ratio_deviation_first_minibatch", "approx_kl"):
                values = [v for r in mine if not r.error for v in r.curves.get(METRICS[key], ([], []))[1]]
                row[key] = sum(values) / len(values) if values else float("nan")
            diffs = [numbers[(config, s)]["final"] - fixed[s]["final"] for s in range(args.seeds)
                     if numbers.get((config, s)) and fixed.get(s)]
            if diffs and config != "fixed":
                m, sd = mean_sd(diffs)
                row["vs_fixed"] = (m, sd / math.sqrt(len(diffs)))
            if target is not None:
                reach = [first_reach(n, target) for n in ok]
                row["reach"] = None if None in reach else mean_sd(reach)[0]
        row["verdict"] = verdict(row, args, mean_sd(fixed_reach)[0] if fixed_reach else None)
        rows.append(row)
    return rows


def verdict(row: dict, args: Args, fixed_reach: float | None) -> str:
    if row["config"] == "fixed":
        return "reference"
    if row["crashed"]:
        return "crashes"
    if "final" not in row:
        return "no data"
    if row["collapsed"] * 2 > row["seeds"]:
        return "collapses"
    m, se = row.get("vs_fixed", (0.0, 0.0))
    if abs(m) >= args.min_rise and abs(m) > 2 * se:
        return "degrades" if m < 0 else "improves"
    if fixed_reach is not None and (row["reach"] is None or row["reach"] > 1.5 * fixed_reach):
        return "slows"
    return "no measurable effect"


# --- outputs -------------------------------------------------------------------------------------------
def write_csv(path: str, runs: list[Run]) -> None:
    with open(path, "w", newline="") as f:
        out = csv.writer(f)
        out.writerow(["config", "seed", "step", *METRICS])
        for run in runs:
            by_step: dict[int, dict[str, float]] = {}
            for name, tag in METRICS.items():
                for step, value in zip(*run.curves.get(tag, ([], []))):
                    by_step.setdefault(step, {})[name] = value
            for step in sorted(by_step):
                out.writerow([run.config, run.seed, step, *(by_step[step].get(name, "") for name in METRICS)])


def table(args: Args, rows: list[dict]) -> str:
    def pm(pair, digits=3):
        return f"{pair[0]:.{digits}f} ± {pair[1]:.{digits}f}"

    lines = [f"{args.policy} on {args.env}, {args.seeds} seeds, {args.budget:,} agent steps per run, preset "
             f"{args.preset}{', ' + args.train_args if args.train_args else ''}. ± is the spread (sd) over seeds; "
             "vs fixed is the paired difference of finals ± its standard error.", "",
             "| configuration | final return | peak return | steps to peak | collapsed | vs fixed | "
             "first-minibatch ratio deviation | approx_kl | verdict |",
             "|---|---|---|---|---|---|---|---|---|"]
    for row in rows:
        if "final" in row:
            cells = [pm(row["final"]), pm(row["peak"]), f"{row['peak_step']:,.0f}",
                     f"{row['collapsed']}/{row['seeds'] - row['crashed']}",
                     pm(row["vs_fixed"]) if "vs_fixed" in row else "",
                     f"{row['ratio_deviation_first_minibatch']:.2g}", f"{row['approx_kl']:.2g}"]
        else:
            cells = ["-"] * 7
        lines.append(f"| {row['config']} | " + " | ".join(cells) + f" | {row['verdict']} |")
    crashes = [row for row in rows if row["crashed"]]
    for row in crashes:
        lines.append(f"\n{row['config']}: {row['crashed']} of {row['seeds']} seeds crashed: " + "; ".join(row["errors"]))
    return "\n".join(lines) + "\n"


def figure(path: str, args: Args, runs: list[Run], rows: list[dict]) -> str:
    try:
        import matplotlib
    except ImportError:
        return 'no figure: plotting needs matplotlib (pip install -e ".[plots]")'
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker
    import numpy as np

    def band(config: str):
        curves = [returns(r) for r in runs if r.config == config and returns(r)[1]]
        if not curves:
            return None
        grid = np.array(max((c[0] for c in curves), key=len), dtype=float)
        ys = np.array([np.interp(grid, c[0], c[1], right=np.nan) for c in curves])
        return grid, np.nanmean(ys, 0), np.nanmin(ys, 0), np.nanmax(ys, 0)

    others = [row for row in rows if row["config"] != "fixed"] or rows
    cols = min(4, len(others))
    fig, axes = plt.subplots(math.ceil(len(others) / cols), cols, figsize=(4 * cols, 3 * math.ceil(len(others) / cols)),
                             sharex=True, sharey=True, squeeze=False)
    bands = {row["config"]: band(row["config"]) for row in rows}
    for ax, row in zip(axes.flat, others):
        shown = [("fixed", "gray"), (row["config"], "tab:red")] if row["config"] != "fixed" else [("fixed", "gray")]
        for config, color in shown:
            if bands.get(config) is not None:
                steps, mean, low, high = bands[config]
                ax.plot(steps, mean, color=color, label=config)
                ax.fill_between(steps, low, high, color=color, alpha=0.2)
        ax.set_title(f"{row['config']}: {row['verdict']}", fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="upper left")
    for ax in axes.flat[len(others):]:
        ax.axis("off")
    for ax in axes[-1]:
        ax.set_xlabel("agent steps")
        ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda x, _: f"{x / 1e6:g}M" if x >= 1e6 else f"{x / 1e3:g}k"))
    for ax in axes[:, 0]:
        ax.set_ylabel("episode return")
    fig.suptitle(f"{args.policy} on {args.env}: mean and min-max over {args.seeds} seeds", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    return f"wrote {path}"


def main(args: Args) -> None:
    try:
        for config in args.configs:
            if config != "fixed":
                parse_faults(faults_of(config), args.policy)
    except ValueError as e:
        sys.exit(f"error: {e}")
    if args.seeds < 1 or args.jobs < 1 or not 0 < args.window <= 1:
        sys.exit("error: seeds and jobs must be at least 1, window in (0, 1]")
    os.makedirs(args.out, exist_ok=True)
    threads = max(1, (os.cpu_count() or 1) // args.jobs)
    todo = [Run(config, seed) for config in args.configs for seed in range(args.seeds)]
    print(f"{len(todo)} runs of {args.budget:,} agent steps ({args.policy} on {args.env}), {args.jobs} at a time, "
          f"{threads} torch threads each; logs in {args.out}", flush=True)
    runs: list[Run] = []
    with ThreadPoolExecutor(args.jobs) as pool:
        work = (lambda r: load(args, r)) if args.analyze_only else (lambda r: train(args, r, threads))
        for future in as_completed([pool.submit(work, r) for r in todo]):
            run = future.result()
            runs.append(run)
            n = run_numbers(run, args)
            status = f"CRASHED: {run.error}" if run.error else (f"final {n['final']:.3f}" if n else "no return logged")
            print(f"[{len(runs)}/{len(todo)}] {run.name}: {status} ({run.seconds:.0f} s)", flush=True)
    runs.sort(key=lambda r: (args.configs.index(r.config), r.seed))
    rows = summarize(args, runs)
    write_csv(os.path.join(args.out, "curves.csv"), runs)
    summary = table(args, rows)
    with open(os.path.join(args.out, "summary.md"), "w") as f:
        f.write(summary)
    print("\n" + summary)
    print(figure(os.path.join(args.out, "collapse.png"), args, runs, rows))
    print(f"wrote {os.path.join(args.out, 'curves.csv')} and {os.path.join(args.out, 'summary.md')}")


if __name__ == "__main__":
    main(tyro.cli(Args, description=__doc__))
