"""Reading checkpoints safely: weights only (no code runs), and one clear error for a file that is not one."""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path

import torch

from mvtec_ad.errors import CheckpointError


def unreadable_reason(error: Exception) -> str:
    """Why torch.load failed, in a few words; never torch's advice to load with weights_only=False."""
    if isinstance(error, pickle.UnpicklingError) or "weights_only" in str(error):
        return "it holds objects other than tensors and plain values, and loading those could run code"
    lines = str(error).strip().splitlines()
    return f"{type(error).__name__}: {lines[0][:160]}" if lines else type(error).__name__


def read_checkpoint(path: str | Path, mmap: bool = True) -> dict:
    """A checkpoint's contents on the CPU, loaded with weights_only=True (never unpickles code).

    A missing, empty, truncated or foreign file is a CheckpointError that names it; `mmap` avoids
    reading a large memory bank twice when only the hyperparameters are wanted.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"Checkpoint '{path}' does not exist.")
    if not zipfile.is_zipfile(path):  # every torch.save since 1.6 writes a zip archive
        raise CheckpointError(
            f"Checkpoint '{path}' cannot be read (it is no zip archive, as torch checkpoints are): the file is "
            f"empty, truncated or not a checkpoint written by mvtec_ad. Pass another --ckpt_path."
        )
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except Exception as error:  # zip, pickle and unpickling errors of every kind
        raise CheckpointError(
            f"Checkpoint '{path}' cannot be read ({unreadable_reason(error)}): the file is empty, truncated "
            f"or not a checkpoint written by mvtec_ad. Pass another --ckpt_path."
        ) from None
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        raise CheckpointError(
            f"Checkpoint '{path}' holds no model weights (no state_dict): pass another --ckpt_path."
        )
    return checkpoint


def check_detector_class(checkpoint: dict, wanted: str, path: str | Path) -> None:
    """Refuse a checkpoint of another detector than the config names (test, predict and export alike)."""
    stored = (checkpoint.get("hyper_parameters") or {}).get("_class_path")
    if stored is not None and stored != wanted:
        raise CheckpointError(
            f"Checkpoint '{path}' holds a {stored}, but the config names {wanted}: pass the config it was "
            f"trained with (its run folder keeps it as config.yaml)."
        )
