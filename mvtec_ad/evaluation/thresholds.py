"""The operating thresholds, image and pixel: fitted on validation data, never on test data.

A factory line fixes its threshold from good parts only (defects are rare, and MVTec AD 2's
validation split is normal images only), so every method but `f1` needs normal images alone.
A false-alarm rate is read off the upper tail of the normal scores: a plain quantile where the
normals hold at least MIN_EXCEEDANCES scores above it, else a generalised Pareto fit of their
top share (peaks over threshold), which extrapolates past the largest normal seen.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

from mvtec_ad.errors import ConfigError
from mvtec_ad.evaluation.metrics import f1_max

ImageMethod = Literal["fpr", "mean_std", "percentile", "f1"]
PixelMethod = Literal["fpr", "quantile", "none"]
IMAGE_METHODS = ("fpr", "mean_std", "percentile", "f1")
PIXEL_METHODS = ("fpr", "quantile", "none")
MIN_NORMALS = 10  # fewer normal scores than this: no tail can be estimated (fpr falls back, warning)
MIN_EXCEEDANCES = 10  # a raw quantile needs this many normals above it; fewer: the fitted tail
TAIL_SHARE = 0.2  # the top share of the normals the Pareto tail is fitted on (at least MIN_NORMALS)
PIXEL_SAMPLE = 4096  # pixels kept per normal validation image for the pixel quantile (evenly strided)


@dataclass
class ThresholdConfig:
    """How the operating thresholds are fitted on validation data (`--model.threshold.*`).

    The defaults (image fpr 0.05, pixel quantile 0.99 x 1.0) were chosen with
    benchmarks/thresholds.py (README, Thresholds): the normal-only rules that came nearest the
    test-fitted F1 max on magnetic_tile for patchcore and dfr.

    method (image score threshold):
        fpr         the score a share `fpr` of normal images exceeds: a false-alarm rate you set
                    (tail fit when the normals are few; see the module docstring)
        mean_std    mean + k * std of the normal validation scores (the seeds' default, k = 3)
        percentile  the given percentile of the normal validation scores
        f1          F1-optimal on validation data that holds anomalies (real or synthetic);
                    falls back to mean_std when the validation set has none
    pixel_method (anomaly-map threshold: predicted masks, SegF1, MVTec AD 2 submissions):
        fpr         the map value a share `pixel_fpr` (default: `fpr`) of normal images has any
                    pixel above: the same false-alarm rate, read off each normal map's peak
        quantile    `pixel_quantile` of all normal validation pixels times `pixel_margin`
                    (default 0.99 x 1.0; the MVTec AD 2 challenge winners used 0.95 x ~1.4)
        none        no pixel threshold (no predicted masks, no SegF1)
    """

    method: ImageMethod = "fpr"
    fpr: float = 0.05
    k: float = 3.0
    percentile: float = 99.0
    pixel_method: PixelMethod = "quantile"
    pixel_fpr: float | None = None
    pixel_quantile: float = 0.99
    pixel_margin: float = 1.0

    def __post_init__(self) -> None:
        if self.method not in IMAGE_METHODS:
            raise ConfigError(
                f"--model.threshold.method must be one of {', '.join(IMAGE_METHODS)}; got {self.method!r}."
            )
        if self.pixel_method not in PIXEL_METHODS:
            raise ConfigError(
                f"--model.threshold.pixel_method must be one of {', '.join(PIXEL_METHODS)}; "
                f"got {self.pixel_method!r}."
            )
        for name in ("fpr", "pixel_fpr"):
            value = getattr(self, name)
            if value is not None and not 0.0 < value < 1.0:
                raise ConfigError(f"--model.threshold.{name} must be in (0, 1), e.g. 0.01; got {value}.")
        if not 0.0 < self.percentile < 100.0:
            raise ConfigError(f"--model.threshold.percentile must be in (0, 100); got {self.percentile}.")
        if not 0.0 < self.pixel_quantile < 1.0:
            raise ConfigError(
                f"--model.threshold.pixel_quantile must be in (0, 1); got {self.pixel_quantile}."
            )
        if self.pixel_margin <= 0.0:
            raise ConfigError(f"--model.threshold.pixel_margin must be > 0; got {self.pixel_margin}.")

    def describe(self) -> str:
        """The two methods in words, for metrics.json and the report (e.g. `image fpr 0.01, pixel fpr 0.01`)."""
        image = {
            "fpr": f"fpr {self.fpr:g}",
            "mean_std": f"mean_std k {self.k:g}",
            "percentile": f"percentile {self.percentile:g}",
            "f1": "f1 (validation anomalies; else mean_std)",
        }[self.method]
        pixel = {
            "fpr": f"fpr {self.pixel_rate:g}",
            "quantile": f"quantile {self.pixel_quantile:g} x {self.pixel_margin:g}",
            "none": "none",
        }[self.pixel_method]
        return f"image {image}, pixel {pixel}"

    @property
    def pixel_rate(self) -> float:
        """The false-alarm rate of the pixel method fpr."""
        return self.fpr if self.pixel_fpr is None else self.pixel_fpr


def tail_quantile(normal: torch.Tensor, rate: float) -> float:
    """The value a share `rate` of the distribution behind the `normal` scores exceeds.

    A linear-interpolated quantile where at least MIN_EXCEEDANCES normals lie above it; else
    peaks over threshold: a generalised Pareto distribution fitted (maximum likelihood, shape
    kept in [-0.5, 0.5]) to the excesses of the top TAIL_SHARE over the largest score below them.
    """
    values = np.sort(normal.detach().double().cpu().numpy().ravel())
    n = len(values)
    if n == 0:
        return math.nan
    if rate * n >= MIN_EXCEEDANCES or n < MIN_NORMALS:
        return float(np.quantile(values, 1.0 - rate))
    n_tail = min(n - 1, max(MIN_NORMALS, math.ceil(TAIL_SHARE * n)))
    base = values[n - n_tail - 1]
    share = n_tail / n
    if rate >= share:  # inside the data
        return float(np.quantile(values, 1.0 - rate))
    excess = values[n - n_tail :] - base
    shape, scale = pareto_fit(excess)
    if scale <= 0.0:  # the top scores are all equal
        return float(values[-1])
    ratio = rate / share
    if abs(shape) < 1e-6:
        return float(base + scale * math.log(1.0 / ratio))
    return float(base + scale / shape * (ratio ** (-shape) - 1.0))


def pareto_fit(excess: np.ndarray) -> tuple[float, float]:
    """(shape, scale) of a generalised Pareto fit to positive `excess`; exponential when the fit fails."""
    from scipy import stats

    mean = float(excess.mean())
    if mean <= 0.0:
        return 0.0, 0.0
    try:
        with warnings.catch_warnings(), np.errstate(all="ignore"):
            warnings.simplefilter("ignore")
            shape, _, scale = stats.genpareto.fit(excess, floc=0.0)
    except (ValueError, RuntimeError, FloatingPointError):
        return 0.0, mean
    if not (math.isfinite(shape) and math.isfinite(scale)) or scale <= 0.0:
        return 0.0, mean
    if abs(shape) > 0.5:  # few points: an extreme shape is noise; refit the scale at the bound
        shape = math.copysign(0.5, shape)
        scale = mean * (1.0 - shape)  # the mean excess of a GPD is scale / (1 - shape)
    return float(shape), float(scale)


def fit_threshold(scores: torch.Tensor, labels: torch.Tensor | None, config: ThresholdConfig) -> float:
    """Image threshold from validation `scores` (labels: 1 = anomalous, None = all normal).

    With a single normal score the std is 0 and mean_std's threshold is that score; with none at
    all the threshold is NaN (reported as null) rather than a made-up number. fpr with fewer than
    MIN_NORMALS normals falls back to mean_std, with a warning that says so.
    """
    scores = scores.detach().flatten().float()
    labels = torch.zeros_like(scores, dtype=torch.bool) if labels is None else labels.flatten().bool()
    if config.method == "f1" and labels.any() and (~labels).any():
        _, threshold = f1_max(scores, labels)
        return float(threshold)
    normal = scores[~labels]
    if normal.numel() == 0:
        return float("nan")
    if config.method == "fpr":
        if normal.numel() >= MIN_NORMALS:
            return tail_quantile(normal, config.fpr)
        warnings.warn(
            f"threshold: only {normal.numel()} normal validation image(s), fewer than the {MIN_NORMALS} a "
            f"false-alarm rate is estimated from; the threshold is mean + {config.k:g} std of them instead "
            f"(more normals: --data.val_split).",
            stacklevel=2,
        )
    if config.method == "percentile":
        return float(torch.quantile(normal.double(), config.percentile / 100.0))
    std = normal.std(unbiased=True) if normal.numel() > 1 else normal.new_zeros(())
    return float(normal.mean() + config.k * std)


def fit_pixel_threshold(peaks: torch.Tensor, pixels: torch.Tensor, config: ThresholdConfig) -> float:
    """Anomaly-map threshold from normal validation images: each one's map peak [N] and pixels [N, S].

    `pixels` holds up to PIXEL_SAMPLE values per image, NaN-padded (see pixel_sample). NaN when
    the method is none or there is no normal image. fpr with fewer than MIN_NORMALS images falls
    back to the largest peak, with a warning.
    """
    peaks = peaks.detach().flatten().float()
    if config.pixel_method == "none" or peaks.numel() == 0:
        return float("nan")
    if config.pixel_method == "quantile":
        values = pixels.detach().flatten().float()
        values = values[~torch.isnan(values)]
        k = max(1, math.ceil(config.pixel_quantile * values.numel()))
        return float(values.kthvalue(k).values) * config.pixel_margin
    if peaks.numel() < MIN_NORMALS:
        warnings.warn(
            f"pixel threshold: only {peaks.numel()} normal validation image(s), fewer than the {MIN_NORMALS} "
            f"a false-alarm rate is estimated from; the threshold is their largest map value instead "
            f"(more normals: --data.val_split).",
            stacklevel=2,
        )
        return float(peaks.max())
    return tail_quantile(peaks, config.pixel_rate)


def pixel_sample(amap: torch.Tensor) -> torch.Tensor:
    """PIXEL_SAMPLE evenly strided values of one map (any shape), NaN-padded when it has fewer."""
    flat = amap.detach().flatten().float()
    out = flat.new_full((PIXEL_SAMPLE,), float("nan"))
    if flat.numel() <= PIXEL_SAMPLE:
        out[: flat.numel()] = flat
        return out
    index = torch.linspace(0, flat.numel() - 1, PIXEL_SAMPLE, device=flat.device).round().long()
    return flat[index]
