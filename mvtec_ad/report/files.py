"""Writing the files a person or a later run reads: atomically, so none is ever half-written.

Every write goes to a temporary file in the target's own folder, is flushed to disk (fsync) and
renamed over the target: a reader, a kill or a full disk leaves either the old file or the new
one, never a truncated one, and no temporary file is left behind.
"""

from __future__ import annotations

import errno
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO

import cv2
import numpy as np

from mvtec_ad.errors import UserError


class DiskFullError(UserError, OSError):
    """No space left where a result had to be written; the previous file, if any, is kept."""


def write_atomically(path: str | Path, write: Callable[[IO[bytes]], None]) -> Path:
    """Call `write` on a temporary file beside `path`, fsync it, then rename it to `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as error:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
            raise DiskFullError(
                f"No space left on the device to write '{path}'; the previous file (if any) is unchanged. "
                f"Free space on {path.parent} and run again."
            ) from error
        raise
    return path


def write_text(path: str | Path, text: str) -> Path:
    return write_atomically(path, lambda f: f.write(text.encode()))


def write_json(path: str | Path, data: object) -> Path:
    return write_text(path, json.dumps(data, indent=2) + "\n")


def save_png(path: str | Path, rgb: np.ndarray) -> Path:
    """An RGB uint8 picture as PNG."""
    return save_picture(path, rgb, ".png")


def save_jpeg(path: str | Path, rgb: np.ndarray, quality: int = 85) -> Path:
    """An RGB uint8 picture as JPEG (thumbnails: a tenth of a PNG's bytes)."""
    return save_picture(path, rgb, ".jpg", [cv2.IMWRITE_JPEG_QUALITY, quality])


def save_picture(path: str | Path, rgb: np.ndarray, ext: str, params: list[int] | None = None) -> Path:
    ok, encoded = cv2.imencode(ext, cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2BGR), params or [])
    if not ok:
        raise ValueError(f"Could not encode a {rgb.shape} picture as {ext} for '{path}'.")
    return write_atomically(path, lambda f: f.write(encoded.tobytes()))
