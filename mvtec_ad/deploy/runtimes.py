"""The runtimes an Inferencer drives: onnxruntime (.onnx), OpenVINO (.xml) and torch (.ckpt).

Each is told images already placed on the model's canvas (float32 [B, 3, H, W] in [0, 1]) and,
for keep_aspect models, the content (h, w) each covers, and gives back (score [B], map
[B, 1, H, W]) as numpy float32, with the file's metadata (mvtec_ad.deploy.metadata). Each runtime
is imported when its file is opened: a process that only runs ONNX never loads OpenVINO, torch
or Lightning.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from mvtec_ad.deploy.metadata import RT_INFO_SECTION, training_data
from mvtec_ad.errors import CheckpointError, DependencyError

SUFFIXES = (".onnx", ".xml", ".ckpt")
# OpenVINO's CPU plugin computes in bfloat16 by default on CPUs with AVX-512 BF16 or AMX: scores then
# move by ~0.4% (patchcore, measured); f32 keeps the checkpoint's numbers, and INT8 layers stay INT8
DEFAULT_PRECISION = "f32"


def missing(package: str, extra: str, path: Path) -> DependencyError:
    return DependencyError(
        f"Running '{path}' needs the `{package}` package: pip install {package} (or pip install -e '.[{extra}]')."
    )


class OnnxRuntime:
    """An .onnx file in an onnxruntime InferenceSession on the CPU."""

    def __init__(self, path: Path, threads: int | None = None) -> None:
        try:
            import onnxruntime as ort
        except ImportError:
            raise missing("onnxruntime", "deploy", path) from None
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        try:
            self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except Exception as error:  # onnxruntime raises its own exception types for foreign or broken files
            first = str(error).strip().splitlines()[0][:200] if str(error).strip() else type(error).__name__
            raise CheckpointError(f"'{path}' cannot be read as an ONNX model ({first}).") from None
        self.metadata = dict(self.session.get_modelmeta().custom_metadata_map)
        self.inputs = [i.name for i in self.session.get_inputs()]

    def __call__(self, images: np.ndarray, content: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        feeds = {self.inputs[0]: images}
        if len(self.inputs) > 1:
            feeds[self.inputs[1]] = content
        score, amap = self.session.run(["score", "map"], feeds)
        return score, amap


class OpenVinoRuntime:
    """An OpenVINO IR (.xml beside its .bin) compiled for the CPU.

    `precision` is the CPU plugin's INFERENCE_PRECISION_HINT for the layers that are not INT8:
    'f32' (default: the checkpoint's numbers) or 'auto' (the plugin's own choice, bfloat16 on
    CPUs with AVX-512 BF16 or AMX: faster, scores within ~1%).
    """

    def __init__(self, path: Path, threads: int | None = None, precision: str = DEFAULT_PRECISION) -> None:
        try:
            import openvino as ov
        except ImportError:
            raise missing("openvino", "deploy", path) from None
        core = ov.Core()
        try:
            model = core.read_model(str(path))
        except Exception as error:  # OpenVINO raises RuntimeError for foreign or broken files
            first = str(error).strip().splitlines()[0][:200] if str(error).strip() else type(error).__name__
            raise CheckpointError(f"'{path}' cannot be read as an OpenVINO model ({first}).") from None
        self.metadata = read_rt_info(model)
        config = {"PERFORMANCE_HINT": "LATENCY"}
        if precision != "auto":
            config["INFERENCE_PRECISION_HINT"] = precision
        if threads:
            config["INFERENCE_NUM_THREADS"] = threads
        self.inputs = [i.get_any_name() for i in model.inputs]
        self.compiled = core.compile_model(model, "CPU", config)
        self.request = self.compiled.create_infer_request()

    def __call__(self, images: np.ndarray, content: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        feeds = {self.inputs[0]: images}
        if len(self.inputs) > 1:
            feeds[self.inputs[1]] = content
        results = self.request.infer(feeds)
        outputs = {output.get_any_name(): value for output, value in results.items()}
        return np.array(outputs["score"], copy=True), np.array(outputs["map"], copy=True)


def read_rt_info(model) -> dict[str, str]:
    """The mvtec_ad section of an OpenVINO model's rt_info as str -> str ({} where there is none)."""
    if not model.has_rt_info([RT_INFO_SECTION]):
        return {}
    section = model.get_rt_info()[RT_INFO_SECTION]
    if not isinstance(section, dict):
        return {}
    return {key: model.get_rt_info([RT_INFO_SECTION, key]).astype(str) for key in section}


class CheckpointRuntime:
    """A .ckpt loaded as predict loads it (weights only, never code), run by torch on the CPU.

    Imports torch and Lightning (the detector is a LightningModule): the exported files are the
    light way. The detector class is the one the checkpoint names (mvtec_ad.models.* only).
    """

    def __init__(self, path: Path, threads: int | None = None) -> None:
        import importlib

        import torch

        from mvtec_ad.checkpoints import read_checkpoint

        if threads:
            torch.set_num_threads(threads)
        checkpoint = read_checkpoint(path)
        class_path = (checkpoint.get("hyper_parameters") or {}).get("_class_path")
        if not isinstance(class_path, str) or not class_path.startswith("mvtec_ad.models."):
            raise CheckpointError(
                f"Checkpoint '{path}' does not name its detector (written outside `python -m mvtec_ad fit`?): "
                f"export it with `python -m mvtec_ad export --config C --ckpt_path {path}` and load that file."
            )
        module_name, name = class_path.rsplit(".", 1)
        cls = getattr(importlib.import_module(module_name), name)
        from mvtec_ad.checkpoints import load_detector
        from mvtec_ad.deploy.metadata import export_metadata

        self.module = load_detector(cls, checkpoint, path)
        self.metadata = export_metadata(self.module, training_data(checkpoint))
        self.torch = torch

    def __call__(self, images: np.ndarray, content: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        torch = self.torch
        with torch.inference_mode():
            out = self.module(
                torch.from_numpy(images), None if content is None else torch.from_numpy(content)
            )
        return out.score.float().numpy(), out.map.float().numpy()


def open_runtime(path: Path, threads: int | None = None, precision: str = DEFAULT_PRECISION):
    """The runtime for `path` by its suffix; a missing file or another suffix is a one-line error."""
    if not path.is_file():
        raise CheckpointError(f"Model file '{path}' does not exist.")
    suffix = path.suffix.lower()
    if suffix == ".onnx":
        return OnnxRuntime(path, threads)
    if suffix == ".xml":
        if not path.with_suffix(".bin").is_file():
            raise CheckpointError(
                f"'{path}' has no weights file beside it ({path.with_suffix('.bin').name}): copy both files."
            )
        return OpenVinoRuntime(path, threads, precision)
    if suffix == ".ckpt":
        return CheckpointRuntime(path, threads)
    raise CheckpointError(
        f"'{path}' is not a model file the Inferencer reads: pass an .onnx, an OpenVINO .xml or a .ckpt."
    )
