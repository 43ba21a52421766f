"""The files of an MVTec AD 2 evaluation-server submission: one anomaly map and one mask per test image.

    <out>/anomaly_images/<category>/<split>/<stem>.tiff             float16, one channel, the image's (h, w)
    <out>/anomaly_images_thresholded/<category>/<split>/<stem>.png  uint8, one channel, 0 normal / 255 anomalous

Followed from MVTec's public utility code (MVTecAD2_public_code_utils): the paths are
`MVTecAD2.get_relative_anomaly_image_out_path` in mvtec_ad_2_public_offline.py (the image's path
relative to the dataset root, suffix .tiff or .png; so test_public keeps its good/bad folders);
the formats are what utils.py's `_check_ad_images` (tifffile.imread: 2-D, dtype float16) and
`_check_thresholded_ad_images` (PIL: 2-D, values in {0, 255}) accept. The upload checker wants
exactly test_private and test_private_mixed of all eight categories, no other file.
Every file is written atomically (report.files): a stopped run leaves whole files only.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import tifffile

from mvtec_ad.errors import DataError
from mvtec_ad.report.files import save_png, write_atomically

ANOMALY_IMAGES = "anomaly_images"
THRESHOLDED_IMAGES = "anomaly_images_thresholded"
FLOAT16_MAX = float(np.finfo(np.float16).max)  # 65504


def submission_paths(out: Path, root: Path, image: Path) -> tuple[Path, Path]:
    """Where the map (.tiff) and the mask (.png) of `image`, a file under the dataset `root`, go in `out`."""
    relative = image.relative_to(root)
    return (
        out / ANOMALY_IMAGES / relative.with_suffix(".tiff"),
        out / THRESHOLDED_IMAGES / relative.with_suffix(".png"),
    )


def anomaly_image(anomaly_map: np.ndarray, image: Path) -> np.ndarray:
    """A float [h, w] map as the server takes it: float16; a value float16 cannot hold is an error naming the image."""
    finite = np.isfinite(anomaly_map)
    if not finite.all() or float(np.abs(anomaly_map).max(initial=0.0)) > FLOAT16_MAX:
        worst = (
            "NaN or infinite values" if not finite.all() else f"values up to {np.abs(anomaly_map).max():.6g}"
        )
        raise DataError(
            f"The anomaly map of '{image}' has {worst}; MVTec AD 2 takes float16 maps (|value| <= {FLOAT16_MAX:g}). "
            f"Use a detector whose maps stay in that range."
        )
    return anomaly_map.astype(np.float16)


def thresholded_image(anomaly_map: np.ndarray, threshold: float) -> np.ndarray:
    """The predicted mask: 255 where the map is >= `threshold`, else 0 (uint8 [h, w])."""
    return np.where(anomaly_map >= threshold, 255, 0).astype(np.uint8)


def write_tiff(path: Path, image: np.ndarray) -> Path:
    """A float16 [h, w] array as an uncompressed one-channel TIFF (the upload's tar.gz compresses it).

    Encoded in memory first: tifffile wants a named file, write_atomically hands out a descriptor's.
    """
    buffer = io.BytesIO()
    tifffile.imwrite(buffer, image, photometric="minisblack")
    return write_atomically(path, lambda f: f.write(buffer.getvalue()))


def write_submission_image(
    out: Path, root: Path, image: Path, anomaly_map: np.ndarray, threshold: float
) -> tuple[Path, Path]:
    """Write `image`'s map and its mask (`anomaly_map >= threshold`, on the float32 map the model gave)."""
    tiff, png = submission_paths(out, root, image)
    write_tiff(tiff, anomaly_image(anomaly_map, image))
    save_png(png, thresholded_image(anomaly_map, threshold))  # one channel: a grayscale PNG
    return tiff, png
