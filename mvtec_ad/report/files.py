"""Writing the files a person or a later run reads: atomically, so none is ever half-written.

Every write goes to a temporary file in the target's own folder, is flushed to disk (fsync) and
renamed over the target: a reader, a kill or a full disk leaves either the old file or the new
one, never a truncated one. The temporary file is removed when the write fails; one that a
SIGKILL left behind is removed later by remove_stale_temporaries. Files get the mode the umask
gives any new file (0644 under umask 022), so a colleague or a web server can read a report.
"""

from __future__ import annotations

import errno
import json
import os
import re
import secrets
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO

import cv2
import numpy as np

from mvtec_ad.errors import UserError

# write_atomically's temporary files, .<target name>.<8 random characters>.tmp (mkstemp's names, which
# earlier versions used, match too): remove_stale_temporaries touches no other file
TEMPORARY_NAME = re.compile(r"\..+\.[a-z0-9_]{8}\.tmp")
# a temporary file younger than this may be one that its writer has just created and not yet locked
STALE_AFTER_S = 10.0


class DiskFullError(UserError, OSError):
    """No space left where a result had to be written; the previous file, if any, is kept."""


def is_disk_full(error: BaseException) -> bool:
    """Whether `error`, or an error behind it, says the disk or the quota is full.

    Some writers wrap the OSError: torch's zip writer raises `RuntimeError: ... unexpected pos` with
    the OSError as its context.
    """
    seen: set[int] = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        seen.add(id(error))
        error = error.__cause__ or error.__context__
    return False


def write_atomically(path: str | Path, write: Callable[[IO[bytes]], None], durable: bool = True) -> Path:
    """Call `write` on a temporary file beside `path`, fsync it, then rename it to `path`.

    durable=False skips the fsync, for files a rerun draws again (report pictures): the rename still
    shows a reader the old file or the new one, never half of one, but a power cut may lose it.
    """
    path = Path(path)
    tmp: Path | None = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = create_temporary(path)
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            if durable:
                os.fsync(f.fileno())
            os.utime(tmp)  # young again when its lock goes at close: see remove_stale_temporaries
        os.replace(tmp, path)
    except BaseException as error:
        if tmp is not None:
            tmp.unlink(missing_ok=True)
        if is_disk_full(error):
            raise DiskFullError(
                f"No space left on the device to write '{path}'; the previous file (if any) is unchanged. "
                f"Free space on {path.parent} and run again."
            ) from error
        raise
    return path


def claim_numbered_folder(parent: Path, prefix: str, first: int | None = None) -> int:
    """Create `parent/<prefix><N>` with one atomic mkdir and return N: no other process gets the same one.

    N starts at `first` (default: one more than the largest N already there) and goes up while
    another run takes it between the count and the mkdir.
    """
    parent.mkdir(parents=True, exist_ok=True)
    if first is None:
        taken = [p.name.removeprefix(prefix) for p in parent.glob(f"{prefix}*")]
        first = max((int(t) + 1 for t in taken if t.isdigit()), default=0)
    n = first
    while True:
        try:
            (parent / f"{prefix}{n}").mkdir()
            return n
        except FileExistsError:
            n += 1


def create_temporary(path: Path) -> tuple[int, Path]:
    """A new file `.<name>.<8 hex digits>.tmp` beside `path`, open for writing and locked while open.

    Created by os.open with mode 0o666, the mode the umask then trims as for any new file (mkstemp's
    0600 would keep a report from everyone else); the lock tells remove_stale_temporaries it is in use.
    """
    while True:
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
        except FileExistsError:
            continue
        lock(fd, wait=True)  # waits only while remove_stale_temporaries looks at it
        return fd, tmp


def lock(fd: int, wait: bool) -> bool:
    """Take an exclusive flock on `fd`; False where another process holds it or locks are not supported.

    The kernel drops it when its holder dies, however it dies (no locks on Windows: always False).
    """
    try:
        import fcntl

        fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
    except (ImportError, OSError):
        return False
    return True


def remove_stale_temporaries(folder: Path) -> None:
    """Remove the temporary files in `folder` that write_atomically's writers left when they were killed.

    A writer killed with SIGKILL cannot remove its own; its lock goes with it. Only files named as
    write_atomically names them, unlocked and older than STALE_AFTER_S are removed.
    """
    try:
        with os.scandir(folder) as found:
            paths = [
                e.path for e in found if TEMPORARY_NAME.fullmatch(e.name) and e.is_file(follow_symlinks=False)
            ]
    except OSError:  # no such folder, or not ours to read
        return
    for path in paths:
        try:
            fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
        except OSError:  # renamed by its writer meanwhile
            continue
        try:
            if time.time() - os.fstat(fd).st_mtime > STALE_AFTER_S and lock(fd, wait=False):
                os.unlink(path)
        except OSError:  # renamed meanwhile, or a folder we may not write
            pass
        finally:
            os.close(fd)


def write_text(path: str | Path, text: str) -> Path:
    return write_atomically(path, lambda f: f.write(text.encode()))


def write_json(path: str | Path, data: object) -> Path:
    return write_text(path, json.dumps(data, indent=2) + "\n")


def save_png(path: str | Path, rgb: np.ndarray) -> Path:
    """An RGB (or single-channel, e.g. a 0/255 mask) uint8 picture as PNG."""
    return save_picture(path, rgb, ".png")


def save_jpeg(path: str | Path, rgb: np.ndarray, quality: int = 85) -> Path:
    """An RGB uint8 picture as JPEG (thumbnails: a tenth of a PNG's bytes)."""
    return save_picture(path, rgb, ".jpg", [cv2.IMWRITE_JPEG_QUALITY, quality])


def save_picture(path: str | Path, rgb: np.ndarray, ext: str, params: list[int] | None = None) -> Path:
    """An RGB (H, W, 3) or single-channel (H, W) uint8 picture, encoded by OpenCV, written atomically."""
    pixels = np.ascontiguousarray(rgb)
    pixels = cv2.cvtColor(pixels, cv2.COLOR_RGB2BGR) if pixels.ndim == 3 else pixels
    ok, encoded = cv2.imencode(ext, pixels, params or [])
    if not ok:
        raise ValueError(f"Could not encode a {rgb.shape} picture as {ext} for '{path}'.")
    return write_atomically(path, lambda f: f.write(encoded.tobytes()), durable=False)
