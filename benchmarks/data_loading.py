"""How much the decode cache saves: seconds per pass over a category's training images, first vs later.

    python benchmarks/data_loading.py --root ../shared/data --category magnetic_tile --image_size 224

Prints a markdown table. Not part of `make test`: timings belong here, not in tests.
"""

from __future__ import annotations

import argparse
import time

from mvtec_ad.data.datamodule import AnomalyDataModule
from mvtec_ad.data.geometry import InputGeometry


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--root", default="datasets/demo")
    parser.add_argument("--category", default="fabric")
    parser.add_argument("--image_size", type=int, default=224)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch_size", type=int, default=32)
    a = parser.parse_args()

    dm = AnomalyDataModule(a.root, a.category, train_batch_size=a.batch_size, val_split=0.0)
    dm.bind_input(InputGeometry.of(a.image_size))  # what a detector of that size does in its setup
    dm.setup("fit")
    print(f"{a.root}/{a.category}: {len(dm.train_set)} training images at {a.image_size} px\n")
    print("| pass | seconds | images/s | files decoded so far |")
    print("|---|---|---|---|")
    first = None
    for epoch in range(a.epochs):
        start = time.perf_counter()
        n = sum(len(batch) for batch in dm.train_dataloader())
        seconds = time.perf_counter() - start
        first = first or seconds
        print(f"| {epoch + 1} | {seconds:.2f} | {n / seconds:.0f} | {dm.cache.decodes} |")
    print(f"\nlater passes are {first / seconds:.1f}x faster than the first")


if __name__ == "__main__":
    main()
