"""Many trainings, each `scripts/train.py` in its own process, in one folder that remembers what finished.

    Study         what every run in the folder shares (saved as study.json; a folder holds one study)
    claim         the folder for one study: locked against a second runner, study.json written or checked
    train         one run of scripts/train.py, its row appended to runs.csv when it ends (threads_per_run: its
                  torch threads when several run at once)
    run_all       runs every (configuration, seed) not finished yet, `jobs` at a time, one torch thread per core
                  each; a row per finished run goes to runs.csv (seconds, error, commit, machine, command). Run it
                  again to resume an interrupted study, or with more seeds or configurations to extend one.
    write_curves  every finished run's logged scalars, one row per update, into curves.csv
    read_runs, read_curves, read_scalars

scripts/reproduce_collapse.py, scripts/learning_bench.py and scripts/tune.py are built on it.
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
from dataclasses import asdict, dataclass

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RUNS_COLUMNS = ["config", "seed", "seconds", "error", "commit", "machine", "command"]
Curves = dict[str, tuple[list[int], list[float]]]  # tag -> (steps, values), one point per update


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
    """scripts/train.py preset: cpu, gpu, or metta (Metta's hyperparameters and semantics at the cpu size)."""
    train_args: str = ""
    """More scripts/train.py options for every run, e.g. --train-args="--lstm-init forget --num-envs 256" (with the =)."""


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
    """The CPU's name, its family and model numbers where the OS gives them (a VM's name, "AMD EPYC", hides the
    generation, and two generations round floats differently: the same seed trains another run), and its cores."""
    model = platform.processor()
    if os.path.exists("/proc/cpuinfo"):
        with open("/proc/cpuinfo") as f:
            info = dict(line.split(":", 1) for line in f.read().split("\n\n")[0].splitlines() if ":" in line)
        info = {k.strip(): v.strip() for k, v in info.items()}
        model = info.get("model name", model)
        if "cpu family" in info and "model" in info:
            model += f" (family {info['cpu family']}, model {info['model']})"
    return f"{model}, {os.cpu_count()} cores"


def read_runs(out: str) -> dict[tuple[str, int], dict]:
    """runs.csv: a row per finished run (the last row, should a run have been done again)."""
    path = os.path.join(out, "runs.csv")
    if not os.path.exists(path):
        return {}
    with open(path, newline="") as f:
        return {(row["config"], int(row["seed"])): row for row in csv.DictReader(f)}


def run_name(config: str, seed: int) -> str:
    """A run's folder in the study's folder."""
    return f"{config}_seed{seed}"


def has_log(out: str, config: str, seed: int) -> bool:
    """The run's folder holds its TensorBoard log."""
    run_dir = os.path.join(out, run_name(config, seed))
    return os.path.isdir(run_dir) and any(name.startswith("events.out.tfevents") for name in os.listdir(run_dir))


def finished(out: str, runs: dict, config: str, seed: int) -> bool:
    """It has its row in runs.csv, and its TensorBoard log (unless it crashed before writing one)."""
    return (config, seed) in runs and (bool(runs[(config, seed)]["error"]) or has_log(out, config, seed))


def train(out: str, study: Study, name: str, options: list[str], seed: int, threads: int,
          keep_checkpoints: bool, ledger: threading.Lock) -> dict | None:
    """One run of train.py, from scratch; its row goes to runs.csv when it ends (a crash is a finished run too).
    A run stopped by Ctrl-C or SIGTERM (exit code 130, 143) or killed by a signal writes no row: None, and the next
    call redoes it."""
    run_dir = os.path.join(out, run_name(name, seed))
    shutil.rmtree(run_dir, ignore_errors=True)  # an interrupted run starts again: a curve is never appended to
    os.makedirs(run_dir)
    cmd = [sys.executable, os.path.join(ROOT, "scripts", "train.py"), "--preset", study.preset,
           "--policy", study.policy, "--env", study.env, "--total-steps", str(study.budget), "--seed", str(seed),
           "--torch-threads", str(threads), "--log-dir", out, "--run-name", run_name(name, seed),
           "--checkpoint-interval", str(10 ** 9), *shlex.split(study.train_args), *options]
    start, code = time.perf_counter(), commit()  # the code the run starts with, whatever changes while it runs
    with open(os.path.join(run_dir, "train.log"), "w") as log:
        log.write(shlex.join(cmd) + "\n")
        log.flush()
        done = subprocess.run(cmd, stdout=log, stderr=subprocess.PIPE, text=True)
        log.write(done.stderr)
    if done.returncode in (130, 143) or done.returncode < 0:  # SIGINT, SIGTERM, or killed: not finished
        return None
    error = ""
    if done.returncode != 0:
        lines = [line for line in done.stderr.splitlines() if line.strip()]
        error = lines[-1] if lines else f"exit code {done.returncode}"
    if not keep_checkpoints and os.path.exists(os.path.join(run_dir, "checkpoint.pt")):
        os.remove(os.path.join(run_dir, "checkpoint.pt"))
    row = {"config": name, "seed": seed, "seconds": f"{time.perf_counter() - start:.0f}", "error": error,
           "commit": code, "machine": machine(), "command": shlex.join(cmd[1:])}
    with ledger:
        path = os.path.join(out, "runs.csv")
        new = not os.path.exists(path)
        with open(path, "a", newline="") as f:
            writer = csv.DictWriter(f, RUNS_COLUMNS)
            if new:
                writer.writeheader()
            writer.writerow(row)
    return row


def claim(out: str, study: Study):
    """The folder `out` for `study`, locked against a second runner (the lock lives as long as the returned file);
    study.json written the first time, and checked every time after: ValueError if it holds another study."""
    os.makedirs(out, exist_ok=True)
    lock_file = open(os.path.join(out, ".lock"), "w")
    try:
        fcntl.flock(lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise ValueError(f"another runner is working in {out}: wait for it, or use another folder") from None
    settings = os.path.join(out, "study.json")
    if os.path.exists(settings):
        with open(settings) as f:
            saved = json.load(f)
        if saved != asdict(study):
            raise ValueError(f"{out} holds a study with other settings ({saved}); use another folder, or the "
                             f"same env, policy, budget, preset and train args")
    else:
        with open(settings, "w") as f:
            json.dump(asdict(study), f, indent=1)
    return lock_file


def threads_per_run(jobs: int) -> int:
    """Torch threads for each of `jobs` runs at once: the cores shared out, so no two runs spin on one core."""
    return max(1, (os.cpu_count() or 1) // jobs)


def run_all(out: str, study: Study, configs: dict[str, list[str]], seeds: int, jobs: int,
            keep_checkpoints: bool = False) -> None:
    """Every configuration (name -> its own train.py options) with seeds 0..seeds-1, skipping finished runs;
    ValueError if the folder holds another study, runs of a name made with other options, or a live runner."""
    lock = claim(out, study)  # noqa: F841 (held until this function returns)
    runs = read_runs(out)
    for name, options in configs.items():
        made = [row for (c, _), row in runs.items() if c == name and not row["command"].endswith(shlex.join(options))]
        if made:
            raise ValueError(f"{out} has runs of {name!r} made with other options ({made[0]['command']}): "
                             "give this configuration another name")
    todo = [(name, seed) for seed in range(seeds) for name in configs if not finished(out, runs, name, seed)]
    threads = threads_per_run(jobs)
    print(f"{len(todo)} runs to do ({seeds * len(configs) - len(todo)} already finished) of {study.budget:,} agent "
          f"steps, {jobs} at a time with {threads} torch threads each; in {out}", flush=True)
    ledger = threading.Lock()
    pool = ThreadPoolExecutor(jobs)
    try:
        work = {pool.submit(train, out, study, name, configs[name], seed, threads, keep_checkpoints, ledger):
                run_name(name, seed) for name, seed in todo}
        for i, future in enumerate(as_completed(work), 1):
            row = future.result()
            status = "interrupted" if row is None else "CRASHED: " + row["error"] if row["error"] else "done"
            print(f"[{i}/{len(todo)}] {work[future]}: {status}" + (f" ({row['seconds']} s)" if row else ""), flush=True)
    except KeyboardInterrupt:  # the runs got the Ctrl-C too: they stop without a row; start no more
        pool.shutdown(wait=True, cancel_futures=True)
        raise ValueError("interrupted: run the same command again to resume") from None
    pool.shutdown()


# --- curves.csv: every finished run's every metric, one row per update -----------------------------------------
def read_scalars(run: str) -> Curves:
    """Every scalar a TensorBoard run logged: tag -> (steps, values)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(run, size_guidance={"scalars": 0})
    events.Reload()
    return {tag: ([p.step for p in events.Scalars(tag)], [p.value for p in events.Scalars(tag)])
            for tag in events.Tags()["scalars"]}


def write_curves(out: str) -> None:
    """curves.csv from every finished run's log; a run whose log is gone keeps the rows it had (nothing is lost)."""
    runs, path = read_runs(out), os.path.join(out, "curves.csv")
    curves = {key: c for key, c in (parse_curves(path) if os.path.exists(path) else {}).items()
              if key in runs and not has_log(out, *key)}
    curves.update({key: read_scalars(os.path.join(out, run_name(*key))) for key in runs if has_log(out, *key)})
    tags = sorted({tag for c in curves.values() for tag in c})
    with open(path + ".tmp", "w", newline="") as f:  # replaced whole below: a reader never sees half of it
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
    os.replace(path + ".tmp", path)


def read_curves(out: str) -> dict[tuple[str, int], Curves]:
    """curves.csv, written again from the finished runs' logs where it lacks one of them (the runner was interrupted
    before it got to it); ValueError if there is no finished run to read."""
    path = os.path.join(out, "curves.csv")
    runs = read_runs(out)
    if os.path.exists(path):
        curves = parse_curves(path)
        # a crashed run may have logged nothing: only runs that ended well must have curves
        if all(key in curves for key in runs if has_log(out, *key) and not runs[key]["error"]):
            return curves
    elif not any(finished(out, runs, *key) for key in runs):
        raise ValueError(f"{out} has no finished run yet (no curves.csv, no row in runs.csv): run the study first")
    write_curves(out)
    return parse_curves(path)


def parse_curves(path: str) -> dict[tuple[str, int], Curves]:
    """curves.csv as (config, seed) -> tag -> (steps, values)."""
    curves: dict[tuple[str, int], Curves] = {}
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            c = curves.setdefault((row["config"], int(row["seed"])), {})
            for tag, value in row.items():
                if tag not in ("config", "seed", "step") and value != "":
                    steps, values = c.setdefault(tag, ([], []))
                    steps.append(int(row["step"]))
                    values.append(float(value))
    return curves


