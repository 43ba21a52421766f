"""Data: sources (dataset layouts), datasets, and the DataModule a config names:
`class_path: mvtec_ad.data.AnomalyDataModule`.

The DataModule is imported on first use, so `mvtec_ad.data.samples` and the sources stay light
(no Lightning) for `stats` and `synth`.
"""

from __future__ import annotations

import importlib

LAZY = {"AnomalyDataModule": "mvtec_ad.data.datamodule", "InputGeometry": "mvtec_ad.data.geometry"}

__all__ = list(LAZY)


def __getattr__(name: str):
    if name in LAZY:
        return getattr(importlib.import_module(LAZY[name]), name)
    raise AttributeError(f"module 'mvtec_ad.data' has no attribute '{name}'")
