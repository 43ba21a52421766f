"""One LightningDataModule for every source: protocols, seeded splits, synthetic anomalies, loaders.

A source (`mvtec`, `folder`, `visa`, `mvtec_ad2`; mvtec_ad.data.sources) scans its folder into the
same `CategoryLayout`; everything after that is shared. Images leave as float [0, 1] RGB at the
geometry the model binds (`bind_input`, called by every detector in `setup`): the model owns its
input size, and input normalisation (ImageNet mean/std, ...) is the model's too, so that
checkpoints, `predict` and exported models take the same raw images as training.

Validation protocols (seed report 2); model selection and thresholds only ever see `val_set`:
    official    val = a seeded share of train/good (normal only); test = the official test split.
                A source whose dataset ships its own validation split (mvtec_ad2: validation/good)
                gives it instead, and train/good stays whole (val_split is not used)
    test_split  (i) the official test split is divided, stratified by defect type: `test_share`
                stays test, the rest becomes validation (real anomalies); train = all train/good
    synthetic   (ii) val = a seeded share of train/good (or the source's own validation split),
                `synthetic_share` of which get a synthetic anomaly with an exact mask; test = the
                official test split
`val_folds()` splits the validation set into `n_folds` label-stratified folds for cross-validation.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset

from mvtec_ad.data.checks import check_samples
from mvtec_ad.data.contract import DataDescription, FitSplit, PreviewSplit
from mvtec_ad.data.dataset import AnomalyDataset, Batch, SyntheticAnomalyDataset, collate_batch
from mvtec_ad.data.decode import DecodeCache
from mvtec_ad.data.epochs import EpochSampler
from mvtec_ad.data.geometry import InputGeometry
from mvtec_ad.data.samples import CategoryLayout, Sample, find_images
from mvtec_ad.data.sources import (
    AUPRO_FPR_LIMITS,
    OWN_VALIDATION,
    SOURCE_OPTIONS,
    SOURCES,
    scan_source,
    source_detail,
    source_options,
    source_predict_samples,
)
from mvtec_ad.data.splits import split_test_val, split_train_val, stratified_folds, synthetic_assignment
from mvtec_ad.errors import ConfigError

PROTOCOLS = ("official", "test_split", "synthetic")
Split = Literal["train", "features", "val", "test", "predict"]


@dataclass(frozen=True)
class Splits:
    """The samples of each split, fixed by the layout, the protocol and the seed (no geometry yet)."""

    train: list[Sample]
    val: list[Sample]
    test: list[Sample]
    synthetic: dict[int, str]  # validation index -> synthetic anomaly kind (protocol synthetic)
    folds: list[list[int]]  # label-stratified folds of the validation indices


class AnomalyDataModule(L.LightningDataModule):
    """One category of a dataset folder (MVTec layout, your own folders, VisA, or MVTec AD 2).

    Args:
        root: folder holding the category folders (mvtec: e.g. datasets/mvtec), the folders of
            source folder, or the extracted VisA folder.
        category: category folder (mvtec), object (visa) or the name in tables (folder; default:
            the name of good_dir's parent).
        source: mvtec | folder | visa | mvtec_ad2 (see mvtec_ad.data.sources).
        train_batch_size / eval_batch_size: batch sizes for training and for val/test/predict.
        num_workers: DataLoader workers (kept alive across epochs so the decode cache survives).
        val_split: share of train/good held out, seeded, as validation data (protocols official
            and synthetic; the seed's protocol (ii) holds out 0.4). Unused by sources with their
            own validation split (mvtec_ad2).
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
        good_dir, defect_dirs, mask_dirs, mask_pattern, good_test_share: source folder only
            (mvtec_ad.data.sources.folder; defaults good, -, none, "{stem}_mask.png", 0.2).
        split_csv: source visa only, the split file relative to root (default split_csv/1cls.csv).
        predict_split: source mvtec_ad2 only, what `predict` reads: test_public (default, the test
            split, labelled), test_private or test_private_mixed (unlabelled, -1).
        pixel_resolution: where pixel metrics are computed: `original` (default) upsamples each
            map to its ground-truth mask's own size, masks never resized, as MVTec AD's official
            evaluation does; `input` compares at the model's input size (faster, approximate).
        aupro_fpr_limit: false-positive rate up to which AU-PRO is integrated; default the
            dataset paper's: 0.05 for source mvtec_ad2, 0.3 (MVTec AD's) for every other.
    """

    def __init__(
        self,
        root: str | Path = "datasets/demo",
        category: str | None = None,
        source: Literal["mvtec", "folder", "visa", "mvtec_ad2"] = "mvtec",
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
        good_dir: str | None = None,
        defect_dirs: Sequence[str] | None = None,
        mask_dirs: Sequence[str] | None = None,
        mask_pattern: str | None = None,
        good_test_share: float | None = None,
        split_csv: str | None = None,
        predict_split: str | None = None,
        pixel_resolution: Literal["original", "input"] = "original",
        aupro_fpr_limit: float | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        # plain types only: checkpoints load with weights_only=True
        self.hparams.root = str(root)
        self.hparams.synthetic_kinds = list(synthetic_kinds)
        for name in ("defect_dirs", "mask_dirs"):
            if self.hparams[name] is not None:
                self.hparams[name] = list(self.hparams[name])
        if source not in SOURCES:
            raise ConfigError(f"--data.source must be one of {', '.join(SOURCES)}, got '{source}'.")
        options = {name: self.hparams[name] for names in SOURCE_OPTIONS.values() for name in names}
        foreign = [n for n, v in options.items() if v is not None and n not in SOURCE_OPTIONS[source]]
        if foreign:
            owners = {n: s for s, names in SOURCE_OPTIONS.items() for n in names}
            raise ConfigError(
                f"--data.{foreign[0]} is an option of source {owners[foreign[0]]}, but --data.source is "
                f"{source}: set --data.source {owners[foreign[0]]} or leave --data.{foreign[0]} out."
            )
        if path is not None and predict_split is not None:
            raise ConfigError(
                "--data.path and --data.predict_split both say what predict reads: pass one of them."
            )
        if protocol not in PROTOCOLS:
            raise ConfigError(f"--data.protocol must be one of {', '.join(PROTOCOLS)}, got '{protocol}'.")
        if not 0.0 < synthetic_share <= 1.0:
            raise ConfigError(f"--data.synthetic_share must be in (0, 1], got {synthetic_share}.")
        if samples_per_epoch is not None and samples_per_epoch < 1:
            raise ConfigError(f"--data.samples_per_epoch must be positive or null, got {samples_per_epoch}.")
        for name, value in (("train_batch_size", train_batch_size), ("eval_batch_size", eval_batch_size)):
            if value < 1:
                raise ConfigError(f"--data.{name} must be a positive number of images, got {value}.")
        if pixel_resolution not in ("original", "input"):
            raise ConfigError(
                f"--data.pixel_resolution must be original (masks at their own size, as MVTec's evaluation) "
                f"or input (masks at the model's input size), got {pixel_resolution!r}."
            )
        if aupro_fpr_limit is not None and not 0.0 < aupro_fpr_limit <= 1.0:
            raise ConfigError(f"--data.aupro_fpr_limit must be in (0, 1], e.g. 0.3; got {aupro_fpr_limit}.")
        if num_workers < 0:
            raise ConfigError(f"--data.num_workers must be 0 or more, got {num_workers}.")
        if augmentation:
            from mvtec_ad.data.transforms import build_augmentation

            build_augmentation(augmentation)  # an unknown preset fails here, before anything is loaded
        self.root = Path(root)
        self.source = source
        self.aupro_fpr_limit = (
            AUPRO_FPR_LIMITS.get(source, 0.3) if aupro_fpr_limit is None else aupro_fpr_limit
        )
        own = {name: options[name] for name in SOURCE_OPTIONS[source]}
        self.source_options = source_options(source, require_masks, **own)
        if category is None and source == "folder":
            category = (self.root / self.source_options["good_dir"]).resolve().parent.name
        self.category = category
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
        self.pixel_resolution = pixel_resolution
        self.layout: CategoryLayout | None = None
        self.splits: Splits | None = None
        self.predict_samples: list[Sample] | None = None
        self.geometry: InputGeometry | None = None
        self.cache = DecodeCache()
        self._datasets: dict[Split, Dataset] = {}

    # ---- the contract (mvtec_ad.data.contract.AnomalyData) ------------------------------------
    def bind_input(self, geometry: InputGeometry) -> None:
        if geometry != self.geometry:
            self.geometry = geometry
            self._datasets = {}

    def describe(self) -> DataDescription:
        return DataDescription(
            self.category, self.protocol, self.protocol_description, str(self.root), self.aupro_fpr_limit
        )

    def has_masks(self) -> bool:
        return self.layout is not None and self.layout.has_masks

    def val_folds(self) -> list[list[int]]:
        return self._require_splits().folds

    def split_size(self, split: FitSplit) -> int:
        splits = self._require_splits()
        return len(splits.train if split == "train" else splits.val)

    def fixed_images(self, split: FitSplit) -> bool:
        return self.dataset(split).fixed_images

    def preview_batch(self, split: PreviewSplit, n: int) -> Batch | None:
        dataset = self.dataset(split)
        n = min(n, len(dataset))
        if n == 0:
            return None
        spread = [round(i * (len(dataset) - 1) / max(n - 1, 1)) for i in range(n)]  # good and defective
        return collate_batch([dataset[i] for i in spread])

    # ---- Lightning -------------------------------------------------------------------------
    def setup(self, stage: str | None = None) -> None:
        if stage == "predict" and self.path is not None:  # new images only: no dataset folder needed
            self.predict_samples = [Sample(p, -1, "unknown") for p in find_images(self.path)]
            check_samples(self.predict_samples)
            self._datasets.pop("predict", None)
            return
        if stage == "predict":  # a split the source names for predict (mvtec_ad2's private ones)
            samples = source_predict_samples(self.source, self.root, self.category, **self.source_options)
            if samples is not None:
                check_samples(samples)
                self.predict_samples = samples
                self._datasets.pop("predict", None)
                return
        if self.layout is not None:
            return
        layout = scan_source(
            self.source, self.root, self.category, self.require_masks, self.seed, **self.source_options
        )
        check_samples([*layout.train, *(layout.val or []), *layout.test])  # every file, before any fit
        self.layout = layout
        if self.protocol == "test_split":
            train = list(self.layout.train)
            test, val = split_test_val(self.layout.test, self.test_share, self.seed)
        elif self.layout.val is not None:  # the dataset's own validation split; train stays whole
            train, val = list(self.layout.train), list(self.layout.val)
            test = list(self.layout.test)
        else:
            train, val = split_train_val(self.layout.train, self.val_split, self.seed)
            test = list(self.layout.test)
        synthetic = {}
        if self.protocol == "synthetic":
            synthetic = synthetic_assignment(len(val), self.synthetic_share, self.synthetic_kinds, self.seed)
        labels = [1 if i in synthetic else s.label for i, s in enumerate(val)]
        self.splits = Splits(train, val, test, synthetic, stratified_folds(labels, self.n_folds, self.seed))

    def train_dataloader(self) -> DataLoader:
        """Shuffled by EpochSampler: each epoch's order (and augmentation) depends on (seed, epoch) only,
        so a resumed fit sees exactly the batches an uninterrupted one saw."""
        sampler = EpochSampler(self.train_set, self.seed, self.samples_per_epoch)
        return self._loader(self.train_set, self.train_batch_size, shuffle=False, sampler=sampler)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, self.eval_batch_size, shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.test_set, self.eval_batch_size, shuffle=False)

    def predict_dataloader(self) -> DataLoader:
        if self.predict_samples is None:
            return self.test_dataloader()
        return self._loader(self.dataset("predict"), self.eval_batch_size, shuffle=False)

    def feature_dataloader(self) -> DataLoader:
        return self._loader(self.dataset("features"), self.eval_batch_size, shuffle=False)

    # ---- datasets ----------------------------------------------------------------------------
    @property
    def train_set(self) -> AnomalyDataset:
        return self.dataset("train")

    @property
    def val_set(self) -> AnomalyDataset | SyntheticAnomalyDataset:
        return self.dataset("val")

    @property
    def test_set(self) -> AnomalyDataset:
        return self.dataset("test")

    def dataset(self, split: Split) -> Dataset:
        """The split's dataset at the bound geometry, built once per geometry."""
        if split not in self._datasets:
            self._datasets[split] = self._build(split)
        return self._datasets[split]

    def _build(self, split: Split) -> Dataset:
        if self.geometry is None:
            raise ConfigError(
                "The DataModule has no input geometry yet: a detector binds its own when a Trainer runs it "
                "(fit/test/predict), or call bind_input(InputGeometry.of(size)) first."
            )
        if split == "predict":
            if self.predict_samples is None:
                raise ConfigError(
                    "No images to predict: set --data.path (or --data.predict_split) and call setup('predict') first."
                )
            return AnomalyDataset(self.predict_samples, self.geometry, cache=self.cache)
        splits = self._require_splits()
        if split == "train":
            transform = None
            if self.augmentation:
                from mvtec_ad.data.transforms import build_augmentation

                transform = build_augmentation(self.augmentation)
            return AnomalyDataset(
                splits.train, self.geometry, transform=transform, cache=self.cache, seed=self.seed
            )
        samples = {"features": splits.train, "val": splits.val, "test": splits.test}[split]
        full_masks = split == "test" and self.pixel_resolution == "original" and self.has_masks()
        dataset = AnomalyDataset(samples, self.geometry, cache=self.cache, full_masks=full_masks)
        if split == "val" and self.protocol == "synthetic":
            return SyntheticAnomalyDataset(dataset, splits.synthetic, self.seed)
        return dataset

    def _require_splits(self) -> Splits:
        if self.splits is None:
            raise ConfigError("The DataModule is not set up: call setup() first (a Trainer does).")
        return self.splits

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

    @property
    def protocol_description(self) -> str:
        """What produced the validation data, in words that go into metrics.json."""
        if self.protocol == "test_split":
            text = (
                f"test_split: {self.test_share:.0%} of the official test set is test, the rest validation "
                f"({self.n_folds} folds), seed {self.seed}"
            )
        else:
            held_out = (
                f"{OWN_VALIDATION[self.source]} (the dataset's own; train/good whole)"
                if self.source in OWN_VALIDATION
                else f"{self.val_split:.0%} of train/good held out"
            )
            if self.protocol == "synthetic":
                text = (
                    f"synthetic: {held_out}, {self.synthetic_share:.0%} of it with synthetic "
                    f"{'/'.join(self.synthetic_kinds)} anomalies ({self.n_folds} folds), seed {self.seed}"
                )
            else:
                text = f"official: {held_out} as normal validation, official test split, seed {self.seed}"
        detail = source_detail(self.source, self.seed, **self.source_options)
        return f"{text}; {detail}" if detail else text
