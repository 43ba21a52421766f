"""Reading checkpoints safely: weights only (no code runs), and one clear error for a file that is not one."""

from __future__ import annotations

from pathlib import Path

import torch

from mvtec_ad.errors import CheckpointError


def read_checkpoint(path: str | Path, mmap: bool = True) -> dict:
    """A checkpoint's contents on the CPU, loaded with weights_only=True (never unpickles code).

    A missing, empty, truncated or foreign file is a CheckpointError that names it; `mmap` avoids
    reading a large memory bank twice when only the hyperparameters are wanted.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"Checkpoint '{path}' does not exist.")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except Exception as error:  # zip, pickle and unpickling errors of every kind
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise CheckpointError(
            f"Checkpoint '{path}' cannot be read ({type(error).__name__}: {reason[:200]}): the file is empty, "
            f"truncated or not a checkpoint written by mvtec_ad. Pass another --ckpt_path."
        ) from None
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        raise CheckpointError(
            f"Checkpoint '{path}' holds no model weights (no state_dict): pass another --ckpt_path."
        )
    return checkpoint
