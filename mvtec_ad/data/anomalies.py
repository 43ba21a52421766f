"""Synthetic anomalies with exact masks: swirls ("twisting"), cut-paste patches and Perlin-noise blobs.

Seed report 2 builds validation sets "by taking a percentage of the much larger training data of
normal images and randomly inducing anomalies into some of them, by twisting small parts of the
image"; this module makes those anomalies (and the training anomalies of gradient detectors).

Every kind alters the image only inside its mask and copies every other pixel from the input, so
outside the mask the result is bit-identical and the mask is exact ground truth.  All randomness is
drawn from the given ``torch.Generator`` (on the generator's device, then moved to the image's), so
one generator state always gives one anomaly, on CPU and CUDA alike.  Images whose three channels are
equal (grayscale data such as magnetic tiles) stay grayscale: a colour cast would be a trivial tell.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable

import torch
import torch.nn.functional as F

__all__ = ["SYNTHETIC_KINDS", "add_anomaly", "anomaly_generator"]

SYNTHETIC_KINDS: tuple[str, ...] = ("swirl", "cutpaste", "perlin")
"""Valid values of ``kind`` (and of the DataModule option ``--data.synthetic_kinds``)."""

_MAX_TRIES = 8  # draws per call before the most visible one is kept
_MIN_CHANGE = 2.0 / 255.0  # mean |difference| inside the mask that counts as visible (~2 grey levels)
_ROUNDING = 1e-4  # changes closer than this (far below a grey level) count as equal
_MIN_SIDE = 16
_MIN_DISPLACEMENT = 0.5  # px: a swirled pixel whose sample point moved less is not in the mask

_Pair = tuple[torch.Tensor, torch.Tensor]
_Drawer = Callable[[torch.Tensor, torch.Generator, tuple[float, float]], _Pair]


def anomaly_generator(seed: int, index: int) -> torch.Generator:
    """A CPU generator for one (seed, image index), the same in every process, worker and epoch.

    A hash rather than ``seed + index`` keeps nearby pairs such as (1, 2) and (2, 1) apart.  Only 32
    bits are used because torch's CPU generator keys its Mersenne Twister on the low 32 bits anyway.
    """
    digest = hashlib.blake2b(f"{seed}/{index}".encode(), digest_size=4).digest()
    generator = torch.Generator()
    generator.manual_seed(int.from_bytes(digest, "little"))
    return generator


def add_anomaly(
    image: torch.Tensor,
    kind: str,
    generator: torch.Generator,
    scale: tuple[float, float] = (0.08, 0.25),
) -> tuple[torch.Tensor, torch.Tensor]:
    """Add one synthetic anomaly of ``kind`` to ``image``; return (anomalous image, mask).

    Args:
        image: float ``[C, H, W]`` in [0, 1] (C = 3 in the pipeline), H, W >= 16, any device.
        kind: one of :data:`SYNTHETIC_KINDS`.
        generator: source of all randomness; it is advanced by the call.
        scale: (min, max) size of the altered region as a fraction of the image side; floors of a
            few pixels (swirl radius 3, rectangle side 2, Perlin box 4) keep tiny draws visible.

    Returns:
        The image (same dtype and device, values in [0, 1]) and a float ``[1, H, W]`` mask in {0, 1}
        that is never empty.  A draw that changes the masked pixels by less than ~2 grey levels on
        average (a flat area, a paste landing in phase with a periodic texture) is redrawn from the
        same generator, up to ``_MAX_TRIES`` times, and the most visible draw is kept: on a perfectly
        flat image a swirl therefore stays invisible while its mask is still the swirled disc.

    Raises:
        ValueError: for an unknown kind, a malformed image or an invalid scale.
    """
    _check_arguments(image, kind, scale)
    draw = _DRAWERS[kind]
    best: tuple[torch.Tensor, torch.Tensor] | None = None
    best_change = -1.0
    for _ in range(_MAX_TRIES):
        altered, mask = draw(image, generator, scale)
        change = ((altered - image).abs().sum() / (mask.sum() * image.shape[0])).item()
        if change > best_change + _ROUNDING:  # float noise on flat images must not pick a later draw
            best, best_change = (altered, mask), change
        if change >= _MIN_CHANGE:
            break
    assert best is not None  # _MAX_TRIES >= 1
    altered, mask = best
    return altered, mask[None].to(image.dtype)


# ------------------------------------------------------------------------------- kinds


def _swirl(image: torch.Tensor, generator: torch.Generator, scale: tuple[float, float]) -> _Pair:
    """Twist a disc: rotate its sampling grid by an angle that falls from +-(2..5) rad at the centre to 0."""
    _, height, width = image.shape
    side = min(height, width)
    # >= 3 px with |strength| >= 2 rad guarantees pixels that move >= 0.5 px next to the centre
    radius = min(max(_uniform(generator, *scale) * side / 2, 3.0), (side - 1) / 2)
    cy = _uniform(generator, radius, height - 1 - radius)
    cx = _uniform(generator, radius, width - 1 - radius)
    strength = _uniform(generator, 2.0, 5.0) * (1 if _randint(generator, 0, 1) else -1)

    # Rotation keeps every sample at its pixel's distance from the centre: the disc's box suffices.
    y0, x0 = int(cy - radius), int(cx - radius)
    y1, x1 = min(math.ceil(cy + radius) + 1, height), min(math.ceil(cx + radius) + 1, width)
    ys = torch.arange(y0, y1, device=image.device, dtype=image.dtype)[:, None] - cy
    xs = torch.arange(x0, x1, device=image.device, dtype=image.dtype)[None, :] - cx
    rho = torch.sqrt(ys**2 + xs**2)
    angle = strength * (1 - rho / radius).clamp(min=0) ** 2  # smooth at the rim: no visible seam
    cos, sin = angle.cos(), angle.sin()
    sample_x = cx + cos * xs - sin * ys
    sample_y = cy + sin * xs + cos * ys
    grid = torch.stack([2 * (sample_x - x0) / (x1 - x0 - 1) - 1, 2 * (sample_y - y0) / (y1 - y0 - 1) - 1], -1)
    crop = image[:, y0:y1, x0:x1]
    warped = F.grid_sample(
        crop[None], grid[None], mode="bilinear", padding_mode="border", align_corners=True
    )[0]

    moved = 2 * rho * (angle / 2).sin().abs() >= _MIN_DISPLACEMENT  # |sample - pixel| for a rotation
    # The very centre barely moves; the mask is the solid disc out to the farthest moved pixel.
    reach = torch.where(moved, rho, rho.min()).max()
    return _paste(image, warped.clamp(0, 1), rho <= reach, y0, x0)


def _cutpaste(image: torch.Tensor, generator: torch.Generator, scale: tuple[float, float]) -> _Pair:
    """Copy a rectangle of the image elsewhere with a slight brightness/colour jitter (CutPaste)."""
    _, height, width = image.shape
    frac = _uniform(generator, *scale)
    aspect = math.exp(_uniform(generator, -math.log(2), math.log(2)))  # 1:2 .. 2:1, same area
    h = min(max(round(frac * height * math.sqrt(aspect)), 2), height - 1)
    w = min(max(round(frac * width / math.sqrt(aspect)), 2), width - 1)
    sy, sx = _randint(generator, 0, height - h), _randint(generator, 0, width - w)
    dy, dx = _randint(generator, 0, height - h), _randint(generator, 0, width - w)
    if (dy, dx) == (sy, sx):  # pasting in place is no anomaly; h < height leaves room to move
        dy = (dy + 1) % (height - h + 1)
    gain = _uniform(generator, 0.8, 1.2)
    shift = _rand(generator, (_tint_channels(image), 1, 1), image, -0.04, 0.04)
    patch = (image[:, sy : sy + h, sx : sx + w] * gain + shift).clamp(0, 1)
    return _paste(image, patch, torch.ones(h, w, dtype=torch.bool, device=image.device), dy, dx)


def _perlin(image: torch.Tensor, generator: torch.Generator, scale: tuple[float, float]) -> _Pair:
    """Blend a foreign texture into a Perlin-noise blob confined to a random box."""
    _, height, width = image.shape
    frac = _uniform(generator, *scale)
    h, w = max(round(frac * height), 4), max(round(frac * width), 4)
    y0, x0 = _randint(generator, 0, height - h), _randint(generator, 0, width - w)
    cells = _randint(generator, 2, 4)  # the blob's frequency: lattice cells across the box
    noise = _perlin_noise(h, w, cells, generator, image) + 0.5 * _perlin_noise(
        h, w, 2 * cells, generator, image
    )
    # A window that is 1 in the middle of the box and 0 at its edges keeps the blob off the box edges.
    window = _edge_window(h, image)[:, None] * _edge_window(w, image)[None, :]
    field = noise - 2 * (1 - window) + _uniform(generator, 0.0, 0.2)
    blob = field > 0
    if not blob.any():  # rare: keep the peak so the mask is never empty
        blob = field >= field.max()
    texture = _foreign_texture(image, generator, (y0, x0, h, w))
    opacity = _uniform(generator, 0.5, 1.0)
    crop = image[:, y0 : y0 + h, x0 : x0 + w]
    return _paste(image, (crop + opacity * (texture - crop)).clamp(0, 1), blob, y0, x0)


_DRAWERS: dict[str, _Drawer] = {"swirl": _swirl, "cutpaste": _cutpaste, "perlin": _perlin}


# ----------------------------------------------------------------------------- helpers


def _check_arguments(image: torch.Tensor, kind: str, scale: tuple[float, float]) -> None:
    """Reject unknown kinds, non-float or too-small images and scales outside (0, 1]."""
    if kind not in SYNTHETIC_KINDS:
        raise ValueError(
            f"unknown synthetic anomaly kind {kind!r}; valid kinds: {', '.join(SYNTHETIC_KINDS)} "
            f"(option --data.synthetic_kinds)"
        )
    if image.ndim != 3 or not image.is_floating_point() or min(image.shape[1:]) < _MIN_SIDE:
        raise ValueError(
            f"image must be a float [C, H, W] tensor with H, W >= {_MIN_SIDE}, got {image.dtype} {tuple(image.shape)}"
        )
    low, high = scale
    if not 0 < low <= high <= 1:
        raise ValueError(f"scale must satisfy 0 < min <= max <= 1, got {tuple(scale)}")


def _paste(image: torch.Tensor, patch: torch.Tensor, region: torch.Tensor, y0: int, x0: int) -> _Pair:
    """Copy of ``image`` with ``patch`` written where ``region`` is set; the region as a full-size mask."""
    h, w = region.shape
    out = image.clone()
    out[:, y0 : y0 + h, x0 : x0 + w] = torch.where(region, patch, image[:, y0 : y0 + h, x0 : x0 + w])
    mask = torch.zeros(image.shape[1:], dtype=torch.bool, device=image.device)
    mask[y0 : y0 + h, x0 : x0 + w] = region
    return out, mask


def _perlin_noise(
    height: int, width: int, cells: int, generator: torch.Generator, like: torch.Tensor
) -> torch.Tensor:
    """2-D Perlin gradient noise, ``[height, width]`` in about [-1, 1], ``cells`` lattice cells per side."""
    angles = torch.rand(cells + 1, cells + 1, generator=generator, device=generator.device) * (2 * math.pi)
    gradients = torch.stack([angles.sin(), angles.cos()], -1).to(like)  # (gy, gx) unit vectors
    y = (torch.arange(height, device=like.device, dtype=like.dtype) + 0.5) * (cells / height)
    x = (torch.arange(width, device=like.device, dtype=like.dtype) + 0.5) * (cells / width)
    iy, ix = y.long(), x.long()  # coordinates are positive, so truncation is floor
    fy, fx = (y - iy)[:, None], (x - ix)[None, :]

    def corner(dy: int, dx: int) -> torch.Tensor:
        g = gradients[(iy + dy)[:, None], (ix + dx)[None, :]]
        return g[..., 0] * (fy - dy) + g[..., 1] * (fx - dx)

    u, v = _fade(fx), _fade(fy)
    top = corner(0, 0) + u * (corner(0, 1) - corner(0, 0))
    bottom = corner(1, 0) + u * (corner(1, 1) - corner(1, 0))
    return (top + v * (bottom - top)) * math.sqrt(2)


def _fade(t: torch.Tensor) -> torch.Tensor:
    """Perlin's quintic 6t^5 - 15t^4 + 10t^3: zero first and second derivatives at the lattice."""
    return t * t * t * (t * (t * 6 - 15) + 10)


def _edge_window(n: int, like: torch.Tensor) -> torch.Tensor:
    """1 over the middle 70 % of ``n`` samples, falling smoothly to 0 at both ends."""
    t = (torch.arange(n, device=like.device, dtype=like.dtype) + 0.5) / n
    d = (torch.minimum(t, 1 - t) / 0.15).clamp(0, 1)
    return d * d * (3 - 2 * d)


def _foreign_texture(
    image: torch.Tensor, generator: torch.Generator, box: tuple[int, int, int, int]
) -> torch.Tensor:
    """What the blob shows: a flipped, shifted, recoloured copy of the image, or blurry colour noise."""
    channels, height, width = image.shape
    y0, x0, h, w = box
    if _randint(generator, 0, 1) == 0:
        dims = ((-1,), (-2,), (-2, -1))[_randint(generator, 0, 2)]
        shifts = (_randint(generator, 0, height - 1), _randint(generator, 0, width - 1))
        gain = _rand(generator, (_tint_channels(image), 1, 1), image, 0.6, 1.4)
        source = image.flip(dims).roll(shifts, (-2, -1))[:, y0 : y0 + h, x0 : x0 + w]
        return (source * gain).clamp(0, 1)
    coarse = _randint(generator, 3, 12)
    noise = _rand(generator, (1, _tint_channels(image), coarse, coarse), image, 0.0, 1.0)
    return F.interpolate(noise, size=(h, w), mode="bilinear", align_corners=False)[0].expand(channels, -1, -1)


def _tint_channels(image: torch.Tensor) -> int:
    """1 for a grayscale-looking image (one draw shared by all channels keeps it gray), else C."""
    gray = image.shape[0] > 1 and bool((image == image[:1]).all())
    return 1 if gray else image.shape[0]


def _uniform(generator: torch.Generator, low: float, high: float) -> float:
    """One float in [low, high) from ``generator``."""
    return low + (high - low) * torch.rand((), generator=generator, device=generator.device).item()


def _randint(generator: torch.Generator, low: int, high: int) -> int:
    """One integer in [low, high] (inclusive) from ``generator``."""
    return int(torch.randint(low, high + 1, (), generator=generator, device=generator.device).item())


def _rand(
    generator: torch.Generator, shape: tuple[int, ...], like: torch.Tensor, low: float, high: float
) -> torch.Tensor:
    """Uniform [low, high) tensor drawn on the generator's device, moved to ``like``'s device and dtype."""
    draw = torch.rand(shape, generator=generator, device=generator.device)
    return (low + (high - low) * draw).to(like)
