"""Checkpoints: written atomically (a temporary file, then a rename), read back safely (weights_only) and only whole
(every part against the CRC-32 it was written with); the run's folder checked before any work."""

from __future__ import annotations

import contextlib
import os
import zipfile

import torch

FORMAT = "minippo-checkpoint-1"


def prepare_run_dir(log_dir: str, name: str) -> None:
    """Create log_dir/name; ValueError naming the fix if it cannot be created or written (a file in the way, no
    permission)."""
    path = os.path.join(log_dir, name)
    try:
        os.makedirs(path, exist_ok=True)
        if not os.access(path, os.W_OK):
            raise PermissionError("not writable")
    except OSError as e:
        raise ValueError(f"log_dir={log_dir!r} cannot hold the run {name!r} ({e}): choose another --log-dir") from None


def save_checkpoint(path: str, state: dict) -> None:
    """Write `state` to `path`; OSError naming the path and the cause if it cannot (the previous file stays)."""
    tmp = f"{path}.tmp"
    try:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        torch.save({"format": FORMAT, **state}, tmp)
        os.replace(tmp, path)  # a crash mid-write leaves the previous checkpoint intact
    except (OSError, RuntimeError) as e:  # torch.save reports a full disk as a RuntimeError
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise OSError(f"could not write the checkpoint {path} ({str(e)[:200]}); the previous checkpoint there, if "
                      "any, is intact: free space or fix the permissions, then resume from it") from None


def load_checkpoint(path: str) -> dict:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no checkpoint at {path!r}: pass a file written by scripts/train.py "
                                "(log_dir/run_name/checkpoint.pt)")
    try:
        with zipfile.ZipFile(path) as archive:
            damaged = archive.testzip()  # torch.save records each part's CRC-32; torch.load never checks it
        if damaged is not None:
            raise zipfile.BadZipFile(f"{damaged} does not match its CRC-32")
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # a damaged zip or pickle fails in open-ended ways (IndexError, KeyError, struct.error, ...)
        raise ValueError(f"{path!r} is not a readable checkpoint ({type(e).__name__}: {str(e)[:200]}); it may be "
                         "truncated or corrupt: use an earlier checkpoint or retrain") from e
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise ValueError(f"{path!r} is not a minippo checkpoint (expected format {FORMAT!r})")
    return state


# the options a policy's weights only mean the same under: its architecture and how it reads its input
POLICY_INPUT_OPTIONS = ("policy", "one_hot_ids", "inventory_norm")


def load_policy_weights(policy: torch.nn.Module, path: str, cfg) -> None:
    """Start `policy`, built for the run `cfg`, from the policy weights of the checkpoint at `path` (init_from);
    ValueError naming the option, or the env's features or actions, that differ."""
    state = load_checkpoint(path)
    saved = type(cfg).from_dict(state["config"])  # an option the checkpoint predates takes its default
    differ = [f"{k} {getattr(saved, k)!r} there, {getattr(cfg, k)!r} here" for k in POLICY_INPUT_OPTIONS
              if getattr(saved, k) != getattr(cfg, k)]
    if differ:
        raise ValueError(f"init_from={path!r} holds a policy built otherwise ({'; '.join(differ)}): give this run the "
                         "same options, or leave init_from out")
    try:
        policy.load_state_dict(state["policy"])
    except RuntimeError as e:
        detail = " ".join(str(e).split())[:300]
        raise ValueError(f"init_from={path!r}: its weights do not fit this policy on {cfg.env} ({detail}); the env's "
                         f"observation features or actions differ from {saved.env!r}'s") from None
