"""The model's own input geometry: inside every detector, saved in every checkpoint, part of every export.

The DataModule resizes images to this geometry once per run (cv2, cached; the model binds it in
`setup`), so the batches a detector sees during fit and test already have it. `predict` and
`export` read it from the model, never from a config.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from mvtec_ad.data.geometry import InputGeometry
from mvtec_ad.errors import CheckpointError


class PreProcessor(nn.Module):
    """Holds the detector's InputGeometry; resizes a batch of another size to it (torch, exportable).

    Batches from the DataModule pass through untouched. Images of another size (a caller using the
    model directly) are resized bilinearly with antialiasing, and `restore` brings the maps back
    to the caller's size, so the output stays at the input resolution.
    """

    def __init__(self, image_size: int | Sequence[int] = 224) -> None:
        super().__init__()
        self.geometry = InputGeometry.of(image_size)
        # in the state dict, so a checkpoint says which geometry its weights (and threshold) hold for
        self.register_buffer("image_size", torch.tensor(self.geometry.size))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if tuple(images.shape[-2:]) == self.geometry.size:
            return images
        return F.interpolate(images, size=self.geometry.size, mode="bilinear", antialias=True).clamp(0, 1)

    def restore(self, maps: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
        """Maps [B, 1, h, w] at the geometry -> [B, 1, *size]."""
        if tuple(maps.shape[-2:]) == tuple(size):
            return maps
        return F.interpolate(maps, size=tuple(size), mode="bilinear", align_corners=False)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:
        stored = state_dict.get(prefix + "image_size")
        if stored is not None and tuple(stored.tolist()) != self.geometry.size:
            trained = InputGeometry(*stored.tolist()).image_size
            raise CheckpointError(
                f"The checkpoint was trained at image_size {trained}, but this model was built for "
                f"{self.geometry.image_size}: build it with image_size={trained} (or load it with "
                f"<Detector>.load_from_checkpoint, which takes the size from the checkpoint)."
            )
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
