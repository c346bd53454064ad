"""Checkpoints: written atomically (a temporary file, then a rename), read back safely (weights_only); the run's
folder checked before any work."""

from __future__ import annotations

import contextlib
import os
import pickle
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
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, pickle.UnpicklingError, zipfile.BadZipFile, ValueError) as e:
        raise ValueError(f"{path!r} is not a readable checkpoint ({type(e).__name__}: {str(e)[:200]}); it may be "
                         "truncated or corrupt: use an earlier checkpoint or retrain") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise ValueError(f"{path!r} is not a minippo checkpoint (expected format {FORMAT!r})")
    return state
