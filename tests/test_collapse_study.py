"""The collapse study's rule (trainer/collapse/verdict.py) on synthetic curves, and scripts/reproduce_collapse.py
on trainer/runs.py end to end: a crash reported, its outputs written, an interrupted study resumed without redoing
finished runs."""

import os
import shutil
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
                 ("late", seed): curve([0.1, 0.1, 0.1, 0.1, 0.1, 0.5, 0.5]),  # same final, reached 1.75x later
                 # one seed far below its pair, two equal: the mean is within noise
                 ("split", seed): curve([0.1] * 7 if seed == 0 else good)}
    runs[("crash", 0)] = curve(GOOD)
    runs[("nan", 0)] = curve([0.1, float("nan"), 0.5, 0.5, 0.5, 0.5, 0.5])
    assert verdicts(runs, {("crash", 1): "RuntimeError: boom"}) == {
        "fixed": "reference", "falls": "collapses", "worse": "degrades", "better": "improves",
        "same": "no measurable effect", "late": "slows", "split": "mixed", "crash": "crashes", "nan": "diverges"}


def step_curve(rise_at, low=0.1, high=0.5, n=100):
    return curve([low] * rise_at + [high] * (n - rise_at))


def verdict_of(mine: list[dict], fixed: list[dict], window=0.01):
    runs = {("fixed", s): c for s, c in enumerate(fixed)} | {("x", s): c for s, c in enumerate(mine)}
    return verdicts(runs, window=window)["x"]


FIXED = [step_curve(20)] * 3  # rises from 0.1 to 0.5 at step 21,000 (one point per 1,000 steps)


@pytest.mark.parametrize("mine, expected", [
    # collapses: rose 0.4 and kept less than half of it, in most seeds
    ([curve([0.1] * 20 + [0.5] * 40 + [0.29] * 40)] * 3, "collapses"),  # kept 0.19 of 0.4
    ([curve([0.1] * 20 + [0.5] * 40 + [0.31] * 40)] * 3, "degrades"),  # kept 0.21: not a collapse
    ([curve([0.1] * 20 + [0.5] * 40 + [0.29] * 40)] * 2 + [step_curve(20)], "collapses"),  # 2 of 3
    ([curve([0.1] * 20 + [0.5] * 40 + [0.29] * 40)] + [step_curve(20)] * 2, "mixed"),  # 1 of 3
    # degrades: at least min_rise (0.05) below, beyond 2 standard errors, over at least 2 pairs
    ([step_curve(20, high=0.44)] * 3, "degrades"),
    ([step_curve(20, high=0.46)] * 3, "no measurable effect"),  # consistent, but less than min_rise
    ([step_curve(20, high=0.3)], "mixed"),  # one seed: no standard error, so no verdict on the mean
    ([step_curve(20, high=h) for h in (0.30, 0.40, 0.44)], "degrades"),  # -0.15 +- 0.041: 3.7 errors
    ([step_curve(20, high=h) for h in (0.20, 0.40, 0.46)], "mixed"),  # -0.153 +- 0.078: 1.96 errors
    # slows: most seeds reach 80% of the pair's rise more than 1.5x later than fixed, or never
    ([step_curve(29)] * 3, "no measurable effect"),  # 30,000 / 21,000 = 1.43x
    ([step_curve(33)] * 3, "slows"),  # 34,000 / 21,000 = 1.62x
    ([step_curve(33, high=0.6)] * 2 + [step_curve(20, high=0.45)], "slows"),  # late and far: slows comes first
    ([step_curve(20, high=0.1)] * 3, "degrades"),  # never there, and far below: worse, not slower
    # mixed: a seed min_rise from its pair while the mean is within noise
    ([step_curve(20, high=0.44)] + [step_curve(20)] * 2, "mixed"),
    ([step_curve(20, high=0.46)] + [step_curve(20)] * 2, "no measurable effect"),
])
def test_the_rule_at_its_boundaries(mine, expected):
    assert verdict_of(mine, FIXED) == expected


def test_no_speed_verdict_where_fixed_did_not_rise():
    assert verdict_of([step_curve(20, low=0.07, high=0.07)] * 3, [step_curve(20, high=0.1)] * 3) == "no measurable effect"


def test_the_window_is_rounded_and_a_pair_needs_runs_of_the_same_length():
    ten = seed_numbers(list(range(1, 11)), [0.0, 0.0, 0.0, 1.0, 1, 1, 1, 1, 1, 1], 0.35, 0.05)
    assert ten.initial == 0.25  # round(3.5) = 4 points
    short = {("fixed", s): step_curve(20) for s in range(3)} | {("x", s): step_curve(20, n=80) for s in range(3)}
    assert verdicts(short, window=0.01)["x"] == "no fixed runs to compare with"


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
                  study=s.Study(preset="metta", budget=8 * 16 * 3, train_args=SMALL))
    s.main(args)
    summary = (tmp_path / "summary.md").read_text()
    assert "| fixed | 1 |" in summary and "| no_detach+no_memory_reset | 1 | - |" in summary and "crashes" in summary
    assert "backward through the graph a second time" in summary
    assert (tmp_path / "curves.csv").read_text().startswith("config,seed,step,")
    assert "losses/grad_norm" in (tmp_path / "curves.csv").read_text().splitlines()[0]
    # a runner stopped before it wrote curves.csv: the analysis writes it from the finished runs' logs
    curves = (tmp_path / "curves.csv").read_text()
    os.remove(tmp_path / "curves.csv")
    s.main(args.__class__(**{**vars(args), "analyze_only": True}))
    assert (tmp_path / "curves.csv").read_text() == curves and (tmp_path / "summary.md").read_text() == summary
    # one stopped after a run finished and before it wrote curves.csv again: the run missing from it is read in
    # (the crashed run logged nothing: it has no curve to miss)
    (tmp_path / "curves.csv").write_text("".join(line for line in curves.splitlines(keepends=True)
                                                 if not line.startswith("fixed,")))
    s.main(args.__class__(**{**vars(args), "analyze_only": True}))
    assert (tmp_path / "curves.csv").read_text() == curves and (tmp_path / "summary.md").read_text() == summary
    written = os.stat(tmp_path / "curves.csv").st_mtime_ns
    s.main(args.__class__(**{**vars(args), "analyze_only": True}))
    assert os.stat(tmp_path / "curves.csv").st_mtime_ns == written  # complete: read, not written again
    # an interrupted run (a folder without its row in runs.csv) is done again; finished ones are skipped
    os.makedirs(tmp_path / "fixed_seed1")
    capsys.readouterr()
    s.main(args.__class__(**{**vars(args), "seeds": 2, "configs": ["fixed", "forget=--lstm-init forget"]}))
    assert "3 runs to do (1 already finished)" in capsys.readouterr().out
    rows = (tmp_path / "runs.csv").read_text().splitlines()
    assert len(rows) == 1 + 5 and sum(r.startswith("fixed,0,") for r in rows) == 1
    assert "| forget | 2 |" in (tmp_path / "summary.md").read_text()
    with pytest.raises(SystemExit, match="holds a study with other settings"):
        s.main(args.__class__(**{**vars(args), "study": s.Study(preset="metta", budget=999)}))
    with pytest.raises(SystemExit, match="runs Metta's hyperparameters and semantics: --preset metta"):
        s.main(args.__class__(**{**vars(args), "study": s.Study(preset="cpu", budget=8 * 16 * 3, train_args=SMALL)}))
    with pytest.raises(SystemExit, match="unknown fault 'typo'"):
        s.main(s.Args(configs=["fixed", "typo"], out=str(tmp_path)))
    # curves written again keep the rows of a run whose log is gone (a study copied without its run folders)
    from trainer.runs import parse_curves, write_curves
    before = parse_curves(str(tmp_path / "curves.csv"))
    shutil.rmtree(tmp_path / "fixed_seed0")
    write_curves(str(tmp_path))
    assert parse_curves(str(tmp_path / "curves.csv")) == before and ("fixed", 0) in before


def test_every_configuration_runs_with_mettas_hyperparameters_and_semantics_whatever_the_presets_were_tuned_to():
    import dataclasses

    import tyro

    from trainer.config import METTA, PRESETS, TrainConfig

    s = study()
    preset = s.Args().study.preset
    for config, own in (("fixed", {}), ("no_relu", {"faults": "no_relu"}), ("prefix", {"faults": "prefix"}),
                        ("forget=--lstm-init forget", {"lstm_init": "forget"})):
        cfg = tyro.cli(TrainConfig, default=PRESETS[preset], args=s.config_args(config))
        assert (cfg.memory, cfg.horizon_bootstrap, cfg.truncation_bootstrap) == ("reset", False, "previous")
        # every setting is Metta's but the sizes and what the configuration itself sets
        expected = TrainConfig(**METTA).replace(num_envs=64, minibatch_size=1024, learning_rate=3e-3, **own)
        for f in dataclasses.fields(TrainConfig):
            assert getattr(cfg, f.name) == getattr(expected, f.name), f.name


def test_configurations_are_checked_before_anything_runs(tmp_path):
    s = study()
    for configs, message in ((["fixed", "fixed"], "named twice"),
                             (["fixed=--lstm-init forget"], "takes the name of fixed"),
                             (["no_relu=--lstm-init forget"], "takes the name of fixed or of a fault"),
                             (["a b=--seed 1"], "use letters, digits")):
        with pytest.raises(SystemExit, match=message):
            s.main(s.Args(configs=configs, out=str(tmp_path)))


def test_a_run_stopped_by_ctrl_c_or_a_signal_writes_no_row(tmp_path, monkeypatch):
    import subprocess
    import threading

    from trainer import runs

    for code in (130, -9, 1):
        monkeypatch.setattr(runs.subprocess, "run", lambda *a, _c=code, **k: subprocess.CompletedProcess(a, _c, "", "boom"))
        row = runs.train(str(tmp_path), runs.Study(), "fixed", [], code % 7, 1, False, threading.Lock())
        assert (row is None) == (code != 1)
    assert list(runs.read_runs(str(tmp_path))) == [("fixed", 1)]
    assert runs.read_runs(str(tmp_path))[("fixed", 1)]["error"] == "boom"


def test_train_py_exits_130_after_a_ctrl_c(tmp_path):
    import signal
    import subprocess

    cmd = [sys.executable, os.path.join(ROOT, "scripts", "train.py"), "--env", "nav", "--preset", "cpu",
           "--num-envs", "8", "--bptt", "16", "--minibatch-size", "64", "--total-steps", "10000000",
           "--log-dir", str(tmp_path), "--torch-threads", "1"]
    run = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    for line in run.stdout:
        if line.startswith("update 2/"):
            run.send_signal(signal.SIGINT)
            break
    assert run.wait(timeout=60) == 130
    assert (tmp_path / "nav_fast_0" / "checkpoint.pt").exists()


def test_other_curves_report_final_and_peak_per_configuration():
    from trainer.collapse.verdict import other_curves

    battery = "episode/battery_red_gained"
    runs = {("fixed", s): {battery: ([1000 * (i + 1) for i in range(10)], [0, 0, 1, 1, 0, 0, 0, 0, 0, 0])}
            for s in range(2)}
    assert other_curves(runs, ["fixed"], (battery,), 0.2) == {"fixed": {battery: (0.0, 1.0)}}  # made, then lost


def test_largest_jump_of_a_weight_norm():
    from trainer.collapse.verdict import largest_jump

    run = {"weights/critic_norm": ([1, 2, 3], [16.0, 16.5, 31.0]), "weights/actor_norm": ([1, 2, 3], [12.0, 12.5, 13.0]),
           "episode/return": ([1, 2, 3], [0.0, 0.1, 0.2])}
    assert largest_jump(run) == ("critic", 16.5, 31.0, 3) and largest_jump({}) is None


def test_curves_of_a_study_without_a_finished_run_are_refused_by_name(tmp_path):
    from trainer.runs import read_curves
    with pytest.raises(ValueError, match="has no finished run yet"):
        read_curves(str(tmp_path))


def test_the_probe_replays_a_run_and_its_base_variant_repeats_the_update_exactly(tmp_path):
    """scripts/collapse_probe.py follows the very run train.py makes (its per-update numbers are the run's); from the
    snapshot before the update it takes apart, `base` repeats it to the last bit after other variants ran (each is
    undone), the others change it; --reuse-snapshot starts from the saved state of the same run only."""
    import csv

    import tyro

    sys.path.insert(0, os.path.join(ROOT, "scripts"))
    import collapse_probe

    from trainer.config import PRESETS
    from trainer.loop import Trainer

    def read(name):
        with open(tmp_path / name) as f:
            return list(csv.DictReader(f))

    run = ["--policy", "example", "--total-steps", "3072", "--train-args=--num-envs 16 --bptt 16 --minibatch-size 64",
           "--at-update", "2", "--follow", "1", "--out", str(tmp_path)]
    others = ["lr0.01", "eps1e-3", "beta2_0.9", "reshuffle3", "target_kl1e-6", "scale_peak", "no_norm_adv+ent0.1", "kl1",
              "update_clip0.5"]
    collapse_probe.main(tyro.cli(collapse_probe.Args, args=[*run, "--variants", *others, "base"]))
    updates, variants = read("updates.csv"), {r["variant"]: r for r in read("variants.csv")}
    assert [int(r["update"]) for r in updates] == [1, 2]
    assert all(float(r["cue_memory_gap"]) > 0 and 0 <= float(r["cue_action_gap"]) <= 1 for r in updates)
    base = variants["base"]
    # the heads do not touch the memory, and the critic does not act: the breaking update's change to every part but
    # the critic is its whole change to the cue, and to the critic alone none (the cue as after update 1)
    parts = {r["updated"]: r for r in read("parts.csv")}
    assert set(parts) == {f"{a}{p}" for p in ("encoder", "memory", "critic", "actor") for a in ("", "all but ")}
    assert parts["all but critic"]["cue_action_gap"] == base["cue_action_gap"]
    assert parts["all but actor"]["cue_memory_gap"] == base["cue_memory_gap"]
    assert parts["critic"]["cue_action_gap"] == updates[0]["cue_action_gap"]
    assert parts["memory"]["cue_memory_gap"] != updates[0]["cue_memory_gap"]
    assert variants["base"]["approx_kl"] == updates[1]["approx_kl"]
    assert all(variants[v]["approx_kl"] != updates[1]["approx_kl"] for v in others)
    assert int(variants["target_kl1e-6"]["minibatches"]) == 2  # the first minibatch's KL is 0; the second's passes it
    rows = read("minibatches.csv")
    assert len(rows) == 2 * 4 and all(float(r["adv_std"]) > 0 and float(r["top_moved"]) > 0 for r in rows)
    assert all(float(r["update_rms_max"]) > 0 for r in rows)
    # each re-run's minibatches, base's those of the replay's update 2 (measuring the gradient's sources first
    # changes nothing); the critic takes no gradient from the surrogate or the entropy, the actor none from the value
    steps = [r for r in read("variant_minibatches.csv") if r["variant"] == "base"]
    assert [r["approx_kl"] for r in steps] == [r["approx_kl"] for r in rows[4:]]
    for r in steps:
        assert float(r["grad_critic_policy"]) == float(r["grad_critic_entropy"]) == float(r["grad_actor_value"]) == 0
        assert all(float(r[f"grad_{part}_{term}"]) > 0 for part in ("encoder", "memory") for term in ("policy", "value"))

    cfg = PRESETS["cpu"].replace(policy="example", env="memory", total_steps=3072, num_envs=16, bptt=16,
                                 minibatch_size=64, torch_threads=1, log_dir=str(tmp_path / "tb"))
    plain = [m for m in Trainer(cfg).train(3, quiet=True)]
    assert [m["approx_kl"] for m in plain[:2]] == [float(r["approx_kl"]) for r in updates]
    assert plain[2]["episode/return"] == float(variants["base"]["return_1"])

    os.remove(tmp_path / "updates.csv")
    collapse_probe.main(tyro.cli(collapse_probe.Args, args=[*run, "--reuse-snapshot", "--variants", "base"]))
    assert not os.path.exists(tmp_path / "updates.csv")  # no replay: the saved state before update 2
    assert read("variants.csv")[0]["approx_kl"] == variants["base"]["approx_kl"]
    with pytest.raises(SystemExit, match="another run"):
        collapse_probe.main(tyro.cli(collapse_probe.Args, args=[*run, "--seed", "1", "--reuse-snapshot"]))
    with pytest.raises(SystemExit, match="beta2 takes a beta in"):
        collapse_probe.main(tyro.cli(collapse_probe.Args, args=[*run, "--variants", "beta2_1"]))
