"""The model's own input geometry: inside every detector, saved in every checkpoint, part of every export.

The DataModule places images on this geometry's canvas once per run (cv2, cached; the model
binds it in `setup`), so the batches a detector sees during fit and test already have it, with
the `content` each image covers. `predict` and `export` read it from the model, never from a config.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from mvtec_ad.data.geometry import InputGeometry, Pad, Resize
from mvtec_ad.errors import CheckpointError


def pad_bottom_right(images: torch.Tensor, bottom: int, right: int, pad: Pad) -> torch.Tensor:
    """Pad [B, C, h, w] like cv2's BORDER_REFLECT_101 (any amount: reflected again and again) or with 0."""
    if pad == "constant":
        return F.pad(images, (0, right, 0, bottom))
    while bottom > 0 or right > 0:
        step_b, step_r = min(bottom, images.shape[-2] - 1), min(right, images.shape[-1] - 1)
        if step_b == 0 and step_r == 0:  # a single row/column: reflection repeats it
            return F.pad(images, (0, right, 0, bottom), mode="replicate")
        images = F.pad(images, (0, step_r, 0, step_b), mode="reflect")
        bottom, right = bottom - step_b, right - step_r
    return images


def content_mask(
    content: torch.Tensor | None, size: Sequence[int], device: torch.device
) -> torch.Tensor | None:
    """Boolean [B, 1, H, W]: True where the image is, from content (h, w) per image [B, 2]; None = everywhere."""
    if content is None:
        return None
    rows = torch.arange(size[0], device=device).view(1, 1, -1, 1)
    cols = torch.arange(size[1], device=device).view(1, 1, 1, -1)
    content = content.to(device)
    return (rows < content[:, 0].view(-1, 1, 1, 1)) & (cols < content[:, 1].view(-1, 1, 1, 1))


class PreProcessor(nn.Module):
    """Holds the detector's InputGeometry; places a batch of another size on its canvas (torch, exportable).

    Batches from the DataModule pass through untouched. Images of another size (a caller using the
    model directly) are resized bilinearly with antialiasing (and padded, for keep_aspect), and
    `restore` brings the maps back to the caller's size, so the output stays at the input resolution.
    """

    def __init__(
        self, image_size: int | Sequence[int] = 224, resize: Resize = "squash", pad: Pad = "reflect"
    ) -> None:
        super().__init__()
        self.geometry = InputGeometry.of(image_size, resize, pad)
        # in the state dict, so a checkpoint says which geometry its weights (and threshold) hold for
        self.register_buffer("image_size", torch.tensor(self.geometry.size))

    def place(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Images [B, 3, h, w] of one size -> the canvas and the content [B, 2] they cover (None = all of it)."""
        if tuple(images.shape[-2:]) == self.geometry.size:
            return images, None
        content = self.geometry.content_size(*images.shape[-2:])
        placed = F.interpolate(images, size=content, mode="bilinear", antialias=True).clamp(0, 1)
        if self.geometry.resize == "squash":
            return placed, None
        bottom, right = self.geometry.height - content[0], self.geometry.width - content[1]
        placed = pad_bottom_right(placed, bottom, right, self.geometry.pad)
        return placed, torch.tensor([content], device=images.device).expand(images.shape[0], 2)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Images on the canvas (their content is `place`'s)."""
        return self.place(images)[0]

    def restore(self, maps: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
        """Maps [B, 1, H, W] on the canvas -> [B, 1, *size]: the content cut out and resized to the caller's size."""
        if tuple(maps.shape[-2:]) == tuple(size):
            return maps
        h, w = self.geometry.content_size(*size)
        return F.interpolate(maps[..., :h, :w], size=tuple(size), mode="bilinear", align_corners=False)

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
