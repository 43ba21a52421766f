"""Reading checkpoints safely: weights only (no code runs), and one clear error for a file that is not one."""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from mvtec_ad.errors import CheckpointError

if TYPE_CHECKING:
    from mvtec_ad.models.components.anomaly_module import AnomalyModule

# torch.save's older (pre-1.6, non-zip) format opens with this number pickled as LONG1 (opcode 0x8a, 10 bytes)
LEGACY_MAGIC = b"\x8a\x0a" + (0x1950A86A20F9469CFC6C).to_bytes(10, "little")

NOT_TORCH = "it is not a PyTorch weights file, or it is damaged (empty, truncated or corrupted)"
RUNS_CODE = "it holds objects other than tensors and plain values, and loading those could run code"

# What torch says of bytes that end early or are no pickle (or zip) at all: damage, not objects.
DAMAGE_SIGNS = (
    "Unsupported operand",
    "unexpected EOF",
    "corrupt",
    "PytorchStreamReader",
    "String is too long",
)


def is_torch_file(path: str | Path) -> bool | None:
    """Whether the file is in one of torch.save's formats (its zip archive, or the older pickle behind
    LEGACY_MAGIC); None when it cannot be opened to look."""
    try:
        with open(path, "rb") as file:
            head = file.read(32)
        return zipfile.is_zipfile(path) or LEGACY_MAGIC in head
    except OSError:
        return None


def unreadable_reason(error: Exception, path: str | Path | None = None) -> str:
    """Why torch.load(weights_only=True) of `path` failed, in a few words; never torch's advice to load
    with weights_only=False.

    A file in neither of torch.save's formats (random bytes, text, a web page), or one that ends early
    or holds bytes that are no pickle instruction, is not a PyTorch file or is damaged (NOT_TORCH);
    only a torch file that the weights-only unpickler refuses for the classes or functions its pickle
    names is refused for the code loading it could run (RUNS_CODE). Safetensors files are not
    sniffed: their loader's own error is given.
    """
    text = str(error)
    if path is not None and Path(path).suffix != ".safetensors" and is_torch_file(path) is False:
        return NOT_TORCH
    if isinstance(error, EOFError | zipfile.BadZipFile) or any(sign in text for sign in DAMAGE_SIGNS):
        return NOT_TORCH
    if isinstance(error, pickle.UnpicklingError) or "weights_only" in text:
        return RUNS_CODE  # e.g. "Unsupported global: GLOBAL mymodule.MyClass"
    lines = text.strip().splitlines()
    return f"{type(error).__name__}: {lines[0][:160]}" if lines else type(error).__name__


def unreadable_message(subject: str, error: Exception, path: str | Path, advice: dict[str, str]) -> str:
    """'{subject} cannot be read: {why}. {what to do}' in one line; `advice` maps NOT_TORCH, RUNS_CODE and
    '' (any other failure, whose type and first line are given) to what to do."""
    reason = unreadable_reason(error, path)
    if reason in (NOT_TORCH, RUNS_CODE):
        return f"{subject} cannot be read: {reason}. {advice[reason]}"
    return f"{subject} cannot be read ({reason}). {advice['']}"


CHECKPOINT_ADVICE = {
    NOT_TORCH: "Copy it again if it was cut short, or pass the right file with --ckpt_path.",
    RUNS_CODE: "Checkpoints mvtec_ad writes hold only tensors and plain values: pass one with --ckpt_path.",
    "": "It is empty, truncated or not a checkpoint written by mvtec_ad: pass another --ckpt_path.",
}


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
            f"Checkpoint '{path}' cannot be read: {NOT_TORCH}; it is no zip archive, as torch checkpoints "
            f"are. {CHECKPOINT_ADVICE[NOT_TORCH]}"
        )
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except Exception as error:  # zip, pickle and unpickling errors of every kind
        raise CheckpointError(
            unreadable_message(f"Checkpoint '{path}'", error, path, CHECKPOINT_ADVICE)
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


def load_detector(cls: type[AnomalyModule], checkpoint: dict, ckpt_path: Path) -> AnomalyModule:
    """The detector with the checkpoint's hyperparameters and weights, on the CPU, in eval mode.

    The backbone is built without pretrained weights (`weights: none`): the checkpoint holds all
    of them, so exporting needs neither a network nor the original weight file.
    """
    hparams = checkpoint.get("hyper_parameters", {})
    check_detector_class(checkpoint, f"{cls.__module__}.{cls.__qualname__}", ckpt_path)
    overrides = {"weights": "none"} if "weights" in hparams else {}
    return cls.load_from_checkpoint(ckpt_path, map_location="cpu", **overrides).eval()
