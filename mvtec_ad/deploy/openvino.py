"""OpenVINO IR of a detector: FP32, FP16 (weights stored in half precision) or INT8 (NNCF post-training
quantisation of the backbone), converted from the same ONNX graph `export --format onnx` writes.

Converting the ONNX graph keeps everything it holds: the `content` input of keep_aspect models,
tiling and stitching, the memory-bank search. The metadata (mvtec_ad.deploy.metadata) goes into
the model's rt_info under `mvtec_ad`.

INT8: NNCF's quantize, calibrated on training normals placed as the fit placed them. Only the
pretrained feature extractor (`/detector/extractor/...` in the graph) is quantised, but its first
and last convolution (the stem, which sees the image, and the deepest feature layer: kept_fp32);
what follows it (memory bank and nearest-neighbour search, DFR's autoencoder, pooling, score and
map head) stays FP32, since INT8 distances would move scores. A detector without a pretrained
extractor (pixel_ae) has its modules (`/detector/<module>/...`: encoder and decoder) quantised
instead, again but the first and last convolution; the nodes outside them stay FP32: those at the
graph's top level (the residual: image - reconstruction, squared, averaged), the head (blur, resize,
the output `map`) and nodes the conversion renamed (pixel_ae's final transposed convolution
becomes `ConvolutionBackpropData_<n>`, so the last convolution kept by the rule is the one before).

The .xml and .bin are written to a temporary folder beside the target and each moved into place
atomically (write_atomically), the .bin first: a stopped export never leaves a half-written file.
"""

from __future__ import annotations

import logging
import re
import shutil
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from mvtec_ad.deploy.metadata import RT_INFO_SECTION
from mvtec_ad.errors import ConfigError, DependencyError
from mvtec_ad.report.files import write_atomically

PRECISIONS = ("fp32", "fp16", "int8")
EXTRACTOR_SCOPE = (
    "/detector/extractor/"  # the pretrained backbone's nodes (torch module path `model.extractor`)
)
MODULE_SCOPE = "/detector/"
HEAD_SCOPE = "/detector/head/"
DEFAULT_SUBSET_SIZE = 300  # NNCF's default calibration size
CONVOLUTIONS = ("Convolution", "GroupConvolution", "ConvolutionBackpropData", "MatMul")


def import_openvino():
    try:
        import openvino as ov
    except ImportError:
        raise DependencyError(
            "export --format openvino needs the `openvino` package: pip install openvino "
            "(or pip install -e '.[deploy]')."
        ) from None
    return ov


def import_nncf():
    try:
        import nncf
    except ImportError:
        raise DependencyError(
            "export --int8 needs the `nncf` package: pip install nncf (or pip install -e '.[deploy]')."
        ) from None
    return nncf


def quantised_scope(model) -> tuple[list[str], str]:
    """Regexes of the node names NNCF must leave in FP32, and what is quantised, in words."""
    names = [op.get_friendly_name() for op in model.get_ordered_ops()]
    if any(name.startswith(EXTRACTOR_SCOPE) for name in names):
        return [f"^(?!{EXTRACTOR_SCOPE}).*"], "the pretrained feature extractor (backbone)"
    # the network's own modules (/detector/<module>/...) but the head: not the nodes at /detector/'s
    # top level (pixel_ae's residual: image - reconstruction, its square and mean) nor the ones ONNX
    # or OpenVINO renamed (the head's last convolution is the output `map`), which must stay FP32
    return [f"^(?!{MODULE_SCOPE}(?!{HEAD_SCOPE[len(MODULE_SCOPE) :]})[^/]+/).*"], (
        "the network's modules but the score and map head (residual, blur)"
    )


def kept_fp32(model, patterns: list[str]) -> list[str]:
    """The names of the first and the last convolution NNCF would quantise: the one that sees the
    image and the one that writes the features (or the reconstruction); both stay FP32.

    Issue 32, magnetic_tile, image AUROC against FP32 on 200 test images: the first convolution in INT8
    cost dfr 0.014, patchcore squash 0.005 and pixel_ae 0.005 (its last one another 0.003); with both
    in FP32 all four configs are within 0.004 (dfr and pixel_ae within 0.002 on all 582), and INT8
    stays faster than FP32 at batch 1 (dfr 0.85x, pixel_ae 0.68x, patchcore 0.96-0.99x)."""
    ignored = [re.compile(pattern) for pattern in patterns]
    convolutions = [
        op.get_friendly_name()
        for op in model.get_ordered_ops()
        if op.get_type_name() in CONVOLUTIONS and not any(p.match(op.get_friendly_name()) for p in ignored)
    ]
    return list(dict.fromkeys(convolutions[:1] + convolutions[-1:]))


def quantise(
    model,
    calibration: Iterable[dict[str, np.ndarray]],
    subset_size: int,
    patterns: list[str],
    names: Sequence[str] = (),
):
    """NNCF post-training INT8 of `model` but the nodes `patterns` match and those named `names`,
    calibrated on `calibration` (one feed dict per image)."""
    nncf = import_nncf()
    nncf.set_log_level(logging.WARNING)  # its INFO lines list every node it leaves out
    feeds = list(calibration)
    if not feeds:
        raise ConfigError("INT8 calibration needs at least one normal image; none was found.")
    return nncf.quantize(
        model,
        nncf.Dataset(feeds),
        subset_size=min(subset_size, len(feeds)),
        ignored_scope=nncf.IgnoredScope(patterns=patterns, names=list(names), validate=False),
    )


def export_openvino(
    onnx_bytes: bytes,
    metadata: dict[str, str],
    path: str | Path,
    precision: str = "fp32",
    calibration: Sequence[dict[str, np.ndarray]] | None = None,
    subset_size: int = DEFAULT_SUBSET_SIZE,
) -> Path:
    """Write the ONNX graph as OpenVINO IR at `path` (.xml, its .bin beside it) with `metadata` in rt_info.

    `precision`: fp32, fp16 (weights compressed to half, computed in FP32 on CPUs) or int8 (needs
    `calibration`: one {input name: array [1, ...]} dict per training normal, at most `subset_size` used).
    """
    if precision not in PRECISIONS:
        raise ConfigError(f"OpenVINO precision must be one of {', '.join(PRECISIONS)}, got {precision!r}.")
    ov = import_openvino()
    path = Path(path)
    if path.suffix != ".xml":
        raise ConfigError(f"--out '{path}': an OpenVINO model is an .xml file (with its .bin beside it).")
    model = ov.Core().read_model(onnx_bytes)
    metadata = dict(metadata, precision=precision)
    if precision == "int8":
        if calibration is None:
            raise ConfigError("INT8 export needs calibration images (training normals).")
        patterns, what = quantised_scope(model)
        model = quantise(model, calibration, subset_size, patterns, kept_fp32(model, patterns))
        metadata["quantised"] = f"{what} in INT8 but its first and last convolution; the rest in FP32"
        metadata["calibration_images"] = str(min(subset_size, len(calibration)))
    for key, value in metadata.items():
        model.set_rt_info(str(value), [RT_INFO_SECTION, key])
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".openvino-", dir=path.parent))
    try:
        ov.save_model(model, str(staging / "model.xml"), compress_to_fp16=precision == "fp16")
        for suffix in (".bin", ".xml"):  # the weights first: an .xml never points at a missing .bin
            staged = staging / f"model{suffix}"
            with staged.open("rb") as source:
                write_atomically(path.with_suffix(suffix), lambda f, s=source: shutil.copyfileobj(s, f))
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return path
