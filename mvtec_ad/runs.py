"""Run folders and the files in them, safe against concurrent runs, kills and full disks.

RunLogger           TensorBoard logger whose version_N folder is taken with one atomic mkdir, so
                    two runs started at once in one default_root_dir never share a folder
AtomicCheckpointIO  checkpoints written to a temporary file beside the target, fsynced and
                    renamed: a kill or a full disk keeps the previous checkpoint loadable, and
                    the temporary file of a writer killed with SIGKILL goes when a later run saves
                    or loads a checkpoint in that folder
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.plugins.io import TorchCheckpointIO
from lightning.pytorch.utilities import rank_zero_only

from mvtec_ad.report.files import claim_numbered_folder, remove_stale_temporaries, write_atomically


class RunLogger(TensorBoardLogger):
    """Lightning's TensorBoardLogger, except that the next version is claimed, not just counted.

    Only global rank 0 claims a folder (the others' log_dir is rank 0's, broadcast by the Trainer).
    """

    def _get_next_version(self) -> int:
        version = super()._get_next_version()
        if rank_zero_only.rank != 0:
            return version
        return claim_numbered_folder(Path(self.root_dir), "version_", version)


class AtomicCheckpointIO(TorchCheckpointIO):
    """torch.save into a temporary file in the checkpoint's folder, fsync, rename (see report.files)."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options.")
        write_atomically(path, lambda f: torch.save(checkpoint, f))
        remove_stale_temporaries(Path(path).parent)

    def load_checkpoint(self, path, *args: Any, **kwargs: Any) -> dict[str, Any]:
        """Lightning's load; then the folder loses what a save killed there left (a resume is the run after)."""
        checkpoint = super().load_checkpoint(path, *args, **kwargs)
        remove_stale_temporaries(Path(path).parent)
        return checkpoint
