"""`python -m mvtec_ad export`: a trained detector as an ONNX model for deployment without Python.

    python -m mvtec_ad export --config configs/patchcore.yaml --ckpt_path .../checkpoints/model.ckpt \
        --format onnx --out patchcore.onnx

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

import torch
import yaml
from torch import nn

from mvtec_ad.checkpoints import check_detector_class, read_checkpoint
from mvtec_ad.errors import ConfigError, DependencyError
from mvtec_ad.models.components.anomaly_module import AnomalyModule
from mvtec_ad.report.files import write_atomically

FORMATS = ("onnx",)
OPSET = 17
INPUT_NAME = "image"
CONTENT_NAME = "content"
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


def takes_content(module: AnomalyModule) -> bool:
    """keep_aspect models are told where each image ends on the canvas."""
    return module.geometry.resize == "keep_aspect"


def export_metadata(module: AnomalyModule) -> dict[str, str]:
    """What a deployment needs besides the graph: how to feed it and how to label its scores."""
    threshold, pixel_threshold = float(module.threshold), float(module.pixel_threshold)
    height, width = module.geometry.size
    geometry = module.model.describe_geometry()
    inputs = f"{INPUT_NAME}: float32 RGB [B, 3, {height}, {width}] in [0, 1]"
    if takes_content(module):
        inputs += (
            f"; {CONTENT_NAME}: int64 [B, 2], (h, w) of each image scaled (aspect kept) to fit the canvas "
            f"and placed at its top-left, the rest padded ({geometry['pad']})"
        )
    return {
        "detector": module.detector_name,
        **{key: str(value) for key, value in geometry.items()},
        "threshold": repr(threshold) if math.isfinite(threshold) else "",
        "pixel_threshold": repr(pixel_threshold) if math.isfinite(pixel_threshold) else "",
        "input": inputs,
        "outputs": (
            "score: float32 [B] (label = score >= threshold); map: float32 [B, 1, H, W] "
            "(predicted mask = map >= pixel_threshold)"
        ),
    }


def export_onnx(module: AnomalyModule, path: str | Path) -> Path:
    """Write `module`'s detector as ONNX (dynamic batch, the model's geometry) with its threshold in the metadata.

    The detector is put in eval mode. Uses torch's TorchScript-based exporter: it handles every
    torch detector here in a second or two; the dynamo exporter (dynamo=True) gives the same
    numbers but takes ~10 s per model and needs onnxscript. Classical detectors (scikit-learn
    pipelines) cannot be exported and are refused.
    """
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
    model = onnx.load_from_string(graph.getvalue())
    onnx.helper.set_model_props(model, export_metadata(module))
    return write_atomically(path, lambda f: f.write(model.SerializeToString()))


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


def load_detector(cls: type[AnomalyModule], checkpoint: dict, ckpt_path: Path) -> AnomalyModule:
    """The detector with the checkpoint's hyperparameters and weights, on the CPU, in eval mode.

    The backbone is built without pretrained weights (`weights: none`): the checkpoint holds all
    of them, so exporting needs neither a network nor the original weight file.
    """
    hparams = checkpoint.get("hyper_parameters", {})
    check_detector_class(checkpoint, f"{cls.__module__}.{cls.__qualname__}", ckpt_path)
    overrides = {"weights": "none"} if "weights" in hparams else {}
    return cls.load_from_checkpoint(ckpt_path, map_location="cpu", **overrides).eval()


def main(argv: Sequence[str]) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m mvtec_ad export",
        description="Export a checkpoint's detector to ONNX (scores and maps, preprocessing included).",
    )
    parser.add_argument("--config", required=True, type=Path, help="the detector's YAML config")
    parser.add_argument("--ckpt_path", required=True, type=Path, help="checkpoint to export")
    parser.add_argument("--format", default="onnx", choices=FORMATS)
    parser.add_argument("--out", type=Path, help="output file (default: the checkpoint's path with .onnx)")
    args = parser.parse_args(argv)
    config = read_config(args.config)
    cls = detector_class(config, args.config)
    checkpoint = read_checkpoint(args.ckpt_path)
    module = load_detector(cls, checkpoint, args.ckpt_path)
    out = export_onnx(module, args.out or args.ckpt_path.with_suffix(".onnx"))
    threshold = float(module.threshold)
    shown = f"{threshold:.6g}" if math.isfinite(threshold) else "none"
    height, width = module.geometry.size
    print(f"Exported {module.detector_name} to {out} (input [B, 3, {height}, {width}], threshold {shown}).")
