"""Decode image and mask files into 8-bit arrays, and cache them decoded and resized.

cv2 reads every format the layouts allow (PNG, JPG, BMP, TIFF; gray, RGB, RGBA, 16 bit); images
leave as RGB uint8, masks as {0, 1} uint8, so every detector sees one kind of input.
torch is imported by the cache only: the deploy Inferencer decodes with these functions without it.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

import cv2
import numpy as np

from mvtec_ad.data.geometry import InputGeometry
from mvtec_ad.errors import DataError

if TYPE_CHECKING:
    import torch

# cv2 uses its own thread pool inside every DataLoader worker; on small machines that oversubscribes.
cv2.setNumThreads(1)


def to_uint8(image: np.ndarray) -> np.ndarray:
    """Scale 16-bit / float images to 8 bit; 8-bit images pass through unchanged."""
    if image.dtype == np.uint8:
        return image
    if image.dtype == np.uint16:
        return (image.astype(np.float32) / 257.0).round().astype(np.uint8)
    if np.issubdtype(image.dtype, np.floating):
        scale = 255.0 if image.max() <= 1.0 else 1.0
        return np.clip(image * scale, 0, 255).round().astype(np.uint8)
    return np.clip(image, 0, 255).astype(np.uint8)


JPEG_START = b"\xff\xd8"
PNG_START = b"\x89PNG\r\n\x1a\n"
# JPEG markers without a length field: TEM, RST0-7, SOI (EOI ends the walk)
STANDALONE_MARKERS = frozenset({0x01, *range(0xD0, 0xD9)})
# where a scan's entropy-coded data ends: an 0xFF that is no stuffed byte, no restart marker, no fill byte
SCAN_END = re.compile(rb"\xff(?![\x00\xd0-\xd7\xff])")


def jpeg_complete(data: bytes) -> bool:
    """Whether the JPEG's segments, walked as libjpeg reads them, reach the end-of-image marker.

    Lengths are skipped and scans run to their next marker, so an end marker inside an EXIF
    thumbnail does not count and bytes a camera appends after the real one do not matter.
    """
    position = len(JPEG_START)
    while (position := data.find(b"\xff", position)) >= 0:  # libjpeg skips stray bytes to a marker
        while position < len(data) and data[position] == 0xFF:  # fill bytes
            position += 1
        if position >= len(data):
            return False
        marker, position = data[position], position + 1
        if marker == 0xD9:
            return True
        if marker in STANDALONE_MARKERS or marker == 0x00:
            continue
        position += int.from_bytes(data[position : position + 2], "big")
        if marker == 0xDA:  # start of scan: its entropy-coded data follows the header
            end = SCAN_END.search(data, position)
            if end is None:
                return False
            position = end.start()
    return False


def png_complete(data: bytes) -> bool:
    """Whether the PNG's chunks, walked by their lengths, reach a whole IEND chunk (trailing bytes aside)."""
    position = len(PNG_START)
    while position + 8 <= len(data):
        length, kind = int.from_bytes(data[position : position + 4], "big"), data[position + 4 : position + 8]
        position += 12 + length  # length, type, data, CRC
        if kind == b"IEND":
            return position <= len(data)
    return False


def incomplete(data: bytes) -> str | None:
    """Why JPEG or PNG data is truncated (it ends before its end marker), or None when it is complete.

    cv2 decodes a truncated JPEG without an error (libjpeg fills the rest grey and prints a
    warning that names no file), so truncation is checked on the bytes, by their format not
    their name: the file's structure is walked to its end marker, as the decoder reads it, so any
    data appended after that marker (cameras and tools do) is no reason to refuse a file. Other
    formats are left to the decoder.
    """
    if data.startswith(JPEG_START) and not jpeg_complete(data):
        return "the JPEG data ends before its end-of-image marker (the file is truncated)"
    if data.startswith(PNG_START) and not png_complete(data):
        return "the PNG data ends before its IEND chunk (the file is truncated)"
    return None


def read_bytes(path: str | Path, what: str = "image") -> bytes:
    """The file's bytes, checked to be complete; a missing or truncated file is a DataError naming it."""
    try:
        data = Path(path).read_bytes()
    except OSError as error:
        raise DataError(
            f"Cannot decode {what} '{path}': the file cannot be read ({error.strerror or error}). Replace or remove it."
        ) from None
    reason = incomplete(data)
    if reason:
        raise DataError(f"Cannot decode {what} '{path}': {reason}. Replace or remove it.")
    return data


def imdecode(path: str | Path, what: str) -> np.ndarray | None:
    """cv2's decode of a complete file, unchanged (all channels, full bit depth); None if cv2 cannot."""
    return cv2.imdecode(np.frombuffer(read_bytes(path, what), np.uint8), cv2.IMREAD_UNCHANGED)


def decode_image(path: str | Path) -> np.ndarray:
    """Read any image file as 8-bit RGB HxWx3: gray, RGBA and 16-bit inputs are converted."""
    image = imdecode(path, "image")
    if image is None:
        raise DataError(
            f"Cannot decode image '{path}': the file is missing, truncated or not an image. "
            f"Replace or remove it."
        )
    image = to_uint8(image)
    if image.ndim == 2:
        return cv2.cvtColor(image, cv2.COLOR_GRAY2RGB)
    channels = image.shape[2]
    if channels == 1:
        return cv2.cvtColor(image[:, :, 0], cv2.COLOR_GRAY2RGB)
    if channels == 4:
        return cv2.cvtColor(image, cv2.COLOR_BGRA2RGB)
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def decode_mask(path: str | Path) -> np.ndarray:
    """Read a ground-truth mask as a {0, 1} uint8 HxW array (any non-zero pixel is defective)."""
    mask = imdecode(path, "mask")
    if mask is None:
        raise DataError(f"Cannot decode mask '{path}': the file is missing, truncated or not an image.")
    if mask.ndim == 3:
        mask = mask[:, :, :3].max(axis=2)  # colour channels only: an opaque alpha is not a defect
    return (mask > 0).astype(np.uint8)


class Placed(NamedTuple):
    """An image on its canvas: uint8 [3, H, W], the (h, w) it covers there, and its original (h, w)."""

    image: torch.Tensor
    content: tuple[int, int]
    original: tuple[int, int]


class DecodeCache:
    """Decoded, placed uint8 tensors keyed by (path, geometry): each file is decoded once per process.

    DataLoader workers each hold their own copy, which is why the DataModule keeps its workers
    persistent: later epochs then read from memory. Masks at their original resolution (for
    evaluation as MVTec's script does it) are cached alike.
    """

    def __init__(self) -> None:
        self._items: dict[tuple[str, InputGeometry | None, str], object] = {}
        self.decodes = 0  # how many files were actually decoded (tests and benchmarks read it)

    def image(self, path: Path, geometry: InputGeometry) -> Placed:
        key = (str(path), geometry, "image")
        if key not in self._items:
            import torch

            rgb = decode_image(path)
            placed, content = geometry.place_image(rgb)
            tensor = torch.from_numpy(np.ascontiguousarray(placed.transpose(2, 0, 1)))
            self._items[key] = Placed(tensor, content, rgb.shape[:2])
            self.decodes += 1
        return self._items[key]

    def mask(self, path: Path, geometry: InputGeometry) -> torch.Tensor:
        """uint8 [1, H, W] in {0, 1}, placed like its image."""
        key = (str(path), geometry, "mask")
        if key not in self._items:
            import torch

            self._items[key] = torch.from_numpy(geometry.place_mask(decode_mask(path)))[None]
            self.decodes += 1
        return self._items[key]

    def original_mask(self, path: Path) -> torch.Tensor:
        """uint8 [H, W] in {0, 1} at the file's own resolution."""
        key = (str(path), None, "mask")
        if key not in self._items:
            import torch

            self._items[key] = torch.from_numpy(decode_mask(path))
            self.decodes += 1
        return self._items[key]
