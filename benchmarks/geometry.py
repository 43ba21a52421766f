"""Image / pixel AUROC, AUPRO, fit+test seconds and peak RSS of each input geometry option.

    python benchmarks/geometry.py --root /tmp/bench_root --category magnetic_tile --out /tmp/geometry
    python benchmarks/geometry.py --root /tmp/strips --category fabric_strips --out /tmp/geometry_strips \
        --variants squash_224 keep_aspect_strip tiled_strip

Each variant is `python -m mvtec_ad benchmark` with one demo config (offline weights) and the
variant's model options, in its own results.csv under --out (rerunning resumes; a crashed run
fails its row only). Pixel metrics are computed at each mask's own resolution (MVTec's way).
Prints a Markdown table; the exact command of every row is in its results.csv.
"""

from __future__ import annotations

import argparse
import csv
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# variant -> model options on top of the detector's demo config (configs/demo/<detector>.yaml)
VARIANTS: dict[str, tuple[str, ...]] = {
    "squash_224": ("--model.image_size", "224"),
    "keep_aspect_224": ("--model.image_size", "224", "--model.resize", "keep_aspect"),
    "keep_aspect_320": ("--model.image_size", "320", "--model.resize", "keep_aspect"),
    "keep_aspect_384": ("--model.image_size", "384", "--model.resize", "keep_aspect"),
    "tiled_320": (
        "--model.image_size", "320", "--model.resize", "keep_aspect",
        "--model.tile_size", "160", "--model.tile_stride", "160",
    ),
    # for 1 : 2.5 strips (benchmarks/strip_set.py): a canvas of the strip's own shape
    "keep_aspect_strip": ("--model.image_size", "[128, 320]", "--model.resize", "keep_aspect"),
    "tiled_strip": (
        "--model.image_size", "[256, 640]", "--model.resize", "keep_aspect",
        "--model.tile_size", "256", "--model.tile_stride", "192",
    ),
}  # fmt: skip
# PatchCore's coreset share at canvases with more patches than 224 x 224, so the bank (and the
# search) stays about the 224 px one's size
CORESET = {
    "keep_aspect_320": "0.05",
    "keep_aspect_384": "0.035",
    "tiled_320": "0.05",
    "keep_aspect_strip": "0.1",
    "tiled_strip": "0.03",
}
COLUMNS = ("image_auroc", "pixel_auroc", "pixel_aupro", "seconds", "peak_rss_mb")


def run_variant(detector: str, variant: str, args: argparse.Namespace) -> dict[str, str]:
    out = args.out / detector / variant / "results.csv"
    options = list(VARIANTS[variant])
    if detector == "patchcore" and variant in CORESET:
        options += ["--model.coreset_ratio", CORESET[variant]]
    command = [
        sys.executable, "-m", "mvtec_ad", "benchmark",
        "--configs", str(REPO / "configs" / "demo" / f"{detector}.yaml"),
        "--data.root", str(args.root), "--categories", args.category, "--out", str(out), *options,
    ]  # fmt: skip
    subprocess.run(command, check=False, cwd=REPO)
    with out.open() as f:
        rows = list(csv.DictReader(f))
    return rows[0] if rows else {}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, required=True)
    parser.add_argument("--category", required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--detectors", nargs="+", default=["patchcore", "dfr"])
    parser.add_argument(
        "--variants", nargs="+", default=["squash_224", "keep_aspect_224", "keep_aspect_320", "tiled_320"]
    )
    args = parser.parse_args()
    unknown = sorted(set(args.variants) - set(VARIANTS))
    if unknown:
        parser.error(f"unknown variant(s) {', '.join(unknown)}; choose from {', '.join(VARIANTS)}")
    table = []
    for detector in args.detectors:
        for variant in args.variants:
            row = run_variant(detector, variant, args)
            table.append((detector, variant, row))
    print(f"\n{args.category}: pixel metrics at each mask's own resolution\n")
    print("| detector | geometry | status | " + " | ".join(COLUMNS) + " |")
    print("|---" * (3 + len(COLUMNS)) + "|")
    for detector, variant, row in table:
        cells = []
        for column in COLUMNS:
            value = row.get(column, "")
            cells.append(
                f"{float(value):.4f}"
                if value and column not in ("seconds", "peak_rss_mb")
                else (f"{float(value):.0f}" if value else "-")
            )
        print(f"| {detector} | {variant} | {row.get('status', 'missing')} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
