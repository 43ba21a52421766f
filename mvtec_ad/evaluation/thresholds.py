"""The operating threshold: fitted on validation scores, never on test scores."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from mvtec_ad.evaluation.metrics import f1_max


@dataclass
class ThresholdConfig:
    """How the operating threshold is fitted on validation data.

    method:
        mean_std    mean + k * std of the normal validation scores (seed default, k = 3)
        percentile  the given percentile of the normal validation scores
        f1          F1-optimal on validation data that holds anomalies (real or synthetic);
                    falls back to mean_std when the validation set has none
    """

    method: Literal["mean_std", "percentile", "f1"] = "mean_std"
    k: float = 3.0
    percentile: float = 99.0


def fit_threshold(scores: torch.Tensor, labels: torch.Tensor | None, config: ThresholdConfig) -> float:
    """Operating threshold from validation `scores` (labels: 1 = anomalous, None = all normal).

    With a single normal score the std is 0 and the threshold is that score; with none at all
    the threshold is NaN (reported as null) rather than a made-up number.
    """
    scores = scores.detach().flatten().float()
    labels = torch.zeros_like(scores, dtype=torch.bool) if labels is None else labels.flatten().bool()
    if config.method == "f1" and labels.any() and (~labels).any():
        _, threshold = f1_max(scores, labels)
        return float(threshold)
    normal = scores[~labels]
    if normal.numel() == 0:
        return float("nan")
    if config.method == "percentile":
        return float(torch.quantile(normal.double(), config.percentile / 100.0))
    std = normal.std(unbiased=True) if normal.numel() > 1 else normal.new_zeros(())
    return float(normal.mean() + config.k * std)
