"""The data panel the default recipes are chosen on: one folder per set, each in MVTec AD's layout.

    python benchmarks/panel.py --out /tmp/panel --magnetic_tile ../shared/data/magnetic_tile

Writes (or links) under --out:

  magnetic_tile      the real sample (a link, never a copy): textured tiles, small and large defects
  magnetic_tile_x2   magnetic_tile seen twice as close: every third image scaled 2x and cut back to its
                     own size, defect images around their defect's centre, good ones at a random spot
  fabric_strips      demo fabric cut into 1 : 2.5 strips (benchmarks/strip_set.py): elongated texture
  fabric, washer     the demo categories at 256 px: a texture and an object
  washer_small       demo washers at 512 px whose defects are cut down to a disc of ~1.5% of the side
                     around one of their pixels (~0.07% of the image): small defects on an object

Every set's defect masks are exact: outside a mask the image is the defect-free rendering (demo
sets) or the real image. Nothing here is used by `make test`.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
from pathlib import Path

import cv2
import numpy as np
from strip_set import make_strip_set  # benchmarks/ is on sys.path when run as a script

from mvtec_ad.data.demo_set import DEMO_DEFECTS, make_demo_dataset, render_sample

SETS = ("magnetic_tile", "magnetic_tile_x2", "fabric_strips", "fabric", "washer", "washer_small")
KINDS = {  # what each set stands for when recipes are compared
    "magnetic_tile": "texture, small defects (real)",
    "magnetic_tile_x2": "texture at another scale (real)",
    "fabric_strips": "elongated strips",
    "fabric": "texture",
    "washer": "object",
    "washer_small": "object, small defects",
}
SMALL_RADIUS = 0.015  # washer_small: radius of the kept defect disc, a share of the image side


def link_magnetic_tile(out: Path, source: Path) -> Path:
    target = out / "magnetic_tile"
    if target.is_symlink() or target.exists():
        return target
    os.symlink(source.resolve(), target)
    return target


def closer(image: np.ndarray, centre: tuple[int, int], scale: int, interpolation: int) -> np.ndarray:
    """`image` scaled by `scale` and cut back to its own size, the window around `centre` (scaled coordinates)."""
    h, w = image.shape[:2]
    big = cv2.resize(image, (w * scale, h * scale), interpolation=interpolation)
    top = int(np.clip(centre[0] - h // 2, 0, h * scale - h))
    left = int(np.clip(centre[1] - w // 2, 0, w * scale - w))
    return big[top : top + h, left : left + w]


def make_closer_set(out: Path, source: Path, scale: int = 2, seed: int = 0, every: int = 3) -> Path:
    """magnetic_tile_x2: every `every`-th image of each folder `scale`x closer; defect windows hold
    their defect's centre (a third of the images keeps the panel's runs short)."""
    target = out / f"{source.name}_x{scale}"
    if target.exists():
        shutil.rmtree(target)
    rng = np.random.default_rng(seed)
    files = [p for split in ("train", "test") for p in sorted((source / split).rglob("*")) if p.is_file()]
    for path in files:
        if path.stem.isdigit() and int(path.stem) % every:
            continue
        relative = path.relative_to(source)
        image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
        h, w = image.shape[:2]
        defect = relative.parts[-2]
        mask_path = source / "ground_truth" / defect / f"{path.stem}_mask.png"
        if relative.parts[0] == "test" and defect != "good" and mask_path.exists():
            mask = cv2.imread(str(mask_path), cv2.IMREAD_GRAYSCALE)
            ys, xs = np.nonzero(mask)
            centre = (
                (int(ys.mean() * scale), int(xs.mean() * scale))
                if ys.size
                else (h * scale // 2, w * scale // 2)
            )
            kept = closer(mask, centre, scale, cv2.INTER_NEAREST)
            (target / "ground_truth" / defect).mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(target / "ground_truth" / defect / mask_path.name), kept)
        else:
            centre = (int(rng.integers(0, h * scale)), int(rng.integers(0, w * scale)))
        (target / relative).parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(
            str((target / relative).with_suffix(".png")), closer(image, centre, scale, cv2.INTER_LINEAR)
        )
    return target


def make_small_defect_set(
    out: Path,
    size: int = 512,
    n_train: int = 60,
    n_test_good: int = 20,
    n_test_defect: int = 40,
    seed: int = 0,
) -> Path:
    """washer_small: demo washers whose defects keep only a small disc around one of their pixels."""
    target = out / "washer_small"
    if target.exists():
        shutil.rmtree(target)
    with tempfile.TemporaryDirectory() as tmp:
        good = make_demo_dataset(tmp, ["washer"], size, n_train, n_test_good, 0, seed) / "washer"
        shutil.copytree(good, target)
    rng = np.random.default_rng(seed)
    radius = max(2, round(SMALL_RADIUS * size))
    defects = DEMO_DEFECTS["washer"]
    for i in range(n_test_defect):
        defect = defects[i % len(defects)]
        index = i // len(defects)
        sample = render_sample("washer", "test", index, defect, size, seed)
        ys, xs = np.nonzero(sample.mask)
        pick = int(rng.integers(0, len(ys)))
        disc = np.zeros_like(sample.mask)
        cv2.circle(disc, (int(xs[pick]), int(ys[pick])), radius, 255, -1)
        mask = np.where(disc > 0, sample.mask, 0).astype(np.uint8)
        keep = mask[..., None] > 0 if sample.image.ndim == 3 else mask > 0
        image = np.where(keep, sample.image, sample.normal)
        stem = f"{index:03d}"
        for folder, name, data in (
            (target / "test" / defect, f"{stem}.png", image),
            (target / "ground_truth" / defect, f"{stem}_mask.png", mask),
        ):
            folder.mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(folder / name), data)
    return target


def make_panel(out: Path, magnetic_tile: Path, seed: int = 0) -> list[Path]:
    """Every set of the panel under `out` (see the module docstring); sets already there are rebuilt."""
    out.mkdir(parents=True, exist_ok=True)
    if not (magnetic_tile / "train").is_dir():
        raise SystemExit(
            f"--magnetic_tile {magnetic_tile}: no train/ folder there (expected MVTec AD's layout)."
        )
    written = [link_magnetic_tile(out, magnetic_tile), make_closer_set(out, magnetic_tile, 2, seed)]
    written.append(make_strip_set(out, seed=seed))
    for name in ("fabric", "washer"):
        if (out / name).exists():
            shutil.rmtree(out / name)
    make_demo_dataset(out, ["fabric", "washer"], 256, seed=seed)
    written += [out / "fabric", out / "washer", make_small_defect_set(out, seed=seed)]
    return written


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--magnetic_tile", type=Path, default=Path("../shared/data/magnetic_tile"))
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    for path in make_panel(args.out, args.magnetic_tile, args.seed):
        print(path)


if __name__ == "__main__":
    main()
