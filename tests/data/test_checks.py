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


@pytest.mark.parametrize(("suffix", "progressive"), [(".jpg", 0), (".jpg", 1), (".png", 0)])
def test_a_complete_file_with_kilobytes_after_its_end_still_decodes(tmp_path, suffix, progressive):
    path = tmp_path / f"camera{suffix}"
    image = np.random.default_rng(0).integers(0, 255, (40, 48, 3), dtype=np.uint8)
    assert cv2.imwrite(str(path), image, [cv2.IMWRITE_JPEG_PROGRESSIVE, progressive])
    trailer = b"MakerTrailer" + np.random.default_rng(1).integers(0, 256, 4096, dtype=np.uint8).tobytes()
    assert b"\xff\xd9" not in trailer and b"IEND" not in trailer
    path.write_bytes(path.read_bytes() + trailer)  # cameras and tools append data after the end marker
    assert decode_image(path).shape == (40, 48, 3)
    assert decode_mask(path).shape == (40, 48)


def test_an_end_marker_inside_an_exif_thumbnail_does_not_hide_a_truncation(tmp_path):
    thumbnail = cv2.imencode(".jpg", np.full((8, 8, 3), 90, np.uint8))[1].tobytes()
    app1 = b"Exif\x00\x00" + thumbnail  # a camera's thumbnail: a whole JPEG, end marker included
    main = noisy_jpeg(tmp_path / "main.jpg").read_bytes()
    path = tmp_path / "camera.jpg"
    path.write_bytes(main[:2] + b"\xff\xe1" + (len(app1) + 2).to_bytes(2, "big") + app1 + main[2:])
    assert decode_image(path).shape == (40, 48, 3)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - len(main) // 3])
    with pytest.raises(DataError, match="JPEG data ends before its end-of-image marker"):
        decode_image(path)


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
