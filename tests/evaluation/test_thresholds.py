"""The operating threshold rules, image and pixel, on score distributions with a known answer."""

import math

import numpy as np
import pytest
import torch
from scipy import stats

from mvtec_ad.errors import ConfigError
from mvtec_ad.evaluation.thresholds import (
    MIN_NORMALS,
    PIXEL_SAMPLE,
    ThresholdConfig,
    fit_pixel_threshold,
    fit_threshold,
    pixel_sample,
    tail_quantile,
)

MEAN_STD = ThresholdConfig("mean_std")


def test_threshold_rules():
    scores = torch.tensor([1.0, 2.0, 3.0, 4.0])
    assert fit_threshold(scores, None, MEAN_STD) == pytest.approx(2.5 + 3 * scores.std().item())
    assert fit_threshold(scores, None, ThresholdConfig("percentile", percentile=50)) == pytest.approx(2.5)
    assert fit_threshold(torch.tensor([2.0]), None, MEAN_STD) == 2.0
    labels = torch.tensor([0, 0, 1, 1])
    assert fit_threshold(scores, labels, ThresholdConfig("f1")) == 3.0
    # anomalies never enter the mean/std rule
    assert fit_threshold(scores, labels, MEAN_STD) == pytest.approx(
        1.5 + 3 * torch.tensor([1.0, 2.0]).std().item()
    )
    # f1 without anomalies falls back to mean + k std
    assert fit_threshold(scores, None, ThresholdConfig("f1")) == fit_threshold(scores, None, MEAN_STD)


@pytest.mark.parametrize(
    "dist",
    [stats.norm(), stats.expon(), stats.gamma(3.0), stats.lognorm(0.5)],
    ids=["normal", "exponential", "gamma", "lognormal"],
)
@pytest.mark.parametrize("n", [150, 1000])
def test_fpr_threshold_gives_the_false_alarm_rate_asked_for(dist, n):
    """150 normals: the fitted Pareto tail (1.5 expected exceedances); 1000: the plain quantile."""
    true = dist.ppf(0.99)
    found = [
        fit_threshold(torch.tensor(dist.rvs(n, random_state=seed)), None, ThresholdConfig("fpr", fpr=0.01))
        for seed in range(30)
    ]
    rates = dist.sf(np.array(found))
    assert np.median(found) == pytest.approx(true, rel=0.1)
    assert 0.006 <= np.median(rates) <= 0.016
    assert np.mean((rates >= 0.003) & (rates <= 0.03)) >= 0.8  # most single fits land in [0.003, 0.03]


def test_fitted_tail_extrapolates_past_the_largest_normal_and_a_raw_quantile_cannot():
    """With 50 normals a 0.1% rate lies beyond every score seen: the tail goes past the maximum."""
    samples = [torch.tensor(stats.expon().rvs(50, random_state=seed)) for seed in range(30)]
    found = np.array([tail_quantile(scores, 0.001) for scores in samples])
    assert all(t > float(scores.max()) for t, scores in zip(found, samples, strict=True))
    # the largest of 50 is exceeded at a rate of ~1/50; the tail gets 2.5x+ below that (0.1% asked:
    # 50 normals underestimate so deep a tail, README says so), a raw quantile cannot get below it
    rates = np.exp(-found)  # exponential: P(X > t) = exp(-t)
    assert np.median(rates) < 0.008
    assert np.median(found) > math.log(1000) * 0.7
    # inside the data (rate x n >= 10) it is the plain quantile
    many = torch.tensor(stats.norm().rvs(2000, random_state=2))
    assert tail_quantile(many, 0.05) == pytest.approx(float(np.quantile(many.numpy(), 0.95)))


def test_equal_top_scores_and_too_few_normals():
    assert tail_quantile(torch.ones(40), 0.01) == 1.0
    few = torch.arange(float(MIN_NORMALS - 1))
    with pytest.warns(
        UserWarning, match=rf"only {MIN_NORMALS - 1} normal validation image\(s\).*mean \+ 3 std"
    ):
        assert fit_threshold(few, None, ThresholdConfig("fpr")) == pytest.approx(
            float(few.mean() + 3 * few.std())
        )
    assert math.isnan(fit_threshold(torch.tensor([1.0, 2.0]), torch.tensor([1, 1]), ThresholdConfig("fpr")))


def test_pixel_threshold_methods():
    peaks = torch.tensor(stats.expon().rvs(200, random_state=3), dtype=torch.float32)
    pixels = torch.full((200, PIXEL_SAMPLE), float("nan"))
    pixels[:, :100] = torch.linspace(0, 1, 100)  # every image's pixels: 0 .. 1 evenly; NaN = padding
    fpr = fit_pixel_threshold(peaks, pixels, ThresholdConfig(pixel_method="fpr", fpr=0.02))
    assert fpr == pytest.approx(tail_quantile(peaks, 0.02))
    assert fit_pixel_threshold(
        peaks, pixels, ThresholdConfig(pixel_method="fpr", pixel_fpr=0.05)
    ) == pytest.approx(
        float(np.quantile(peaks.numpy(), 0.95))  # 10 exceedances of 200: the plain quantile
    )
    quantile = fit_pixel_threshold(
        peaks, pixels, ThresholdConfig(pixel_method="quantile", pixel_quantile=0.95, pixel_margin=1.4)
    )
    assert quantile == pytest.approx(1.4 * 94 / 99, rel=1e-5)  # the 95th of 100 values 0, 1/99, ..., 1
    assert math.isnan(fit_pixel_threshold(peaks, pixels, ThresholdConfig(pixel_method="none")))
    assert math.isnan(fit_pixel_threshold(peaks[:0], pixels[:0], ThresholdConfig()))
    with pytest.warns(UserWarning, match="largest map value"):
        assert fit_pixel_threshold(peaks[:3], pixels[:3], ThresholdConfig(pixel_method="fpr")) == float(
            peaks[:3].max()
        )
    # the default: the 99th percentile of the normal pixels, no margin
    assert fit_pixel_threshold(peaks, pixels, ThresholdConfig()) == pytest.approx(98 / 99, rel=1e-5)


def test_pixel_sample_is_strided_and_nan_padded():
    small = pixel_sample(torch.arange(10.0).view(2, 5))
    assert (
        small.shape == (PIXEL_SAMPLE,) and small[:10].tolist() == list(range(10)) and small[10:].isnan().all()
    )
    big = pixel_sample(torch.arange(float(4 * PIXEL_SAMPLE)))
    assert big[0] == 0 and big[-1] == 4 * PIXEL_SAMPLE - 1 and not big.isnan().any()


def test_bad_threshold_options_are_one_line_errors_naming_the_option():
    with pytest.raises(ConfigError, match=r"--model.threshold.method must be one of fpr, mean_std"):
        ThresholdConfig("otsu")
    with pytest.raises(ConfigError, match=r"--model.threshold.fpr must be in \(0, 1\)"):
        ThresholdConfig(fpr=1.5)
    with pytest.raises(
        ConfigError, match=r"--model.threshold.pixel_method must be one of fpr, quantile, none"
    ):
        ThresholdConfig(pixel_method="mebin")
    with pytest.raises(ConfigError, match=r"--model.threshold.pixel_margin must be > 0"):
        ThresholdConfig(pixel_margin=0)
    assert ThresholdConfig().describe() == "image fpr 0.05, pixel quantile 0.99 x 1"
    assert ThresholdConfig(fpr=0.01, pixel_method="fpr").describe() == "image fpr 0.01, pixel fpr 0.01"
