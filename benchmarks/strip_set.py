"""An elongated category for the geometry benchmark: demo fabric rendered at 640 px, cut into 1:2.5 strips.

    python benchmarks/strip_set.py --out /tmp/strips   # writes /tmp/strips/fabric_strips (MVTec layout)

Line-scan cameras give strips like these (e.g. 256 x 640 px). Each defect image's strip is cut
around its defect's centre, so every defect stays in view; good images are cut at a random
height. Masks are cut with their images.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path

import cv2
import numpy as np

from mvtec_ad.data.demo_set import make_demo_dataset

SIDE, STRIP = 640, 256  # rendered square side, strip height: 256 x 640 = 1 : 2.5


def cut(image: np.ndarray, top: int) -> np.ndarray:
    return image[top : top + STRIP]


def make_strip_set(
    out: Path, n_train: int = 40, n_test_good: int = 10, n_test_defect: int = 20, seed: int = 0
) -> Path:
    """Write out/fabric_strips and return it; an existing copy is replaced."""
    target = out / "fabric_strips"
    rng = np.random.default_rng(seed)
    with tempfile.TemporaryDirectory() as tmp:
        source = (
            make_demo_dataset(tmp, ["fabric"], SIDE, n_train, n_test_good, n_test_defect, seed) / "fabric"
        )
        if target.exists():
            shutil.rmtree(target)
        for path in sorted(source.rglob("*.png")):
            if "ground_truth" in path.parts:
                continue
            relative = path.relative_to(source)
            defect = relative.parts[-2]
            image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
            mask_path = source / "ground_truth" / defect / f"{path.stem}_mask.png"
            if mask_path.exists():
                mask = cv2.imread(str(mask_path), cv2.IMREAD_GRAYSCALE)
                rows = np.nonzero(mask.any(1))[0]
                centre = int(rows.mean()) if rows.size else SIDE // 2
                top = int(np.clip(centre - STRIP // 2, 0, SIDE - STRIP))
                (target / "ground_truth" / defect).mkdir(parents=True, exist_ok=True)
                cv2.imwrite(str(target / "ground_truth" / defect / mask_path.name), cut(mask, top))
            else:
                top = int(rng.integers(0, SIDE - STRIP + 1))
            (target / relative).parent.mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(target / relative), cut(image, top))
    return target


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    print(make_strip_set(args.out, seed=args.seed))


if __name__ == "__main__":
    main()
