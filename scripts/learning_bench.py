"""The learning benchmark: how close training gets to the scripted player's score, per task, over seeds.

    python scripts/learning_bench.py                                  # nav, memory, arena; the defaults; 3 seeds
    python scripts/learning_bench.py --tasks nav --configs default= "epochs4=--update-epochs 4"

A configuration is `name=train.py options` (`default=`: the trainer's defaults). Each task is a study of
trainer/runs.py in --out/<task> (resumable: run the same command again after an interruption). The score of
envs/scripted.py's player on the task's default env is the ceiling every curve is judged against; random play
is shown beside it. Per task and configuration, over seeds (mean ± sd):

    final, best      the return as a fraction of the scripted score: mean of the last 10% of updates, and the
                     best mean of 10% consecutive updates
    to 50%, to 90%   agent steps and core-minutes until the smoothed return first reaches that fraction ("-": not
                     every seed did); a run has one torch thread, so its wall time is its core time
    ev, kl, clip     explained variance, approx_kl and clip fraction over the last 10% of updates

and for the arena, each seed's hearts per agent-episode over the last 10% of updates; for memory, where each seed
learns the cue or not, the step at which each seed's return first passed PASS_MARK of the scripted score, each fall
of more than DROP below its best after that (a collapse) and the step it was back past PASS_MARK, judged per update
(per POOL_STEPS agent steps where updates are shorter).

Writes --out/summary.md and --out/learning.png (needs the plots extra).
"""

from __future__ import annotations

import json
import math
import os
import shlex
import sys
from dataclasses import dataclass, field

import torch
import tyro

from envs import make_env
from envs.scripted import ScriptedPlayer, play, random_actions
from trainer.collapse.verdict import mean_sd, seed_numbers
from trainer.runs import Study, read_curves, read_runs, run_all, write_curves

BUDGETS = {"nav": 2_000_000, "memory": 1_000_000, "arena": 5_000_000}
EPISODES = {"nav": 400, "memory": 400, "arena": 24}  # agent-episodes for the scripted and random scores
# The arena's return is mostly ore, up to the reward's cap: whether the chain is learned shows in its hearts.
HEARTS = ("arena",)
# Memory is learned all or nothing: each seed's first update past the pass mark, and any fall after it of more than
# DROP below its best so far (a collapse), both per update, unsmoothed; the returns of updates shorter than
# POOL_STEPS agent steps are pooled until they span it: memory's episodes start together, so the first rollouts of a
# few steps end only the fastest few episodes, whose 1.0 is no pass (every committed study's updates span >= 4,096).
PASS_MARK, DROP, POOL_STEPS = {"memory": 0.95}, 0.2, 4_096


@dataclass
class Args:
    tasks: list[str] = field(default_factory=lambda: list(BUDGETS))
    """Tasks of our gridworld to train (the scripted player reads its state)."""
    configs: list[str] = field(default_factory=lambda: ["default="])
    """Configurations as name=train.py options."""
    budgets: list[int] = field(default_factory=list)
    """Agent steps per run, one per task (default: nav 2M, memory 1M, arena 5M)."""
    seeds: int = 3
    """Seeds per configuration."""
    policy: str = "fast"
    """Policy."""
    preset: str = "cpu"
    """scripts/train.py preset."""
    train_args: str = ""
    """More train.py options for every run (env options change the env but not the scripted score's)."""
    jobs: int = 2
    """Runs at once, each with cpu_count / jobs torch threads."""
    out: str = "runs/learning_bench"
    """Folder of the benchmark: one study per task inside."""
    window: float = 0.1
    """Fraction of a run's updates averaged for final and best."""
    analyze_only: bool = False
    """Train nothing: report on the runs already in --out."""
    keep_checkpoints: bool = False
    """Keep each run's final checkpoint.pt (for scripts/evaluate.py); without it they are deleted."""


def reference_scores(task: str, out: str) -> dict[str, float]:
    """The scripted player's and random play's mean return on the task's default env (computed once, kept in
    out/reference.json)."""
    path = os.path.join(out, "reference.json")
    if os.path.exists(path):
        with open(path) as f:
            return json.load(f)
    env = make_env(task, num_envs=8, seed=1, desync_episodes=False)  # whole episodes, as training's later ones are
    scores = {"scripted": play(env, ScriptedPlayer(env).act, EPISODES[task])["return"]}
    generator = torch.Generator().manual_seed(1)
    scores["random"] = play(env, lambda: random_actions(env, generator), EPISODES[task])["return"]
    with open(path, "w") as f:
        json.dump(scores, f, indent=1)
    return scores


def core_minutes(curves: dict) -> list[float]:
    """Cumulative minutes at each update: each update's agent steps divided by its SPS."""
    steps, sps = curves["charts/SPS"]
    elapsed, total, last = [], 0.0, 0
    for step, rate in zip(steps, sps):
        total += (step - last) / max(rate, 1e-9) / 60
        elapsed.append(total)
        last = step
    return elapsed


def tail_mean(runs: list[list[float]], window: float) -> float:
    """The mean over runs of each one's last `window` of updates (NaN for no values)."""
    tail = [v for values in runs for v in values[-max(1, round(window * len(values))):]]
    return sum(tail) / len(tail) if tail else math.nan


def task_rows(task: str, out: str, window: float) -> tuple[list[dict], dict, dict]:
    scores = reference_scores(task, out)
    curves, runs = read_curves(out), read_runs(out)
    rows = []
    for config in dict.fromkeys(c for c, _ in runs):
        seeds = sorted(s for c, s in curves if c == config)
        numbers = {s: seed_numbers(*curves[(config, s)]["episode/return"], window, 0.0) for s in seeds}
        row = {"task": task, "config": config, "seeds": len(seeds),
               "crashed": sum(bool(r["error"]) for (c, _), r in runs.items() if c == config)}
        if seeds:
            row["final"] = mean_sd([numbers[s].final / scores["scripted"] for s in seeds])
            row["best"] = mean_sd([numbers[s].peak / scores["scripted"] for s in seeds])
            for fraction in (0.5, 0.9):
                reach = [numbers[s].reaches(fraction * scores["scripted"]) for s in seeds]
                if None not in reach:
                    minutes = [core_minutes(curves[(config, s)])[curves[(config, s)]["charts/SPS"][0].index(step)]
                               for s, step in zip(seeds, reach)]
                    row[f"to{fraction:.0%}"] = (mean_sd(reach)[0], mean_sd(minutes)[0])
            for name, tag in (("ev", "losses/explained_variance"), ("kl", "losses/approx_kl"), ("clip", "losses/clipfrac")):
                row[name] = tail_mean([curves[(config, s)][tag][1] for s in seeds], window)
            if task in HEARTS:
                row["hearts"] = [tail_mean([curves[(config, s)]["episode/heart_gained"][1]], window) for s in seeds]
            if task in PASS_MARK:
                row["passed"] = {s: passed(*pooled(curves[(config, s)]["episode/return"][0],
                                                   [v / scores["scripted"] for v in curves[(config, s)]["episode/return"][1]],
                                                   POOL_STEPS), PASS_MARK[task], DROP) for s in seeds}
        rows.append(row)
    return rows, scores, curves


def pooled(steps: list[int], values: list[float], min_steps: int) -> tuple[list[int], list[float]]:
    """Consecutive updates' returns averaged until together they span at least `min_steps` agent steps: (the last
    step of each pool, its mean of the finite returns, NaN if none); a last pool shorter than that is left out."""
    ends, means, start, pool = [], [], 0, []
    for step, value in zip(steps, values):
        pool.append(value)
        if step - start >= min_steps:
            finite = [v for v in pool if math.isfinite(v)]
            ends.append(step)
            means.append(sum(finite) / len(finite) if finite else math.nan)
            start, pool = step, []
    return ends, means


def passed(steps: list[int], values: list[float], mark: float, drop: float) -> tuple[int | None, list[tuple]]:
    """The first step whose return reaches `mark` (None: never), and the collapses after it: (step, best so far,
    the return, the first later step whose return reaches `mark` again or None) where a return falls more than
    `drop` below the best so far, once per fall (the next counts after a recovery to within `drop`)."""
    first = next((step for step, value in zip(steps, values) if value >= mark), None)
    falls, best, down = [], -math.inf, False
    for i, (step, value) in enumerate(zip(steps, values)):
        if first is None or step < first or not math.isfinite(value):  # a NaN return is no fall and no recovery
            continue
        best = max(best, value)
        if best - value > drop and not down:
            back = next((later for later, v in zip(steps[i + 1:], values[i + 1:]) if v >= mark), None)
            falls.append((step, best, value, back))
        down = best - value > drop
    return first, falls


def study_line(task: str, out: str) -> str:
    """What the task's runs were (from its study.json and runs.csv, so a later analysis states the same)."""
    with open(os.path.join(out, "study.json")) as f:
        study = Study(**json.load(f))
    runs = read_runs(out).values()
    commits, machines = sorted({r["commit"] for r in runs}), sorted({r["machine"] for r in runs})
    return (f"{task}: {study.policy}, preset {study.preset}{', ' + study.train_args if study.train_args else ''}, "
            f"{study.budget:,} agent steps, commit {', '.join(commits)}, {'; '.join(machines)}")


def table(results: list[tuple[list[dict], dict]], header: str, window: float = 0.1) -> str:
    lines = [header, "",
             "| task | configuration | seeds | final | best | steps, core-min to 50% | to 90% | ev | kl | clip |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for rows, scores in results:
        for row in rows:
            if "final" not in row:
                lines.append(f"| {row['task']} | {row['config']} | {row['seeds']} | - | - | - | - | - | - | - |")
                continue
            reach = [f"{row[k][0] / 1e6:.2f}M, {row[k][1]:.1f}" if k in row else "-" for k in ("to50%", "to90%")]
            lines.append(f"| {row['task']} | {row['config']} | {row['seeds']} | {row['final'][0]:.0%} ± "
                         f"{row['final'][1]:.0%} | {row['best'][0]:.0%} ± {row['best'][1]:.0%} | {reach[0]} | "
                         f"{reach[1]} | {row['ev']:.2f} | {row['kl']:.2g} | {row['clip']:.2g} |")
    lines += ["", "Fractions of the scripted player's score; random play for scale:"]
    lines += [f"- {rows[0]['task'] if rows else '?'}: scripted {scores['scripted']:.3f}, random {scores['random']:.3f} "
              f"({scores['random'] / scores['scripted']:.0%})" for rows, scores in results]
    hearts = [row for rows, _ in results for row in rows if row.get("hearts")]
    if hearts:
        lines += ["", f"Hearts per agent-episode over the last {window:.0%} of updates, by seed from seed 0:"]
        lines += [f"- {row['task']} {row['config']}: {', '.join(f'{h:.2f}' for h in row['hearts'])}" for row in hearts]
    marked = [row for rows, _ in results for row in rows if row.get("passed")]
    if marked:
        lines += ["", "Each seed's first update past the pass mark (fractions of the scripted score, per update or per "
                  f"{POOL_STEPS:,} agent steps where updates are shorter), by seed from seed 0, and the collapses after "
                  f"it (a fall of more than {DROP} below the best so far: step, best -> return, and when the return "
                  "was back past the mark, if it came back):"]
        for row in marked:
            firsts = ", ".join("-" if first is None else f"{first / 1e6:.2f}M" for first, _ in row["passed"].values())
            falls = [f"seed {seed} at {step / 1e6:.2f}M ({best:.2f} -> {value:.2f}, "
                     f"{'not back' if back is None else f'back at {back / 1e6:.2f}M'})"
                     for seed, (_, seed_falls) in row["passed"].items() for step, best, value, back in seed_falls]
            count = sum(first is not None for first, _ in row["passed"].values())
            lines.append(f"- {row['task']} {row['config']}: past {PASS_MARK[row['task']]:.0%} in {count} of "
                         f"{len(row['passed'])} ({firsts}); collapses: {'; '.join(falls) or 'none'}")
    return "\n".join(lines) + "\n"


def figure(path: str, results: list[tuple[list[dict], dict, dict]]) -> str:
    try:
        import matplotlib
    except ImportError:
        return 'no figure: it needs matplotlib (pip install -e ".[plots]")'
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    beside = any(len(rows) > 6 for rows, _, _ in results)  # a search's many trials: the legend beside each plot
    fig, axes = plt.subplots(1, len(results), figsize=((9 if beside else 5) * len(results), 3.5), squeeze=False)
    for ax, (rows, scores, curves) in zip(axes[0], results):
        for i, row in enumerate(rows):
            runs = [curves[(row["config"], s)]["episode/return"] for c, s in curves if c == row["config"]]
            grid = np.array(max((steps for steps, _ in runs), key=len), dtype=float)
            ys = np.array([np.interp(grid, steps, values, right=np.nan) for steps, values in runs]) / scores["scripted"]
            for y in ys:  # each seed: learning is often bimodal, and a mean alone hides it
                ax.plot(grid / 1e6, y, color=f"C{i}", alpha=0.3, linewidth=0.7)
            ax.plot(grid / 1e6, np.nanmean(ys, 0), color=f"C{i}", label=f"{row['config']} (mean)")
        ax.axhline(scores["random"] / scores["scripted"], color="gray", linestyle="--", label="random")
        ax.set_title(rows[0]["task"] if rows else "")
        ax.set_xlabel("agent steps (millions)")
        ax.set_ylim(0, 1.05)
        ax.grid(alpha=0.3)
        if beside:
            ax.legend(fontsize=6, ncol=2, loc="upper left", bbox_to_anchor=(1.01, 1))
        else:
            ax.legend(fontsize=7)
    axes[0, 0].set_ylabel("fraction of the scripted score")
    fig.tight_layout()
    fig.savefig(path, dpi=90, bbox_inches="tight")
    plt.close(fig)
    return f"wrote {path}"


def main(args: Args) -> None:
    budgets = dict(zip(args.tasks, args.budgets)) if args.budgets else {t: BUDGETS.get(t, 0) for t in args.tasks}
    try:
        if args.budgets and len(args.budgets) != len(args.tasks):
            raise ValueError(f"--budgets takes one number per task ({len(args.tasks)}), got {len(args.budgets)}")
        unknown = [t for t in args.tasks if t not in BUDGETS]
        if unknown:
            raise ValueError(f"tasks {unknown}: the scripted player plays {sorted(BUDGETS)}")
        configs = {}
        for config in args.configs:
            name, given, options = config.partition("=")
            if not given or not name:
                raise ValueError(f"configuration {config!r}: write name=train.py options (e.g. default=)")
            configs[name] = shlex.split(options)
        results = []
        for task in args.tasks:
            out = os.path.join(args.out, task)
            if args.analyze_only and not os.path.exists(os.path.join(out, "study.json")):
                raise ValueError(f"{out} holds no study of {task}: run it without --analyze-only first")
            if not args.analyze_only:
                study = Study(env=task, policy=args.policy, budget=budgets[task], preset=args.preset,
                              train_args=args.train_args)
                run_all(out, study, configs, args.seeds, args.jobs, args.keep_checkpoints)
                write_curves(out)
            results.append(task_rows(task, out, args.window))
    except ValueError as e:
        sys.exit(f"error: {e}")
    header = "; ".join(study_line(task, os.path.join(args.out, task)) for task in args.tasks) + "."
    summary = table([(rows, scores) for rows, scores, _ in results], header, args.window)
    with open(os.path.join(args.out, "summary.md"), "w") as f:
        f.write(summary)
    print(summary)
    print(figure(os.path.join(args.out, "learning.png"), results))


if __name__ == "__main__":
    main(tyro.cli(Args, description=__doc__))
