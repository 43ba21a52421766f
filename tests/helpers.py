"""What many tests share: the tiny set's sizes, tiny image files, the CLI as a user runs it, a bound DataModule."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from unittest import mock

import cv2
import numpy as np
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from mvtec_ad.data.datamodule import AnomalyDataModule
from mvtec_ad.data.geometry import InputGeometry
from mvtec_ad.evaluation.results_table import COLUMNS

REPO = Path(__file__).resolve().parents[1]
TINY = {"image_size": 64, "n_train": 12, "n_test_good": 4, "n_test_defect": 8}
TEST_IMAGE_SIZE = 64
SIZE = 32  # side of the hand-made images of the data tests


def tiny_dfr_kwargs() -> dict:
    return {"backbone": "efficientnet_lite0", "layers": ["blocks.2", "blocks.4"], "weights": "imagenet"}


def datamodule(
    root, category: str | None = "fabric", image_size: int = TEST_IMAGE_SIZE, **kwargs
) -> AnomalyDataModule:
    """An AnomalyDataModule set up and bound to `image_size`, as a detector of that size would bind it."""
    dm = AnomalyDataModule(root=root, category=category, **kwargs)
    dm.bind_input(InputGeometry.of(image_size))
    dm.setup()
    return dm


# ---- the CLI -------------------------------------------------------------------------------------
def cli(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    """`python -m mvtec_ad ARGS` in a subprocess, from the repository root."""
    result = subprocess.run(
        [sys.executable, "-m", "mvtec_ad", *args], cwd=REPO, capture_output=True, text=True, timeout=600
    )
    if check and result.returncode != 0:
        raise AssertionError(f"exit {result.returncode}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return result


def tiny_args(config: str, root: Path, out: Path, *extra: str) -> list[str]:
    """Options every CLI test passes: `config` on the tiny set's washer, logs under `out`, then `extra`."""
    return [
        "--config",
        config,
        "--data.root",
        str(root),
        "--data.category",
        "washer",
        "--model.image_size",
        str(TEST_IMAGE_SIZE),
        "--trainer.default_root_dir",
        str(out),
        "--trainer.enable_progress_bar",
        "false",
        *extra,
    ]


def main_in_process(args: list[str]) -> None:
    """The CLI's entry point in this process: the same code as a subprocess without its start-up."""
    from mvtec_ad.cli import main

    with mock.patch.object(sys, "argv", ["mvtec_ad"]):  # LightningCLI warns of pytest's own arguments
        main(args)


def events(log_dir: Path) -> EventAccumulator:
    """A run's TensorBoard events, every image and scalar loaded."""
    acc = EventAccumulator(str(log_dir), size_guidance={"images": 0, "scalars": 0})
    acc.Reload()
    return acc


# ---- hand-made images and categories -------------------------------------------------------------
def write_image(path: Path, value: int = 128, size: int | tuple[int, int] = SIZE, channels: int = 3) -> Path:
    """A small uniform image (value varies per file so that decodes can be told apart)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    h, w = (size, size) if isinstance(size, int) else size
    shape = (h, w) if channels == 1 else (h, w, channels)
    assert cv2.imwrite(str(path), np.full(shape, value, dtype=np.uint8))
    return path


def write_mask(path: Path, size: int | tuple[int, int] = SIZE, value: int = 255) -> Path:
    """A mask whose top-left quarter is defective."""
    path.parent.mkdir(parents=True, exist_ok=True)
    h, w = (size, size) if isinstance(size, int) else size
    mask = np.zeros((h, w), dtype=np.uint8)
    mask[: h // 2, : w // 2] = value
    assert cv2.imwrite(str(path), mask)
    return path


def make_category(
    root: Path,
    category: str = "widget",
    n_train: int = 4,
    n_good: int = 2,
    defects: dict[str, int] | None = None,
    masks: bool = True,
) -> Path:
    """<root>/<category>/{train/good, test/good, test/<defect>, ground_truth/<defect>} with 32 px PNGs."""
    defects = {"crack": 2, "scratch": 1} if defects is None else defects
    folder = root / category
    for i in range(n_train):
        write_image(folder / "train" / "good" / f"{i:03d}.png", value=10 + i)
    for i in range(n_good):
        write_image(folder / "test" / "good" / f"{i:03d}.png", value=100 + i)
    for defect, n in defects.items():
        for i in range(n):
            write_image(folder / "test" / defect / f"{i:03d}.png", value=200 + i)
            if masks:
                write_mask(folder / "ground_truth" / defect / f"{i:03d}_mask.png")
    return root


# ---- training ------------------------------------------------------------------------------------
def one_step_lowers_loss(params, loss_fn, lr: float) -> tuple[float, float]:
    """The loss before and after one Adam step on `params`."""
    optimizer = torch.optim.Adam(params, lr=lr)
    before = loss_fn()
    optimizer.zero_grad()
    before.backward()
    optimizer.step()
    with torch.no_grad():
        return float(before), float(loss_fn())


# ---- benchmark rows ------------------------------------------------------------------------------
def benchmark_row(category: str, status: str = "ok", config: str = "configs/knn.yaml", **values) -> dict:
    """A results.csv row of a knn run on `category`, with `values` for its metrics and costs."""
    return {
        **dict.fromkeys(COLUMNS),
        "detector": "knn",
        "config": config,
        "category": category,
        "status": status,
        "command": f"python -m mvtec_ad train --config {config} --data.category {category}",
    } | values


def three_benchmark_rows() -> list[dict]:
    """bottle with pixel metrics, cable image-only (pixel null), capsule failed."""
    return [
        benchmark_row(
            "bottle", image_auroc=0.8, pixel_auroc=0.9, pixel_aupro=0.6, seconds=10.0, peak_rss_mb=500.0
        ),
        benchmark_row("cable", image_auroc=0.6, seconds=20.0, peak_rss_mb=700.0),  # image-only: pixel null
        benchmark_row("capsule", "failed: CUDA out of memory (exit 1)", seconds=99.0, peak_rss_mb=9000.0),
    ]
