"""The collapse study's rule (trainer/collapse/verdict.py) on synthetic curves, and scripts/reproduce_collapse.py
end to end: a crash reported, its outputs written, an interrupted study resumed without redoing finished runs."""

import os
import sys

import pytest

from trainer.collapse.verdict import RETURN, seed_numbers, summarize

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def curve(values):
    return {RETURN: ([1000 * (i + 1) for i in range(len(values))], list(values))}


def verdicts(runs: dict, errors=None, window=0.3):
    configs = list(dict.fromkeys(c for c, _ in runs))
    return {row.config: row.verdict for row in summarize(runs, errors or {}, configs, window, 0.05)}


RISE_FALL = [0.1, 0.1, 0.5, 0.5, 0.5, 0.15, 0.15]  # rose 0.4, kept 0.05 of it
GOOD = [0.1, 0.1, 0.5, 0.5, 0.5, 0.5, 0.5]


def test_collapse_definition():
    assert seed_numbers(*curve(RISE_FALL)[RETURN], 0.3, 0.05).collapsed
    dip = seed_numbers(*curve([0.1, 0.1, 0.5, 0.5, 0.5, 0.4, 0.4])[RETURN], 0.3, 0.05)  # kept 0.3 of 0.4
    assert not dip.collapsed and dip.peak == 0.5 and dip.peak_step == 4000 and dip.initial == 0.1
    never = seed_numbers(*curve([0.1, 0.12, 0.13, 0.1, 0.08, 0.05, 0.05])[RETURN], 0.3, 0.05)  # never rose 0.05
    assert not never.collapsed


def test_each_verdict_of_the_rule():
    runs = {}
    for seed in range(3):
        good = [v + 0.01 * seed for v in GOOD]
        runs |= {("fixed", seed): curve(good), ("falls", seed): curve(RISE_FALL),
                 ("worse", seed): curve([v - 0.2 - 0.01 * seed for v in good]),
                 ("better", seed): curve([v + 0.2 + 0.01 * seed for v in good]),
                 ("same", seed): curve([v + 0.001 * seed for v in good]),
                 ("late", seed): curve([0.1, 0.1, 0.1, 0.1, 0.1, 0.5, 0.5, 0.5]),  # same final, reached 3x later
                 # one seed far below its pair, two equal: the mean is within noise
                 ("split", seed): curve([0.1] * 7 if seed == 0 else good)}
    runs[("crash", 0)] = curve(GOOD)
    assert verdicts(runs, {("crash", 1): "RuntimeError: boom"}) == {
        "fixed": "reference", "falls": "collapses", "worse": "degrades", "better": "improves",
        "same": "no measurable effect", "late": "slows", "split": "mixed", "crash": "crashes"}


def test_summary_numbers_are_paired_by_seed():
    runs = {("fixed", 0): curve([0.1, 0.5]), ("fixed", 1): curve([0.1, 0.7]),
            ("x", 0): curve([0.1, 0.4]), ("x", 1): curve([0.1, 0.5])}
    fixed, x = summarize(runs, {}, ["fixed", "x"], 0.5, 0.05)
    assert fixed.final == pytest.approx((0.6, 0.1414213), rel=1e-5)
    assert x.vs_fixed == pytest.approx((-0.15, 0.05))  # differences -0.1 and -0.2: mean, sd / sqrt(2)
    assert x.final == pytest.approx((0.45, 0.0707106), rel=1e-5) and x.seeds == 2 and x.collapsed == 0


def study():
    sys.path.insert(0, os.path.join(ROOT, "scripts"))
    import reproduce_collapse
    return reproduce_collapse


SMALL = "--num-envs 8 --bptt 16 --minibatch-size 64 --env-overrides max_steps 10"


def test_reproduce_collapse_reports_a_crash_resumes_and_extends(tmp_path, capsys):
    s = study()
    args = s.Args(configs=["fixed", "no_detach+no_memory_reset"], seeds=1, out=str(tmp_path),
                  study=s.Study(budget=8 * 16 * 3, train_args=SMALL))
    s.main(args)
    summary = (tmp_path / "summary.md").read_text()
    assert "| fixed | 1 |" in summary and "| no_detach+no_memory_reset | 1 | - |" in summary and "crashes" in summary
    assert "backward through the graph a second time" in summary
    assert (tmp_path / "curves.csv").read_text().startswith("config,seed,step,")
    assert "losses/grad_norm" in (tmp_path / "curves.csv").read_text().splitlines()[0]
    # an interrupted run (a folder without its row in runs.csv) is done again; finished ones are skipped
    os.makedirs(tmp_path / "fixed_seed1")
    capsys.readouterr()
    s.main(args.__class__(**{**vars(args), "seeds": 2, "configs": ["fixed", "forget=--lstm-init forget"]}))
    assert "3 runs to do (1 already finished)" in capsys.readouterr().out
    rows = (tmp_path / "runs.csv").read_text().splitlines()
    assert len(rows) == 1 + 5 and sum(r.startswith("fixed,0,") for r in rows) == 1
    assert "| forget | 2 |" in (tmp_path / "summary.md").read_text()
    with pytest.raises(SystemExit, match="holds a study with other settings"):
        s.main(args.__class__(**{**vars(args), "study": s.Study(budget=999)}))
    with pytest.raises(SystemExit, match="unknown fault 'typo'"):
        s.main(s.Args(configs=["fixed", "typo"], out=str(tmp_path)))
