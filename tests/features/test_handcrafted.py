"""Direct (handcrafted) features: values derived by hand on constant, checkerboard, ramp and shape images.

Images are built in float64 from exact 0-255 levels, so every expected value below follows from
the definitions in mvtec_ad/data/features.py by arithmetic written out in the comments.
"""

from __future__ import annotations

import math

import pytest
import torch

from mvtec_ad.features.handcrafted import FEATURE_NAMES, direct_feature_names, direct_features

SIZE = 32
N = SIZE * SIZE


def gray_image(levels: torch.Tensor) -> torch.Tensor:
    """[H, W] 0-255 levels -> [1, 3, H, W] in [0, 1] with R = G = B (so gray = the levels)."""
    return (levels.double() / 255).expand(3, -1, -1)[None]


def checkerboard(size: int, square: int) -> torch.Tensor:
    """0/255 squares of `square` pixels, the top-left one black."""
    index = torch.arange(size) // square
    return ((index[:, None] + index[None, :]) % 2).double() * 255


def features_of(levels: torch.Tensor) -> dict[str, float]:
    values = direct_features(gray_image(levels))[0]
    return dict(zip(direct_feature_names(levels.shape[-1]), values.tolist(), strict=True))


def approx(value: float) -> object:
    return pytest.approx(value, rel=1e-9, abs=1e-9)


# ----------------------------------------------------------------------------- names and shapes


def test_names_match_columns_and_raw_pixels_append_chw_values():
    names = direct_feature_names(SIZE)
    assert len(names) == len(set(names)) == len(FEATURE_NAMES) == 40
    assert direct_features(torch.rand(2, 3, SIZE, SIZE)).shape == (2, 40)

    # a 3x3 image whose pixel (c, y, x) holds level 9c + 3y + x: raw pixels in CHW order are 0..26
    tiny = torch.arange(27, dtype=torch.float64).reshape(1, 3, 3, 3) / 255
    with_raw = direct_features(tiny, raw_pixels=True)
    raw_names = direct_feature_names(3, raw_pixels=True)
    assert with_raw.shape == (1, 40 + 27) and len(raw_names) == 67
    assert raw_names[40] == "pixel_1" and raw_names[-1] == "pixel_27"
    torch.testing.assert_close(with_raw[0, 40:], torch.arange(27, dtype=torch.float64))
    torch.testing.assert_close(with_raw[:, :40], direct_features(tiny))
    assert direct_features(torch.rand(0, 3, 8, 8), raw_pixels=True).shape == (0, 40 + 192)


@pytest.mark.parametrize("shape", [(3, SIZE, SIZE), (1, 1, SIZE, SIZE), (1, 3, 2, 2)])
def test_rejects_non_rgb_or_tiny_input(shape):
    with pytest.raises(ValueError, match="RGB images"):
        direct_features(torch.rand(shape))


# ----------------------------------------------------------------------------- exact values


def test_constant_image():
    f = features_of(torch.full((SIZE, SIZE), 100.0))
    for c in "rgb":
        assert f[f"sum_{c}"] == approx(100 * N)
        assert f[f"brightness_{c}"] == approx(100)
        assert f[f"contrast_{c}"] == approx(0)
    assert f["luminance"] == approx(100)  # 0.299 + 0.587 + 0.114 = 1
    assert f["edge_density"] == 0 and f["blob_count"] == 0 and f["line_length"] == 0
    assert f["h_symmetry"] == approx(1) and f["v_symmetry"] == approx(1)
    for name in ("mean_grad_x", "std_grad_x", "mean_grad_y", "std_grad_y", "noise_level"):
        assert f[name] == approx(0), name
    # nothing for Otsu to separate: no object, an all-zero box
    for name in FEATURE_NAMES[17:25]:
        assert f[name] == 0, name
    assert f["mean_intensity"] == f["mode_intensity"] == f["median_intensity"] == 100
    assert f["variance_intensity"] == 0 and f["entropy"] == 0
    for q in (25, 50, 75):
        assert f[f"quantiles_intensity_{q}"] == approx(100)
    # |FFT| / N: only the DC term is non-zero and equals the mean 100
    assert f["mean_magnitude"] == approx(100 / N)
    assert f["variance_magnitude"] == approx(100**2 / N - (100 / N) ** 2)
    assert f["region_homogeneity"] == approx(1)  # every grid cell has spread 0
    assert f["signal_to_noise_ratio"] == approx(20 * math.log10(101 / 1))  # (mean + 1) / (noise + 1)


def test_checkerboard_of_four_squares_per_side():
    # 4 x 4 squares of 8 px, levels 0 and 255, half the pixels each
    f = features_of(checkerboard(SIZE, 8))
    assert f["sum_r"] == approx(255 * N / 2)
    assert f["brightness_g"] == approx(127.5) and f["contrast_b"] == approx(127.5)
    assert f["mean_intensity"] == 127.5 and f["variance_intensity"] == 127.5**2
    assert f["entropy"] == approx(1.0)
    assert f["mode_intensity"] == 0  # a tie between 0 and 255: the lower level
    assert f["median_intensity"] == 127.5  # the two middle values 0 and 255 averaged
    # sorted gray: 512 zeros then 512 x 255; positions q (N - 1) = 255.75, 511.5, 767.25
    assert f["quantiles_intensity_25"] == approx(0)
    assert f["quantiles_intensity_50"] == approx(127.5)
    assert f["quantiles_intensity_75"] == approx(255)

    # Edges: a pixel whose 3x3 window crosses a boundary has Sobel magnitude >= 255/2 (or
    # sqrt(2) 255/4 at corners), far above 12.5; others have 0. The 3 inner boundaries per axis
    # touch 6 columns and 6 rows, so the non-edge pixels are (32 - 6)^2 = 676.
    assert f["edge_density"] == approx((N - 26 * 26) / N)
    # An even number of squares: each mirror swaps black and white everywhere.
    assert f["h_symmetry"] == approx(0) and f["v_symmetry"] == approx(0)
    # Sobel/8 x gradient: 255/2 in the 6 boundary columns, but 255/4 where a boundary row also
    # crosses the window (6 of 32 rows), 0 elsewhere; the signs cancel so the mean is 0.
    assert f["mean_grad_x"] == approx(0) and f["mean_grad_y"] == approx(0)
    std = math.sqrt((6 * 26 * 127.5**2 + 6 * 6 * 63.75**2) / N)
    assert f["std_grad_x"] == approx(std) and f["std_grad_y"] == approx(std)
    # Immerkaer: M is the outer product of two second differences; the board is 127.5 - 127.5 a(x) b(y)
    # with square waves a, b whose second difference is +-2 next to a boundary, so |I * M| = 510
    # on the 6 x 6 pixels next to both a vertical and a horizontal boundary, 0 elsewhere.
    noise = math.sqrt(math.pi / 2) * 36 * 510 / (6 * 30 * 30)
    assert f["noise_level"] == approx(noise)
    assert f["signal_to_noise_ratio"] == approx(20 * math.log10(128.5 / (noise + 1)))
    # Parseval with |FFT| / N: mean(|F|^2) = mean(I^2) / N, and var + mean^2 = mean(|F|^2)
    assert f["variance_magnitude"] + f["mean_magnitude"] ** 2 == approx(255**2 / 2 / N)
    # 8 x 8 grid: 4 px cells each lie inside one square
    assert f["region_homogeneity"] == approx(1)


def test_checkerboard_details():
    # An odd number of squares (5 of 8 px on 40 px): both mirrors map the board onto itself.
    f = features_of(checkerboard(40, 8))
    assert f["h_symmetry"] == approx(1) and f["v_symmetry"] == approx(1)
    # 2 px squares on 32 px: every 4 px grid cell holds 2 x 2 squares, half 0 half 255 -> std 127.5
    assert features_of(checkerboard(SIZE, 2))["region_homogeneity"] == approx(1 / (1 + 127.5))
    # 1 px squares: 127.5 - 127.5 (-1)^(x+y) has two Fourier terms, DC 127.5 and Nyquist -127.5
    f = features_of(checkerboard(SIZE, 1))
    assert f["mean_magnitude"] == approx(255 / N)
    assert f["variance_magnitude"] == approx(2 * 127.5**2 / N - (255 / N) ** 2)


def test_horizontal_ramp_gradients_and_symmetry():
    # level 8x in column x = 0..31: the Sobel/8 x gradient is 8 inside, 4 in the two border
    # columns (replicate padding halves the central difference), the y gradient is 0
    f = features_of((torch.arange(SIZE, dtype=torch.float64) * 8).expand(SIZE, -1))
    assert f["mean_grad_x"] == approx((30 * 8 + 2 * 4) / SIZE)
    assert f["std_grad_x"] == approx(math.sqrt((30 * 64 + 2 * 16) / SIZE - 7.75**2))
    assert f["mean_grad_y"] == approx(0) and f["std_grad_y"] == approx(0)
    assert f["edge_density"] == 0  # magnitude 8 < 12.5
    # |I - mirror| = 8 |2x - 31|: the odd numbers 1..31 twice, mean 16 -> 128
    assert f["h_symmetry"] == approx(1 - 128 / 255) and f["v_symmetry"] == approx(1)
    assert f["noise_level"] == approx(0)  # second differences of a linear ramp vanish


def test_largest_contour_box_and_perimeter():
    levels = torch.zeros(SIZE, SIZE, dtype=torch.float64)
    levels[8:16, 4:24] = 255  # 20 x 8 at (4, 8)
    levels[20:23, 26:29] = 255  # a smaller second object
    f = features_of(levels)
    assert f["object_count"] == 2
    assert (f["bounding_box_x"], f["bounding_box_y"]) == (4, 8)
    assert (f["bounding_box_width"], f["bounding_box_height"]) == (20, 8)
    assert f["bounding_box_area"] == 160 and f["bounding_box_aspect_ratio"] == 2.5
    assert f["perimeter"] == 2 * 19 + 2 * 7  # the contour runs through the border pixel centres


def test_line_length_of_a_full_width_band():
    # two horizontal Canny edges across the whole 64 px width, each a segment from x = 0 to 63
    levels = torch.zeros(64, 64, dtype=torch.float64)
    levels[10:22] = 255
    f = features_of(levels)
    assert f["line_length"] == pytest.approx(2 * 63)
    assert f["edge_density"] == approx(4 / 64)  # two rows on each side of the two boundaries


def test_blob_count_separates_spots_from_edges():
    # sigma^2 LoG of a single 255 pixel: centre 255 / (pi sigma^2) ~ 20.3 > 10, the ring around
    # it peaks at 255 * 2 e^-2 / (2 pi sigma^2) ~ 2.7 < 10: one blob per isolated bright pixel
    levels = torch.zeros(SIZE, SIZE, dtype=torch.float64)
    levels[16, 16] = 255
    assert features_of(levels)["blob_count"] == 1
    levels[16, 16] = 0
    levels[8, 8] = levels[24, 24] = 255  # 16 px apart, beyond the 13 px kernel
    assert features_of(levels)["blob_count"] == 2
    # a straight edge gives a ridge of equal values: no strict maximum, no blob
    step = torch.zeros(SIZE, SIZE, dtype=torch.float64)
    step[:, 16:] = 255
    assert features_of(step)["blob_count"] == 0


# ----------------------------------------------------------------------------- batches and robustness


def test_batch_equals_images_one_by_one():
    torch.manual_seed(0)
    images = torch.cat(
        [
            torch.rand(3, 3, SIZE, SIZE),
            torch.nn.functional.avg_pool2d(torch.rand(2, 3, SIZE, SIZE), 5, 1, 2),
            gray_image(checkerboard(SIZE, 8)).float(),
        ]
    )
    batched = direct_features(images)
    for i in range(len(images)):
        torch.testing.assert_close(
            batched[i : i + 1], direct_features(images[i : i + 1]), rtol=1e-9, atol=1e-7
        )


@pytest.mark.parametrize("fill", [None, 0.0, 1.0, 0.5, 100 / 255])
def test_all_finite(fill):
    torch.manual_seed(1)
    images = torch.rand(2, 3, SIZE, SIZE) if fill is None else torch.full((2, 3, SIZE, SIZE), fill)
    features = direct_features(images, raw_pixels=True)
    assert features.dtype == torch.float64 and torch.isfinite(features).all()
