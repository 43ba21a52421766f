"""Data: layouts, datasets and the DataModules a config names, e.g. `class_path: mvtec_ad.data.FolderDataModule`.

The DataModules are imported on first use, so `mvtec_ad.data.layout` and friends stay light (no Lightning).
"""

from __future__ import annotations

import importlib

DATAMODULES = {
    "MVTecDataModule": "mvtec_ad.data.datamodule",
    "FolderDataModule": "mvtec_ad.data.folder",
    "VisADataModule": "mvtec_ad.data.visa",
}

__all__ = list(DATAMODULES)


def __getattr__(name: str):
    if name in DATAMODULES:
        return getattr(importlib.import_module(DATAMODULES[name]), name)
    raise AttributeError(f"module 'mvtec_ad.data' has no attribute '{name}'")
