"""Which library runs a frozen backbone on the CPU: torch, or onnxruntime (the default where installed).

A frozen backbone is a fixed function, so it can run outside torch. onnxruntime's CPU kernels
(MLAS, NCHWc convolutions) ran EfficientNet-Lite0 1.45x faster than torch eager at 320 px and
1.1-1.3x at 224 px on 2 cores (WideResNet50: 1.1x; benchmarks/backbone_engine.py), and the
backbone is the largest share of a patchcore fit + test. The body is exported to ONNX in memory
at its first CPU forward (about 1 s), with batch, height and width left free, and run on as many
threads as torch uses. Features agree with torch's to ~5e-6 relative.

torch keeps everything that is not a plain CPU forward: GPUs, tracing and ONNX export (the
exported detector holds the torch graph), inputs that need gradients, dtypes other than float32.

MVTEC_AD_BACKBONE_ENGINE = auto (onnxruntime if importable, else torch) | torch | onnxruntime.
"""

from __future__ import annotations

import importlib.util
import io
import os
import warnings
from collections.abc import Callable

import torch
from torch import nn

from mvtec_ad.errors import ConfigError

ENV = "MVTEC_AD_BACKBONE_ENGINE"
ENGINES = ("auto", "torch", "onnxruntime")


def chosen_engine() -> str:
    """torch or onnxruntime: the MVTEC_AD_BACKBONE_ENGINE setting, auto resolved on this machine."""
    value = os.environ.get(ENV, "auto").strip().lower() or "auto"
    if value not in ENGINES:
        raise ConfigError(f"{ENV} must be one of {', '.join(ENGINES)}, got {value!r}.")
    installed = importlib.util.find_spec("onnxruntime") is not None
    if value == "onnxruntime" and not installed:
        raise ConfigError(
            f"{ENV}=onnxruntime, but onnxruntime is not installed: pip install onnxruntime, "
            f"or set {ENV}=torch."
        )
    if value == "auto":
        return "onnxruntime" if installed else "torch"
    return value


def torch_only(x: torch.Tensor) -> bool:
    """True where only torch can run the body: not a plain float32 CPU forward without gradients."""
    return (
        x.device.type != "cpu"
        or x.dtype != torch.float32
        or (torch.is_grad_enabled() and x.requires_grad)
        or torch.jit.is_tracing()
        or torch.onnx.is_in_onnx_export()
        or torch.compiler.is_compiling()
    )


class _Body(nn.Module):
    """The callable to export, as the module the exporter wants (owning the body's weights)."""

    def __init__(self, body: nn.Module, layers: Callable[[torch.Tensor], list[torch.Tensor]]):
        super().__init__()
        self.body = body
        self.layers = layers

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return tuple(self.layers(x))


class OnnxBody:
    """An onnxruntime session of a backbone body, exported on first use and dropped by `reset`.

    Held outside the module's parameters: a deep copy or a pickle gets an empty one, which
    exports again from its own weights.
    """

    def __init__(self) -> None:
        self._session = None

    def __deepcopy__(self, memo: dict) -> OnnxBody:
        return OnnxBody()

    def __getstate__(self) -> dict:
        return {}

    def __setstate__(self, state: dict) -> None:
        self._session = None

    @property
    def ready(self) -> bool:
        return self._session is not None

    def reset(self) -> None:
        """Forget the session (the weights changed: a state dict was loaded, the module was moved)."""
        self._session = None

    def __call__(
        self, body: nn.Module, layers: Callable[[torch.Tensor], list[torch.Tensor]], x: torch.Tensor
    ) -> list[torch.Tensor]:
        """The feature maps of normalised images x [B, 3, H, W] (float32, CPU), as `layers(x)` gives them."""
        if self._session is None:
            self._session = _session(body, layers, x)
        outputs = self._session.run(None, {"images": x.detach().contiguous().numpy()})
        # channels-last, as torch's body gives them: the code after it is tuned for that layout
        return [torch.from_numpy(o).contiguous(memory_format=torch.channels_last) for o in outputs]


def _session(body: nn.Module, layers: Callable[[torch.Tensor], list[torch.Tensor]], x: torch.Tensor):
    import onnxruntime as ort

    graph = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notices
        torch.onnx.export(
            _Body(body, layers),
            (x[:1].detach().contiguous(),),
            graph,
            input_names=["images"],
            dynamic_axes={"images": {0: "batch", 2: "height", 3: "width"}},
            opset_version=17,
            dynamo=False,
        )
    options = ort.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    # threads that spin after a run steal the cores from the torch work between runs (2x slower on 2 cores)
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(graph.getvalue(), options, providers=["CPUExecutionProvider"])


def engine_version(engine: str) -> str:
    """The engine with its version, for metrics.json: 'onnxruntime 1.22.0' or 'torch 2.7.1'."""
    if engine == "onnxruntime":
        import onnxruntime

        return f"onnxruntime {onnxruntime.__version__}"
    return f"torch {torch.__version__}"
