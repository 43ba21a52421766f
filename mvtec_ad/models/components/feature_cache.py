"""Backbone features of fixed images, kept in memory for the length of one fit."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch


class FrozenFeatureCache:
    """Backbone features of images that a path fully determines, each computed once per fit.

    The backbone is frozen, so an image's features never change during a fit: later epochs read
    them from memory (on the model's device) and skip the backbone. Only splits whose images are
    fixed (`AnomalyData.fixed_images`) may use it; augmented or synthetic-anomaly images are recomputed every time.
    """

    def __init__(self) -> None:
        self.entries: dict[str, torch.Tensor] = {}

    def __len__(self) -> int:
        return len(self.entries)

    def get(
        self, images: torch.Tensor, paths: Sequence[str], compute: Callable[[torch.Tensor], torch.Tensor]
    ) -> torch.Tensor:
        """Features of `images`, computing (with `compute`) only those whose path is not stored yet."""
        missing = [i for i, path in enumerate(paths) if path not in self.entries]
        if missing:
            computed = compute(images[missing])
            # clone outside inference mode: validation-time entries must stay usable by training steps
            with torch.inference_mode(False):
                for i, features in zip(missing, computed, strict=True):
                    self.entries[paths[i]] = features.clone()
        return torch.stack([self.entries[path] for path in paths])
