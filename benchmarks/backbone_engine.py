"""Backbone speed on torch eager against onnxruntime (mvtec_ad.features.engine, the CPU default).

    python benchmarks/backbone_engine.py
    python benchmarks/backbone_engine.py --sizes 224 320 --backbones efficientnet_lite0

Times FeatureExtractor's forward (random weights: the speed does not depend on their values) on
batches of random images, the same extractor on each engine, alternating the engines `--repeats`
times so that a machine's drift hits both; checks that both give the same features and times the
one-off ONNX export of the first onnxruntime forward. Prints a markdown table; not part of
`make test`.
"""

from __future__ import annotations

import argparse
import time

import torch

from mvtec_ad.features.backbone import FeatureExtractor
from mvtec_ad.search import cpu

CASES = {
    "efficientnet_lite0": ["blocks.2", "blocks.4", "blocks.6"],
    "wide_resnet50_2": ["layer2", "layer3"],
}


def seconds(extractor: FeatureExtractor, engine: str, images: torch.Tensor) -> float:
    extractor.engine = engine
    with torch.inference_mode():
        start = time.perf_counter()
        extractor(images)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbones", nargs="+", default=list(CASES), choices=list(CASES))
    parser.add_argument("--sizes", type=int, nargs="+", default=[224, 320])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    print(f"\ncpu: {cpu.describe()}; batch {args.batch}\n")
    print(
        "| backbone | size | torch img/s | onnxruntime img/s | speed-up | export s | max relative difference |"
    )
    print("|---|---|---|---|---|---|---|")
    for backbone in args.backbones:
        torch.manual_seed(0)
        extractor = FeatureExtractor(backbone, CASES[backbone], "none")
        export = seconds(extractor, "onnxruntime", torch.rand(1, 3, 64, 64))  # the export, once per extractor
        for size in args.sizes:
            images = torch.rand(args.batch, 3, size, size, generator=torch.Generator().manual_seed(0))
            with torch.inference_mode():
                extractor.engine = "torch"
                reference = extractor(images[:2])
                extractor.engine = "onnxruntime"
                diff = max(
                    float((a - b).abs().max() / b.abs().max())
                    for a, b in zip(extractor(images[:2]), reference, strict=True)
                )
            seconds(extractor, "torch", images[:4])  # warm-up: oneDNN picks its kernels
            times = {"torch": 0.0, "onnxruntime": 0.0}
            for _ in range(args.repeats):
                for engine in times:
                    times[engine] += seconds(extractor, engine, images)
            rate = {engine: args.repeats * args.batch / s for engine, s in times.items()}
            print(
                f"| {backbone} | {size} | {rate['torch']:.1f} | {rate['onnxruntime']:.1f} | "
                f"{rate['onnxruntime'] / rate['torch']:.2f}x | {export:.1f} | {diff:.1e} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
