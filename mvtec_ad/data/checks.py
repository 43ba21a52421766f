"""Every file of a split checked before anything is fitted: complete, decodable, masks the size of their image.

A truncated image found halfway through a fit wastes the fit; one found by the test loop after
training shifts nothing but is found too late. So the DataModule checks all its samples at setup:
each image must be complete and readable, each mask must have its image's width and height (it
would be stretched silently otherwise), and a defective image whose mask marks no pixel is named
in a warning (its pixels then count as normal ones in the pixel metrics).
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Iterable
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from mvtec_ad.data.decode import decode_mask, read_bytes
from mvtec_ad.data.samples import Sample
from mvtec_ad.errors import DataError


def image_size(path: Path, what: str = "image") -> tuple[int, int]:
    """(width, height) from the file's header; the file is also checked to be complete."""
    data = read_bytes(path, what)
    try:
        with Image.open(io.BytesIO(data)) as image:
            return image.size
    except (UnidentifiedImageError, OSError, ValueError):
        raise DataError(
            f"Cannot decode {what} '{path}': the file is not an image cv2 or PIL can read. Replace or remove it."
        ) from None


def check_samples(samples: Iterable[Sample]) -> int:
    """Check every sample's image and mask (see the module docstring); returns how many masks are empty."""
    empty = 0
    for sample in samples:
        size = image_size(sample.path)
        if sample.mask_path is None:
            continue
        mask = decode_mask(sample.mask_path)
        if (mask.shape[1], mask.shape[0]) != size:
            raise DataError(
                f"Mask '{sample.mask_path}' is {mask.shape[1]}x{mask.shape[0]} px but its image "
                f"'{sample.path}' is {size[0]}x{size[1]}: a mask must have its image's size (it is not "
                f"stretched to fit). Replace the mask."
            )
        if sample.label == 1 and not np.any(mask):
            empty += 1
            warnings.warn(
                f"Mask '{sample.mask_path}' of defective image '{sample.path}' marks no pixel: the image "
                f"counts as defective for the image metrics, but its pixels count as normal ones in "
                f"pixel AUROC and AUPRO.",
                stacklevel=2,
            )
    return empty
