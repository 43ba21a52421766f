"""Fit and test time, images/s and peak memory of the memory-bank detectors (knn, patchcore).

    python benchmarks/memory_bank.py --root ../shared/data --category magnetic_tile

Each detector runs in its own process (so peak RSS is its own) from its demo config (offline
EfficientNet-Lite0 weights), exactly as `python -m mvtec_ad fit/test` would build it.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def run_one(args: argparse.Namespace) -> dict:
    """Fit + test one detector in this process; returns the row."""
    import torch
    from lightning.pytorch import seed_everything
    from omegaconf import OmegaConf

    from mvtec_ad.commands.lightning import AnomalyTrainer
    from mvtec_ad.data.datamodule import AnomalyDataModule
    from mvtec_ad.models.knn import KNN
    from mvtec_ad.models.patchcore import PatchCore

    seed_everything(42)
    config = OmegaConf.to_container(OmegaConf.load(REPO / "configs" / "demo" / f"{args.one}.yaml"))
    model_args = config["model"]["init_args"]
    model_args["image_size"] = args.image_size
    if args.one == "patchcore":
        model_args["coreset_ratio"] = args.coreset_ratio
        model_args["bank_dtype"] = args.bank_dtype
    model = {"knn": KNN, "patchcore": PatchCore}[args.one](**model_args)
    data = AnomalyDataModule(args.root, args.category, eval_batch_size=32, train_batch_size=32)
    with tempfile.TemporaryDirectory() as logs:
        trainer = AnomalyTrainer(
            max_epochs=1,
            accelerator=args.accelerator,
            devices=1,
            default_root_dir=logs,
            enable_progress_bar=False,
            enable_model_summary=False,
            num_sanity_val_steps=0,
            logger=False,
        )
        start = time.perf_counter()
        trainer.fit(model, datamodule=data)
        fit_seconds = time.perf_counter() - start
        start = time.perf_counter()
        trainer.test(model, datamodule=data, verbose=False)
        test_seconds = time.perf_counter() - start
    results = model.test_results
    n_fit = len(data.train_set) + len(data.val_set)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if torch.cuda.is_available() and args.accelerator != "cpu":
        peak_mb = max(peak_mb, torch.cuda.max_memory_allocated() / 2**20)
    return {
        "detector": args.one,
        "fit_images": n_fit,
        "test_images": len(data.test_set),
        "fit_s": fit_seconds,
        "test_s": test_seconds,
        "fit_img_s": n_fit / fit_seconds,
        "test_img_s": len(data.test_set) / test_seconds,
        "peak_rss_mb": peak_mb,
        "coreset_s": results.get("coreset_seconds"),
        "bank": results.get("bank_patches") or results.get("bank_images"),
        "image_auroc": results["image_auroc"],
        "pixel_auroc": results["pixel_auroc"],
        "pixel_aupro": results["pixel_aupro"],
    }


def fmt(value) -> str:
    if value is None:
        return "-"
    return (
        f"{value:.3f}"
        if isinstance(value, float) and value < 10
        else f"{value:.0f}"
        if isinstance(value, float)
        else str(value)
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--root", default="datasets/demo")
    parser.add_argument("--category", default="fabric")
    parser.add_argument("--detectors", nargs="+", default=["knn", "patchcore"])
    parser.add_argument("--image_size", type=int, default=224)
    parser.add_argument("--coreset_ratio", type=float, default=0.1)
    parser.add_argument("--bank_dtype", default="float32", choices=["float32", "float16"])
    parser.add_argument("--accelerator", default="auto")
    parser.add_argument("--one", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print("ROW " + json.dumps(run_one(args)), flush=True)
        return

    rows = []
    for detector in args.detectors:
        cmd = [sys.executable, __file__, *sys.argv[1:], "--one", detector]
        out = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
        line = next((x for x in out.stdout.splitlines() if x.startswith("ROW ")), None)
        if line is None:
            sys.exit(f"{detector} failed:\n{out.stderr[-3000:]}")
        rows.append(json.loads(line[4:]))
    keys = list(rows[0])
    print(
        f"\n{args.root}/{args.category}, {args.image_size} px, coreset {args.coreset_ratio}, bank {args.bank_dtype}\n"
    )
    print("| " + " | ".join(keys) + " |")
    print("|" + "---|" * len(keys))
    for row in rows:
        print("| " + " | ".join(fmt(row[k]) for k in keys) + " |")


if __name__ == "__main__":
    main()
