"""`python -m mvtec_ad export`: a trained detector as an ONNX or OpenVINO model for deployment.

    python -m mvtec_ad export --config configs/patchcore.yaml --ckpt_path .../checkpoints/model.ckpt \
        --format onnx --out patchcore.onnx
    python -m mvtec_ad export ... --format openvino [--fp16 | --int8 [--subset_size 300]] --out patchcore.xml

OpenVINO IR is converted from the same ONNX graph (mvtec_ad.deploy.openvino); mvtec_ad.deploy.Inferencer
runs either file with its geometry and thresholds.

The ONNX model takes float32 RGB images in [0, 1], [B, 3, H, W] at the model's own canvas
(its pre-processor's; ImageNet normalisation, memory banks, tiling and stitching, everything
else is inside) and returns `score` [B] and `map` [B, 1, H, W], the same numbers as the PyTorch
model. A keep_aspect model takes a second input, `content` int64 [B, 2]: the (h, w) each image
covers from the canvas's top-left corner (the rest is padding, left out of scores and maps).
Its metadata holds the operating threshold (label = score >= threshold), the geometry and the
detector's name.
"""

from __future__ import annotations

import argparse
import importlib
import io
import math
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import yaml
from torch import nn

from mvtec_ad.checkpoints import load_detector, read_checkpoint
from mvtec_ad.deploy.metadata import CONTENT_NAME, INPUT_NAME, export_metadata, takes_content, training_data
from mvtec_ad.deploy.openvino import DEFAULT_SUBSET_SIZE
from mvtec_ad.errors import ConfigError, DependencyError
from mvtec_ad.models.components.anomaly_module import AnomalyModule
from mvtec_ad.report.files import write_atomically

FORMATS = ("onnx", "openvino")
OPSET = 17
OUTPUT_NAMES = ("score", "map")


class ScoresAndMaps(nn.Module):
    """A detector as ONNX sees it: images [B, 3, H, W] in [0, 1] -> (score [B], map [B, 1, H, W])."""

    def __init__(self, detector: nn.Module) -> None:
        super().__init__()
        self.detector = detector

    def forward(
        self, images: torch.Tensor, content: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.detector(images, content)
        return out.score, out.map


def export_onnx(module: AnomalyModule, path: str | Path, training: dict[str, str] | None = None) -> Path:
    """Write `module`'s detector as ONNX (dynamic batch, the model's geometry) with its metadata
    (export_metadata: thresholds, geometry, detector, version, training data).

    The detector is put in eval mode. Uses torch's TorchScript-based exporter: it handles every
    torch detector here in a second or two; the dynamo exporter (dynamo=True) gives the same
    numbers but takes ~10 s per model and needs onnxscript. Classical detectors (scikit-learn
    pipelines) cannot be exported and are refused.
    """
    model = onnx_graph(module)
    import onnx  # onnx_graph has checked that it is installed

    onnx.helper.set_model_props(model, export_metadata(module, training))
    return write_atomically(path, lambda f: f.write(model.SerializeToString()))


def onnx_graph(module: AnomalyModule):
    """`module`'s detector as an onnx.ModelProto without metadata (export_onnx; OpenVINO converts it)."""
    from mvtec_ad.models.classical import ClassicalModel

    if isinstance(module.model, ClassicalModel):
        raise ConfigError(
            f"The {module.detector_name} detector is a scikit-learn pipeline, not a torch module: it "
            f"cannot be exported to ONNX. Export a torch detector (dfr, feature_ae, pixel_ae, favae, knn, "
            f"patchcore), or deploy this one with Python and its checkpoint."
        )
    try:
        import onnx
    except ImportError as error:
        raise DependencyError(
            "export needs the `onnx` package: pip install onnx (or pip install -e '.[export]')."
        ) from error
    wrapper = ScoresAndMaps(module.model).eval()
    example = (torch.rand(2, 3, *module.geometry.size, device=module.device),)
    names = [INPUT_NAME]
    if takes_content(module):
        example += (
            torch.tensor([[module.geometry.height, module.geometry.width]] * 2, device=module.device),
        )
        names.append(CONTENT_NAME)
    batch = {0: "batch"}
    with warnings.catch_warnings(), torch.no_grad():
        # shape checks in the models trace to constants: right for the fixed image size exported
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", message=".*legacy TorchScript-based ONNX export.*")
        warnings.filterwarnings("ignore", message="Constant folding - Only steps=1")  # strided slices stay
        graph = io.BytesIO()
        torch.onnx.export(
            wrapper,
            example,
            graph,
            dynamo=False,
            opset_version=OPSET,
            input_names=names,
            output_names=list(OUTPUT_NAMES),
            dynamic_axes={**{name: batch for name in names}, **{name: batch for name in OUTPUT_NAMES}},
        )
    return onnx.load_from_string(graph.getvalue())


def read_config(config: Path) -> dict:
    """The YAML config as a dict; a missing or unreadable file is the user's error."""
    if not config.is_file():
        raise ConfigError(f"Config '{config}' does not exist.")
    try:
        loaded = yaml.safe_load(config.read_text())
    except yaml.YAMLError as error:
        raise ConfigError(f"Config '{config}' is not valid YAML: {error}") from error
    return loaded if isinstance(loaded, dict) else {}


def detector_class(config: dict, config_path: Path) -> type[AnomalyModule]:
    """The AnomalyModule subclass the config's model.class_path names."""
    class_path = (config.get("model") or {}).get("class_path")
    if not isinstance(class_path, str) or "." not in class_path:
        raise ConfigError(f"Config '{config_path}' has no model.class_path (e.g. mvtec_ad.models.knn.KNN).")
    module_name, name = class_path.rsplit(".", 1)
    try:
        cls = getattr(importlib.import_module(module_name), name)
    except (ImportError, AttributeError) as error:
        raise ConfigError(
            f"model.class_path '{class_path}' in '{config_path}' cannot be imported."
        ) from error
    if not (isinstance(cls, type) and issubclass(cls, AnomalyModule)):
        raise ConfigError(
            f"model.class_path '{class_path}' in '{config_path}' is not a detector (AnomalyModule)."
        )
    return cls


def calibration_feeds(
    module: AnomalyModule, checkpoint: dict, data: str | None, subset_size: int
) -> list[dict[str, np.ndarray]]:
    """INT8 calibration inputs: up to `subset_size` normal images, evenly spread, placed as the fit placed them.

    By default the checkpoint's own training images (its DataModule's hyperparameters and seed give
    the same train split, without augmentation); `data` (a file, folder or glob of normal images)
    replaces them.
    """
    from mvtec_ad.data.dataset import AnomalyDataset
    from mvtec_ad.data.samples import Sample, find_images

    if data is not None:
        samples = [Sample(p, 0, "good") for p in find_images(data)]
    else:
        hparams = {k: v for k, v in (checkpoint.get("datamodule_hyper_parameters") or {}).items()}
        if hparams.pop("_class_path", "mvtec_ad.data.AnomalyDataModule") != "mvtec_ad.data.AnomalyDataModule":
            hparams = {}
        hparams = {k: v for k, v in hparams.items() if not k.startswith("_")}
        root = hparams.get("root")
        if not root or not Path(root).exists():
            raise ConfigError(
                f"INT8 calibration uses the training images, but the checkpoint's data root "
                f"({root or 'not recorded'}) is not here: pass --calibration_data <folder or glob of normal images>."
            )
        from mvtec_ad.data.datamodule import AnomalyDataModule

        datamodule = AnomalyDataModule(**hparams)
        datamodule.bind_input(module.geometry)
        datamodule.setup("fit")
        samples = list(datamodule.splits.train)
    picked = sorted({round(i * (len(samples) - 1) / max(subset_size - 1, 1)) for i in range(subset_size)})
    dataset = AnomalyDataset([samples[i] for i in picked if i < len(samples)], module.geometry)
    feeds = []
    for item in (dataset[i] for i in range(len(dataset))):
        feed = {INPUT_NAME: item["image"][None].numpy()}
        if takes_content(module):
            feed[CONTENT_NAME] = np.array([item["content"]], dtype=np.int64)
        feeds.append(feed)
    return feeds


def default_out(ckpt_path: Path, fmt: str, precision: str) -> Path:
    """The checkpoint's path with .onnx, .xml, .fp16.xml or .int8.xml."""
    if fmt == "onnx":
        return ckpt_path.with_suffix(".onnx")
    return ckpt_path.with_suffix(".xml" if precision == "fp32" else f".{precision}.xml")


def main(argv: Sequence[str]) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m mvtec_ad export",
        description="Export a checkpoint's detector to ONNX or OpenVINO IR (scores and maps, preprocessing, "
        "thresholds and geometry included).",
    )
    parser.add_argument("--config", required=True, type=Path, help="the detector's YAML config")
    parser.add_argument("--ckpt_path", required=True, type=Path, help="checkpoint to export")
    parser.add_argument("--format", default="onnx", choices=FORMATS)
    parser.add_argument(
        "--out",
        type=Path,
        help="output file (default: the checkpoint's path with .onnx, or .xml / .fp16.xml / .int8.xml)",
    )
    precision = parser.add_mutually_exclusive_group()
    precision.add_argument("--fp16", action="store_true", help="openvino: weights stored in FP16")
    precision.add_argument(
        "--int8", action="store_true", help="openvino: the backbone quantised to INT8 with NNCF"
    )
    parser.add_argument(
        "--subset_size",
        type=int,
        default=DEFAULT_SUBSET_SIZE,
        help=f"--int8: training normals to calibrate on (default {DEFAULT_SUBSET_SIZE}, evenly spread)",
    )
    parser.add_argument(
        "--calibration_data",
        help="--int8: a folder, file or glob of normal images to calibrate on (default: the checkpoint's "
        "training images, from its data root)",
    )
    args = parser.parse_args(argv)
    fp = "int8" if args.int8 else "fp16" if args.fp16 else "fp32"
    if args.format == "onnx" and fp != "fp32":
        raise ConfigError(f"--{fp} is for --format openvino; ONNX models are exported in FP32.")
    if args.subset_size < 1:
        raise ConfigError(f"--subset_size must be a positive number of images, got {args.subset_size}.")
    config = read_config(args.config)
    cls = detector_class(config, args.config)
    checkpoint = read_checkpoint(args.ckpt_path)
    module = load_detector(cls, checkpoint, args.ckpt_path)
    out = args.out or default_out(args.ckpt_path, args.format, fp)
    training = training_data(checkpoint)
    if args.format == "onnx":
        out = export_onnx(module, out, training)
    else:
        from mvtec_ad.deploy.openvino import export_openvino, import_nncf, import_openvino

        import_openvino()
        if fp == "int8":
            import_nncf()
        feeds = (
            calibration_feeds(module, checkpoint, args.calibration_data, args.subset_size)
            if fp == "int8"
            else None
        )
        graph = onnx_graph(module).SerializeToString()
        out = export_openvino(graph, export_metadata(module, training), out, fp, feeds, args.subset_size)
    threshold = float(module.threshold)
    shown = f"{threshold:.6g}" if math.isfinite(threshold) else "none"
    height, width = module.geometry.size
    kind = "ONNX" if args.format == "onnx" else f"OpenVINO {fp.upper()}"
    print(
        f"Exported {module.detector_name} to {out} ({kind}, input [B, 3, {height}, {width}], threshold {shown})."
    )
