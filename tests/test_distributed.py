"""Data-parallel training under torchrun, on CPU with gloo and 2 processes (trainer/distributed.py): on the CPU
wherever the suite runs, since two ranks on a one-GPU machine are refused."""

import json
import os
import subprocess
import sys

import pytest
import torch

from trainer import Trainer, TrainConfig
from trainer.checkpoint import load_checkpoint
from trainer.config import METTA

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]


def torchrun(*args: str) -> subprocess.CompletedProcess:
    # the project first, then whatever the caller's path held (on the GPU machine, the wheels installed with --target)
    path = os.pathsep.join(filter(None, [ROOT, os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": path}
    done = subprocess.run([*TORCHRUN, *args], capture_output=True, text=True, env=env, timeout=300)
    if done.returncode:  # a rank's own traceback comes before torchrun's summary of the failure: show it first
        done.stderr = done.stderr[done.stderr.find("Traceback"):][:3000] + "\n...\n" + done.stderr[-1000:]
    return done


def test_weights_stay_bitwise_equal_on_every_rank(tmp_path):
    done = torchrun(os.path.join(ROOT, "tests", "ddp_worker.py"), str(tmp_path))
    assert done.returncode == 0, done.stderr[-2000:]
    rank0, rank1 = json.loads((tmp_path / "digests.json").read_text())
    assert len(rank0) == 4 and rank0 == rank1  # after every update
    assert len(set(rank0)) == 4  # and they did train


def test_two_ranks_on_the_same_data_equal_one_process(tmp_path):
    """Both ranks get rank 0's envs and seeds: the averaged gradient is each rank's, so the job is one process
    (this pins the gradient averaging and its scaling)."""
    done = torchrun(os.path.join(ROOT, "tests", "ddp_worker.py"), str(tmp_path), "--same-seeds")
    assert done.returncode == 0, done.stderr[-2000:]
    job = torch.load(tmp_path / "weights.pt")
    torch.set_num_threads(1)
    single = Trainer(TrainConfig(**METTA).replace(env="nav", num_envs=8, bptt=16, minibatch_size=64, total_steps=8 * 16 * 4,
                                 prio_alpha=0.5, env_overrides={"max_steps": 10}, log_dir=str(tmp_path / "single"),
                                 checkpoint_interval=1000, device="cpu"))
    torch.manual_seed(0)  # where a rank's action sampling starts: its seed, once the policy is built
    single.train(quiet=True)
    for key, value in single.policy.state_dict().items():
        torch.testing.assert_close(job[key], value, rtol=0, atol=1e-6, msg=key)


# uniform sampling: a run cut at update 2 by a shorter --total-steps, then extended, must equal one run of 4 updates,
# which holds only where no schedule depends on the total (prioritized sampling's beta does)
CLI = ["--env", "nav", "--num-envs", "8", "--bptt", "16", "--minibatch-size", "64", "--env-overrides", "max_steps",
       "10", "--checkpoint-interval", "1000", "--device", "cpu"]


def test_only_rank_0_writes_and_a_resumed_job_equals_an_uninterrupted_one(tmp_path):
    train = os.path.join(ROOT, "scripts", "train.py")
    budget = ["--total-steps", str(2 * 8 * 16 * 4), "--log-dir", str(tmp_path)]
    done = torchrun(train, *CLI, *budget, "--run-name", "straight")
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.count("update 4/4") == 1  # one progress line per update: rank 0's
    files = os.listdir(tmp_path / "straight")
    assert sorted(f.split(".")[0] for f in files) == ["checkpoint", "events"]  # one log, one checkpoint
    assert torchrun(train, *CLI, *budget, "--run-name", "split", "--total-steps", str(2 * 8 * 16 * 2)).returncode == 0
    checkpoint = str(tmp_path / "split" / "checkpoint.pt")
    done = torchrun(train, "--resume", checkpoint, "--total-steps", str(2 * 8 * 16 * 4))
    assert done.returncode == 0, done.stderr[-2000:]
    straight, resumed = load_checkpoint(str(tmp_path / "straight" / "checkpoint.pt")), load_checkpoint(checkpoint)
    assert straight["update"] == resumed["update"] == 4 and len(resumed["ranks"]) == 2
    for key in straight["policy"]:
        assert torch.equal(straight["policy"][key], resumed["policy"][key]), key
    with pytest.raises(ValueError, match=r"written by 2 rank\(s\).*torchrun --nproc-per-node 2\), not 1"):
        Trainer(TrainConfig(resume=checkpoint))
