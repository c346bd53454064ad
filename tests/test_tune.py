"""scripts/tune.py: a resumable Optuna search whose trials are learning-benchmark runs, every one recorded."""

import csv
import json
import os
import sys

import pytest
import tyro

from trainer.collapse.verdict import seed_numbers
from trainer.runs import read_curves, read_runs

pytest.importorskip("optuna", reason='the search needs the tune extra: pip install -e ".[tune]"')
sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "scripts"))
import tune as tune_script  # noqa: E402 (scripts/ is not a package)


def tune(out, *options) -> str:
    """scripts/tune.py's command line, run in this process (each trial's run is a process of its own): the error
    it exits with, or ""."""
    try:
        tune_script.main(tyro.cli(tune_script.Args, args=["--jobs", "1", "--out", str(out), *options]))
    except SystemExit as e:
        return str(e.code)
    return ""


def trials(out):
    with open(out / "nav" / "trials.csv", newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture
def out(tmp_path, monkeypatch):
    monkeypatch.setattr(os, "cpu_count", lambda: 1)  # one torch thread per run, as pytest-xdist's workers have
    (tmp_path / "nav").mkdir()  # a made-up scripted score: the real one takes 400 scripted episodes to measure
    (tmp_path / "nav" / "reference.json").write_text(json.dumps({"scripted": 3.0, "random": 0.1}))
    return tmp_path


def test_every_trial_is_a_recorded_run_scored_as_a_fraction_of_the_scripted_score_and_the_search_resumes(out, capsys):
    tiny = ["--budget", "512", "--train-args=--num-envs 32 --bptt 8"]  # 256 steps per batch: two updates per run
    assert tune(out, "--trials", "2", *tiny) == ""
    rows = trials(out)
    assert len(rows) == 2 and all(r["score"] and not r["error"] for r in rows)
    assert float(rows[0]["score"]) >= float(rows[1]["score"])  # best first
    runs, curves = read_runs(str(out / "nav")), read_curves(str(out / "nav"))
    for row in rows:  # the run's own command has the trial's options; its score is learning_bench's "final" / 3
        assert runs[(row["trial"], 0)]["command"].endswith(row["options"]) and "--update-epochs" in row["options"]
        steps, values = curves[(row["trial"], 0)]["episode/return"]
        assert float(row["score"]) == pytest.approx(seed_numbers(steps, values, 0.1, 0.0).final / 3.0, abs=1e-4)
    table = (out / "nav" / "trials.md").read_text().splitlines()  # the same trials, best first, drawn values as columns
    assert table[0].startswith("| trial | score | core-min | ev | kl | update_epochs |") and len(table) == 2 + 2
    assert [line.split(" | ")[0][2:] for line in table[2:]] == [r["trial"] for r in rows]
    assert all(line.split(" | ")[5] in {"1", "2", "4"} for line in table[2:])  # epochs, not a boolean's "on"
    capsys.readouterr()
    assert tune(out, "--trials", "3", *tiny) == ""
    assert "1 trials to do (2 finished)" in capsys.readouterr().out and len(trials(out)) == 3
    assert "holds a study with other settings" in tune(out, "--trials", "3", "--budget", "1024")


def test_a_trial_that_crashes_is_recorded_with_its_error_and_bad_input_is_named(out, capsys):
    assert tune(out, "--train-args=--no-such-option 1") == "2"  # train.py's parser refused it, before any run
    assert not (out / "nav" / "runs.csv").exists() and "no-such-option" in capsys.readouterr().err
    assert tune(out, "--trials", "1", "--budget", "512", "--train-args=--num-envs 2 --bptt 8") == ""
    (row,) = trials(out)
    assert row["score"] == "" and "minibatches of" in row["error"] and "CRASHED" in capsys.readouterr().out
    assert "the scripted player plays" in tune(out, "--task", "maze")
    assert "take 1 or more" in tune(out, "--trials", "0")
    assert "choose one of" in tune(out, "--preset", "tpu")
