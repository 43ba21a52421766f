"""Every file checked before fitting: truncated images, masks of another size, empty masks."""

import cv2
import numpy as np
import pytest

from mvtec_ad.data.checks import check_samples
from mvtec_ad.data.datamodule import AnomalyDataModule
from mvtec_ad.data.decode import decode_image, decode_mask
from mvtec_ad.errors import DataError
from tests.helpers import make_category, write_mask


def noisy_jpeg(path, size=(40, 48)):
    rng = np.random.default_rng(0)
    assert cv2.imwrite(str(path), rng.integers(0, 255, (*size, 3), dtype=np.uint8))
    return path


@pytest.mark.parametrize("suffix", [".jpg", ".png"])
def test_a_truncated_file_is_an_error_that_names_it(tmp_path, suffix):
    path = noisy_jpeg(tmp_path / f"part{suffix}")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) * 2 // 3])
    with pytest.raises(DataError, match=rf"Cannot decode image '{path}': the (JPEG|PNG) data ends before"):
        decode_image(path)
    with pytest.raises(DataError, match=rf"Cannot decode mask '{path}'.*truncated"):
        decode_mask(path)


def test_a_jpeg_with_bytes_after_its_end_marker_still_decodes(tmp_path):
    path = noisy_jpeg(tmp_path / "camera.jpg")
    path.write_bytes(path.read_bytes() + b"\x00" * 100)  # some cameras pad their files
    assert decode_image(path).shape == (40, 48, 3)


def test_a_truncated_test_image_fails_the_setup_before_any_fit(tmp_path):
    root = make_category(tmp_path / "data")
    victim = root / "widget" / "test" / "crack" / "001.png"
    victim.write_bytes(victim.read_bytes()[:-20])
    with pytest.raises(DataError, match=rf"'{victim}'.*truncated"):
        AnomalyDataModule(root=root, category="widget").setup("fit")


def test_a_mask_of_another_size_is_an_error_naming_both_files(tmp_path):
    root = make_category(tmp_path / "data")
    mask = write_mask(root / "widget" / "ground_truth" / "crack" / "000_mask.png", size=(32, 40))
    with pytest.raises(DataError, match=rf"Mask '{mask}' is 40x32 px but its image '.*000.png' is 32x32"):
        AnomalyDataModule(root=root, category="widget").setup()


def test_an_empty_mask_is_named_in_a_warning_and_counted(tmp_path):
    root = make_category(tmp_path / "data")
    empty = write_mask(root / "widget" / "ground_truth" / "scratch" / "000_mask.png", value=0)
    with pytest.warns(UserWarning, match=rf"Mask '{empty}' of defective image .* marks no pixel"):
        dm = AnomalyDataModule(root=root, category="widget")
        dm.setup()
    assert dm.layout is not None
    with pytest.warns(UserWarning):
        assert check_samples(dm.layout.test) == 1
