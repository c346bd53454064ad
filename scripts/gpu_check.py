"""The GPU check, as two commands that fit a 15-minute lease of one GPU (its start included):

    python scripts/gpu_check.py --out DIR              # the check: under 6 minutes on one H200
    python scripts/gpu_check.py --out DIR --learn 4    # the gpu preset on the arena for 4 minutes, ending on time
    python scripts/gpu_check.py --out DIR --tiny --no-tests --device cpu   # in seconds: how the suite checks it

The check: each step a process of its own with its log, each capped so that the whole ends by --minutes:
    sync      scripts/bench.py --sync-check: nothing read back from the device while acting
    e2e       Fast on the arena at the gpu preset's 1,024 maps: env alone, end to end and its halves, plain and
              with --cuda-graphs
    profile   the GPU's busy fraction in a rollout and in a learn, and the host's aten ops per acting step and per
              minibatch, plain and with --cuda-graphs
    tests     the suite on the GPU (where CUDA is, the trainer tests take it), in parallel workers
    switches  --bf16, --compile, --token-conv True, --bf16 --cuda-graphs; 4,096 maps plain and graphed (as time allows)
--learn: scripts/train.py --preset gpu --env arena, stopped after MINUTES with SIGINT (it finishes its update and
saves); beside it, on the CPU, the scripted player's score on the same env. It reports hearts per agent-episode, the
return as a fraction of the scripted score, and the curve.
DIR gets report.md (rewritten after every step: a check cut short keeps what it measured) and logs.tar.gz.
"""

from __future__ import annotations

import datetime
import json
import os
import shlex
import signal
import subprocess
import sys
import tarfile
import time
from dataclasses import dataclass

import torch
import tyro

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from trainer.runs import commit, machine, read_scalars  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STAT_KEYS = ("e2e", "rollout", "learn", "env", "rollout_gpu_busy", "learn_gpu_busy",
             "rollout_host_ops_per_acting_step", "learn_host_ops_per_minibatch")


@dataclass
class Args:
    out: str
    """Folder for report.md and logs.tar.gz."""
    learn: float = 0.0
    """Minutes of arena training with the gpu preset instead of the check (0: the check)."""
    train_args: str = "--cuda-graphs"
    """More scripts/train.py options for --learn, one string (if the run fails with --cuda-graphs, it restarts
    without them)."""
    scripted: bool = True
    """With --learn, compute the scripted player's score on the CPU beside the run (the report's fraction)."""
    minutes: float = 5.8
    """The check's wall-clock budget: each step's cap is what is left of it."""
    tiny: bool = False
    """Tiny sizes (2 maps, bptt 16), one repeat, one thread, no switches: for a CPU, to check this script."""
    device: str = "auto"
    """cuda, cpu, or auto (cuda when available)."""
    tests: bool = True
    """Run the test suite."""


class Check:
    """The steps so far, and the report they make."""

    def __init__(self, out: str, minutes: float, title: str):
        self.out, self.deadline, self.title = out, time.monotonic() + 60 * minutes, title
        self.steps: list[str] = []
        self.rows: list[str] = []

    def run(self, name: str, cmd: list[str], cap: float, env: dict | None = None) -> int | None:
        """`cmd` with its output in out/name.log; its exit code (124 past its time), or None if no time was left."""
        timeout = min(cap, self.deadline - time.monotonic() - 5)
        if timeout < 15:
            self.steps.append(f"| {name} | skipped: the check's time was spent | 0 |")
            return None
        start = time.monotonic()
        with open(os.path.join(self.out, f"{name}.log"), "w") as log:
            try:
                code = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT, timeout=timeout,
                                      env={**os.environ, **(env or {})}).returncode
            except subprocess.TimeoutExpired:
                code = 124
        seconds = time.monotonic() - start
        print(f"{name}: exit {code} in {seconds:.0f} s", flush=True)
        self.steps.append(f"| {name} | {'done' if code == 0 else f'exit {code}: {last_line(self.out, name)}'} | "
                          f"{seconds:.0f} |")
        return code

    def write(self) -> str:
        lines = [self.title, "", "| step | result | seconds |", "|---|---|---|", *self.steps]
        if self.rows:
            lines += ["", "Fast on the arena (scripts/bench.py, median of the repeats after a warm-up; agent steps/s):",
                      "", "| maps | switches | minibatch | e2e | rollout | learn | env | GPU busy: rollout | learn "
                      "| host ops: per acting step | per minibatch |", "|---|---|---|---|---|---|---|---|---|---|---|",
                      *self.rows]
        report = "\n".join(lines) + "\n"
        with open(os.path.join(self.out, "report.md"), "w") as f:
            f.write(report)
        archive(self.out)
        return report


def last_line(out: str, name: str) -> str:
    with open(os.path.join(out, f"{name}.log")) as f:
        lines = [line.strip() for line in f if line.strip()]
    return (lines[-1] if lines else "no output")[:160].replace("|", "/")


def archive(out: str) -> None:
    """Every log and JSON of DIR and the learning run's TensorBoard log in one logs.tar.gz (few files come back;
    checkpoints stay behind)."""
    with tarfile.open(os.path.join(out, "logs.tar.gz"), "w:gz") as tar:
        for name in sorted(os.listdir(out)):
            if name not in ("report.md", "logs.tar.gz"):
                tar.add(os.path.join(out, name), arcname=name,
                        filter=lambda info: None if info.name.endswith(".pt") else info)


def cell(value, percent: bool = False) -> str:
    if value is None:
        return "-"
    return f"{value:.0%}" if percent else f"{value:,.0f}"


def check(args: Args) -> None:
    device = args.device if args.device != "auto" else "cuda" if torch.cuda.is_available() else "cpu"
    sizes = [2, 2] if args.tiny else [1024, 4096]
    bench = [sys.executable, os.path.join(ROOT, "scripts", "bench.py"), "--device", device, "--repeats",
             "1" if args.tiny else "3", *(["--threads", "1", "--bptt", "16", "--minibatch-size", "32"] if args.tiny else [])]
    title = (f"# GPU check: {torch.cuda.get_device_name() if device == 'cuda' else machine()}\n\n"
             f"{datetime.date.today()}, torch {torch.__version__}, commit {commit()}, device {device}"
             f"{', tiny sizes' if args.tiny else ''}; `python scripts/gpu_check.py --out DIR`.")
    run = Check(args.out, args.minutes, title)
    run.run("sync", [*bench, "--what", "act", "--num-envs", str(sizes[0]), "--sync-check"], 60)
    run.write()

    def measure(name: str, maps: int, switches: list[str], what: list[str], profile: bool = False) -> None:
        path = os.path.join(args.out, f"{name}.json")
        cmd = [*bench, "--what", *what, "--num-envs", str(maps), *switches, "--json", path]
        if run.run(name, cmd + (["--profile"] if profile else []), 120) == 0:
            for r in json.load(open(path))["results"]:
                run.rows.append(f"| {maps} | {' '.join(switches) or 'plain'} | {r.get('minibatch', '-')} | "
                                + " | ".join(cell(r.get(k), "busy" in k) for k in STAT_KEYS) + " |")
        run.write()

    measure("e2e", sizes[0], [], ["env", "e2e"])
    if device == "cuda":
        measure("e2e_graphs", sizes[0], ["--cuda-graphs"], ["e2e"])
    measure("profile", sizes[0], [], ["env"] if args.tiny else ["e2e"], profile=True)
    if device == "cuda":
        measure("profile_graphs", sizes[0], ["--cuda-graphs"], ["e2e"], profile=True)
    if args.tests:
        workers = str(max(1, (os.cpu_count() or 2) - 1))  # the suite took 188 s with 15 workers on an H200's 16 cores
        code = run.run("tests", [sys.executable, "-m", "pytest", "-q", "-n", workers, "-p", "no:cacheprovider",
                                 "--ignore", "tests/test_learning.py", "-x" if args.tiny else "-rf"], 220)
        if code is not None:
            failed = [line for line in open(os.path.join(args.out, "tests.log")) if line.startswith("FAILED")]
            run.steps += [f"| tests: {line.strip()[:200]} | | |" for line in failed[:40]]
        run.write()
    if not args.tiny:
        for switches in (["--bf16"], ["--compile"], ["--token-conv", "True"], ["--bf16", "--cuda-graphs"]):
            measure("switch" + "".join(s for s in switches if s.startswith("--")), sizes[0], switches, ["e2e"])
        measure("size4096", sizes[1], [], ["e2e"])
        measure("size4096_graphs", sizes[1], ["--cuda-graphs"], ["e2e"])
    print(run.write())


# --- --learn: the gpu preset on the arena for a fixed time -----------------------------------------------------
REFERENCE = """import sys, torch
torch.set_num_threads(4)
sys.path.insert(0, {root!r}); sys.path.insert(0, {scripts!r})
from learning_bench import reference_scores
print(reference_scores("arena", {out!r}))"""


def train_for(seconds: float, options: list[str], out: str, log_name: str) -> tuple[int, str]:
    """scripts/train.py with `options` until it ends or `seconds` pass, then SIGINT (it saves and stops)."""
    cmd = [sys.executable, os.path.join(ROOT, "scripts", "train.py"), "--preset", "gpu", "--env", "arena",
           "--log-dir", os.path.join(out, "runs"), *options]
    with open(os.path.join(out, log_name), "w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT,
                                env={**os.environ, "PYTHONUNBUFFERED": "1"})
        try:
            return proc.wait(timeout=seconds), " ".join(cmd[1:])
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGINT)
        try:
            return proc.wait(timeout=60), " ".join(cmd[1:])
        except subprocess.TimeoutExpired:
            proc.kill()
            return 124, " ".join(cmd[1:])


def learn(args: Args) -> None:
    start = time.monotonic()
    budget = 60 * args.learn
    grace = min(70.0, budget / 4)  # to stop, save, and write the report
    scores = os.path.join(args.out, "scripted")
    os.makedirs(scores, exist_ok=True)
    reference = subprocess.Popen(
        [sys.executable, "-c", REFERENCE.format(root=ROOT, scripts=os.path.join(ROOT, "scripts"), out=scores)]
        if args.scripted else ["true"], stdout=subprocess.DEVNULL, stderr=open(os.path.join(args.out, "scripted.log"), "w"))
    name, options = "arena_gpu", shlex.split(args.train_args)
    code, cmd = train_for(budget - grace, [*options, "--run-name", name], args.out, "train.log")
    if code not in (0, 130) and "--cuda-graphs" in options:  # the graphs failed: the rest of the time without them
        name, options = "arena_gpu_eager", [o for o in options if o != "--cuda-graphs"]
        code, cmd = train_for(budget - grace - (time.monotonic() - start), [*options, "--run-name", name],
                              args.out, "train_eager.log")
    try:
        reference.wait(timeout=max(1.0, budget - (time.monotonic() - start) - grace / 7))
    except subprocess.TimeoutExpired:
        reference.kill()
    path = os.path.join(scores, "reference.json")
    scripted = json.load(open(path))["scripted"] if os.path.exists(path) else None
    run_dir = os.path.join(args.out, "runs", name)
    lines = [f"# Learning on the GPU: {torch.cuda.get_device_name() if torch.cuda.is_available() else machine()}", "",
             f"{datetime.date.today()}, torch {torch.__version__}, commit {commit()}; "
             f"`python scripts/gpu_check.py --out DIR --learn {args.learn:g}`: `python {cmd}`, exit {code}, stopped "
             f"after {(time.monotonic() - start) / 60:.1f} minutes.", ""]
    curves = read_scalars(run_dir) if os.path.isdir(run_dir) else {}
    if "charts/SPS" not in curves:
        lines.append("The run logged no update: see train.log in logs.tar.gz.")
    else:
        steps, sps = curves["charts/SPS"]
        tail = max(1, len(steps) // 10)

        def last(tag: str) -> float | None:
            values = curves.get(tag, ([], []))[1][-tail:]
            return sum(values) / len(values) if values else None
        ret, hearts = last("episode/return"), last("episode/heart_gained")
        lines += [f"- {len(steps)} updates, {steps[-1]:,} agent steps, median {sorted(sps)[len(sps) // 2]:,.0f} "
                  "agent steps/s (updates of the whole run, first included)",
                  f"- over the last 10% of updates: return {ret if ret is None else f'{ret:.3f}'} per agent-episode"
                  + (f", {ret / scripted:.1%} of the scripted player's {scripted:.3f}" if ret is not None and scripted
                     else " (no scripted score: --no-scripted, or not computed in time)")
                  + f"; hearts {hearts if hearts is None else f'{hearts:.3f}'}, batteries "
                  f"{last('episode/battery_red_gained') or 0:.3f}, ore {last('episode/ore_red_gained') or 0:.3f} "
                  "per agent-episode", "", "| agent steps | return | hearts | batteries | ore | SPS |",
                  "|---|---|---|---|---|---|"]
        by_step = [dict(zip(*curves.get(f"episode/{k}", ([], []))))
                   for k in ("return", "heart_gained", "battery_red_gained", "ore_red_gained")]
        for i in sorted({*range(0, len(steps), max(1, len(steps) // 12)), len(steps) - 1}):
            lines.append(f"| {steps[i]:,} | " + " | ".join(f"{v[steps[i]]:.3f}" if steps[i] in v else "-"
                                                             for v in by_step) + f" | {sps[i]:,.0f} |")
    report = "\n".join(lines) + "\n"
    with open(os.path.join(args.out, "report.md"), "w") as f:
        f.write(report)
    archive(args.out)
    print(report)


def main(args: Args) -> None:
    os.makedirs(args.out, exist_ok=True)
    learn(args) if args.learn else check(args)


if __name__ == "__main__":
    main(tyro.cli(Args, description=__doc__))
