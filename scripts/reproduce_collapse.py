"""Reproduce the collapse: the correct trainer ("fixed") beside each fault, over seeds, with the same budget.

    python scripts/reproduce_collapse.py                  # Fast on nav: fixed, each fault alone, prefix; 3 seeds
    python scripts/reproduce_collapse.py --configs fixed prefix no_detach+no_memory_reset --budget 2000000
    python scripts/reproduce_collapse.py --env memory --train-args="--lstm-init forget --num-envs 256"
    python scripts/reproduce_collapse.py --env arena --budget 10000000 --seeds 2 \\
        --configs fixed prefix "forget_init=--lstm-init forget"   # a named variant: train.py options of its own

A configuration is `fixed`, a fault, a preset (prefix), faults joined by `+`, or `name=train.py options` (the
faults of trainer/collapse/faults.py). Every run is `scripts/train.py` in its own process; every configuration
gets seeds 0..seeds-1, so comparisons with fixed are paired by seed.

The folder --out holds the study: `study.json` (the settings every run shares), a TensorBoard run per
configuration and seed, and `runs.csv` with a row per finished run (seconds, error, commit, machine). A run with
its row and its TensorBoard log is finished and is skipped: run the same command again to resume an interrupted
study, or with more --seeds or --configs to extend one. Then every finished run's curves go to `curves.csv`,
and the analysis reads that file alone (trainer/collapse/verdict.py has the rule): `summary.md`, `returns.png`
(each configuration against fixed) and `metrics.png` (every logged metric of every run).
"""

from __future__ import annotations

import csv
import fcntl
import json
import os
import platform
import shlex
import shutil
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field

import tyro
from plot_curves import read_scalars

from trainer.collapse.faults import FAULTS, PRESETS, parse_faults
from trainer.collapse.figures import metrics_figure, returns_figure
from trainer.collapse.tables import MEANS, summary_table
from trainer.collapse.verdict import Curves, seed_numbers, summarize

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RUNS_COLUMNS = ["config", "seed", "seconds", "error", "commit", "machine", "command"]


@dataclass
class Study:
    """What every run of a study shares; a folder holds one study."""
    env: str = "nav"
    """Task."""
    policy: str = "fast"
    """Policy."""
    budget: int = 300_000
    """Agent steps per run (the default set takes about 30 minutes on 2 CPU cores)."""
    preset: str = "cpu"
    """scripts/train.py preset for batch sizes and learning rate."""
    train_args: str = ""
    """More scripts/train.py options for every run, e.g. --train-args="--lstm-init forget --num-envs 256" (with the =)."""


@dataclass
class Args:
    study: tyro.conf.OmitArgPrefixes[Study] = field(default_factory=Study)
    configs: list[str] = field(default_factory=lambda: ["fixed", *FAULTS, *PRESETS])
    """Configurations to run: fixed, a fault, a preset, faults joined by + (e.g. no_detach+no_memory_reset), or
    name=train.py options (e.g. "forget_init=--lstm-init forget")."""
    seeds: int = 3
    """Seeds per configuration (0, 1, ...)."""
    jobs: int = 2
    """Runs at once; each gets cpu_count / jobs torch threads."""
    out: str = ""
    """The study's folder (default: runs/collapse_<env>)."""
    window: float = 0.1
    """Fraction of a run's points (one per update) averaged for its initial, peak and final return."""
    min_rise: float = 0.05
    """Return a run must gain to count as having learned (and the smallest difference called an effect)."""
    analyze_only: bool = False
    """Train nothing: analyse the folder's curves.csv and runs.csv again (e.g. with another window or min_rise)."""
    keep_checkpoints: bool = False
    """Keep each run's final checkpoint (about 7 MB each for Fast)."""


# --- configurations ------------------------------------------------------------------------------------------
def config_name(config: str) -> str:
    return config.partition("=")[0]


def config_args(config: str) -> list[str]:
    """train.py options of a configuration: its own, for a named variant; else its faults."""
    name, variant, options = config.partition("=")
    if variant:
        return shlex.split(options)
    return [] if name == "fixed" else ["--faults", name.replace("+", ",")]


def check_configs(configs: list[str], policy: str) -> None:
    """ValueError for an unknown fault, a fault the policy cannot have, a name that is not a plain word or is
    given twice, or a named variant that takes the name of fixed or of a fault."""
    names = [config_name(config) for config in configs]
    if len(set(names)) < len(names):
        raise ValueError(f"a configuration is named twice in {names}")
    for config in configs:
        name, variant, _ = config.partition("=")
        if not name or not all(ch.isalnum() or ch in "_+-" for ch in name):
            raise ValueError(f"configuration name {name!r}: use letters, digits, _, + and - (it names a folder)")
        if variant and (name == "fixed" or set(name.split("+")) & {*FAULTS, *PRESETS}):
            raise ValueError(f"the variant {name!r} takes the name of fixed or of a fault: name it otherwise")
        if not variant and name != "fixed":
            parse_faults(name.replace("+", ","), policy)


# --- running -------------------------------------------------------------------------------------------------
def commit() -> str:
    try:
        head = subprocess.run(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", ROOT, "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True).stdout.strip()
        return head + ("+changes" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def machine() -> str:
    model = platform.processor()
    if os.path.exists("/proc/cpuinfo"):
        model = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")),
                     model)
    return f"{model}, {os.cpu_count()} cores"


def read_runs(out: str) -> dict[tuple[str, int], dict]:
    """runs.csv: a row per finished run (the last row, should a run have been done again)."""
    path = os.path.join(out, "runs.csv")
    if not os.path.exists(path):
        return {}
    with open(path, newline="") as f:
        return {(row["config"], int(row["seed"])): row for row in csv.DictReader(f)}


def finished(out: str, runs: dict, config: str, seed: int) -> bool:
    """It has its row in runs.csv, and its TensorBoard log (unless it crashed before writing one)."""
    run_dir = os.path.join(out, f"{config}_seed{seed}")
    return (config, seed) in runs and (bool(runs[(config, seed)]["error"]) or os.path.isdir(run_dir) and any(
        name.startswith("events.out.tfevents") for name in os.listdir(run_dir)))


def train(args: Args, config: str, seed: int, threads: int, ledger_lock: threading.Lock) -> dict | None:
    """One run of train.py, from scratch; its row goes to runs.csv when it ends (a crash is a finished run too).
    A run stopped by Ctrl-C (exit code 130) or killed by a signal writes no row: None, and the next call redoes it."""
    study, name = args.study, config_name(config)
    run_dir = os.path.join(args.out, f"{name}_seed{seed}")
    shutil.rmtree(run_dir, ignore_errors=True)  # an interrupted run starts again: a curve is never appended to
    os.makedirs(run_dir)
    cmd = [sys.executable, os.path.join(ROOT, "scripts", "train.py"), "--preset", study.preset,
           "--policy", study.policy, "--env", study.env, "--total-steps", str(study.budget), "--seed", str(seed),
           "--torch-threads", str(threads), "--log-dir", args.out, "--run-name", f"{name}_seed{seed}",
           "--checkpoint-interval", str(10 ** 9), *shlex.split(study.train_args), *config_args(config)]
    start, code = time.perf_counter(), commit()  # the code the run starts with, whatever changes while it runs
    with open(os.path.join(run_dir, "train.log"), "w") as log:
        log.write(shlex.join(cmd) + "\n")
        log.flush()
        done = subprocess.run(cmd, stdout=log, stderr=subprocess.PIPE, text=True)
        log.write(done.stderr)
    if done.returncode == 130 or done.returncode < 0:
        return None
    error = ""
    if done.returncode != 0:
        lines = [line for line in done.stderr.splitlines() if line.strip()]
        error = lines[-1] if lines else f"exit code {done.returncode}"
    if not args.keep_checkpoints and os.path.exists(os.path.join(run_dir, "checkpoint.pt")):
        os.remove(os.path.join(run_dir, "checkpoint.pt"))
    row = {"config": name, "seed": seed, "seconds": f"{time.perf_counter() - start:.0f}", "error": error,
           "commit": code, "machine": machine(), "command": shlex.join(cmd[1:])}
    with ledger_lock:
        path = os.path.join(args.out, "runs.csv")
        new = not os.path.exists(path)
        with open(path, "a", newline="") as f:
            writer = csv.DictWriter(f, RUNS_COLUMNS)
            if new:
                writer.writeheader()
            writer.writerow(row)
    return row


def run_all(args: Args) -> None:
    os.makedirs(args.out, exist_ok=True)
    lock_file = open(os.path.join(args.out, ".lock"), "w")
    try:
        fcntl.flock(lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)  # released when this process ends
    except BlockingIOError:
        raise ValueError(f"another reproduce_collapse.py is running on {args.out}: wait for it, or use another --out")
    settings = os.path.join(args.out, "study.json")
    if os.path.exists(settings):
        with open(settings) as f:
            saved = json.load(f)
        if saved != asdict(args.study):
            raise ValueError(f"{args.out} holds a study with other settings ({saved}); use another --out, or the "
                             f"same --env, --policy, --budget, --preset and --train-args")
    else:
        with open(settings, "w") as f:
            json.dump(asdict(args.study), f, indent=1)
    runs = read_runs(args.out)
    for config in args.configs:
        name, options = config_name(config), shlex.join(config_args(config))
        made = [row for (c, _), row in runs.items() if c == name and not row["command"].endswith(options)]
        if made:
            raise ValueError(f"{args.out} has runs of {name!r} made with other options ({made[0]['command']}): "
                             "give this configuration another name")
    todo = [(config, seed) for seed in range(args.seeds) for config in args.configs
            if not finished(args.out, runs, config_name(config), seed)]
    threads = max(1, (os.cpu_count() or 1) // args.jobs)
    print(f"{len(todo)} runs to do ({args.seeds * len(args.configs) - len(todo)} already finished) of "
          f"{args.study.budget:,} agent steps, {args.jobs} at a time with {threads} torch threads each; "
          f"in {args.out}", flush=True)
    lock = threading.Lock()
    pool = ThreadPoolExecutor(args.jobs)
    try:
        work = {pool.submit(train, args, config, seed, threads, lock): (config, seed) for config, seed in todo}
        for i, future in enumerate(as_completed(work), 1):
            row = future.result()
            name = f"{config_name(work[future][0])}_seed{work[future][1]}"
            status = "interrupted" if row is None else "CRASHED: " + row["error"] if row["error"] else "done"
            print(f"[{i}/{len(todo)}] {name}: {status}" + (f" ({row['seconds']} s)" if row else ""), flush=True)
    except KeyboardInterrupt:  # the runs got the Ctrl-C too: they stop without a row; start no more
        pool.shutdown(wait=True, cancel_futures=True)
        raise ValueError("interrupted: run the same command again to resume") from None
    pool.shutdown()


# --- curves.csv: every finished run's every metric, one row per update ---------------------------------------
def write_curves(out: str) -> None:
    runs = read_runs(out)
    curves = {key: read_scalars(os.path.join(out, f"{key[0]}_seed{key[1]}")) for key in runs
              if finished(out, runs, *key)}
    tags = sorted({tag for c in curves.values() for tag in c if tag != "charts/SPS"})
    with open(os.path.join(out, "curves.csv"), "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["config", "seed", "step", *tags])
        for (config, seed), c in curves.items():
            by_step: dict[int, dict[str, float]] = {}
            for tag in tags:
                for step, value in zip(*c.get(tag, ([], []))):
                    by_step.setdefault(step, {})[tag] = value
            for step in sorted(by_step):
                values = (by_step[step].get(tag) for tag in tags)  # TensorBoard keeps float32: 9 digits are exact
                writer.writerow([config, seed, step, *("" if v is None else f"{v:.9g}" for v in values)])


def read_curves(out: str) -> dict[tuple[str, int], Curves]:
    curves: dict[tuple[str, int], Curves] = {}
    with open(os.path.join(out, "curves.csv"), newline="") as f:
        for row in csv.DictReader(f):
            c = curves.setdefault((row["config"], int(row["seed"])), {})
            for tag, value in row.items():
                if tag not in ("config", "seed", "step") and value != "":
                    steps, values = c.setdefault(tag, ([], []))
                    steps.append(int(row["step"]))
                    values.append(float(value))
    return curves


# --- the analysis: from curves.csv and runs.csv only -----------------------------------------------------------
def analyze(args: Args) -> str:
    if not all(os.path.exists(os.path.join(args.out, name)) for name in ("study.json", "runs.csv", "curves.csv")):
        raise ValueError(f"{args.out} has no study.json, runs.csv and curves.csv: run the study without "
                         "--analyze-only first")
    with open(os.path.join(args.out, "study.json")) as f:
        study = Study(**json.load(f))
    runs = read_runs(args.out)
    curves = read_curves(args.out)
    errors = {key: row["error"] for key, row in runs.items() if row["error"]}
    for key in errors:
        curves.pop(key, None)
    order = {name: i for i, name in enumerate(["fixed", *FAULTS, *PRESETS])}
    configs = sorted(dict.fromkeys(c for c, _ in runs), key=lambda c: (order.get(c, len(order)), c))
    rows = summarize(curves, errors, configs, args.window, args.min_rise, MEANS)
    commits = sorted({row["commit"] for row in runs.values()})
    machines = sorted({row["machine"] for row in runs.values()})
    header = (f"{study.policy} on {study.env}, {study.budget:,} agent steps per run, preset {study.preset}"
              f"{', ' + study.train_args if study.train_args else ''}; commit {', '.join(commits)}; "
              f"{'; '.join(machines)}.")
    summary = summary_table(rows, header)
    per_seed = ["", "Per seed (final return; * collapsed):", ""]
    for config in configs:
        seeds = sorted(s for c, s in runs if c == config)
        cells = []
        for s in seeds:
            n = seed_numbers(*curves.get((config, s), {}).get("episode/return", ([], [])), args.window, args.min_rise)
            cells.append(f"{s}: crashed" if (config, s) in errors else f"{s}: {n.final:.3f}{'*' if n.collapsed else ''}"
                         if n else f"{s}: no return")
        per_seed.append(f"- {config}: " + ", ".join(cells))
    summary += "\n".join(per_seed) + "\n"
    with open(os.path.join(args.out, "summary.md"), "w") as f:
        f.write(summary)
    title = f"{study.policy} on {study.env}"
    messages = [summary]
    try:
        returns_figure(os.path.join(args.out, "returns.png"), f"{title}: mean and min-max over seeds", curves, rows)
        smooth = max(1, len(next(iter(curves.values()), {}).get("episode/return", ([], []))[1]) // 50)
        metrics_figure(os.path.join(args.out, "metrics.png"), title, curves, smooth)
        messages.append(f"wrote {args.out}/summary.md, returns.png and metrics.png")
    except ImportError as e:
        messages.append(f"wrote {args.out}/summary.md; no figures: {e}")
    return "\n".join(messages)


def main(args: Args) -> None:
    args.out = args.out or os.path.join("runs", f"collapse_{args.study.env}")
    try:
        check_configs(args.configs, args.study.policy)
        if args.seeds < 1 or args.jobs < 1 or not 0 < args.window <= 1:
            raise ValueError("seeds and jobs must be at least 1, window in (0, 1]")
        if not args.analyze_only:
            run_all(args)
            write_curves(args.out)
        print(analyze(args))
    except ValueError as e:
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    main(tyro.cli(Args, description=__doc__))
