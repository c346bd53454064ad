"""A search for the trainer's hyperparameters (Optuna's TPE sampler); every trial is a learning-benchmark run.

    pip install -e ".[tune]"
    python scripts/tune.py --task nav --budget 500000 --trials 24 --train-args="--num-envs 256"

Each trial draws options from `suggest` (on top of the preset), trains --task for --budget agent steps per seed,
and scores the mean over seeds of learning_bench's "final": the return over the last 10% of updates as a fraction
of the scripted player's score. Every trial is a configuration (t000, t001, ...) of one trainer/runs.py study in
--out/<task>: its command is in runs.csv, its curves in curves.csv, so
`learning_bench.py --analyze-only --tasks <task> --out <out>` tables every trial. trials.csv lists each trial's
score, core-minutes and options, best first, and trials.md tables the drawn values with each run's explained
variance and approx_kl. The search resumes where it stopped: run the same command again.
"""

from __future__ import annotations

import csv
import math
import os
import shlex
import sys
import threading
from dataclasses import dataclass

import tyro

from learning_bench import BUDGETS, reference_scores, tail_mean
from trainer.collapse.verdict import seed_numbers
from trainer.config import PRESETS, TrainConfig
from trainer.runs import (Study, claim, read_curves, read_runs, read_scalars, run_name, threads_per_run, train,
                          write_curves)


@dataclass
class Args:
    task: str = "nav"
    """Task whose score the search maximises (nav, memory or arena)."""
    budget: int = 500_000
    """Agent steps per run."""
    trials: int = 24
    """Trials in all (a resumed search runs the ones still missing)."""
    seeds: int = 1
    """Seeds per trial; its score is their mean."""
    jobs: int = 2
    """Trials at once, each run with cpu_count / jobs torch threads."""
    policy: str = "fast"
    """Policy."""
    preset: str = "cpu"
    """scripts/train.py preset the drawn options are applied on."""
    train_args: str = ""
    """More train.py options for every run, e.g. --train-args="--num-envs 256"."""
    sampler_seed: int = 0
    """Seed of the sampler's draws."""
    out: str = "runs/tune"
    """Folder of the search: one study per task inside."""
    window: float = 0.1
    """Fraction of a run's updates averaged for its score."""


def suggest(trial, bptt: int) -> list[str]:
    """The search space as train.py options: what the issue's symptoms point at (timid updates, a blind critic)."""
    number = lambda name, low, high, log=True: f"{trial.suggest_float(name, low, high, log=log):.3g}"  # noqa: E731
    return ["--update-epochs", str(trial.suggest_categorical("update_epochs", [1, 2, 4])),
            "--minibatch-size", str(bptt * trial.suggest_categorical("minibatch_segments", [8, 16, 32])),
            "--learning-rate", number("learning_rate", 3e-4, 1e-2),
            "--anneal-lr" if trial.suggest_categorical("anneal_lr", [False, True]) else "--no-anneal-lr",
            "--ent-coef", number("ent_coef", 1e-4, 3e-2),
            "--norm-adv" if trial.suggest_categorical("norm_adv", [True, False]) else "--no-norm-adv",
            "--vf-coef", number("vf_coef", 0.2, 2.0),
            "--vf-clip-coef", number("vf_clip_coef", 0.1, 10.0),
            "--clip-coef", number("clip_coef", 0.1, 0.3, log=False),
            "--gamma", number("gamma", 0.95, 0.995, log=False),
            "--gae-lambda", number("gae_lambda", 0.8, 0.98, log=False),
            "--lstm-init", trial.suggest_categorical("lstm_init", ["metta", "forget"])]


def write_trials(out: str, study, window: float = 0.1) -> list[dict]:
    """trials.csv: every finished trial, best first (a crashed trial last, with its error); trials.md: the same as a
    table of the drawn values, with each run's explained variance and approx_kl over its last `window` of updates."""
    seconds: dict[str, float] = {}
    for (config, _), row in read_runs(out).items():
        seconds[config] = seconds.get(config, 0.0) + float(row["seconds"])
    curves = read_curves(out)
    trials = sorted((t for t in study.trials if t.state.name == "COMPLETE" or "error" in t.user_attrs),  # not stopped ones
                    key=lambda t: -(t.value if t.value is not None and not math.isnan(t.value) else -math.inf))
    names = list(dict.fromkeys(n for t in trials for n in t.params))  # suggest's order
    rows, lines = [], []
    for t in trials:
        name = f"t{t.number:03d}"
        rows.append({"trial": name, "score": "" if t.value is None else f"{t.value:.4f}",
                     "core_minutes": f"{seconds.get(name, 0) / 60:.1f}", "error": t.user_attrs.get("error", ""),
                     "options": t.user_attrs["options"]})
        ev, kl = (tail_mean([run[tag][1] for (c, _), run in curves.items() if c == name and tag in run], window)
                  for tag in ("losses/explained_variance", "losses/approx_kl"))
        drawn = [f"{v:.3g}" if isinstance(v, float) else ("on" if v else "off") if isinstance(v, bool) else str(v)
                 for v in (t.params.get(n, "-") for n in names)]
        ev, kl = ("-" if math.isnan(x) else f"{x:.2g}" for x in (ev, kl))
        lines.append(f"| {name} | {rows[-1]['score'] or 'crashed'} | {rows[-1]['core_minutes']} | {ev} | {kl} | "
                     + " | ".join(drawn) + " |")
    with open(os.path.join(out, "trials.csv"), "w", newline="") as f:
        writer = csv.DictWriter(f, ["trial", "score", "core_minutes", "error", "options"])
        writer.writeheader()
        writer.writerows(rows)
    with open(os.path.join(out, "trials.md"), "w") as f:
        f.write("| trial | score | core-min | ev | kl | " + " | ".join(names) + " |\n"
                + "|---" * (5 + len(names)) + "|\n" + "".join(line + "\n" for line in lines))
    return rows


def main(args: Args) -> None:
    try:
        import optuna
        from optuna.storages import JournalStorage
        from optuna.storages.journal import JournalFileBackend
    except ImportError:
        sys.exit('error: the search needs Optuna: pip install -e ".[tune]"')
    out = os.path.join(args.out, args.task)
    try:
        if args.trials < 1 or args.seeds < 1 or args.jobs < 1:
            raise ValueError("--trials, --seeds and --jobs take 1 or more")
        if args.task not in BUDGETS:
            raise ValueError(f"task {args.task!r}: the scripted player plays {sorted(BUDGETS)}")
        if args.preset not in PRESETS:
            raise ValueError(f"preset {args.preset!r}: choose one of {sorted(PRESETS)}")
        # the runs' own settings, parsed as train.py parses them (bad train args stop here, not in every trial)
        bptt = tyro.cli(TrainConfig, default=PRESETS[args.preset], args=shlex.split(args.train_args)).bptt
        study = Study(env=args.task, policy=args.policy, budget=args.budget, preset=args.preset,
                      train_args=args.train_args)
        lock = claim(out, study)  # noqa: F841 (held for the whole search)
        scripted = reference_scores(args.task, out)["scripted"]
    except ValueError as e:
        sys.exit(f"error: {e}")
    optuna.logging.set_verbosity(optuna.logging.ERROR)  # a crashed trial is reported below
    search = optuna.create_study(study_name="tune", direction="maximize", load_if_exists=True,
                                 storage=JournalStorage(JournalFileBackend(os.path.join(out, "optuna.log"))),
                                 sampler=optuna.samplers.TPESampler(seed=args.sampler_seed, constant_liar=True))
    for stale in search.get_trials(states=(optuna.trial.TrialState.RUNNING,)):
        search.tell(stale.number, state=optuna.trial.TrialState.FAIL)  # its process was stopped: its runs are redone
    threads, ledger = threads_per_run(args.jobs), threading.Lock()

    def objective(trial) -> float:
        name, options = f"t{trial.number:03d}", suggest(trial, bptt)
        trial.set_user_attr("options", shlex.join(options))
        scores = []
        for seed in range(args.seeds):
            row = train(out, study, name, options, seed, threads, False, ledger)
            if row is None:
                raise KeyboardInterrupt  # the run was stopped: so is the search
            if row["error"]:
                trial.set_user_attr("error", row["error"])
                print(f"{name}: CRASHED: {row['error']}  {shlex.join(options)}", flush=True)
                return math.nan  # Optuna records a failed trial
            steps, values = read_scalars(os.path.join(out, run_name(name, seed)))["episode/return"]
            scores.append(seed_numbers(steps, values, args.window, 0.0).final / scripted)
        print(f"{name}: {sum(scores) / len(scores):.3f} of the scripted score  {shlex.join(options)}", flush=True)
        return sum(scores) / len(scores)

    done = [t for t in search.trials if t.state == optuna.trial.TrialState.COMPLETE or "error" in t.user_attrs]
    todo = args.trials - len(done)
    print(f"{todo} trials to do ({len(done)} finished) of {args.budget:,} agent steps x {args.seeds} seeds on "
          f"{args.task}, {args.jobs} at a time; in {out}", flush=True)
    if todo > 0:
        try:
            search.optimize(objective, n_trials=todo, n_jobs=args.jobs)
        except KeyboardInterrupt:
            sys.exit("interrupted: run the same command again to resume")
    write_curves(out)
    rows = write_trials(out, search, args.window)
    print(f"wrote {out}/trials.csv and trials.md; the best:")
    for row in rows[:5]:
        print(f"  {row['trial']}  {row['score']}  {row['options']}")


if __name__ == "__main__":
    main(tyro.cli(Args, description=__doc__))
