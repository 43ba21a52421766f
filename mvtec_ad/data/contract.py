"""What a detector may ask of its data: the typed contract between detectors and DataModules.

`AnomalyDataModule` implements it; any LightningDataModule that does can fit and test every
detector. Detectors never look for other attributes of `trainer.datamodule`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Protocol, runtime_checkable

from torch.utils.data import DataLoader

from mvtec_ad.data.dataset import Batch
from mvtec_ad.data.geometry import InputGeometry
from mvtec_ad.errors import ConfigError

FitSplit = Literal["train", "val"]
PreviewSplit = Literal["val", "test"]


@dataclass(frozen=True)
class DataDescription:
    """What a test run records about its data in metrics.json."""

    category: str | None
    protocol: str | None
    protocol_detail: str | None
    root: str | None
    aupro_fpr_limit: float = 0.3  # where the AU-PRO integral stops (MVTec AD 0.3, MVTec AD 2 0.05)


@runtime_checkable
class AnomalyData(Protocol):
    """The data of one category as detectors see it (after the Trainer called `setup`)."""

    def bind_input(self, geometry: InputGeometry) -> None:
        """Decode and resize every image to the model's geometry from now on."""

    def describe(self) -> DataDescription:
        """Category, validation protocol and root, for metrics.json."""

    def has_masks(self) -> bool:
        """True when every defective test image has a mask, so pixel metrics apply."""

    def val_folds(self) -> list[list[int]]:
        """Label-stratified folds of the validation set (indices into it) for cross-validation."""

    def split_size(self, split: FitSplit) -> int:
        """How many images the training or validation split holds."""

    def fixed_images(self, split: FitSplit) -> bool:
        """True when each path of the split always yields the same image, so its features may be cached."""

    def train_dataloader(self) -> DataLoader:
        """Training batches, shuffled and augmented as configured."""

    def val_dataloader(self) -> DataLoader:
        """Validation batches in order: normal images, and anomalies where the protocol has them."""

    def feature_dataloader(self) -> DataLoader:
        """The training images in order, unshuffled and unaugmented: for statistics fitted before training."""

    def preview_batch(self, split: PreviewSplit, n: int) -> Batch | None:
        """Up to `n` fixed images spread over a split (good and defective alike), None when it is empty."""


def require_anomaly_data(datamodule: object, who: str) -> AnomalyData:
    """`datamodule` as AnomalyData, or an error that says which members it lacks."""
    if isinstance(datamodule, AnomalyData):
        return datamodule
    if datamodule is None:
        raise ConfigError(
            f"{who} needs a DataModule (e.g. mvtec_ad.data.AnomalyDataModule): pass datamodule= to the Trainer."
        )
    members = [
        name for name in vars(AnomalyData) if not name.startswith("_") and not hasattr(datamodule, name)
    ]
    raise ConfigError(
        f"{who} needs a DataModule that provides mvtec_ad.data.contract.AnomalyData; "
        f"{type(datamodule).__name__} lacks {', '.join(sorted(members))}. Use mvtec_ad.data.AnomalyDataModule."
    )
