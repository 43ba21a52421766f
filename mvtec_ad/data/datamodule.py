"""LightningDataModule for one MVTec-layout category: protocols, seeded splits, synthetic anomalies, loaders.

Images leave the DataModule as float [0, 1] RGB. Input normalisation (ImageNet mean/std, ...)
belongs to each model, stored in its buffers, so that checkpoints, `predict` and exported
models take the same raw images and can never disagree with training.

Validation protocols (seed report 2); model selection and thresholds only ever see `val_set`:
    official    val = a seeded share of train/good (normal only); test = the official test split
    test_split  (i) the official test split is divided, stratified by defect type: `test_share`
                stays test, the rest becomes validation (real anomalies); train = all train/good
    synthetic   (ii) val = a seeded share of train/good, `synthetic_share` of which get a
                synthetic anomaly with an exact mask; test = the official test split
`val_folds` splits the validation set into `n_folds` label-stratified folds for cross-validation.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Literal

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset, RandomSampler

from mvtec_ad.data.dataset import AnomalyDataset, DecodeCache, collate_batch
from mvtec_ad.data.layout import CategoryLayout, DatasetError, Sample, find_images, scan_category

PROTOCOLS = ("official", "test_split", "synthetic")


def seeded_order(n: int, seed: int) -> list[int]:
    """A permutation of range(n) that depends only on n and the seed (same on every machine/process)."""
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()


def split_train_val(
    samples: list[Sample], val_split: float, seed: int, option: str = "--data.val_split"
) -> tuple[list[Sample], list[Sample]]:
    """Seeded hold-out of `val_split` of the normal training images (at least one when > 0).

    The permutation depends only on the seed and the sorted file list, so the split is the same
    on every machine and in every process. `option` is the setting that errors name.
    """
    if not 0.0 <= val_split < 1.0:
        raise DatasetError(f"{option} must be in [0, 1), got {val_split}.")
    n_val = int(round(len(samples) * val_split))
    if val_split > 0:
        n_val = max(1, n_val)
    if n_val >= len(samples):
        raise DatasetError(
            f"{option} {val_split} leaves no training image out of {len(samples)}; use a smaller value."
        )
    val_idx = set(seeded_order(len(samples), seed)[:n_val])
    train = [s for i, s in enumerate(samples) if i not in val_idx]
    val = [s for i, s in enumerate(samples) if i in val_idx]
    return train, val


def split_test_val(samples: list[Sample], test_share: float, seed: int) -> tuple[list[Sample], list[Sample]]:
    """Protocol (i): split the official test set per defect type; `test_share` stays test, the rest is val.

    Every defect type keeps at least one image on each side when it has two or more, so both
    parts see every kind of defect. Order within each part is the original (sorted) order.
    """
    if not 0.0 < test_share < 1.0:
        raise DatasetError(f"--data.test_share must be in (0, 1), got {test_share}.")
    to_val: set[int] = set()
    for g, defect in enumerate(sorted({s.defect for s in samples})):
        members = [i for i, s in enumerate(samples) if s.defect == defect]
        n_test = int(round(len(members) * test_share))
        if len(members) >= 2:
            n_test = min(max(n_test, 1), len(members) - 1)
        order = seeded_order(len(members), seed + 7919 * (g + 1))
        to_val.update(members[j] for j in order[n_test:])
    test = [s for i, s in enumerate(samples) if i not in to_val]
    val = [s for i, s in enumerate(samples) if i in to_val]
    if not any(s.label == 0 for s in test) or not any(s.label == 1 for s in test):
        raise DatasetError(
            f"--data.protocol test_split with --data.test_share {test_share} leaves a test set without "
            f"normal or without defective images; the category has too few test images for this protocol."
        )
    return test, val


def stratified_folds(labels: Sequence[int], n_folds: int, seed: int) -> list[list[int]]:
    """`n_folds` disjoint folds of range(len(labels)), each label dealt round-robin after a seeded shuffle."""
    if n_folds < 1:
        raise DatasetError(f"--data.n_folds must be at least 1, got {n_folds}.")
    folds: list[list[int]] = [[] for _ in range(n_folds)]
    position = 0
    for label in sorted(set(labels)):
        members = [i for i, lab in enumerate(labels) if lab == label]
        for j in seeded_order(len(members), seed + 104729 * (label + 1)):
            folds[position % n_folds].append(members[j])
            position += 1
    return [sorted(f) for f in folds]


class SyntheticAnomalyDataset(Dataset):
    """Normal images of which the chosen ones carry a synthetic anomaly (exact mask, label 1).

    Each anomalous image is drawn from a generator seeded by (seed, index), so it is the same in
    every epoch, worker and process; decoding stays in the shared cache.
    """

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
        from mvtec_ad.data.synthetic import add_anomaly, anomaly_generator

        item = self.base[index]
        kind = self.kinds.get(index)
        if kind is not None:
            item["image"], item["mask"] = add_anomaly(
                item["image"], kind, anomaly_generator(self.seed, index)
            )
            item["label"] = 1
        return item


class MVTecDataModule(L.LightningDataModule):
    """One category of an MVTec-AD-layout folder.

    Args:
        root: folder holding the category folders (e.g. datasets/mvtec or datasets/demo).
        category: category folder name (e.g. bottle).
        image_size: square side images and masks are resized to.
        train_batch_size / eval_batch_size: batch sizes for training and for val/test/predict.
        num_workers: DataLoader workers (kept alive across epochs so the decode cache survives).
        val_split: share of train/good held out, seeded, as validation data (protocols official
            and synthetic; the seed's protocol (ii) holds out 0.4).
        seed: seed of every split, fold and synthetic anomaly.
        require_masks: False allows defective test images without masks (image metrics only).
        protocol: official | test_split | synthetic (see the module docstring).
        test_share: protocol test_split: share of the official test set that stays test (seed: 0.4).
        synthetic_share: protocol synthetic: share of the held-out images given an anomaly (seed: 0.75).
        synthetic_kinds: anomaly kinds dealt in turn to those images (swirl = the seed's twisting).
        n_folds: label-stratified cross-validation folds of the validation set.
        augmentation: training augmentation preset of mvtec_ad.data.transforms (None = none).
        samples_per_epoch: draw this many training images per epoch (with replacement when it
            exceeds the training set), e.g. the seed's ~1,500 augmented images per category.
        path: what `predict` scores instead of the test split: an image file, a folder (its
            images, sorted; subfolders are not searched) or a glob ('**' recurses). Labels are
            unknown (-1) and root/category are not read.
    """

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
        protocol: Literal["official", "test_split", "synthetic"] = "official",
        test_share: float = 0.4,
        synthetic_share: float = 0.75,
        synthetic_kinds: Sequence[str] = ("swirl",),
        n_folds: int = 3,
        augmentation: str | None = None,
        samples_per_epoch: int | None = None,
        path: str | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.hparams.root = str(root)  # plain types only: checkpoints load with weights_only=True
        self.hparams.synthetic_kinds = list(synthetic_kinds)
        if protocol not in PROTOCOLS:
            raise DatasetError(f"--data.protocol must be one of {', '.join(PROTOCOLS)}, got '{protocol}'.")
        if not 0.0 < synthetic_share <= 1.0:
            raise DatasetError(f"--data.synthetic_share must be in (0, 1], got {synthetic_share}.")
        if samples_per_epoch is not None and samples_per_epoch < 1:
            raise DatasetError(f"--data.samples_per_epoch must be positive or null, got {samples_per_epoch}.")
        self.root = Path(root)
        self.category = category
        self.image_size = image_size
        self.train_batch_size = train_batch_size
        self.eval_batch_size = eval_batch_size
        self.num_workers = num_workers
        self.val_split = val_split
        self.seed = seed
        self.require_masks = require_masks
        self.protocol = protocol
        self.test_share = test_share
        self.synthetic_share = synthetic_share
        self.synthetic_kinds = list(synthetic_kinds)
        self.n_folds = n_folds
        self.augmentation = augmentation
        self.samples_per_epoch = samples_per_epoch
        self.path = path
        self.layout: CategoryLayout | None = None
        self.cache = DecodeCache()

    def setup(self, stage: str | None = None) -> None:
        if stage == "predict" and self.path is not None:  # new images only: no dataset folder needed
            samples = [Sample(p, -1, "unknown") for p in find_images(self.path)]
            self.predict_set = AnomalyDataset(samples, self.image_size, cache=self.cache)
            return
        if self.layout is not None:
            return
        self.layout = self.scan_layout()
        if self.protocol == "test_split":
            train = list(self.layout.train)
            test, val = split_test_val(self.layout.test, self.test_share, self.seed)
        else:
            train, val = split_train_val(self.layout.train, self.val_split, self.seed)
            test = list(self.layout.test)
        transform = None
        if self.augmentation:
            from mvtec_ad.data.transforms import build_augmentation

            transform = build_augmentation(self.augmentation, self.image_size)
        self.train_set = AnomalyDataset(train, self.image_size, transform=transform, cache=self.cache)
        self.train_features_set = AnomalyDataset(train, self.image_size, cache=self.cache)
        self.val_set: AnomalyDataset | SyntheticAnomalyDataset = AnomalyDataset(
            val, self.image_size, cache=self.cache
        )
        if self.protocol == "synthetic":
            self.val_set = SyntheticAnomalyDataset(
                self.val_set, self._synthetic_kinds_of(len(val)), self.seed
            )
        self.test_set = AnomalyDataset(test, self.image_size, cache=self.cache)
        self.val_folds = stratified_folds([s.label for s in self.val_set.samples], self.n_folds, self.seed)

    def scan_layout(self) -> CategoryLayout:
        """The category's train and test samples; subclasses for other layouts override only this."""
        return scan_category(self.root, self.category, require_masks=self.require_masks)

    def _synthetic_kinds_of(self, n_val: int) -> dict[int, str]:
        """Which held-out images get an anomaly (a seeded `synthetic_share` of them) and of which kind."""
        from mvtec_ad.data.synthetic import SYNTHETIC_KINDS

        unknown = [k for k in self.synthetic_kinds if k not in SYNTHETIC_KINDS]
        if unknown or not self.synthetic_kinds:
            raise DatasetError(
                f"--data.synthetic_kinds {self.synthetic_kinds} is invalid: use one or more of {list(SYNTHETIC_KINDS)}."
            )
        if n_val == 0:
            raise DatasetError(
                "--data.protocol synthetic needs held-out training images: set --data.val_split above 0 "
                "(the seed's protocol (ii) uses 0.4)."
            )
        n_anomalous = min(max(int(round(n_val * self.synthetic_share)), 1), n_val)
        chosen = sorted(seeded_order(n_val, self.seed + 1)[:n_anomalous])
        return {i: self.synthetic_kinds[j % len(self.synthetic_kinds)] for j, i in enumerate(chosen)}

    @property
    def protocol_description(self) -> str:
        """What produced the validation data, in words that go into metrics.json."""
        if self.protocol == "test_split":
            return (
                f"test_split: {self.test_share:.0%} of the official test set is test, the rest validation "
                f"({self.n_folds} folds), seed {self.seed}"
            )
        held_out = f"{self.val_split:.0%} of train/good held out"
        if self.protocol == "synthetic":
            return (
                f"synthetic: {held_out}, {self.synthetic_share:.0%} of it with synthetic "
                f"{'/'.join(self.synthetic_kinds)} anomalies ({self.n_folds} folds), seed {self.seed}"
            )
        return f"official: {held_out} as normal validation, official test split, seed {self.seed}"

    @property
    def has_masks(self) -> bool:
        return self.layout is not None and self.layout.has_masks

    def _loader(self, dataset: Dataset, batch_size: int, shuffle: bool, sampler=None) -> DataLoader:
        return DataLoader(
            dataset,
            batch_size=batch_size,
            shuffle=shuffle,
            sampler=sampler,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            collate_fn=collate_batch,
            pin_memory=torch.cuda.is_available(),
        )

    def train_dataloader(self) -> DataLoader:
        if self.samples_per_epoch is None:
            return self._loader(self.train_set, self.train_batch_size, shuffle=True)
        sampler = RandomSampler(
            self.train_set,
            replacement=self.samples_per_epoch > len(self.train_set),
            num_samples=self.samples_per_epoch,
        )
        return self._loader(self.train_set, self.train_batch_size, shuffle=False, sampler=sampler)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, self.eval_batch_size, shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.test_set, self.eval_batch_size, shuffle=False)

    def predict_dataloader(self) -> DataLoader:
        if self.path is None:
            return self.test_dataloader()
        return self._loader(self.predict_set, self.eval_batch_size, shuffle=False)

    def feature_dataloader(self) -> DataLoader:
        """The training images in order, unshuffled and unaugmented: for statistics a model fits before training."""
        return self._loader(self.train_features_set, self.eval_batch_size, shuffle=False)
