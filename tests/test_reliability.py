"""A long run that meets non-finite numbers, signals, failing disks and bad settings keeps its work and says what
happened."""

import io
import math
import os
import random
import re
import shlex
import signal
import subprocess
import sys
import zipfile

import pytest
import torch
import tyro
from test_trainer import load_script, small_config

import trainer.ppo as ppo_module
from trainer import Trainer
from trainer.checkpoint import load_checkpoint
from trainer.loop import NonFiniteError


def poison_update(monkeypatch, run, update):
    """Make the value loss of every minibatch of `update` (0-based) not a number."""
    real = ppo_module.ppo_loss

    def poisoned(*args, **kwargs):
        out = real(*args, **kwargs)
        if run.update == update:
            nan = torch.tensor(math.nan)
            return out._replace(v_loss=out.v_loss * nan, loss=out.loss * nan)
        return out

    monkeypatch.setattr(ppo_module, "ppo_loss", poisoned)


def test_a_non_finite_loss_stops_the_run_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    run = Trainer(small_config(log_dir=str(tmp_path), checkpoint_interval=1, total_steps=8 * 16 * 6))
    poison_update(monkeypatch, run, 3)
    with pytest.raises(NonFiniteError, match=r"update 4: the value loss of minibatch 1 of 2 is not a finite number\. "
                                             r"The run stopped without saving: the last good checkpoint is .*"
                                             r"checkpoint.pt \(update 3\)"):
        run.train(quiet=True)
    saved = load_checkpoint(run.checkpoint_path)
    assert saved["update"] == 3 and all(torch.isfinite(v).all() for v in saved["policy"].values())


def test_skip_mode_skips_and_counts_the_bad_minibatches(tmp_path, monkeypatch):
    run = Trainer(small_config(log_dir=str(tmp_path), nonfinite="skip", total_steps=8 * 16 * 6))
    poison_update(monkeypatch, run, 3)
    history = run.train(quiet=True)
    assert [h["skipped_minibatches"] for h in history] == [0, 0, 0, 2, 0, 0]
    assert all(torch.isfinite(p).all() for p in run.policy.parameters())


def test_a_failing_checkpoint_write_keeps_the_previous_one_and_says_why(tmp_path, monkeypatch):
    import trainer.checkpoint as checkpoint

    run = Trainer(small_config(log_dir=str(tmp_path)))
    run.train(updates=1, quiet=True)
    before = (tmp_path / "nav_fast_0" / "checkpoint.pt").read_bytes()

    def full_disk(obj, path):
        open(path, "wb").write(b"half a checkp")
        raise RuntimeError("PytorchStreamWriter failed writing file data/0: file write failed")

    monkeypatch.setattr(checkpoint.torch, "save", full_disk)
    with pytest.raises(OSError, match=r"could not write the checkpoint .*checkpoint.pt \(PytorchStreamWriter failed"
                                      r".*\); the previous checkpoint there, if any, is intact"):
        run.train(updates=1, quiet=True)
    assert (tmp_path / "nav_fast_0" / "checkpoint.pt").read_bytes() == before
    assert not (tmp_path / "nav_fast_0" / "checkpoint.pt.tmp").exists()


CLI = ["--env", "nav", "--preset", "cpu", "--num-envs", "8", "--bptt", "16", "--minibatch-size", "64",
       "--env-overrides", "max_steps", "10", "--torch-threads", "1", "--checkpoint-interval", "1000"]


def train_cli(tmp_path, *args, stop_with=None):
    """scripts/train.py in a subprocess; with `stop_with`, that signal once update 2 has been printed."""
    script = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "scripts", "train.py")
    run = subprocess.Popen([sys.executable, script, "--log-dir", str(tmp_path), *args], stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, text=True)
    lines = []
    for line in run.stdout:
        lines.append(line)
        if stop_with is not None and line.startswith("update 2/"):
            run.send_signal(stop_with)
            stop_with = None
    return run.wait(timeout=120), "".join(lines)


def test_a_minibatch_size_on_the_command_line_replaces_the_gpu_presets_count_of_minibatches(tmp_path):
    gpu = ["--preset", "gpu", "--device", "cpu", "--env", "nav", "--num-envs", "8", "--bptt", "16", "--total-steps",
           "128", "--torch-threads", "1"]
    code, out = train_cli(tmp_path, *gpu, "--minibatch-size", "64", "--run-name", "size")
    assert code == 0 and "batch 128, minibatch 64 per rank" in out, out  # without it: 16 minibatches of 8 segments


@pytest.mark.parametrize("name", ["SIGINT", "SIGTERM"])
def test_a_signal_mid_run_saves_and_the_resumed_run_ends_like_an_uninterrupted_one(tmp_path, name):
    number = getattr(signal, name)
    budget = ["--total-steps", str(8 * 16 * 12)]
    code, out = train_cli(tmp_path, *CLI, *budget, "--run-name", "cut", stop_with=number)
    assert code == 128 + number and f"{name}: finishing this update" in out and "continue with --resume" in out
    checkpoint = tmp_path / "cut" / "checkpoint.pt"
    assert 2 <= load_checkpoint(str(checkpoint))["update"] < 12
    code, out = train_cli(tmp_path, "--resume", str(checkpoint), "--torch-threads", "1", "--run-name", "cut")
    assert code == 0, out
    assert train_cli(tmp_path, *CLI, *budget, "--run-name", "straight")[0] == 0
    cut, straight = (load_checkpoint(str(tmp_path / n / "checkpoint.pt")) for n in ("cut", "straight"))
    assert cut["update"] == straight["update"] == 12
    assert all(torch.equal(cut["policy"][k], straight["policy"][k]) for k in straight["policy"])


def test_resume_extends_a_finished_run_and_refuses_options_that_would_change_it(tmp_path):
    code, _ = train_cli(tmp_path, *CLI, "--total-steps", str(8 * 16 * 2), "--run-name", "r")
    checkpoint = str(tmp_path / "r" / "checkpoint.pt")
    code, out = train_cli(tmp_path, "--resume", checkpoint, "--total-steps", str(8 * 16 * 4), "--run-name", "r")
    assert code == 0 and "resumed at update 2" in out and load_checkpoint(checkpoint)["update"] == 4
    code, out = train_cli(tmp_path, "--resume", checkpoint, "--num-envs", "16", "--learning-rate", "0.1")
    assert code == 1 and "['learning_rate', 'num_envs'] cannot change on resume" in out


def corrupt_copies(good: bytes):
    """(kind, bytes) of damaged files, one at a time: random bytes of several sizes (about 8% of 1,000-byte ones once
    failed inside torch's unpickler with an IndexError), truncations of the checkpoint `good`, and single bit flips
    in each of its parts: its pickle, its tensors and its zip directory."""
    rng = random.Random(0)
    for n in [1, 10, 100, 10_000] * 25 + [1000] * 300:
        yield "random", rng.randbytes(n)
    for n in [*range(50), *range(50, len(good), len(good) // 50)]:
        yield "truncated", good[:n]
    archive = zipfile.ZipFile(io.BytesIO(good))
    pickle_end = archive.infolist()[1].header_offset  # torch.save writes data.pkl first
    for start, end in ((0, pickle_end), (pickle_end, archive.start_dir), (archive.start_dir, len(good))):
        for _ in range(100):
            bit, copy = rng.randrange(8 * start, 8 * end), bytearray(good)
            copy[bit // 8] ^= 1 << bit % 8
            yield "bit-flipped", bytes(copy)


def same(a, b) -> bool:
    """Nested dicts, lists and tensors equal to the bit."""
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, (dict, list, tuple)):
        pairs = zip(a.items(), b.items()) if isinstance(a, dict) else zip(a, b)
        return type(a) is type(b) and len(a) == len(b) and all(same(x, y) for x, y in pairs)
    return a == b


def test_a_corrupt_checkpoint_is_refused_by_name_on_resume_and_in_evaluate(tmp_path):
    """Every damaged copy of a checkpoint gives 'not a readable checkpoint', through --resume's path and
    scripts/evaluate.py's, or (a bit flip in a field no reader checks) loads exactly what was saved."""
    run = Trainer(small_config(log_dir=str(tmp_path), device="cpu"))
    run.train(updates=1, quiet=True)
    good, saved = open(run.checkpoint_path, "rb").read(), load_checkpoint(run.checkpoint_path)
    evaluate, path = load_script("evaluate"), str(tmp_path / "damaged.pt")
    for kind, data in corrupt_copies(good):
        open(path, "wb").write(data)
        try:
            state = load_checkpoint(path)
        except ValueError as e:
            assert "is not a readable checkpoint" in str(e), (kind, str(e))
            with pytest.raises(ValueError, match="is not a readable checkpoint"):
                Trainer(small_config(log_dir=str(tmp_path), device="cpu", resume=path))
            with pytest.raises(ValueError, match="is not a readable checkpoint"):
                evaluate.evaluate(evaluate.Args(checkpoint=path))
            continue
        assert kind == "bit-flipped" and same(state, saved), kind  # so --resume and evaluate.py run as from `good`


def test_a_corrupt_checkpoint_is_one_error_line_at_the_command_line(tmp_path):
    """train.py --resume and evaluate.py given 1,000 random bytes that once failed inside torch's unpickler with an
    IndexError: exit 1 with one line that says so, no traceback."""
    bad = tmp_path / "bad.pt"
    bad.write_bytes(random.Random(2).randbytes(1000))
    script = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "scripts", "evaluate.py")
    evaluated = subprocess.run([sys.executable, script, str(bad)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True)
    for code, out in (train_cli(tmp_path, "--resume", str(bad)), (evaluated.returncode, evaluated.stdout)):
        assert code == 1 and out.count("\n") == 1, out
        assert out.startswith(f"error: '{bad}' is not a readable checkpoint ("), out


def bad_input_table() -> dict[str, str]:
    """docs/training.md's table: input -> the message it must give."""

    doc = open(os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "docs", "training.md")).read()
    section = doc[doc.index("## Bad input"):]
    section = section[:section.index("\n## ", 1) if "\n## " in section[1:] else None]
    rows = re.findall(r"^\| (.+?) \| `(.+?)` \|$", section, re.M)
    return {inp: message for inp, message in rows if inp != "input"}


def error_of(inp: str, tmp_path) -> str:
    """Run one input of the table; return the error it gives."""
    from envs import make_env
    from policies import make_policy
    from test_policies import acting_td
    from trainer.config import PRESETS, TrainConfig

    def cli(args: list[str]) -> str:
        from train import options_given

        try:
            cfg = tyro.cli(TrainConfig, default=PRESETS["cpu"].replace(log_dir=str(tmp_path)), args=args)
            Trainer(cfg, given=options_given(args))
        except (ValueError, FileNotFoundError) as e:
            return str(e)
        return "no error"

    env = make_env("nav", num_envs=8)
    if inp.startswith("`--log-dir` a file"):
        (tmp_path / "file").write_text("")
        return cli(["--log-dir", str(tmp_path / "file")])
    if inp.startswith("`--resume` a missing file"):
        return cli(["--resume", str(tmp_path / "missing.pt")])
    if inp.startswith("`--resume` a checkpoint"):
        run = Trainer(small_config(log_dir=str(tmp_path)))
        run.save()
        return cli(["--resume", run.checkpoint_path, "--num-envs", "8"])
    if inp.startswith("`--init-from` a Fast checkpoint"):
        run = Trainer(small_config(log_dir=str(tmp_path)))
        run.save()
        return cli(["--env", "nav", "--init-from", run.checkpoint_path, "--policy", "example"])
    calls = {"`env.step` float actions": lambda: env.step(torch.zeros(8, 2)),
             "`env.step` actions of shape [8]": lambda: env.step(torch.zeros(8, dtype=torch.long)),
             "a policy given float observations": lambda: make_policy("fast", env)(acting_td(torch.zeros(2, 200, 3)))}
    if inp in calls:
        try:
            calls[inp]()
        except ValueError as e:
            return str(e)
        return "no error"
    return cli(shlex.split(inp.strip("`")))


def test_every_bad_input_in_the_docs_gets_its_message(tmp_path, monkeypatch):

    monkeypatch.syspath_prepend(os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "scripts"))
    table = bad_input_table()
    assert len(table) >= 20
    for inp, message in table.items():
        assert message in error_of(inp, tmp_path), inp


def test_soak_script_measures_memory_files_and_speed(tmp_path):
    """The soak benchmark itself (docs/benchmarks.md has a 2,000-update run), in a few updates."""
    script = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "scripts", "soak.py")
    done = subprocess.run([sys.executable, script, "--updates", "4", "--every", "2", "--settle", "2", "--num-envs", "8",
                           "--out", str(tmp_path), "--torch-threads", "1"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "rss_mb:" in done.stdout and "open_files: " in done.stdout and "SPS: first fifth" in done.stdout
    assert (tmp_path / "soak.csv").read_text().startswith("update,rss_mb,open_files,gpu_mb,sps")
