"""Procedural, deterministic demo dataset in the official MVTec AD folder layout.

The real MVTec AD dataset is large and licence-restricted, so tests, tutorials and
smoke runs use this small synthetic stand-in instead.  It renders two categories
with numpy and OpenCV only:

* ``fabric`` -- a texture: a plain-weave cloth with random phase, slight rotation,
  colour/brightness jitter and noise.  Defects: ``cut``, ``hole``, ``stain``,
  ``thread``.
* ``washer`` -- an object: a metal tab washer on a dark background with small
  random translation, arbitrary rotation, lighting jitter and noise.  Defects:
  ``crack``, ``missing``, ``rust``, ``scratch``.

Every defect is first drawn as a binary region and then applied *only* inside that
region, so the ground-truth mask is exact: outside the mask a defective image is
bit-identical to the defect-free rendering from the same random stream
(see :func:`render_sample`).  All randomness comes from
``np.random.SeedSequence([seed, category, split, index])``; no global RNG state is
used, so the same arguments always give byte-identical files.

Layout written by :func:`make_demo_dataset` for each category ``C``::

    out/C/train/good/000.png ...
    out/C/test/good/000.png ...
    out/C/test/<defect>/000.png ...
    out/C/ground_truth/<defect>/000_mask.png ...
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import cv2
import numpy as np

__all__ = [
    "DEMO_CATEGORIES",
    "DEMO_DEFECTS",
    "DemoSample",
    "make_demo_dataset",
    "render_sample",
]

DEMO_CATEGORIES: tuple[str, ...] = ("fabric", "washer")
"""Available demo categories: one texture and one object category."""

DEMO_DEFECTS: dict[str, tuple[str, ...]] = {
    "fabric": ("cut", "hole", "stain", "thread"),
    "washer": ("crack", "missing", "rust", "scratch"),
}
"""Defect types written under ``test/`` and ``ground_truth/`` for each category."""

_MIN_DEFECT_AREA = 0.003  # fraction of the image; smaller defects are redrawn
_MAX_DEFECT_AREA = 0.08
_MAX_DEFECT_ATTEMPTS = 50
_PNG_PARAMS = [cv2.IMWRITE_PNG_COMPRESSION, 3]
_SPLIT_TRAIN, _SPLIT_TEST_GOOD, _FIRST_DEFECT_SPLIT = 0, 1, 2


# --------------------------------------------------------------------------- public API


@dataclass(frozen=True)
class DemoSample:
    """One rendered demo image.

    Attributes:
        image: ``(H, W, 3)`` uint8 BGR image as written to disk.
        mask: ``(H, W)`` uint8 mask with values {0, 255}, or ``None`` for good images.
        normal: the defect-free rendering from the same random stream; equals
            ``image`` for good samples and outside ``mask`` for defective ones.
    """

    image: np.ndarray
    mask: np.ndarray | None
    normal: np.ndarray


def render_sample(
    category: str,
    split: str,
    index: int,
    defect: str | None = None,
    image_size: int = 256,
    seed: int = 0,
) -> DemoSample:
    """Render the image (and mask) that :func:`make_demo_dataset` writes for one file.

    Args:
        category: one of :data:`DEMO_CATEGORIES`.
        split: ``"train"`` or ``"test"``.
        index: file index inside its folder (``007.png`` -> 7).
        defect: ``None``/``"good"`` for a normal image, else one of
            ``DEMO_DEFECTS[category]`` (only valid with ``split="test"``).
        image_size: side length in pixels.
        seed: global seed of the dataset.
    """
    _check_category(category)
    _check_size_and_seed(image_size, seed)
    if index < 0:
        raise ValueError(f"index must be >= 0, got {index}")
    split_id = _split_id(category, split, defect)
    scene_seq, defect_seq = np.random.SeedSequence(
        [seed, DEMO_CATEGORIES.index(category), split_id, index]
    ).spawn(2)
    scene = _SCENE_RENDERERS[category](np.random.default_rng(scene_seq), image_size)
    normal = _to_uint8(scene.image)
    if defect is None or defect == "good":
        return DemoSample(image=normal, mask=None, normal=normal)

    region, altered = _draw_defect(category, defect, scene, np.random.default_rng(defect_seq))
    image = normal.copy()
    image[region] = _to_uint8(altered[region])
    mask = region.astype(np.uint8) * 255
    return DemoSample(image=image, mask=mask, normal=normal)


def make_demo_dataset(
    out: str | Path,
    categories: Sequence[str] = DEMO_CATEGORIES,
    image_size: int = 256,
    n_train: int = 60,
    n_test_good: int = 15,
    n_test_defect: int = 30,
    seed: int = 0,
) -> Path:
    """Write the demo set under `out` and return `out` as a Path.

    Defective test images are spread as evenly as possible over the category's
    defect types (a type receiving zero images gets no folder).  Existing files
    with the same names are overwritten; other files under ``out`` are left alone,
    so write into a fresh directory to avoid mixing runs with different sizes.

    Raises:
        ValueError: for an unknown category name or invalid counts/sizes.
    """
    for name in categories:
        _check_category(name)
    _check_size_and_seed(image_size, seed)
    for label, count in (
        ("n_train", n_train),
        ("n_test_good", n_test_good),
        ("n_test_defect", n_test_defect),
    ):
        if count < 0:
            raise ValueError(f"{label} must be >= 0, got {count}")

    root = Path(out)
    for category in dict.fromkeys(categories):  # de-duplicate, keep order
        cat_dir = root / category
        _write_good_images(cat_dir / "train" / "good", category, "train", n_train, image_size, seed)
        _write_good_images(cat_dir / "test" / "good", category, "test", n_test_good, image_size, seed)
        defects = DEMO_DEFECTS[category]
        for defect, count in zip(defects, _split_evenly(n_test_defect, len(defects)), strict=True):
            _write_defect_images(cat_dir, category, defect, count, image_size, seed)
    return root


# ----------------------------------------------------------------------- writing files


def _write_good_images(folder: Path, category: str, split: str, count: int, size: int, seed: int) -> None:
    """Render and save ``count`` defect-free images into ``folder``."""
    if count == 0:
        return
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        sample = render_sample(category, split, i, None, size, seed)
        _imwrite(folder / f"{_stem(i, count)}.png", sample.image)


def _write_defect_images(cat_dir: Path, category: str, defect: str, count: int, size: int, seed: int) -> None:
    """Render and save ``count`` images of one defect type plus their masks."""
    if count == 0:
        return
    image_dir = cat_dir / "test" / defect
    mask_dir = cat_dir / "ground_truth" / defect
    image_dir.mkdir(parents=True, exist_ok=True)
    mask_dir.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        sample = render_sample(category, "test", i, defect, size, seed)
        stem = _stem(i, count)
        _imwrite(image_dir / f"{stem}.png", sample.image)
        _imwrite(mask_dir / f"{stem}_mask.png", sample.mask)


def _imwrite(path: Path, image: np.ndarray) -> None:
    """Save a PNG with fixed compression settings; fail loudly if OpenCV cannot."""
    if not cv2.imwrite(str(path), image, _PNG_PARAMS):
        raise OSError(f"could not write {path}")


def _stem(index: int, count: int) -> str:
    """Zero-padded file stem, at least three digits as in MVTec AD."""
    return str(index).zfill(max(3, len(str(count - 1))))


def _split_evenly(total: int, parts: int) -> list[int]:
    """Split ``total`` into ``parts`` integers differing by at most one."""
    return [total // parts + (1 if k < total % parts else 0) for k in range(parts)]


# ------------------------------------------------------------------------- validation


def _check_category(category: str) -> None:
    """Raise a ValueError naming the valid categories for an unknown one."""
    if category not in DEMO_CATEGORIES:
        raise ValueError(
            f"unknown demo category {category!r}; valid categories: {', '.join(DEMO_CATEGORIES)}"
        )


def _check_size_and_seed(image_size: int, seed: int) -> None:
    """Reject sizes too small to draw a washer and seeds SeedSequence cannot take."""
    if image_size < 32:
        raise ValueError(f"image_size must be >= 32, got {image_size}")
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")


def _split_id(category: str, split: str, defect: str | None) -> int:
    """Stable integer for (split, defect) used in the seed of each image."""
    if defect is None or defect == "good":
        if split == "train":
            return _SPLIT_TRAIN
        if split == "test":
            return _SPLIT_TEST_GOOD
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    if split != "test":
        raise ValueError("defective images exist only in the 'test' split")
    defects = DEMO_DEFECTS[category]
    if defect not in defects:
        raise ValueError(f"unknown defect {defect!r} for {category!r}; valid defects: {', '.join(defects)}")
    return _FIRST_DEFECT_SPLIT + defects.index(defect)


# ------------------------------------------------------------------- shared utilities


@dataclass(frozen=True)
class _Scene:
    """A defect-free rendering plus what the defect painters need to know about it.

    ``image`` is float32 BGR in [0, 255] (before quantisation); ``support`` marks
    where defects may be placed; ``inside`` is the object's hard silhouette;
    ``background`` is the image without the object (washer only).
    """

    image: np.ndarray
    support: np.ndarray
    inside: np.ndarray
    background: np.ndarray | None = None
    centre: tuple[float, float] = (0.0, 0.0)
    inner_radius: float = 0.0
    outer_radius: float = 0.0


@lru_cache(maxsize=8)
def _pixel_grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Read-only float32 (y, x) pixel-centre coordinate grids, cached per size."""
    y, x = np.mgrid[0:size, 0:size].astype(np.float32)
    y.flags.writeable = False
    x.flags.writeable = False
    return y, x


def _to_uint8(image: np.ndarray) -> np.ndarray:
    """Round and clip a float image to uint8."""
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)


def _smooth_noise(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """Low-frequency zero-mean noise field (about unit std) made by upsampling."""
    coarse = rng.standard_normal((cells, cells)).astype(np.float32)
    return cv2.resize(coarse, (size, size), interpolation=cv2.INTER_CUBIC)


def _pixel_noise(rng: np.random.Generator, size: int, sigma: float) -> np.ndarray:
    """Per-pixel, per-channel Gaussian sensor noise."""
    return rng.normal(0.0, sigma, (size, size, 3)).astype(np.float32)


def _scale(size: int) -> float:
    """Length scale relative to the 256 px reference resolution."""
    return size / 256.0


def _random_blob(
    rng: np.random.Generator,
    size: int,
    centre: tuple[float, float],
    radius: float,
    irregularity: float = 0.3,
) -> np.ndarray:
    """Boolean mask of an irregular closed blob (polygon with smooth radial noise)."""
    n_vertices = 24
    angles = np.linspace(0.0, 2 * np.pi, n_vertices, endpoint=False)
    wobble = np.zeros(n_vertices)
    for harmonic in (2, 3, 5):
        wobble += rng.normal(0.0, 1.0 / harmonic) * np.cos(harmonic * angles + rng.uniform(0, 2 * np.pi))
    radii = radius * (1.0 + irregularity * np.tanh(wobble))
    points = np.stack([centre[0] + radii * np.cos(angles), centre[1] + radii * np.sin(angles)], 1)
    return _fill_polygon(size, points)


def _fill_polygon(size: int, points_xy: np.ndarray) -> np.ndarray:
    """Rasterise a filled polygon (sub-pixel vertices) into a boolean mask."""
    canvas = np.zeros((size, size), np.uint8)
    pts = np.rint(points_xy * 16).astype(np.int32).reshape(-1, 1, 2)
    cv2.fillPoly(canvas, [pts], 255, lineType=cv2.LINE_8, shift=4)
    return canvas > 0


def _draw_path(size: int, paths_xy: Sequence[np.ndarray], thickness: int) -> np.ndarray:
    """Rasterise open polylines of a given pixel thickness into a boolean mask."""
    canvas = np.zeros((size, size), np.uint8)
    pts = [np.rint(p * 16).astype(np.int32).reshape(-1, 1, 2) for p in paths_xy]
    cv2.polylines(canvas, pts, False, 255, thickness=thickness, lineType=cv2.LINE_8, shift=4)
    return canvas > 0


def _wandering_path(
    rng: np.random.Generator,
    start_xy: tuple[float, float],
    heading: float,
    length: float,
    curvature: float,
    n_steps: int = 24,
) -> np.ndarray:
    """Polyline of a smooth random walk: heading changes by Gaussian steps."""
    turns = np.cumsum(rng.normal(0.0, curvature, n_steps))
    headings = heading + turns
    step = length / n_steps
    deltas = np.stack([np.cos(headings), np.sin(headings)], 1) * step
    return np.vstack([np.asarray(start_xy)[None], np.asarray(start_xy) + np.cumsum(deltas, 0)])


def _blend(base: np.ndarray, colour: np.ndarray, alpha: float) -> np.ndarray:
    """Alpha-blend a colour (broadcastable BGR) over an image."""
    return (1.0 - alpha) * base + alpha * colour


# ------------------------------------------------------------------ fabric (texture)


_FABRIC_WARP_BGR = np.array([96.0, 132.0, 168.0], np.float32)  # beige cloth
_FABRIC_WEFT_BGR = np.array([84.0, 118.0, 154.0], np.float32)


def _render_fabric(rng: np.random.Generator, size: int) -> _Scene:
    """Plain-weave cloth: over/under threads with random phase, tilt, colour and noise."""
    y, x = _pixel_grid(size)
    period = size / 24.0 * rng.uniform(0.96, 1.04)
    tilt = np.deg2rad(rng.uniform(-2.0, 2.0))
    u = (x * math.cos(tilt) + y * math.sin(tilt)) / period + rng.uniform(0.0, 2.0)
    v = (-x * math.sin(tilt) + y * math.cos(tilt)) / period + rng.uniform(0.0, 2.0)

    frac_u, frac_v = u - np.floor(u), v - np.floor(v)
    warp_on_top = ((np.floor(u) + np.floor(v)) % 2) == 0
    # Height profile of each thread: round across, bulging where it passes over.
    warp_height = np.sqrt(np.sin(np.pi * frac_u)) * (0.6 + 0.4 * np.sin(np.pi * frac_v))
    weft_height = np.sqrt(np.sin(np.pi * frac_v)) * (0.6 + 0.4 * np.sin(np.pi * frac_u))
    height = np.where(warp_on_top, warp_height, weft_height)[..., None]

    colour_jitter = rng.uniform(-7.0, 7.0, 3).astype(np.float32)
    thread_colour = np.where(warp_on_top[..., None], _FABRIC_WARP_BGR, _FABRIC_WEFT_BGR) + colour_jitter
    gap_colour = 0.45 * thread_colour
    image = gap_colour + (thread_colour - gap_colour) * height

    brightness = rng.uniform(0.92, 1.08) * (1.0 + 0.04 * _smooth_noise(rng, size, 4))
    image = image * brightness[..., None] + _pixel_noise(rng, size, 4.0)
    everywhere = np.ones((size, size), bool)
    return _Scene(image=image.astype(np.float32), support=everywhere, inside=everywhere)


def _fabric_hole(scene: _Scene, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A torn hole showing the dark backing through the cloth."""
    size = scene.image.shape[0]
    radius = size * rng.uniform(0.035, 0.07)
    centre = tuple(rng.uniform(radius + 2, size - radius - 2, 2))
    region = _random_blob(rng, size, centre, radius, irregularity=0.35)
    backing = rng.uniform(18.0, 35.0) + _pixel_noise(rng, size, 4.0)
    return region, backing


def _fabric_stain(scene: _Scene, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A coloured blotch (ink, rust, oil) soaked into the weave; keeps the texture."""
    size = scene.image.shape[0]
    radius = size * rng.uniform(0.05, 0.1)
    centre = tuple(rng.uniform(radius + 2, size - radius - 2, 2))
    region = _random_blob(rng, size, centre, radius, irregularity=0.4)
    # Blue ink, red wine, bleach: each differs from beige in colour *and* brightness.
    palette = np.array([[150, 60, 25], [60, 35, 150], [205, 220, 230]], np.float32)
    colour = palette[rng.integers(len(palette))]
    return region, _blend(scene.image, colour, rng.uniform(0.8, 0.9))


def _fabric_cut(scene: _Scene, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A straight-ish slit through the cloth, dark inside."""
    size = scene.image.shape[0]
    length = size * rng.uniform(0.2, 0.35)
    margin = length / 2 + 4
    centre = rng.uniform(margin, size - margin, 2)
    heading = rng.uniform(0, np.pi)
    start = centre - 0.5 * length * np.array([np.cos(heading), np.sin(heading)])
    path = _wandering_path(rng, tuple(start), heading, length, curvature=0.03, n_steps=8)
    region = _draw_path(size, [path], thickness=max(2, round(5 * _scale(size))))
    slit = rng.uniform(15.0, 30.0) + _pixel_noise(rng, size, 4.0)
    return region, slit


def _fabric_thread(scene: _Scene, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A loose, curly foreign thread lying on top of the cloth."""
    size = scene.image.shape[0]
    length = size * rng.uniform(0.3, 0.5)
    start = tuple(rng.uniform(0.3 * size, 0.7 * size, 2))
    path = _wandering_path(rng, start, rng.uniform(0, 2 * np.pi), length, curvature=0.25, n_steps=30)
    region = _draw_path(size, [path], thickness=max(2, round(4 * _scale(size))))
    palette = np.array([[230, 232, 235], [35, 35, 170], [150, 60, 30], [25, 25, 25]], np.float32)
    colour = palette[rng.integers(len(palette))]
    thread = colour + _pixel_noise(rng, size, 6.0)
    return region, thread


# -------------------------------------------------------------------- washer (object)


def _render_washer(rng: np.random.Generator, size: int) -> _Scene:
    """Metal tab washer on a dark background: random shift, rotation, lighting, noise."""
    y, x = _pixel_grid(size)
    s = _scale(size)
    cx, cy = size / 2 + rng.uniform(-3.0, 3.0, 2) * s
    outer_r = size * 0.36 * rng.uniform(0.99, 1.01)
    inner_r = size * 0.16 * rng.uniform(0.99, 1.01)
    rotation = rng.uniform(0.0, 2 * np.pi)
    light = np.deg2rad(-135.0) + rng.uniform(-0.3, 0.3)  # roughly from the top-left

    dx, dy = x - cx, y - cy
    r = np.sqrt(dx * dx + dy * dy)
    theta = np.arctan2(dy, dx)
    alpha = _washer_alpha(dx, dy, r, outer_r, inner_r, rotation, size)

    metal = _washer_metal(rng, dx, dy, r, theta, outer_r, inner_r, light, size)
    background = _washer_background(rng, size, y)
    image = background * (1.0 - alpha[..., None]) + metal * alpha[..., None]
    noise = _pixel_noise(rng, size, 2.5)

    inside = alpha > 0.5
    erode = max(1, round(2 * s))
    support = cv2.erode((alpha > 0.99).astype(np.uint8), np.ones((2 * erode + 1,) * 2, np.uint8)) > 0
    return _Scene(
        image=(image + noise).astype(np.float32),
        support=support,
        inside=inside,
        background=(background + noise).astype(np.float32),
        centre=(float(cx), float(cy)),
        inner_radius=float(inner_r),
        outer_radius=float(outer_r),
    )


def _washer_alpha(
    dx: np.ndarray,
    dy: np.ndarray,
    r: np.ndarray,
    outer_r: float,
    inner_r: float,
    rotation: float,
    size: int,
) -> np.ndarray:
    """Anti-aliased coverage of the ring plus an inward locking tab at `rotation`."""
    ring = np.clip(outer_r - r + 0.5, 0, 1) * np.clip(r - inner_r + 0.5, 0, 1)
    along = dx * math.cos(rotation) + dy * math.sin(rotation)
    across = -dx * math.sin(rotation) + dy * math.cos(rotation)
    tab_half_width, tab_depth = 0.035 * size, 0.05 * size
    tab = (
        np.clip(tab_half_width - np.abs(across) + 0.5, 0, 1)
        * np.clip(along - (inner_r - tab_depth) + 0.5, 0, 1)
        * (along < inner_r + 2)
    )
    return np.maximum(ring, tab)


def _washer_metal(
    rng: np.random.Generator,
    dx: np.ndarray,
    dy: np.ndarray,
    r: np.ndarray,
    theta: np.ndarray,
    outer_r: float,
    inner_r: float,
    light: float,
    size: int,
) -> np.ndarray:
    """Shaded steel: directional gradient, lit bevels, concentric machining marks."""
    s = _scale(size)
    level = rng.uniform(150.0, 175.0)
    facing = np.cos(theta - light)  # +1 where the outward normal faces the light
    gradient = 14.0 * (dx * math.cos(light) + dy * math.sin(light)) / outer_r
    bevel = 4.0 * s
    outer_bevel = np.clip((r - (outer_r - bevel)) / bevel, 0, 1)
    inner_bevel = np.clip(((inner_r + bevel) - r) / bevel, 0, 1)
    bevels = 40.0 * facing * (outer_bevel - inner_bevel)
    machining = 5.0 * np.sin(2 * np.pi * r / (3.0 * s) + rng.uniform(0, 2 * np.pi))
    grain = 4.0 * _smooth_noise(rng, size, 24)
    grey = (level + gradient + bevels + machining + grain) * rng.uniform(0.93, 1.07)
    tint = np.array([1.0, 0.99, 0.97], np.float32) * rng.uniform(0.98, 1.02, 3).astype(np.float32)
    return grey[..., None] * tint


def _washer_background(rng: np.random.Generator, size: int, y: np.ndarray) -> np.ndarray:
    """Dark, slightly bluish backdrop with a gentle vertical gradient."""
    level = rng.uniform(38.0, 52.0)
    grey = level + 6.0 * (y / size - 0.5) + 2.0 * _smooth_noise(rng, size, 3)
    return grey[..., None] * np.array([1.08, 1.0, 0.95], np.float32)


def _random_point_on_ring(
    rng: np.random.Generator, scene: _Scene, inner_frac: float = 0.2, outer_frac: float = 0.8
) -> tuple[float, float]:
    """A random point on the washer face between two fractions of its width."""
    radius = scene.inner_radius + (scene.outer_radius - scene.inner_radius) * rng.uniform(
        inner_frac, outer_frac
    )
    angle = rng.uniform(0, 2 * np.pi)
    return (scene.centre[0] + radius * math.cos(angle), scene.centre[1] + radius * math.sin(angle))


def _washer_scratch(scene: _Scene, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A dark groove scratched roughly tangentially across the face."""
    size = scene.image.shape[0]
    start = _random_point_on_ring(rng, scene, 0.35, 0.65)
    radial = math.atan2(start[1] - scene.centre[1], start[0] - scene.centre[0])
    heading = radial + np.pi / 2 * rng.choice([-1, 1]) + rng.uniform(-0.6, 0.6)
    length = size * rng.uniform(0.22, 0.38)
    path = _wandering_path(rng, start, heading, length, curvature=0.04, n_steps=12)
    region = _draw_path(size, [path], thickness=max(2, round(4 * _scale(size)))) & scene.support
    groove = scene.image * rng.uniform(0.2, 0.35) + _pixel_noise(rng, size, 3.0)
    return region, groove


def _washer_crack(scene: _Scene, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A jagged, nearly black fracture running across the ring, with a side branch."""
    size = scene.image.shape[0]
    cx, cy = scene.centre
    angle = rng.uniform(0, 2 * np.pi)
    n_points = 14
    radii = np.linspace(scene.inner_radius - 2, scene.outer_radius + 2, n_points)
    angles = angle + np.cumsum(rng.normal(0.0, 0.04, n_points))
    jag = rng.normal(0.0, 1.5 * _scale(size), n_points)  # sideways zig-zag in px
    main = np.stack(
        [
            cx + radii * np.cos(angles) - jag * np.sin(angles),
            cy + radii * np.sin(angles) + jag * np.cos(angles),
        ],
        1,
    )
    fork = main[rng.integers(3, n_points - 4)]
    branch_heading = angles.mean() + rng.choice([-1, 1]) * rng.uniform(0.6, 1.1)
    branch_length = (scene.outer_radius - scene.inner_radius) * rng.uniform(0.3, 0.5)
    branch = _wandering_path(rng, tuple(fork), branch_heading, branch_length, curvature=0.2, n_steps=6)
    thickness = max(2, round(5 * _scale(size)))
    region = _draw_path(size, [main], thickness) | _draw_path(size, [branch], max(2, thickness - 1))
    region &= scene.inside
    fracture = rng.uniform(5.0, 18.0) + _pixel_noise(rng, size, 3.0)
    return region, fracture


def _washer_missing(scene: _Scene, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A chunk broken off the outer rim: the background shows where metal was."""
    size = scene.image.shape[0]
    angle = rng.uniform(0, 2 * np.pi)
    rim = scene.outer_radius * rng.uniform(0.97, 1.03)
    centre = (scene.centre[0] + rim * math.cos(angle), scene.centre[1] + rim * math.sin(angle))
    radius = size * rng.uniform(0.06, 0.1)
    region = _random_blob(rng, size, centre, radius, irregularity=0.3) & scene.inside
    assert scene.background is not None
    return region, scene.background


def _washer_rust(scene: _Scene, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """An orange-brown corrosion spot with mottled texture on the metal face."""
    size = scene.image.shape[0]
    ring_width = scene.outer_radius - scene.inner_radius
    radius = ring_width * rng.uniform(0.2, 0.35)
    centre = _random_point_on_ring(rng, scene, 0.35, 0.65)
    region = _random_blob(rng, size, centre, radius, irregularity=0.4) & scene.support
    rust = np.array([35.0, 75.0, 150.0], np.float32) * rng.uniform(0.8, 1.1)
    mottle = 1.0 + 0.25 * _smooth_noise(rng, size, max(4, size // 8))[..., None]
    return region, _blend(scene.image, rust * mottle, rng.uniform(0.8, 0.9))


# ---------------------------------------------------------------- dispatch and retries


_DefectPainter = Callable[[_Scene, np.random.Generator], tuple[np.ndarray, np.ndarray]]

_SCENE_RENDERERS: dict[str, Callable[[np.random.Generator, int], _Scene]] = {
    "fabric": _render_fabric,
    "washer": _render_washer,
}

_DEFECT_PAINTERS: dict[str, dict[str, _DefectPainter]] = {
    "fabric": {"cut": _fabric_cut, "hole": _fabric_hole, "stain": _fabric_stain, "thread": _fabric_thread},
    "washer": {
        "crack": _washer_crack,
        "missing": _washer_missing,
        "rust": _washer_rust,
        "scratch": _washer_scratch,
    },
}


def _draw_defect(
    category: str, defect: str, scene: _Scene, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Draw a defect whose area is within the allowed range, redrawing if needed.

    Returns the boolean defect region and a full-size float image whose pixels
    inside the region replace the normal rendering.
    """
    painter = _DEFECT_PAINTERS[category][defect]
    n_pixels = scene.image.shape[0] * scene.image.shape[1]
    low, high = _MIN_DEFECT_AREA * n_pixels, _MAX_DEFECT_AREA * n_pixels
    best: tuple[np.ndarray, np.ndarray] | None = None
    best_gap = math.inf
    for _ in range(_MAX_DEFECT_ATTEMPTS):
        region, altered = painter(scene, rng)
        area = int(region.sum())
        if low <= area <= high:
            return region, altered
        gap = low - area if area < low else area - high
        if area > 0 and gap < best_gap:
            best, best_gap = (region, altered), gap
    if best is None:
        raise RuntimeError(f"could not draw a {defect!r} defect on {category!r}")
    return best
