"""The torch Datasets of samples and the Batch every model consumes."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import torch
from torch.utils.data import Dataset

from mvtec_ad.data.decode import DecodeCache
from mvtec_ad.data.epochs import derived_seed
from mvtec_ad.data.geometry import InputGeometry
from mvtec_ad.data.samples import Sample

Transform = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


@dataclass
class Batch:
    """What a DataLoader yields: images in [0, 1], binary masks, labels and file paths."""

    image: torch.Tensor  # float32 [B, 3, H, W], values in [0, 1]
    mask: torch.Tensor  # float32 [B, 1, H, W], values in {0, 1}
    label: torch.Tensor  # int64 [B], 0 = good, 1 = defective, -1 = unknown
    path: list[str]
    index: torch.Tensor | None = None  # int64 [B], position in the dataset (gathering under DDP)
    content: torch.Tensor | None = None  # int64 [B, 2], (h, w) the image covers from the top-left; None = all
    original: torch.Tensor | None = None  # int64 [B, 2], (h, w) of the image file
    full_mask: list[torch.Tensor] | None = (
        None  # uint8 [h, w] per image at the file's resolution (evaluation)
    )

    def __len__(self) -> int:
        return len(self.path)


class AnomalyDataset(Dataset):
    """Samples -> (image float [3,H,W] in [0,1], mask float [1,H,W], label, path), at `geometry`.

    `transform` (optional) takes and returns (image, mask) float tensors; it runs after the
    cache, so augmentation differs every epoch while decoding happens once. Indexed by an
    (epoch, index) pair (EpochSampler), the transform draws from a generator seeded by
    (`seed`, epoch, index) alone; indexed by an int, from torch's global generator.
    With `full_masks`, items also hold the mask at the file's own resolution (zeros for images
    without one), for pixel metrics at the ground truth's resolution.
    """

    def __init__(
        self,
        samples: Sequence[Sample],
        geometry: InputGeometry,
        transform: Transform | None = None,
        cache: DecodeCache | None = None,
        seed: int = 0,
        full_masks: bool = False,
    ) -> None:
        self.samples = list(samples)
        self.full_masks = full_masks
        self.geometry = geometry
        self.transform = transform
        self.cache = cache if cache is not None else DecodeCache()
        self.seed = seed

    def __len__(self) -> int:
        return len(self.samples)

    @property
    def fixed_images(self) -> bool:
        """True when each path always yields the same image (no augmentation), so its features may be cached."""
        return self.transform is None

    def __getitem__(self, key: int | tuple[int, int]) -> dict:
        epoch, index = key if isinstance(key, tuple) else (None, key)
        sample = self.samples[index]
        placed = self.cache.image(sample.path, self.geometry)
        image = placed.image.float().div_(255.0)
        if sample.mask_path is not None:
            mask = self.cache.mask(sample.mask_path, self.geometry).float()
        else:
            mask = torch.zeros(1, *self.geometry.size)
        if self.transform is not None and epoch is None:
            image, mask = self.transform(image, mask)
        elif self.transform is not None:  # this image's own draws in this epoch (see mvtec_ad.data.epochs)
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(derived_seed(self.seed, "augment", epoch, index))
                image, mask = self.transform(image, mask)
        item = {
            "image": image,
            "mask": mask,
            "label": sample.label,
            "path": str(sample.path),
            "index": index,
            "content": placed.content,
            "original": placed.original,
        }
        if self.full_masks:
            item["full_mask"] = (
                self.cache.original_mask(sample.mask_path)
                if sample.mask_path is not None
                else torch.zeros(placed.original, dtype=torch.uint8)
            )
        return item


class SyntheticAnomalyDataset(Dataset):
    """Normal images of which the chosen ones carry a synthetic anomaly (exact mask, label 1).

    Each anomalous image is drawn from a generator seeded by (seed, index), so it is the same in
    every epoch, worker and process; decoding stays in the shared cache. Its paths are the
    normal images' paths, so its images are not `fixed_images`: a path no longer says which image.
    """

    fixed_images = False

    def __init__(self, base: AnomalyDataset, kinds: dict[int, str], seed: int) -> None:
        self.base = base
        self.kinds = kinds
        self.seed = seed
        self.samples = [
            replace(s, label=1, defect=f"synthetic_{kinds[i]}") if i in kinds else s
            for i, s in enumerate(base.samples)
        ]

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, index: int) -> dict:
        from mvtec_ad.data.anomalies import add_anomaly, anomaly_generator

        item = self.base[index]
        kind = self.kinds.get(index)
        if kind is not None:
            item["image"], item["mask"] = add_anomaly(
                item["image"], kind, anomaly_generator(self.seed, index)
            )
            item["label"] = 1
        return item


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
        content=torch.tensor([it["content"] for it in items], dtype=torch.long)
        if "content" in items[0]
        else None,
        original=torch.tensor([it["original"] for it in items], dtype=torch.long)
        if "original" in items[0]
        else None,
        full_mask=[it["full_mask"] for it in items] if "full_mask" in items[0] else None,
    )
