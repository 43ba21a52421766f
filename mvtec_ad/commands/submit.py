"""`python -m mvtec_ad submit`: a checkpoint's MVTec AD 2 submission files for one category.

    python -m mvtec_ad submit --config configs/patchcore.yaml --ckpt_path .../checkpoints/model.ckpt \
        --data.root datasets/mvtec_ad_2 --data.category can --out submission/ \
        [--splits test_private test_private_mixed]

For every image of each split: the model's anomaly map at the image's own size as a float16 TIFF,
and the mask `map >= pixel_threshold` (the checkpoint's, fitted on validation) as a 0/255 PNG, in
the folders MVTec's upload checker wants (mvtec_ad.report.submission). Run it once per category
into the same --out; the upload needs all eight categories' test_private and test_private_mixed.

Images go through the model as `test` sends them: decoded and placed on the model's canvas by the
same dataset code (its geometry from the checkpoint), the map's image part cut from the canvas and
resized bilinearly to the file's (h, w) by the model's pre-processor (`restore`), as the pixel
metrics compare maps at their masks' size. A checkpoint without a pixel threshold is refused.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from mvtec_ad.checkpoints import load_detector, read_checkpoint
from mvtec_ad.commands.export import detector_class, read_config
from mvtec_ad.data.checks import check_samples
from mvtec_ad.data.dataset import AnomalyDataset, Batch, collate_batch
from mvtec_ad.data.samples import Sample
from mvtec_ad.data.sources.mvtec_ad2 import PRIVATE_SPLITS, TEST_SPLITS, check_split, split_samples
from mvtec_ad.errors import CheckpointError, ConfigError
from mvtec_ad.models.components.anomaly_module import AnomalyModule
from mvtec_ad.progress import track
from mvtec_ad.report.files import remove_stale_temporaries
from mvtec_ad.report.submission import ANOMALY_IMAGES, THRESHOLDED_IMAGES, write_submission_image


def pixel_threshold(module: AnomalyModule, ckpt_path: Path) -> float:
    """The checkpoint's pixel threshold; none (NaN) is a one-line error saying how to get one."""
    if not module.has_pixel_threshold():
        raise CheckpointError(
            f"Checkpoint '{ckpt_path}' has no pixel threshold, so no masks can be written: retrain with a pixel "
            f"threshold method (--model.threshold.pixel_method fpr or quantile)."
        )
    return float(module.pixel_threshold)


def pick_device(name: str) -> torch.device:
    """`auto`: the GPU where there is one, else the CPU; otherwise the device named."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        return torch.device(name)
    except RuntimeError:
        raise ConfigError(f"--device '{name}' is not a torch device; use auto, cpu or cuda.") from None


@torch.inference_mode()
def image_maps(module: AnomalyModule, batch: Batch, device: torch.device) -> list[np.ndarray]:
    """The batch's anomaly maps, each at its file's (h, w): cut from the canvas and resized by the model."""
    out = module(batch.image.to(device), batch.content.to(device) if batch.content is not None else None)
    restore = module.model.pre_processor.restore
    return [
        restore(out.map[i : i + 1], (h, w))[0, 0].float().cpu().numpy()
        for i, (h, w) in enumerate(batch.original.tolist())
    ]


def write_split(
    module: AnomalyModule,
    samples: list[Sample],
    root: Path,
    out: Path,
    threshold: float,
    batch_size: int,
    device: torch.device,
    description: str,
) -> list[Path]:
    """Each sample's TIFF and PNG under `out`; the paths written."""
    dataset = AnomalyDataset(samples, module.geometry)
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=collate_batch)
    written: list[Path] = []
    for batch in track(loader, description):
        for path, anomaly_map in zip(batch.path, image_maps(module, batch, device), strict=True):
            written.extend(write_submission_image(out, root, Path(path), anomaly_map, threshold))
    return written


def stray_files(written: list[Path]) -> list[Path]:
    """Files beside the ones written that this run did not write (the upload checker refuses them)."""
    folders = {path.parent for path in written}
    for folder in folders:
        remove_stale_temporaries(folder)  # what a killed earlier run left
    keep = set(written)
    return sorted(p for folder in folders for p in folder.iterdir() if p not in keep)


def main(argv: Sequence[str]) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m mvtec_ad submit",
        description="Write a checkpoint's MVTec AD 2 submission for one category: float16 TIFF anomaly maps "
        "and 0/255 PNG masks (map >= the checkpoint's pixel threshold) of every image of each split.",
    )
    parser.add_argument("--config", required=True, type=Path, help="the detector's YAML config")
    parser.add_argument("--ckpt_path", required=True, type=Path, help="the trained checkpoint")
    parser.add_argument("--data.root", dest="root", required=True, type=Path, help="the MVTec AD 2 folder")
    parser.add_argument(
        "--data.category", dest="category", required=True, help="can, fabric, ... (one per run)"
    )
    parser.add_argument(
        "--out", required=True, type=Path, help="the submission folder (shared by the categories)"
    )
    parser.add_argument(
        "--splits",
        nargs="+",
        default=list(PRIVATE_SPLITS),
        help=f"splits to write, any of {', '.join(TEST_SPLITS)} (default: {' '.join(PRIVATE_SPLITS)}, the "
        f"server's; test_public's files are for your own evaluation, the upload checker refuses them)",
    )
    parser.add_argument("--batch_size", type=int, default=8, help="images per forward pass (default 8)")
    parser.add_argument("--device", default="auto", help="auto (GPU if any), cpu, cuda, cuda:1, ...")
    args = parser.parse_args(argv)
    if args.batch_size < 1:
        raise ConfigError(f"--batch_size must be a positive number of images, got {args.batch_size}.")
    for split in args.splits:
        check_split(split, "--splits")
    splits = {split: split_samples(args.root, args.category, split) for split in dict.fromkeys(args.splits)}
    check_samples(sample for samples in splits.values() for sample in samples)
    config = read_config(args.config)
    cls = detector_class(config, args.config)
    module = load_detector(cls, read_checkpoint(args.ckpt_path), args.ckpt_path)
    threshold = pixel_threshold(module, args.ckpt_path)
    device = pick_device(args.device)
    module.to(device)
    written: list[Path] = []
    for split, samples in splits.items():
        paths = write_split(
            module,
            samples,
            args.root,
            args.out,
            threshold,
            args.batch_size,
            device,
            f"{args.category} {split}",
        )
        written += paths
        print(f"{args.category} {split}: {len(samples)} maps and masks (pixel threshold {threshold:.6g})")
    stray = stray_files(written)
    if stray:
        shown = ", ".join(os.fspath(p) for p in stray[:3]) + (
            f" and {len(stray) - 3} more" if len(stray) > 3 else ""
        )
        print(
            f"warning: {len(stray)} file(s) beside this run's were not written by it ({shown}); MVTec's upload "
            f"checker refuses any file but the maps and masks of the split's images: remove them."
        )
    for folder in (ANOMALY_IMAGES, THRESHOLDED_IMAGES):
        print(f"Written to {args.out / folder / args.category}/")
