"""What every exported model carries besides its graph, and the check that a file carries it.

ONNX keeps it in the model's metadata_props, OpenVINO IR in the model's rt_info under
`mvtec_ad` (<rt_info><mvtec_ad>... in the .xml); both as string -> string. A checkpoint has
the same facts in its buffers and hyperparameters (mvtec_ad.deploy.runtimes reads them).

Light on purpose (no torch, no Lightning): the Inferencer of an exported file imports it.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import TYPE_CHECKING

from mvtec_ad import __version__
from mvtec_ad.data.geometry import InputGeometry
from mvtec_ad.errors import CheckpointError

if TYPE_CHECKING:  # the module stays light: an exported file's Inferencer never imports torch
    from mvtec_ad.models.components.anomaly_module import AnomalyModule

INPUT_NAME = "image"  # the exported graphs' inputs
CONTENT_NAME = "content"
RT_INFO_SECTION = "mvtec_ad"  # OpenVINO rt_info: model.get_rt_info(["mvtec_ad", key])
# every file must hold these; the rest (tile_size, input, outputs, quantisation, ...) is for people
REQUIRED = ("mvtec_ad_version", "detector", "image_size", "resize", "pad", "threshold", "pixel_threshold")
# the training data, as the checkpoint's DataModule hyperparameters name it ('' where unknown)
DATA_KEYS = ("data_source", "data_root", "data_category", "train_images")


def training_data(checkpoint: dict) -> dict[str, str]:
    """The training data's description from a checkpoint: source, root, category, number of train images.

    Root, category and source are the DataModule's hyperparameters (Lightning stores them);
    `train_images` is what the fit trained on (AnomalyModule stores it in checkpoints written
    since the deploy work; '' for older ones).
    """
    data = checkpoint.get("datamodule_hyper_parameters") or {}
    train_images = checkpoint.get("train_images")
    return {
        "data_source": str(data.get("source") or ""),
        "data_root": str(data.get("root") or ""),
        "data_category": str(data.get("category") or ""),
        "train_images": str(train_images) if isinstance(train_images, int) else "",
    }


def threshold_text(value: float) -> str:
    """A threshold as metadata holds it: repr (exact float round trip), '' for none (NaN)."""
    return repr(float(value)) if math.isfinite(value) else ""


def threshold_value(text: str) -> float:
    """Back from threshold_text: NaN for none."""
    return float(text) if text.strip() else math.nan


def check_metadata(metadata: dict[str, str], path: str | Path) -> dict[str, str]:
    """`metadata` if it holds every REQUIRED key; else a one-line CheckpointError naming the file and the fix."""
    missing = [key for key in REQUIRED if key not in metadata]
    if not missing:
        return metadata
    if "detector" in metadata and "image_size" in metadata:  # written by an mvtec_ad before 0.1's deploy
        why = "it was exported by an older mvtec_ad and lacks " + ", ".join(missing)
    elif not metadata:
        why = "it holds no metadata, so its input geometry and thresholds are unknown"
    else:
        why = "its metadata lacks " + ", ".join(missing) + " (was it written by another tool?)"
    raise CheckpointError(
        f"'{path}' is not an mvtec_ad model: {why}. Export the checkpoint with `python -m mvtec_ad export "
        f"--config C --ckpt_path P --format onnx|openvino` and load that file (or pass the .ckpt itself)."
    )


def geometry_of(metadata: dict[str, str], path: str | Path) -> InputGeometry:
    """The model's input geometry from its metadata (image_size is 'S' or '[H, W]')."""
    try:
        image_size = json.loads(metadata["image_size"])
        return InputGeometry.of(image_size, metadata["resize"], metadata["pad"], option="image_size")
    except (ValueError, TypeError) as error:
        raise CheckpointError(
            f"'{path}' has a broken geometry in its metadata ({error}): export the checkpoint again."
        ) from None


def takes_content(module: AnomalyModule) -> bool:
    """keep_aspect models are told where each image ends on the canvas."""
    return module.geometry.resize == "keep_aspect"


def export_metadata(module: AnomalyModule, training: dict[str, str] | None = None) -> dict[str, str]:
    """What a deployment needs besides the graph: how to feed it and how to label its scores.

    `training` describes the data it was trained on (mvtec_ad.deploy.metadata.training_data of its
    checkpoint); without it those keys are empty. The Inferencer refuses a file without the
    keys of mvtec_ad.deploy.metadata.REQUIRED.
    """
    height, width = module.geometry.size
    geometry = module.model.describe_geometry()
    inputs = f"{INPUT_NAME}: float32 RGB [B, 3, {height}, {width}] in [0, 1]"
    if takes_content(module):
        inputs += (
            f"; {CONTENT_NAME}: int64 [B, 2], (h, w) of each image scaled (aspect kept) to fit the canvas "
            f"and placed at its top-left, the rest padded ({geometry['pad']})"
        )
    return {
        "mvtec_ad_version": __version__,
        "detector": module.detector_name,
        **{key: str(value) for key, value in geometry.items()},  # lists of ints read as JSON
        "threshold": threshold_text(float(module.threshold)),
        "pixel_threshold": threshold_text(float(module.pixel_threshold)),
        **{key: (training or {}).get(key, "") for key in DATA_KEYS},
        "input": inputs,
        "outputs": (
            "score: float32 [B] (label = score >= threshold); map: float32 [B, 1, H, W] "
            "(predicted mask = map >= pixel_threshold)"
        ),
    }
