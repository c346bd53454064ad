"""Checkpoints: written atomically (a temporary file, then a rename), read back safely (weights_only)."""

from __future__ import annotations

import os
import pickle
import zipfile

import torch

FORMAT = "minippo-checkpoint-1"


def save_checkpoint(path: str, state: dict) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp"
    torch.save({"format": FORMAT, **state}, tmp)
    os.replace(tmp, path)  # a crash mid-write leaves the previous checkpoint intact


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
