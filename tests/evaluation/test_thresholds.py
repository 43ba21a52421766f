"""The operating threshold rules."""

import pytest
import torch

from mvtec_ad.evaluation.thresholds import ThresholdConfig, fit_threshold


def test_threshold_rules():
    scores = torch.tensor([1.0, 2.0, 3.0, 4.0])
    assert fit_threshold(scores, None, ThresholdConfig()) == pytest.approx(2.5 + 3 * scores.std().item())
    assert fit_threshold(scores, None, ThresholdConfig("percentile", percentile=50)) == pytest.approx(2.5)
    assert fit_threshold(torch.tensor([2.0]), None, ThresholdConfig()) == 2.0
    labels = torch.tensor([0, 0, 1, 1])
    assert fit_threshold(scores, labels, ThresholdConfig("f1")) == 3.0
    # anomalies never enter the mean/std rule
    assert fit_threshold(scores, labels, ThresholdConfig()) == pytest.approx(
        1.5 + 3 * torch.tensor([1.0, 2.0]).std().item()
    )
    # f1 without anomalies falls back to mean + k std
    assert fit_threshold(scores, None, ThresholdConfig("f1")) == fit_threshold(
        scores, None, ThresholdConfig()
    )
