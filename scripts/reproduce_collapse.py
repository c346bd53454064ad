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

import json
import os
import shlex
import sys
from dataclasses import dataclass, field

import tyro

from trainer.collapse.faults import FAULTS, PRESETS, parse_faults
from trainer.collapse.figures import metrics_figure, returns_figure
from trainer.collapse.tables import MEANS, other_table, summary_table
from trainer.collapse.verdict import largest_jump, other_curves, seed_numbers, summarize
from trainer.runs import Study, read_curves, read_runs, run_all, write_curves


@dataclass
class Args:
    study: tyro.conf.OmitArgPrefixes[Study] = field(default_factory=lambda: Study(preset="metta"))
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
    """train.py options of a configuration: its own for a named variant, else its faults (on the study's preset,
    by default `metta`: Metta's hyperparameters and semantics, whatever the other presets were tuned to)."""
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


# --- the analysis: from curves.csv and runs.csv only -----------------------------------------------------------
def analyze(args: Args) -> str:
    if not all(os.path.exists(os.path.join(args.out, name)) for name in ("study.json", "runs.csv")):
        raise ValueError(f"{args.out} has no study.json and runs.csv: run the study without --analyze-only first")
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
    per_seed = ["", "Per seed: final return (* collapsed); the largest one-update jump of a part's weight norm:", ""]
    for config in configs:
        seeds = sorted(s for c, s in runs if c == config)
        cells = []
        for s in seeds:
            n = seed_numbers(*curves.get((config, s), {}).get("episode/return", ([], [])), args.window, args.min_rise)
            jump = largest_jump(curves.get((config, s), {}))
            cells.append(f"{s}: crashed" if (config, s) in errors else
                         f"{s}: {n.final:.3f}{'*' if n.collapsed else ''}" + (
                             f" ({jump[0]} {jump[1]:.1f} -> {jump[2]:.1f} at {jump[3]:,})" if jump else "")
                         if n else f"{s}: no return")
        per_seed.append(f"- {config}: " + ", ".join(cells))
    summary += "\n".join(per_seed) + "\n"
    gathered = tuple(m for m in ("episode/ore_red_gained", "episode/battery_red_gained", "episode/heart_gained",
                                 "losses/explained_variance", "memory/cell_abs_mean")
                     if any(m in c for c in curves.values()))
    summary += "\n" + other_table(other_curves(curves, configs, gathered, args.window))
    with open(os.path.join(args.out, "summary.md"), "w") as f:
        f.write(summary)
    title = f"{study.policy} on {study.env}"
    messages = [summary]
    try:
        returns_figure(os.path.join(args.out, "returns.png"),
                       f"{title}: mean and min-max over seeds, fixed on each panel's seeds", curves, rows)
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
            if args.study.preset != "metta":  # also keeps a folder of the old cpu preset's runs from being extended
                raise ValueError(f"preset {args.study.preset!r}: the study runs Metta's hyperparameters and semantics: "
                                 f"--preset metta (the default); vary a setting with a configuration name=options")
            configs = {config_name(config): config_args(config) for config in args.configs}
            run_all(args.out, args.study, configs, args.seeds, args.jobs, args.keep_checkpoints)
            write_curves(args.out)
        print(analyze(args))
    except ValueError as e:
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    main(tyro.cli(Args, description=__doc__))
