"""LightningDataModule for one MVTec-layout category: seeded train/val split, test set, loaders.

Images leave the DataModule as float [0, 1] RGB. Input normalisation (ImageNet mean/std, ...)
belongs to each model, stored in its buffers, so that checkpoints, `predict` and exported
models take the same raw images and can never disagree with training.
"""

from __future__ import annotations

from pathlib import Path

import lightning as L
import torch
from torch.utils.data import DataLoader

from mvtec_ad.data.dataset import AnomalyDataset, DecodeCache, collate_batch
from mvtec_ad.data.layout import CategoryLayout, DatasetError, Sample, scan_category


def split_train_val(samples: list[Sample], val_split: float, seed: int) -> tuple[list[Sample], list[Sample]]:
    """Seeded hold-out of `val_split` of the normal training images (at least one when > 0).

    The permutation depends only on the seed and the sorted file list, so the split is the same
    on every machine and in every process.
    """
    if not 0.0 <= val_split < 1.0:
        raise DatasetError(f"--data.val_split must be in [0, 1), got {val_split}.")
    n_val = int(round(len(samples) * val_split))
    if val_split > 0:
        n_val = max(1, n_val)
    if n_val >= len(samples):
        raise DatasetError(
            f"--data.val_split {val_split} leaves no training image out of {len(samples)}; use a smaller value."
        )
    order = torch.randperm(len(samples), generator=torch.Generator().manual_seed(seed)).tolist()
    val_idx = set(order[:n_val])
    train = [s for i, s in enumerate(samples) if i not in val_idx]
    val = [s for i, s in enumerate(samples) if i in val_idx]
    return train, val


class MVTecDataModule(L.LightningDataModule):
    """One category of an MVTec-AD-layout folder.

    Args:
        root: folder holding the category folders (e.g. datasets/mvtec or datasets/demo).
        category: category folder name (e.g. bottle).
        image_size: square side images and masks are resized to.
        train_batch_size / eval_batch_size: batch sizes for training and for val/test/predict.
        num_workers: DataLoader workers (kept alive across epochs so the decode cache survives).
        val_split: share of train/good held out, seeded, as normal validation data.
        seed: seed of the split.
        require_masks: False allows defective test images without masks (image metrics only).
    """

    protocol = "official"  # train on train/good, evaluate on the official test split

    def __init__(
        self,
        root: str | Path = "datasets/demo",
        category: str = "fabric",
        image_size: int = 224,
        train_batch_size: int = 16,
        eval_batch_size: int = 32,
        num_workers: int = 0,
        val_split: float = 0.2,
        seed: int = 42,
        require_masks: bool = True,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.hparams.root = str(root)  # plain types only: checkpoints load with weights_only=True
        self.root = Path(root)
        self.category = category
        self.image_size = image_size
        self.train_batch_size = train_batch_size
        self.eval_batch_size = eval_batch_size
        self.num_workers = num_workers
        self.val_split = val_split
        self.seed = seed
        self.require_masks = require_masks
        self.layout: CategoryLayout | None = None
        self.cache = DecodeCache()

    def setup(self, stage: str | None = None) -> None:
        if self.layout is not None:
            return
        self.layout = scan_category(self.root, self.category, require_masks=self.require_masks)
        train, val = split_train_val(self.layout.train, self.val_split, self.seed)
        self.train_set = AnomalyDataset(train, self.image_size, cache=self.cache)
        self.val_set = AnomalyDataset(val, self.image_size, cache=self.cache)
        self.test_set = AnomalyDataset(self.layout.test, self.image_size, cache=self.cache)

    @property
    def has_masks(self) -> bool:
        return self.layout is not None and self.layout.has_masks

    def _loader(self, dataset: AnomalyDataset, batch_size: int, shuffle: bool) -> DataLoader:
        return DataLoader(
            dataset,
            batch_size=batch_size,
            shuffle=shuffle,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            collate_fn=collate_batch,
            pin_memory=torch.cuda.is_available(),
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_set, self.train_batch_size, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, self.eval_batch_size, shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.test_set, self.eval_batch_size, shuffle=False)

    def predict_dataloader(self) -> DataLoader:
        return self.test_dataloader()

    def feature_dataloader(self) -> DataLoader:
        """The training images in order, unshuffled: for statistics a model fits before training."""
        return self._loader(self.train_set, self.eval_batch_size, shuffle=False)
