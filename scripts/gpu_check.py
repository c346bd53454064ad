"""The GPU check: one command that runs the tests on the device and measures it, into one markdown report.

    python scripts/gpu_check.py --out DIR                 # on a CUDA machine: about 8 minutes on one H100/H200
    python scripts/gpu_check.py --out DIR --tiny --no-tests   # on CPU, in seconds: how the suite checks this script

Steps, each in its own process so one failure does not hide the others, each with its log in DIR:
    sync      scripts/bench.py --sync-check: no read back from the device while acting
    sizeN     env-only and end-to-end agent steps/s of Fast on the arena at N maps, three sizes (plain)
    switches  the largest size again with --bf16, --compile, both, --token-conv True, --cuda-graphs, and
              --bf16 --cuda-graphs
    tests     the test suite (on a CUDA machine every trainer test runs on the GPU: the device defaults to cuda)
DIR/report.md has the device, torch version, date, commit and every figure; it is rewritten after every step.
"""

from __future__ import annotations

import datetime
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass

import torch
import tyro

from trainer.runs import commit, machine

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@dataclass
class Args:
    out: str
    """Folder for the report and the logs."""
    tiny: bool = False
    """Tiny sizes (2, 4, 8 maps), one repeat, one thread, no switches: for a CPU, to check this script."""
    tests: bool = True
    """Run the test suite first."""
    timeout: int = 420
    """Seconds each step may take."""


def step(name: str, cmd: list[str], out: str, timeout: int) -> tuple[int, float]:
    """Run `cmd`, its output to out/name.log; (exit code, seconds); 124 when it ran past `timeout`."""
    start = time.perf_counter()
    with open(os.path.join(out, f"{name}.log"), "w") as log:
        try:
            code = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT, timeout=timeout).returncode
        except subprocess.TimeoutExpired:
            code = 124
    print(f"{name}: exit {code} in {time.perf_counter() - start:.0f} s", flush=True)
    return code, time.perf_counter() - start


def write_report(out: str, lines: list[str], results: list[dict]) -> str:
    """DIR/report.md from the steps so far: rewritten after every step, so a check cut short keeps what it measured."""
    lines = lines + ["", "Agent steps/s, Fast on the arena (median of the repeats after a warm-up):", "",
                     "| maps | agents | switches | env | e2e | rollout | learn |", "|---|---|---|---|---|---|---|"]
    for r in results:
        cells = [f"{r[k]:,.0f}" if r.get(k) else "-" for k in ("env", "e2e", "rollout", "learn")]
        lines.append(f"| {r['maps']} | {r.get('agents', '-')} | {r['switches']} | " + " | ".join(cells) + " |")
    report = "\n".join(lines) + "\n"
    with open(os.path.join(out, "report.md"), "w") as f:
        f.write(report)
    return report


def main(args: Args) -> None:
    os.makedirs(args.out, exist_ok=True)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    sizes = [2, 4, 8] if args.tiny else [1024, 4096, 16384]
    repeats = "1" if args.tiny else "3"
    bench = [sys.executable, os.path.join(ROOT, "scripts", "bench.py"), "--device", device, "--repeats", repeats,
             *(["--minibatch-size", "128", "--threads", "1"] if args.tiny else [])]  # 2 segments divide 12+ agents
    lines = [f"# GPU check: {torch.cuda.get_device_name() if device == 'cuda' else machine()}", "",
             f"{datetime.date.today()}, torch {torch.__version__}, commit {commit()}, device {device}"
             f"{', tiny sizes' if args.tiny else ''}.", "", "| step | result | seconds |", "|---|---|---|"]
    code, seconds = step("sync", [*bench, "--what", "act", "--num-envs", str(sizes[1]), "--sync-check"], args.out,
                         args.timeout)
    lines.append(f"| sync check at {sizes[1]} maps | {'no read while acting' if code == 0 else f'exit {code}'} | "
                 f"{seconds:.0f} |")
    results: list[dict] = []
    write_report(args.out, lines, results)
    # one step per size, so a size that runs out of time keeps the smaller ones' figures
    runs = [(f"size{n}", "plain", [*bench, "--what", "env", "e2e", "--num-envs", str(n)]) for n in sizes]
    switches = [] if args.tiny else [["--bf16"], ["--compile"], ["--bf16", "--compile"], ["--token-conv", "True"],
                                      ["--cuda-graphs"], ["--bf16", "--cuda-graphs"]]
    runs += [("switches" + "".join(a for a in s if a.startswith("--")), " ".join(s),
              [*bench, "--what", "e2e", "--num-envs", str(sizes[-1]), *s]) for s in switches]
    for name, used, cmd in runs:
        path = os.path.join(args.out, f"{name}.json")
        code, seconds = step(name, [*cmd, "--json", path], args.out, args.timeout)
        lines.append(f"| {name} | {'done' if code == 0 else f'exit {code}'} | {seconds:.0f} |")
        if code == 0:
            with open(path) as f:
                found = json.load(f)
            results += [{**r, "switches": used} for r in found["results"]]
        write_report(args.out, lines, results)
    if args.tests:  # last: device time is scarce, and the figures are what only this machine can give
        code, seconds = step("tests", [sys.executable, "-m", "pytest", "-q", "-x"], args.out, args.timeout)
        tail = open(os.path.join(args.out, "tests.log")).read().strip().splitlines()[-1:]
        lines.append(f"| tests | {'passed' if code == 0 else f'exit {code}'}: {tail[0] if tail else ''} | {seconds:.0f} |")
    print(write_report(args.out, lines, results))


if __name__ == "__main__":
    main(tyro.cli(Args, description=__doc__))
