"""Backbone speed with BatchNorm folded into the convolutions (mvtec_ad.features.fold) and without.

    python benchmarks/backbone_fold.py
    MVTEC_AD_CPU=avx2 python benchmarks/backbone_fold.py

Times FeatureExtractor's forward on torch (random weights: the speed does not depend on their
values; onnxruntime, the CPU default, folds BatchNorm itself: benchmarks/backbone_engine.py) on
batches of random images, folded as built and with the folding undone, and checks that both give
the same features. Prints a markdown table; not part of `make test`.
"""

from __future__ import annotations

import argparse
import time
from unittest.mock import patch

import torch

from mvtec_ad.features.backbone import FeatureExtractor
from mvtec_ad.search import cpu

CASES = {
    "efficientnet_lite0": ["blocks.2", "blocks.4", "blocks.6"],
    "wide_resnet50_2": ["layer2", "layer3"],
}


def images_per_second(extractor: FeatureExtractor, images: torch.Tensor, repeats: int) -> float:
    with torch.inference_mode():
        extractor(images[:4])  # warm-up: oneDNN picks its kernels
        start = time.perf_counter()
        for _ in range(repeats):
            extractor(images)
    return repeats * len(images) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[224, 320])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    print(f"\ncpu: {cpu.describe()}; {torch.get_num_threads()} threads; batch {args.batch}\n")
    print("| backbone | size | unfolded img/s | folded img/s | speed-up | max relative difference |")
    print("|---|---|---|---|---|---|")
    for backbone, layers in CASES.items():
        torch.manual_seed(0)  # the same random weights in both
        with patch.object(FeatureExtractor, "_fold", lambda self: []):
            unfolded = FeatureExtractor(backbone, layers, "none")
        torch.manual_seed(0)
        folded = FeatureExtractor(backbone, layers, "none")
        unfolded.engine = folded.engine = "torch"
        for size in args.sizes:
            images = torch.rand(args.batch, 3, size, size, generator=torch.Generator().manual_seed(0))
            with torch.inference_mode():
                diff = max(
                    float((a - b).abs().max() / b.abs().max())
                    for a, b in zip(folded(images[:2]), unfolded(images[:2]), strict=True)
                )
            slow = images_per_second(unfolded, images, args.repeats)
            fast = images_per_second(folded, images, args.repeats)
            print(f"| {backbone} | {size} | {slow:.1f} | {fast:.1f} | {fast / slow:.2f}x | {diff:.1e} |")


if __name__ == "__main__":
    main()
