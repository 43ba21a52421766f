"""The benchmark's mean row per config: over the ok categories only, metrics a detector lacks left out."""

import pytest

from mvtec_ad.evaluation.results_table import mean_row
from tests.helpers import benchmark_row, three_benchmark_rows


def test_mean_row_leaves_out_failed_rows_and_null_pixel_metrics():
    mean = mean_row(three_benchmark_rows())
    assert mean["category"] == "mean" and mean["config"] == "configs/knn.yaml"
    assert mean["image_auroc"] == pytest.approx(0.7)
    assert mean["pixel_auroc"] == pytest.approx(0.9) and mean["pixel_aupro"] == pytest.approx(0.6)
    assert mean["precision"] is None
    assert mean["seconds"] == pytest.approx(15.0)  # the failed run's 99 s is not a detector's time
    assert mean["peak_rss_mb"] == 700.0
    assert mean["status"] == "mean of 2 ok of 3 categories; pixel_auroc over 1, pixel_aupro over 1"


def test_mean_row_leaves_out_nan_metrics():
    rows = [benchmark_row("a", image_auroc=float("nan")), benchmark_row("b", image_auroc=0.5)]
    assert mean_row(rows)["image_auroc"] == 0.5
    assert mean_row([benchmark_row("a", "failed: x")])["image_auroc"] is None
