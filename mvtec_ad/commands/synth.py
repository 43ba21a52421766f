"""`python -m mvtec_ad synth`: write the procedural demo set (MVTec layout, exact masks)."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from mvtec_ad.data.demo_set import DEMO_CATEGORIES, make_demo_dataset


def main(argv: Sequence[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m mvtec_ad synth", description=__doc__)
    parser.add_argument("--out", default="datasets/demo", help="output folder (default: datasets/demo)")
    parser.add_argument("--categories", nargs="+", default=list(DEMO_CATEGORIES), help="categories to write")
    parser.add_argument("--image_size", type=int, default=256)
    parser.add_argument("--n_train", type=int, default=60)
    parser.add_argument("--n_test_good", type=int, default=15)
    parser.add_argument("--n_test_defect", type=int, default=30)
    parser.add_argument("--seed", type=int, default=0)
    a = parser.parse_args(argv)
    out = make_demo_dataset(
        a.out, a.categories, a.image_size, a.n_train, a.n_test_good, a.n_test_defect, a.seed
    )
    print(f"Demo set written to {out} ({', '.join(a.categories)}).")
