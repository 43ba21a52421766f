"""Recipes x the data panel: which detector recipe to ship as the default, measured on every kind of image.

    python benchmarks/panel.py --out /tmp/panel --magnetic_tile ../shared/data/magnetic_tile
    python benchmarks/recipes.py --root /tmp/panel --out /tmp/recipes
    python benchmarks/recipes.py --root /tmp/panel --out /tmp/recipes --detector dfr

Each recipe is the detector's demo config (configs/demo/<detector>.yaml) with every option the
recipes vary set explicitly, so a row means the same whatever the config file says today. Each
(recipe, set) runs as `python -m mvtec_ad benchmark` runs it (one `train` process per set: fit,
then test; seconds are that whole process), into <out>/<detector>/<recipe>/results.csv;
rerunning resumes. The table: per set image AUROC / pixel AUROC / AUPRO, then each recipe's
largest shortfall (image AUROC, AUPRO) from the best of the configs that shipped before (TODAY)
over the sets it was chosen on (CHOSEN_ON), and its seconds against the old default's (seconds
are only comparable between rows run on idle cores: the run order is the table's).
"""

from __future__ import annotations

import argparse
import csv
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SETS = ("magnetic_tile", "magnetic_tile_x2", "fabric_strips", "fabric", "washer", "washer_small")
# the sets a default is chosen on: every set of the panel. magnetic_tile's test split tuned the old
# `patchcore_magnetic_tile` recipe, so no recipe here was tuned on the other five.
CHOSEN_ON = SETS


def patchcore(
    size: str,
    score: str = "max",
    coreset: str = "0.05",
    layers: str = "[blocks.2, blocks.4]",
    pool: str = "3",
    sigma: str = "4.0",
    resize: str = "keep_aspect",
    window: str | None = None,
    backbone: str | None = None,
    coarse: str = "[]",
    coarse_pool: str = "5",
) -> tuple[str, ...]:
    """A patchcore recipe's options: every option any recipe varies, so no row depends on the config file."""
    options = ["--model.resize", resize, "--model.image_size", size, "--model.layers", layers]
    options += ["--model.coarse_layers", coarse, "--model.coarse_pool_kernel", coarse_pool]
    options += ["--model.pool_kernel", pool, "--model.sigma", sigma, "--model.score", score]
    options += ["--model.score_window", window] if window else []
    options += ["--model.coreset_ratio", coreset]
    return (*options, *(["--model.backbone", backbone] if backbone else []))


def dfr(size: str, resize: str = "keep_aspect") -> tuple[str, ...]:
    return ("--model.resize", resize, "--model.image_size", size, "--model.layers", "[blocks.2, blocks.4]")


# recipe -> options over configs/demo/<detector>.yaml
PATCHCORE: dict[str, tuple[str, ...]] = {
    "squash_224 (old default)": patchcore("224", resize="squash", coreset="0.1"),
    "keep_aspect_320": patchcore("320"),
    "magnetic_tile (ka 384, blocks 4+6)": patchcore(
        "384", "window_max", "0.1", layers="[blocks.4, blocks.6]", pool="5", sigma="8.0"
    ),
    "keep_aspect_320, window_max": patchcore("320", "window_max"),
    "keep_aspect_288": patchcore("288", coreset="0.06"),
    "keep_aspect_320, window_max, lite1": patchcore("320", "window_max", backbone="efficientnet_lite1"),
    "keep_aspect_320, window_max 5": patchcore("320", "window_max", window="5"),
    "keep_aspect_320, window_max, pool 5": patchcore("320", "window_max", pool="5"),
    "keep_aspect_320, window_max, + coarse bank": patchcore(
        "320", "window_max", coarse="[blocks.4, blocks.6]"
    ),
    "keep_aspect_320, window_max, + coarse bank, coreset 0.03": patchcore(
        "320", "window_max", "0.03", coarse="[blocks.4, blocks.6]"
    ),
    "keep_aspect_320, window_max, + coarse bank, coreset 0.02": patchcore(
        "320", "window_max", "0.02", coarse="[blocks.4, blocks.6]"
    ),
}
DFR: dict[str, tuple[str, ...]] = {
    "squash_224 (old default)": dfr("224", resize="squash"),
    "keep_aspect_224": dfr("224"),
    "keep_aspect_320": dfr("320"),
}
RECIPES = {"patchcore": PATCHCORE, "dfr": DFR}
BASELINE = "squash_224 (old default)"
# the configs that shipped before the recipes were compared (issue 30's "today's three"): a new
# default must come within 0.01 image AUROC and 0.02 AUPRO of their best on every set
TODAY = {
    "patchcore": (BASELINE, "keep_aspect_320", "magnetic_tile (ka 384, blocks 4+6)"),
    "dfr": (BASELINE,),
}


def run_recipe(detector: str, recipe: str, args: argparse.Namespace) -> dict[str, dict[str, str]]:
    """Run (or resume) one recipe on every set; its results.csv rows by set."""
    out = args.out / detector / re.sub(r"[^a-z0-9]+", "_", recipe.lower()).strip("_") / "results.csv"
    if recipe not in RECIPES[detector]:
        raise SystemExit(f"unknown recipe {recipe!r}; known: {', '.join(RECIPES[detector])}")
    command = [
        sys.executable, "-m", "mvtec_ad", "benchmark",
        "--configs", str(REPO / "configs" / "demo" / f"{detector}.yaml"),
        "--data.root", str(args.root), "--categories", *args.sets, "--out", str(out),
        *RECIPES[detector][recipe], *args.extra,
    ]  # fmt: skip
    subprocess.run(command, check=False, cwd=REPO)
    if not out.exists():
        return {}
    with out.open() as f:
        return {row["category"]: row for row in csv.DictReader(f) if row.get("status") == "ok"}


def number(row: dict[str, str] | None, key: str) -> float | None:
    value = (row or {}).get(key)
    try:
        return float(value) if value not in (None, "") else None
    except ValueError:
        return None


def table(results: dict[str, dict[str, dict[str, str]]], sets: list[str], detector: str = "patchcore") -> str:
    """Markdown: recipes x sets (image / pixel AUROC / AUPRO), worst shortfall from each set's best, seconds."""
    pool = {name: rows for name, rows in results.items() if name in TODAY[detector]} or results
    best = {
        (s, key): max((v for r in pool.values() if (v := number(r.get(s), key)) is not None), default=None)
        for s in sets
        for key in ("image_auroc", "pixel_aupro")
    }
    base_seconds = results.get(BASELINE, {})
    head = ["recipe", *sets, "shortfall from today's best: image AUROC / AUPRO", "seconds (x old default)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for recipe, rows in results.items():
        cells = [recipe]
        for s in sets:
            values = [number(rows.get(s), k) for k in ("image_auroc", "pixel_auroc", "pixel_aupro")]
            cells.append(" / ".join("-" if v is None else f"{v:.3f}" for v in values))
        gaps = {
            key: max(
                (
                    best[(s, key)] - v
                    for s in sets
                    if s in CHOSEN_ON and (v := number(rows.get(s), key)) is not None
                ),
                default=None,
            )
            for key in ("image_auroc", "pixel_aupro")
        }
        cells.append(" / ".join("-" if g is None else f"{g:.3f}" for g in gaps.values()))
        seconds = sum(number(rows.get(s), "seconds") or 0.0 for s in sets)
        base = sum(number(base_seconds.get(s), "seconds") or 0.0 for s in sets)
        cells.append(f"{seconds:.0f} ({seconds / base:.2f}x)" if base else f"{seconds:.0f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, required=True, help="the panel (benchmarks/panel.py --out)")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--detector", choices=sorted(RECIPES), default="patchcore")
    parser.add_argument("--recipes", nargs="+", help="names from RECIPES (default: all of the detector's)")
    parser.add_argument("--sets", nargs="+", default=list(SETS))
    args, args.extra = parser.parse_known_args()
    names = args.recipes or list(RECIPES[args.detector])
    results = {name: run_recipe(args.detector, name, args) for name in names}
    sys.path.insert(0, str(REPO))
    from mvtec_ad.search import cpu

    print(f"\n{args.detector} recipes on {args.root}; cpu: {cpu.describe()}")
    print(
        f"chosen on: {', '.join(s for s in args.sets if s in CHOSEN_ON)}; seconds = fit + test, one process per set\n"
    )
    print(table(results, args.sets, args.detector))


if __name__ == "__main__":
    main()
