"""Greedy k-center coreset speed: the one-pick-per-pass loops against mvtec_ad's greedy_coreset.

    python benchmarks/coreset.py --root ../shared/data --category magnetic_tile
    python benchmarks/coreset.py --synthetic 100000 152
    MVTEC_AD_CPU=avx2 python benchmarks/coreset.py --root ../shared/data --category magnetic_tile

It also times the probed coreset (coreset_probed.py: patchcore's `coreset: auto` above 1,024
picks) and reports how well each bank covers the patches: the largest and the mean distance of a
patch to its nearest bank row, in the 128-d projection the selection sees and in the full
features the detector searches (found with --coverage_search, exact_bf16 by default).

Features are PatchCore's: efficientnet_lite0 blocks.2 + blocks.4, 3x3-pooled and fused (152
values per patch, 28 x 28 patches per 224 px image; offline ImageNet weights), from the training
images PatchCore fits on (`--val_split` of train/good held out, `--max_images` caps them);
`--synthetic N D` uses Gaussian blobs instead. The naive loops are timed over `--naive_picks`
picks and extrapolated to the whole coreset (marked ~); greedy_coreset selects it all. Prints a
markdown table. Not part of `make test`: timings belong here, not in tests.

On a machine shared with other jobs, pass `--threads 1` (or prefix OMP_NUM_THREADS=1): torch's
intra-op threads wait for each other, and one that shares its core with another job stalls the
rest (greedy_coreset ran 4x slower with 2 threads than with 1 on a busy 2-core machine).
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import torch


def patch_features(a: argparse.Namespace) -> torch.Tensor:
    from torch.utils.data import DataLoader, Subset

    from mvtec_ad.data.datamodule import AnomalyDataModule
    from mvtec_ad.data.dataset import collate_batch
    from mvtec_ad.data.geometry import InputGeometry
    from mvtec_ad.features.backbone import FeatureExtractor, fuse_features

    dm = AnomalyDataModule(a.root, a.category, val_split=a.val_split)
    dm.bind_input(InputGeometry.of(a.image_size))
    dm.setup("fit")
    images = dm.train_set if a.max_images is None else Subset(dm.train_set, range(a.max_images))
    extractor = FeatureExtractor("efficientnet_lite0", ["blocks.2", "blocks.4"], "imagenet")
    start, chunks = time.perf_counter(), []
    with torch.no_grad():
        for batch in DataLoader(images, batch_size=32, collate_fn=collate_batch):
            fused = fuse_features(extractor(batch.image))
            chunks.append(fused.permute(0, 2, 3, 1).reshape(-1, fused.shape[1]))
    print(
        f"{a.root}/{a.category}: {len(images)} training images at {a.image_size} px, "
        f"features extracted in {time.perf_counter() - start:.0f} s"
    )
    return torch.cat(chunks)


def synthetic_features(n: int, d: int) -> torch.Tensor:
    """Gaussian blobs of different sizes around 64 centres: clustered, like patch features."""
    g = torch.Generator().manual_seed(0)
    centres = torch.randn(64, d, generator=g) * 4
    labels = torch.randint(64, (n,), generator=g)
    return centres[labels] + torch.randn(n, d, generator=g) * (0.5 + torch.rand(64, 1, generator=g))[labels]


def naive_loop(x: torch.Tensor, n_picks: int, first: int) -> list[int]:
    """anomalib's k-center greedy: one pass over every row per pick (norm of the differences)."""
    x[:10].norm(dim=1)  # warm-up
    min_distances = torch.full((x.shape[0],), math.inf, device=x.device)
    picks, idx = [first], first
    for _ in range(n_picks - 1):
        min_distances = torch.minimum(min_distances, torch.linalg.norm(x - x[idx], dim=1))
        min_distances[idx] = -math.inf
        idx = int(min_distances.argmax())
        picks.append(idx)
    return picks


def timed(fn, *args, **kwargs):
    start = time.perf_counter()
    result = fn(*args, **kwargs)
    return result, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--root", default="datasets/demo")
    parser.add_argument("--category", default="fabric")
    parser.add_argument("--image_size", type=int, default=224)
    parser.add_argument("--val_split", type=float, default=0.2, help="as in PatchCore's fit (default 0.2)")
    parser.add_argument("--max_images", type=int, default=None)
    parser.add_argument("--synthetic", type=int, nargs=2, metavar=("N", "D"), default=None)
    parser.add_argument("--ratio", type=float, default=0.1, help="coreset share of all patches")
    parser.add_argument("--projection_dim", type=int, default=128)
    parser.add_argument("--naive_picks", type=int, default=200, help="picks timed in each naive loop")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--coverage_search", default="exact_bf16", help="backend that finds each patch's bank row"
    )
    parser.add_argument(
        "--features", default=None, help=".pt file: patch vectors loaded from it, or saved to it"
    )
    a = parser.parse_args()

    from mvtec_ad.models.components.coreset import greedy_coreset, random_projection
    from mvtec_ad.models.components.coreset_probed import probed_coreset
    from mvtec_ad.search import cpu
    from mvtec_ad.search.bank import BankSearch

    if a.threads:
        torch.set_num_threads(a.threads)
    if a.features and Path(a.features).is_file():
        features = torch.load(a.features)
    else:
        features = synthetic_features(*a.synthetic) if a.synthetic else patch_features(a)
        if a.features:
            torch.save(features, a.features)
    features = features.to(a.device)
    n, d = features.shape
    n_select = max(1, math.ceil(a.ratio * n))
    naive_picks = min(a.naive_picks, n_select)
    first = int(torch.randint(n, (1,), generator=torch.Generator().manual_seed(0)))
    print(
        f"{n} patch vectors x {d} dims, coreset of {a.ratio:.0%} = {n_select} picks; "
        f"{a.device}, torch {torch.__version__}\ncpu: {cpu.describe()}\n"
    )

    _, full_s = timed(naive_loop, features, naive_picks, first)
    x, projection_s = timed(random_projection, features, a.projection_dim, 0)
    reference, projected_s = timed(naive_loop, x, naive_picks, first)
    precision = "fp32"  # the naive loops' arithmetic (patchcore's exact coreset takes bf16 where it is fast)
    picks, coreset_s = timed(greedy_coreset, features, n_select, a.projection_dim, 0, precision=precision)
    probed, probed_s = timed(probed_coreset, features, n_select, a.projection_dim, 0)

    full_rate = naive_picks / full_s
    rows = [
        ("naive loop, full dimension (anomalib)", full_rate, n_select / full_rate, True),
        (
            f"naive loop, {x.shape[1]}-d projection",
            naive_picks / projected_s,
            n_select / (naive_picks / projected_s),
            True,
        ),
        (
            f"greedy_coreset, exact ({x.shape[1]}-d projection, {precision})",
            n_select / coreset_s,
            coreset_s,
            False,
        ),
        (f"probed_coreset ({x.shape[1]}-d projection, fp32)", n_select / probed_s, probed_s, False),
    ]
    print(f"| method | picks/s | seconds for the {n_select}-pick coreset | speed-up vs full-dimension loop |")
    print("|---|---|---|---|")
    for name, rate, seconds, extrapolated in rows:
        mark = "~" if extrapolated else ""
        print(f"| {name} | {rate:,.0f} | {mark}{seconds:,.1f} | {rate / full_rate:,.1f}x |")
    agree = next(
        (i for i, (p, q) in enumerate(zip(picks.tolist(), reference, strict=False)) if p != q), naive_picks
    )
    print(
        f"\n~ extrapolated from {naive_picks} picks (a naive pick costs the same all the way). "
        f"The projection took {projection_s:.2f} s (included in greedy_coreset). "
        f"greedy_coreset's first {agree} of {naive_picks} picks equal the naive projected loop's"
        + ("." if agree == naive_picks else " (then a float-rounding near-tie: either row is as far).")
    )
    search = BankSearch(a.coverage_search)
    print(
        f"\nHow each bank covers the {n} patches (distance of a patch to its nearest bank row; {a.coverage_search}):\n"
    )
    print("| bank | largest, projection | mean, projection | largest, features | mean, features |")
    print("|---|---|---|---|---|")
    for name, chosen in (("exact greedy", picks), ("probed", probed)):
        cover = []
        for rows in (x, features):
            distances = search(rows, rows[chosen])[0].flatten()
            cover += [float(distances.max()), float(distances.mean())]
        print(f"| {name} | {cover[0]:.3f} | {cover[1]:.4f} | {cover[2]:.3f} | {cover[3]:.4f} |")


if __name__ == "__main__":
    main()
