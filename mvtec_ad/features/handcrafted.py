"""Handcrafted "direct" image features for the classical detectors (seed report 2, appendix).

The seed computed, per image, colour statistics, edge, gradient, contour, intensity, Fourier,
geometric, noise and quantile features, plus optionally every raw pixel value. This module
computes the same list for a whole batch at once: everything except the contour and Hough-line
features (cv2, one image at a time) is a batched torch operation.

Left out of the seed's list: the image metadata (section 1: category, label, ... are not image
features) and the image dimensions and aspect ratio (section 2: images arrive resized to a square,
so they are constant).

Conventions: intensities are 0-255 floats like the seed's (sums of pixel values etc.); channel
order is R, G, B; "gray" is the luminance image 0.299 R + 0.587 G + 0.114 B; every spread is the
population standard deviation / variance; median and quantiles interpolate like numpy; the
Fourier magnitude is |FFT2| / (H W), so its DC term is the mean intensity. Computation is in
float64 on the CPU: cv2 needs the pixels in host memory anyway and sklearn consumes the result there.

Stand-ins where the seed's per-image method does not batch: edge_density thresholds the Sobel
magnitude instead of counting Canny edges, region_homogeneity uses the cells of a fixed grid
instead of watershed regions. signal_to_noise_ratio is in dB with one gray level added to signal
and noise, so that black and noise-free images stay finite.
"""

from __future__ import annotations

import math

import cv2
import numpy as np
import torch
import torch.nn.functional as F

# Edge pixels: Sobel magnitude (in intensity units per pixel, see _sobel) above this value. 12.5 is
# Canny's customary low threshold of 100 on the unnormalised Sobel (whose weights sum to 8).
EDGE_THRESHOLD = 12.5
# Blob detection: scale-normalised Laplacian of Gaussian at this scale (blobs ~ 2*sigma wide);
# a peak counts when |response| exceeds BLOB_THRESHOLD intensity units (a single 255 pixel gives ~20).
BLOB_SIGMA = 2.0
BLOB_THRESHOLD = 10.0
# Region homogeneity on a fixed GRID x GRID partition of the image (stand-in for watershed regions).
HOMOGENEITY_GRID = 8
# Probabilistic Hough on Canny edges: Canny thresholds, accumulator votes, shortest line, largest gap.
CANNY_THRESHOLDS = (100, 200)
HOUGH_VOTES, HOUGH_MIN_LENGTH, HOUGH_MAX_GAP = 30, 20, 5

FEATURE_NAMES: tuple[str, ...] = (
    *(f"sum_{c}" for c in "rgb"),  # the seed's num_pixels_*: the sum of pixel values, not a count
    *(f"brightness_{c}" for c in "rgb"),
    *(f"contrast_{c}" for c in "rgb"),
    "luminance",
    "edge_density",
    "h_symmetry",
    "v_symmetry",
    "mean_grad_x",
    "std_grad_x",
    "mean_grad_y",
    "std_grad_y",
    "object_count",
    "bounding_box_area",
    "bounding_box_aspect_ratio",
    "bounding_box_x",
    "bounding_box_y",
    "bounding_box_width",
    "bounding_box_height",
    "perimeter",
    "mean_intensity",
    "variance_intensity",
    "mode_intensity",
    "median_intensity",
    "entropy",
    "mean_magnitude",
    "variance_magnitude",
    "line_length",
    "blob_count",
    "region_homogeneity",
    "noise_level",
    "signal_to_noise_ratio",
    "quantiles_intensity_25",
    "quantiles_intensity_50",
    "quantiles_intensity_75",
)


def direct_feature_names(image_size: int, raw_pixels: bool = False) -> list[str]:
    """Column names of `direct_features` for square images of `image_size` pixels."""
    names = list(FEATURE_NAMES)
    if raw_pixels:
        names += [f"pixel_{i}" for i in range(1, 3 * image_size * image_size + 1)]
    return names


def _sobel(gray: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """x and y gradients of [B, H, W]: Sobel / 8, i.e. a smoothed central difference per pixel.

    Replicate padding keeps H x W outputs and gives a constant image zero gradient everywhere;
    shifted slices instead of conv2d because float64 convolution on the CPU is slow.
    """
    padded = F.pad(gray[:, None], (1, 1, 1, 1), mode="replicate")[:, 0]
    dx = padded[:, :, 2:] - padded[:, :, :-2]
    dy = padded[:, 2:] - padded[:, :-2]
    grad_x = (dx[:, :-2] + 2 * dx[:, 1:-1] + dx[:, 2:]) / 8
    grad_y = (dy[:, :, :-2] + 2 * dy[:, :, 1:-1] + dy[:, :, 2:]) / 8
    return grad_x, grad_y


def _interpolated_quantiles(sorted_values: torch.Tensor, qs: tuple[float, ...]) -> torch.Tensor:
    """Quantiles of rows sorted ascending, linearly interpolated (numpy's default) -> [B, len(qs)]."""
    n = sorted_values.shape[1]
    columns = []
    for q in qs:
        position = q * (n - 1)
        low = math.floor(position)
        high = min(low + 1, n - 1)
        frac = position - low
        columns.append(sorted_values[:, low] * (1 - frac) + sorted_values[:, high] * frac)
    return torch.stack(columns, dim=1)


def _histogram_median(histogram: torch.Tensor) -> torch.Tensor:
    """Median of the levels counted in [B, 256] histograms, the two middle values averaged like numpy.

    From the cumulative counts instead of a second sort of B x H x W values.
    """
    cumulative = histogram.cumsum(1)
    n = int(histogram[0].sum().item())
    middle = torch.tensor([(n - 1) // 2, n // 2], dtype=torch.float64).expand(histogram.shape[0], 2)
    # the k-th smallest value (0-based) is the first level whose cumulative count exceeds k
    order_statistics = torch.searchsorted(cumulative.contiguous(), middle.contiguous(), right=True)
    return order_statistics.double().mean(1)


def _laplacian_of_gaussian(gray: torch.Tensor, sigma: float) -> torch.Tensor:
    """Scale-normalised Laplacian of Gaussian sigma^2 (G_xx + G_yy) of [B, H, W], replicate-padded.

    The 1D second derivative is shifted to sum to zero, so flat regions respond 0 at any level.
    Convolution through the FFT: several times faster than float64 conv2d of a 13 x 13 kernel on a CPU.
    """
    radius = math.ceil(3 * sigma)
    coords = torch.arange(-radius, radius + 1, dtype=torch.float64)
    gauss = torch.exp(-(coords**2) / (2 * sigma**2))
    gauss /= gauss.sum()
    second = (coords**2 / sigma**2 - 1) * gauss
    second -= second.mean()
    padded = F.pad(gray[:, None], (radius,) * 4, mode="replicate")[:, 0]
    kernel = torch.zeros(padded.shape[-2:], dtype=torch.float64)
    kernel[: 2 * radius + 1, : 2 * radius + 1] = torch.outer(second, gauss) + torch.outer(gauss, second)
    spectrum = torch.fft.rfft2(padded) * torch.fft.rfft2(kernel)
    # circular convolution: the first 2 * radius rows and columns wrap around, the rest is exact
    return torch.fft.irfft2(spectrum, s=padded.shape[-2:])[:, 2 * radius :, 2 * radius :]


def _blob_count(gray: torch.Tensor) -> torch.Tensor:
    """Strict local maxima (over the 8 neighbours) of |LoG| above BLOB_THRESHOLD, per image.

    Strict, by a margin above FFT rounding: the equal-valued ridge along a straight edge is not
    a row of blobs.
    """
    response = _laplacian_of_gaussian(gray, BLOB_SIGMA).abs()
    padded = F.pad(response, (1, 1, 1, 1))  # zero border: |LoG| >= 0 never beats a peak
    row_max = torch.maximum(torch.maximum(padded[:, :, :-2], padded[:, :, 1:-1]), padded[:, :, 2:])
    above_below = torch.maximum(row_max[:, :-2], row_max[:, 2:])
    neighbours = torch.maximum(above_below, torch.maximum(padded[:, 1:-1, :-2], padded[:, 1:-1, 2:]))
    is_peak = (response > neighbours + 1e-6) & (response > BLOB_THRESHOLD)
    return is_peak.flatten(1).sum(1).double()


def _region_homogeneity(gray: torch.Tensor) -> torch.Tensor:
    """1 / (1 + mean standard deviation of gray inside the cells of a fixed grid), per image.

    Integer cell indices split any H x W into a GRID x GRID partition without overlap; the
    two-pass variance keeps a flat cell at (numerically) zero spread.
    """
    batch, height, width = gray.shape
    grid_h, grid_w = min(HOMOGENEITY_GRID, height), min(HOMOGENEITY_GRID, width)
    rows = torch.arange(height) * grid_h // height
    cols = torch.arange(width) * grid_w // width
    cell = (rows[:, None] * grid_w + cols[None, :]).flatten().expand(batch, -1)
    values = gray.flatten(1)
    zeros = torch.zeros(batch, grid_h * grid_w, dtype=torch.float64)
    counts = zeros.scatter_add(1, cell, torch.ones_like(values))
    means = zeros.scatter_add(1, cell, values) / counts
    deviation = values - means.gather(1, cell)
    stds = (zeros.scatter_add(1, cell, deviation**2) / counts).sqrt()
    return 1.0 / (1.0 + stds.mean(1))


def _noise_level(gray: torch.Tensor) -> torch.Tensor:
    """Immerkaer's (1996) fast noise sigma of [B, H, W]: sqrt(pi/2) / (6 (W-2)(H-2)) sum |I * M|.

    M = [[1,-2,1],[-2,4,-2],[1,-2,1]] is the outer product of two second differences, applied
    on valid pixels only (no padding) as two shifted-slice passes.
    """
    height, width = gray.shape[-2:]
    d2x = gray[:, :, :-2] - 2 * gray[:, :, 1:-1] + gray[:, :, 2:]
    d2xy = d2x[:, :-2] - 2 * d2x[:, 1:-1] + d2x[:, 2:]
    return math.sqrt(math.pi / 2) * d2xy.abs().flatten(1).sum(1) / (6 * (width - 2) * (height - 2))


def _contour_and_line_features(gray_u8: np.ndarray) -> list[float]:
    """Per image (cv2): object count, largest-contour box and perimeter, Hough line length.

    Objects: external contours of the Otsu-thresholded image (bright side = object). A constant
    image has nothing to separate (cv2's Otsu would make the whole frame one object): no objects.
    """
    box = [0.0] * 8
    if gray_u8.min() != gray_u8.max():
        _, binary = cv2.threshold(gray_u8, 0, 255, cv2.THRESH_BINARY | cv2.THRESH_OTSU)
        contours, _ = cv2.findContours(binary, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        if contours:
            largest = max(contours, key=cv2.contourArea)
            x, y, w, h = cv2.boundingRect(largest)
            perimeter = cv2.arcLength(largest, True)
            box = [len(contours), w * h, w / h, x, y, w, h, perimeter]
    edges = cv2.Canny(gray_u8, *CANNY_THRESHOLDS)
    lines = cv2.HoughLinesP(
        edges, 1, np.pi / 180, HOUGH_VOTES, minLineLength=HOUGH_MIN_LENGTH, maxLineGap=HOUGH_MAX_GAP
    )
    length = 0.0
    if lines is not None:
        x1, y1, x2, y2 = lines.reshape(-1, 4).astype(np.float64).T  # cv2 4.x: [N,1,4], 5.x: [N,4]
        length = float(np.hypot(x2 - x1, y2 - y1).sum())
    return [float(v) for v in box] + [length]


def direct_features(images: torch.Tensor, raw_pixels: bool = False) -> torch.Tensor:
    """images float [B, 3, H, W] in [0, 1] (RGB) -> float64 [B, F] in the order of direct_feature_names.

    All values are finite for any input in [0, 1], constant images included.
    """
    if images.ndim != 4 or images.shape[1] != 3 or min(images.shape[-2:]) < 3:
        raise ValueError(
            f"direct_features expects RGB images [B, 3, H, W] with H, W >= 3, got {tuple(images.shape)}"
        )
    pixels = images.detach().to("cpu", torch.float64) * 255.0
    batch, _, height, width = pixels.shape
    n_raw = 3 * height * width if raw_pixels else 0
    if batch == 0:  # FFT backends reject empty batches
        return torch.zeros(0, len(FEATURE_NAMES) + n_raw, dtype=torch.float64)
    flat = pixels.flatten(2)
    gray = 0.299 * pixels[:, 0] + 0.587 * pixels[:, 1] + 0.114 * pixels[:, 2]  # [B, H, W] luminance image
    gray_flat = gray.flatten(1)
    columns = [flat.sum(2), flat.mean(2), flat.std(2, unbiased=False), gray_flat.mean(1, keepdim=True)]

    grad_x, grad_y = _sobel(gray)
    gx, gy = grad_x.flatten(1), grad_y.flatten(1)
    structure = [
        (gx.square() + gy.square()).sqrt().gt(EDGE_THRESHOLD).double().mean(1),  # edge_density
        1 - (gray - gray.flip(-1)).abs().flatten(1).mean(1) / 255,  # h_symmetry: left-right mirror
        1 - (gray - gray.flip(-2)).abs().flatten(1).mean(1) / 255,  # v_symmetry: top-bottom mirror
        gx.mean(1),
        gx.std(1, unbiased=False),
        gy.mean(1),
        gy.std(1, unbiased=False),
    ]
    columns.append(torch.stack(structure, dim=1))

    quantised = gray.round().clamp(0, 255)
    per_image = [_contour_and_line_features(g) for g in quantised.to(torch.uint8).numpy()]
    per_image = torch.tensor(per_image, dtype=torch.float64)
    columns.append(per_image[:, :8])

    levels = quantised.flatten(1)
    histogram = torch.zeros(batch, 256, dtype=torch.float64).scatter_add(
        1, levels.long(), torch.ones_like(levels)
    )
    p = histogram / levels.shape[1]
    magnitude = (
        torch.fft.fft2(gray, norm="forward").abs().flatten(1)
    )  # |FFT| / (H W): the DC term is the mean
    noise = _noise_level(gray)
    # Signal-to-noise in dB with one gray level added to both sides: finite for black and for
    # noise-free images (constant 255 without noise: 20 log10(256) = 48.2 dB; black: 0 dB).
    snr = 20 * torch.log10((gray_flat.mean(1) + 1) / (noise + 1))
    texture = [
        levels.mean(1),
        levels.var(1, unbiased=False),
        histogram.argmax(1).double(),  # mode: the lowest of equally frequent levels
        _histogram_median(histogram),
        -(p * torch.where(p > 0, p, torch.ones_like(p)).log2()).sum(1),  # entropy in bits, 0 log 0 = 0
        magnitude.mean(1),
        magnitude.var(1, unbiased=False),
        per_image[:, 8],  # line_length
        _blob_count(gray),
        _region_homogeneity(gray),
        noise,
        snr,
    ]
    columns.append(torch.stack(texture, dim=1))
    columns.append(_interpolated_quantiles(gray_flat.sort(1).values, (0.25, 0.5, 0.75)))
    if raw_pixels:
        columns.append(pixels.flatten(1))  # CHW order, 0-255
    return torch.cat(columns, dim=1)
