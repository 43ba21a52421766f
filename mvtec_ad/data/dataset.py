"""Decode, resize and cache images and masks; the torch Dataset and the Batch every model consumes."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from mvtec_ad.data.layout import DatasetError, Sample

# cv2 uses its own thread pool inside every DataLoader worker; on small machines that oversubscribes.
cv2.setNumThreads(1)


@dataclass
class Batch:
    """What a DataLoader yields: images in [0, 1], binary masks, labels and file paths."""

    image: torch.Tensor  # float32 [B, 3, H, W], values in [0, 1]
    mask: torch.Tensor  # float32 [B, 1, H, W], values in {0, 1}
    label: torch.Tensor  # int64 [B], 0 = good, 1 = defective
    path: list[str]
    index: torch.Tensor | None = None  # int64 [B], position in the dataset (gathering under DDP)

    def __len__(self) -> int:
        return len(self.path)


def to_uint8(image: np.ndarray) -> np.ndarray:
    """Scale 16-bit / float images to 8 bit; 8-bit images pass through unchanged."""
    if image.dtype == np.uint8:
        return image
    if image.dtype == np.uint16:
        return (image.astype(np.float32) / 257.0).round().astype(np.uint8)
    if np.issubdtype(image.dtype, np.floating):
        scale = 255.0 if image.max() <= 1.0 else 1.0
        return np.clip(image * scale, 0, 255).round().astype(np.uint8)
    return np.clip(image, 0, 255).astype(np.uint8)


def decode_image(path: str | Path) -> np.ndarray:
    """Read any image file as 8-bit RGB HxWx3: gray, RGBA and 16-bit inputs are converted."""
    image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if image is None:
        raise DatasetError(
            f"Cannot decode image '{path}': the file is missing, truncated or not an image. "
            f"Replace or remove it."
        )
    image = to_uint8(image)
    if image.ndim == 2:
        return cv2.cvtColor(image, cv2.COLOR_GRAY2RGB)
    channels = image.shape[2]
    if channels == 1:
        return cv2.cvtColor(image[:, :, 0], cv2.COLOR_GRAY2RGB)
    if channels == 4:
        return cv2.cvtColor(image, cv2.COLOR_BGRA2RGB)
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def decode_mask(path: str | Path) -> np.ndarray:
    """Read a ground-truth mask as a {0, 1} uint8 HxW array (any non-zero pixel is defective)."""
    mask = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if mask is None:
        raise DatasetError(f"Cannot decode mask '{path}': the file is missing, truncated or not an image.")
    if mask.ndim == 3:
        mask = mask[:, :, :3].max(axis=2)  # colour channels only: an opaque alpha is not a defect
    return (mask > 0).astype(np.uint8)


def resize_image(image: np.ndarray, size: int) -> np.ndarray:
    """Square resize; INTER_AREA when shrinking (no aliasing), bilinear when enlarging."""
    if image.shape[:2] == (size, size):
        return image
    shrink = image.shape[0] > size or image.shape[1] > size
    return cv2.resize(image, (size, size), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)


def resize_mask(mask: np.ndarray, size: int) -> np.ndarray:
    """Nearest-neighbour resize keeps masks binary."""
    if mask.shape[:2] == (size, size):
        return mask
    return cv2.resize(mask, (size, size), interpolation=cv2.INTER_NEAREST)


class DecodeCache:
    """Decoded, resized uint8 tensors keyed by (path, size): each file is decoded once per process.

    DataLoader workers each hold their own copy, which is why the DataModule keeps its workers
    persistent: later epochs then read from memory.
    """

    def __init__(self) -> None:
        self._items: dict[tuple[str, int, str], torch.Tensor] = {}
        self.decodes = 0  # how many files were actually decoded (tests and benchmarks read it)

    def image(self, path: Path, size: int) -> torch.Tensor:
        key = (str(path), size, "image")
        if key not in self._items:
            rgb = resize_image(decode_image(path), size)
            self._items[key] = torch.from_numpy(np.ascontiguousarray(rgb.transpose(2, 0, 1)))
            self.decodes += 1
        return self._items[key]

    def mask(self, path: Path, size: int) -> torch.Tensor:
        key = (str(path), size, "mask")
        if key not in self._items:
            self._items[key] = torch.from_numpy(resize_mask(decode_mask(path), size))[None]
            self.decodes += 1
        return self._items[key]


class AnomalyDataset(Dataset):
    """Samples -> (image float [3,H,W] in [0,1], mask float [1,H,W], label, path).

    `transform` (optional) takes and returns (image, mask) float tensors; it runs after the
    cache, so augmentation differs every epoch while decoding happens once.
    """

    def __init__(
        self,
        samples: Sequence[Sample],
        image_size: int,
        transform: Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]] | None = None,
        cache: DecodeCache | None = None,
    ) -> None:
        self.samples = list(samples)
        self.image_size = image_size
        self.transform = transform
        self.cache = cache if cache is not None else DecodeCache()

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> dict:
        sample = self.samples[index]
        image = self.cache.image(sample.path, self.image_size).float().div_(255.0)
        if sample.mask_path is not None:
            mask = self.cache.mask(sample.mask_path, self.image_size).float()
        else:
            mask = torch.zeros(1, self.image_size, self.image_size)
        if self.transform is not None:
            image, mask = self.transform(image, mask)
        return {"image": image, "mask": mask, "label": sample.label, "path": str(sample.path), "index": index}


def unique_by_index(index: torch.Tensor, *tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Rows of `tensors` sorted by dataset `index`, each index kept once.

    Under DDP the DistributedSampler shuffles and pads (repeats a few images so every process
    gets as many); after an all_gather this restores exactly the single-process rows and order.
    """
    index, order = index.sort(stable=True)
    first = torch.ones_like(index, dtype=torch.bool)
    first[1:] = index[1:] != index[:-1]
    return tuple(t[order[first]] for t in tensors)


def collate_batch(items: list[dict]) -> Batch:
    """Stack dataset items into a Batch (Lightning moves dataclasses to the device as a whole)."""
    return Batch(
        image=torch.stack([it["image"] for it in items]),
        mask=torch.stack([it["mask"] for it in items]),
        label=torch.tensor([it["label"] for it in items], dtype=torch.long),
        path=[it["path"] for it in items],
        index=torch.tensor([it.get("index", -1) for it in items], dtype=torch.long),
    )
