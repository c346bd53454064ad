"""A long run that meets non-finite numbers, signals, failing disks and bad settings keeps its work and says what
happened."""

import math

import pytest
import torch
from test_trainer import small_config

import trainer.ppo as ppo_module
from trainer import Trainer
from trainer.checkpoint import load_checkpoint
from trainer.ppo import NonFiniteError


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
