"""`python -m mvtec_ad predict --model_path model.xml|model.onnx|model.ckpt --data.path ...`: predict with an
exported model, through mvtec_ad.deploy.Inferencer, writing what predict from a checkpoint writes.

    python -m mvtec_ad predict --model_path patchcore.xml --data.path new_parts/ [--trainer.default_root_dir runs/]

predictions.csv / .json, predictions/<name>_{heatmap,overlay,mask}.png, report/index.html and
plots/predict_histogram.png come from the same writer as predict's (report.predictions.write_predictions),
fed the same things: each image placed on the model's canvas, its canvas map, its content. The
folder is lightning_logs/version_N under --trainer.default_root_dir (the run folder a checkpoint's
predict takes), or that folder itself with --trainer.logger false. --config is accepted and not
needed: the model file holds its geometry and thresholds.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from mvtec_ad.errors import ConfigError
from mvtec_ad.report.files import claim_numbered_folder

FLAG = "--model_path"


def wants_model_path(argv: Sequence[str]) -> bool:
    """Whether a `predict` command line names an exported model (rather than a checkpoint by --ckpt_path)."""
    return any(arg == FLAG or arg.startswith(f"{FLAG}=") for arg in argv)


def true_or_false(value: str) -> bool:
    if value.lower() in ("true", "1", "yes"):
        return True
    if value.lower() in ("false", "0", "no", "null", "none"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {value!r}")


def run_folder(root: Path, logger: bool) -> Path:
    """Where the run writes: `root` itself without a logger, else a version_N folder claimed as RunLogger claims it."""
    if not logger:
        root.mkdir(parents=True, exist_ok=True)
        return root
    base = root / "lightning_logs"
    return base / f"version_{claim_numbered_folder(base, 'version_')}"


def main(argv: Sequence[str]) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m mvtec_ad predict --model_path",
        description="Scores, labels, heatmaps and masks of new images from an exported model (.onnx, OpenVINO "
        ".xml) or a checkpoint, with the model's own geometry and thresholds (mvtec_ad.deploy.Inferencer).",
    )
    parser.add_argument(FLAG, required=True, type=Path, help="model.onnx, model.xml (with its .bin) or .ckpt")
    parser.add_argument(
        "--data.path", dest="path", required=True, help="an image file, a folder or a glob ('parts/**/*.png')"
    )
    parser.add_argument("--trainer.default_root_dir", dest="root", type=Path, default=Path("."))
    parser.add_argument("--trainer.logger", dest="logger", type=true_or_false, default=True)
    parser.add_argument("--trainer.enable_progress_bar", dest="progress", type=true_or_false, default=None)
    parser.add_argument("--data.eval_batch_size", dest="batch_size", type=int, default=32)
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (default: the runtime's)")
    parser.add_argument(
        "--precision", default="f32", help="OpenVINO: f32 (default, the checkpoint's numbers) or auto"
    )
    parser.add_argument("--config", help="accepted for symmetry with --ckpt_path; not needed")
    parser.add_argument("--ckpt_path", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.ckpt_path:
        raise ConfigError(
            "Pass either --ckpt_path (a checkpoint) or --model_path (an exported model), not both."
        )
    if args.batch_size < 1:
        raise ConfigError(
            f"--data.eval_batch_size must be a positive number of images, got {args.batch_size}."
        )

    import torch

    from mvtec_ad.data.checks import check_samples
    from mvtec_ad.data.samples import Sample, find_images
    from mvtec_ad.deploy import Inferencer
    from mvtec_ad.progress import track
    from mvtec_ad.report.gallery import Gallery
    from mvtec_ad.report.predictions import write_predictions

    paths = find_images(args.path)
    check_samples([Sample(p, -1, "unknown") for p in paths])
    inferencer = Inferencer(args.model_path, threads=args.threads, precision=args.precision)
    folder = run_folder(args.root, args.logger)
    gallery = Gallery(folder / "report")
    try:
        starts = range(0, len(paths), args.batch_size)
        for start in track(starts, "Predict", enabled=args.progress):
            placed = [inferencer.place(p) for p in paths[start : start + args.batch_size]]
            images = np.stack([p.image for p in placed])
            content = np.array([p.content for p in placed], dtype=np.int64)
            scores, maps = inferencer.run(images, content)
            gallery.add(
                torch.from_numpy(scores),
                [str(p) for p in paths[start : start + args.batch_size]],
                torch.from_numpy(images),
                torch.from_numpy(maps),
                torch.arange(start, start + len(placed)),
                torch.from_numpy(content),
            )
        record = {"detector": inferencer.detector, **geometry_record(inferencer.metadata)}
        record["checkpoint"] = f"{args.model_path} (exported model)"
        threshold = None if np.isnan(inferencer.threshold) else inferencer.threshold
        pixel_threshold = None if np.isnan(inferencer.pixel_threshold) else inferencer.pixel_threshold
        write_predictions(folder, gallery, threshold, pixel_threshold, record)
    finally:
        gallery.close()


def geometry_record(metadata: dict[str, str]) -> dict:
    """The geometry keys of the metadata as the run page shows them (GEOMETRY_KEYS of report.run_report)."""
    from mvtec_ad.report.run_report import GEOMETRY_KEYS

    return {key: metadata[key] for key in GEOMETRY_KEYS if metadata.get(key)}
