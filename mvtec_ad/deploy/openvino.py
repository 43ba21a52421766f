"""OpenVINO IR of a detector: FP32, FP16 (weights stored in half precision) or INT8 (NNCF post-training
quantisation of the backbone), converted from the same ONNX graph `export --format onnx` writes.

Converting the ONNX graph keeps everything it holds: the `content` input of keep_aspect models,
tiling and stitching, the memory-bank search. The metadata (mvtec_ad.deploy.metadata) goes into
the model's rt_info under `mvtec_ad`.

INT8: NNCF's quantize, calibrated on training normals placed as the fit placed them. Only the
pretrained feature extractor (`/detector/extractor/...` in the graph) is quantised; what follows
it (memory bank and nearest-neighbour search, DFR's autoencoder, pooling, score and map head) stays
FP32, since INT8 distances would move scores. A detector without a pretrained extractor
(pixel_ae) has its encoder and decoder quantised instead, its head (the residual map) kept FP32.

The .xml and .bin are written to a temporary folder beside the target and each moved into place
atomically (write_atomically), the .bin first: a stopped export never leaves a half-written file.
"""

from __future__ import annotations

import logging
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
HEAD_SCOPE = "/detector/head/"
DEFAULT_SUBSET_SIZE = 300  # NNCF's default calibration size


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
    return [f"^{HEAD_SCOPE}.*"], "the network's layers before the score and map head"


def quantise(model, calibration: Iterable[dict[str, np.ndarray]], subset_size: int, patterns: list[str]):
    """NNCF post-training INT8 of `model` but the nodes `patterns` match, calibrated on `calibration`
    (one feed dict per image)."""
    nncf = import_nncf()
    nncf.set_log_level(logging.WARNING)  # its INFO lines list every node it leaves out
    feeds = list(calibration)
    if not feeds:
        raise ConfigError("INT8 calibration needs at least one normal image; none was found.")
    return nncf.quantize(
        model,
        nncf.Dataset(feeds),
        subset_size=min(subset_size, len(feeds)),
        ignored_scope=nncf.IgnoredScope(patterns=patterns, validate=False),
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
        model = quantise(model, calibration, subset_size, patterns)
        metadata["quantised"] = f"{what} in INT8; the rest in FP32"
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
