"""Decoding image and mask files of every mode and depth; corrupt and missing files name themselves."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from mvtec_ad.data.decode import decode_image, decode_mask
from mvtec_ad.errors import DataError
from tests.helpers import SIZE


def test_decode_grayscale_png_gives_three_equal_channels(tmp_path):
    gray = np.arange(SIZE * 24, dtype=np.uint16).reshape(SIZE, 24) % 256
    path = tmp_path / "gray.png"
    cv2.imwrite(str(path), gray.astype(np.uint8))
    rgb = decode_image(path)
    assert rgb.shape == (SIZE, 24, 3)
    assert rgb.dtype == np.uint8
    for c in range(3):
        np.testing.assert_array_equal(rgb[:, :, c], gray)


def test_decode_bgr_png_is_returned_as_rgb(tmp_path):
    bgr = np.zeros((4, 5, 3), dtype=np.uint8)
    bgr[...] = (10, 20, 30)  # B, G, R
    path = tmp_path / "colour.png"
    cv2.imwrite(str(path), bgr)
    rgb = decode_image(path)
    assert rgb.shape == (4, 5, 3)
    assert tuple(rgb[0, 0]) == (30, 20, 10)


def test_decode_rgba_png_drops_alpha_and_keeps_colour(tmp_path):
    bgra = np.zeros((4, 4, 4), dtype=np.uint8)
    bgra[...] = (10, 20, 200, 255)  # B, G, R, A
    bgra[1, 2] = (255, 0, 0, 0)  # pure blue, transparent
    path = tmp_path / "rgba.png"
    cv2.imwrite(str(path), bgra)
    rgb = decode_image(path)
    assert rgb.shape == (4, 4, 3) and rgb.dtype == np.uint8
    assert tuple(int(v) for v in rgb[0, 0]) == (200, 20, 10)
    assert tuple(int(v) for v in rgb[1, 2]) == (0, 0, 255)


def test_decode_16bit_grayscale_png_scales_to_8bit(tmp_path):
    img = np.zeros((2, 3), dtype=np.uint16)
    img[0, 0] = 65535
    img[0, 1] = 257 * 100
    img[0, 2] = 257
    path = tmp_path / "deep.png"
    cv2.imwrite(str(path), img)
    assert cv2.imread(str(path), cv2.IMREAD_UNCHANGED).dtype == np.uint16  # really a 16-bit file
    rgb = decode_image(path)
    assert rgb.dtype == np.uint8 and rgb.shape == (2, 3, 3)
    assert list(rgb[0, :, 0]) == [255, 100, 1]
    assert list(rgb[1, :, 1]) == [0, 0, 0]
    assert (rgb[..., 0] == rgb[..., 2]).all()


def test_decode_16bit_colour_png(tmp_path):
    bgr = np.zeros((2, 2, 3), dtype=np.uint16)
    bgr[...] = (0, 257 * 50, 65535)  # B, G, R
    path = tmp_path / "deep_colour.png"
    cv2.imwrite(str(path), bgr)
    rgb = decode_image(path)
    assert rgb.dtype == np.uint8
    assert tuple(int(v) for v in rgb[1, 1]) == (255, 50, 0)


def test_decode_corrupt_file_raises_naming_it(tmp_path):
    path = tmp_path / "broken.png"
    path.write_bytes(np.random.default_rng(0).integers(0, 256, 512, dtype=np.uint8).tobytes())
    with pytest.raises(DataError) as err:
        decode_image(path)
    assert str(path) in str(err.value)
    with pytest.raises(DataError) as err:
        decode_mask(path)
    assert str(path) in str(err.value)


def test_decode_missing_file_raises_naming_it(tmp_path):
    path = tmp_path / "gone.png"
    with pytest.raises(DataError) as err:
        decode_image(path)
    assert str(path) in str(err.value)


def test_decode_mask_any_nonzero_is_one(tmp_path):
    mask = np.array([[0, 1, 2], [127, 255, 0]], dtype=np.uint8)
    path = tmp_path / "m.png"
    cv2.imwrite(str(path), mask)
    out = decode_mask(path)
    assert out.dtype == np.uint8
    np.testing.assert_array_equal(out, [[0, 1, 1], [1, 1, 0]])


def test_decode_mask_three_channels(tmp_path):
    mask = np.zeros((3, 3, 3), dtype=np.uint8)
    mask[0, 0] = (255, 255, 255)
    mask[1, 1] = (0, 0, 7)  # only one channel set still counts
    path = tmp_path / "m3.png"
    cv2.imwrite(str(path), mask)
    out = decode_mask(path)
    assert out.shape == (3, 3)
    np.testing.assert_array_equal(out, [[1, 0, 0], [0, 1, 0], [0, 0, 0]])


def test_decode_mask_16bit(tmp_path):
    mask = np.array([[0, 1], [65535, 0]], dtype=np.uint16)
    path = tmp_path / "m16.png"
    cv2.imwrite(str(path), mask)
    np.testing.assert_array_equal(decode_mask(path), [[0, 1], [1, 0]])


def test_decode_mask_rgba_ignores_alpha(tmp_path):
    mask = np.zeros((3, 3, 4), dtype=np.uint8)
    mask[..., 3] = 255  # fully opaque
    mask[1, 1, :3] = 255  # one white (defective) pixel
    path = tmp_path / "rgba_mask.png"
    cv2.imwrite(str(path), mask)
    np.testing.assert_array_equal(decode_mask(path), [[0, 0, 0], [0, 1, 0], [0, 0, 0]])
