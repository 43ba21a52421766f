"""Frozen, named-layer feature extraction from torchvision and timm models, and feature fusion.

Weights come from mvtec_ad.features.weights (imagenet | none | a local file).
"""

from __future__ import annotations

from collections.abc import Sequence

import timm
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.feature_extraction import create_feature_extractor

from mvtec_ad.errors import BackboneError
from mvtec_ad.features.engine import OnnxBody, chosen_engine, torch_only
from mvtec_ad.features.fold import Folded, fold_batchnorm, fold_state_dict
from mvtec_ad.features.weights import build_classifier, feature_layers

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# On a CPU the backbone runs this many pixels at a time (4 images of 224 x 224): activations of a
# few images stay in cache; a batch of 32 at once ran 2-4x slower on 2 cores (benchmarks/memory_bank.py)
CPU_PIXELS_PER_PASS = 4 * 224 * 224
# onnxruntime, whose threads sleep between runs, runs more at a time: 4 images of 320 x 320 (one
# at a time ran ~25% slower, benchmarks/backbone_engine.py)
ONNX_PIXELS_PER_PASS = 4 * 320 * 320


class FeatureExtractor(nn.Module):
    """A frozen backbone returning the named layers' feature maps for images in [0, 1].

    ImageNet normalisation happens inside (buffers), so callers pass raw [0, 1] images and the
    module stays correct when exported. `train()` never unfreezes it: BatchNorm statistics stay
    those of the pretrained model. Being frozen, its BatchNorms are folded into the convolutions
    before them (mvtec_ad.features.fold: EfficientNet-Lite0 1.2-1.6x faster on a CPU), checked against the unfolded body
    on a probe image. The body runs channels-last (oneDNN's and cuDNN's fast convolution layout)
    and, on a CPU, a few images at a time; the features do not depend on any of this. A plain CPU
    forward runs on onnxruntime where it is installed (mvtec_ad.features.engine: Lite0 1.1-1.5x faster).
    """

    def __init__(
        self,
        backbone: str = "resnet50",
        layers: Sequence[str] = ("layer2", "layer3"),
        weights: str = "imagenet",
    ):
        super().__init__()
        self.backbone_name = backbone
        self.layers = list(layers)
        model, family = build_classifier(backbone, weights)
        available = feature_layers(model, family)
        unknown = [layer for layer in self.layers if layer not in available]
        if unknown:
            raise BackboneError(
                f"Backbone '{backbone}' has no layer(s) {unknown}. Layers to choose from: {available}."
            )
        if family == "timm":
            indices = [available.index(layer) for layer in self.layers]
            self.body = timm.models.FeatureListNet(model, out_indices=indices, flatten_sequential=True)
            order = sorted(range(len(indices)), key=lambda i: indices[i])
            self._order = [order.index(i) for i in range(len(indices))]  # output position of each layer
        else:
            self.body = create_feature_extractor(model, return_nodes={layer: layer for layer in self.layers})
            self._order = None
        self.engine = "torch"  # until the body's weights are final (folded, probed)
        self._onnx = OnnxBody()
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        self.body.to(memory_format=torch.channels_last)
        self.requires_grad_(False)
        self.eval()
        self.folded: Folded = self._fold()
        self.eval()  # the modules that replaced the BNs (activations) too
        with torch.no_grad():
            probe = self.forward(torch.zeros(1, 3, 64, 64))
        self.channels = [f.shape[1] for f in probe]
        self.strides = [64 // f.shape[-1] for f in probe]
        self.engine = chosen_engine()

    @property
    def stride_text(self) -> str:
        """Words for the coarsest stride, for errors about too small inputs."""
        return (
            f"the stride of {self.backbone_name} layer {self.layers[self.strides.index(max(self.strides))]}"
        )

    def _fold(self) -> Folded:
        """Fold the body's BatchNorms where the folded body gives the same features (else keep it unfolded)."""
        image = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
        engine, self.engine = self.engine, "torch"  # the body itself, not an exported copy of it
        try:
            with torch.no_grad():
                before = self.forward(image)
                pairs, unfold = fold_batchnorm(self.body)
                after = self.forward(image)
        finally:
            self.engine = engine
            self._onnx.reset()  # the weights changed in place
        if all(
            torch.allclose(a, b, rtol=1e-4, atol=1e-4 * float(b.abs().max()))
            for a, b in zip(after, before, strict=True)
        ):
            return pairs
        unfold()  # a BN that did not follow its conv: keep the body as built
        return []

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:
        # checkpoints written before folding hold the BN tensors: fold them as the body was folded
        fold_state_dict(state_dict, f"{prefix}body.", self.folded)
        self._onnx.reset()  # new weights: the next CPU forward exports them again
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def _apply(self, fn, recurse: bool = True):
        self._onnx.reset()  # moved or cast: export again from the weights as they are now
        return super()._apply(fn, recurse)

    def train(self, mode: bool = True) -> FeatureExtractor:
        return super().train(False)

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        """Feature maps of `self.layers`, in that order."""
        x = (images - self.mean) / self.std
        if self.engine == "onnxruntime" and not torch_only(x):
            x = x.contiguous()
            run = lambda part: self._onnx(self.body, self._layers, part)  # noqa: E731
            pixels = ONNX_PIXELS_PER_PASS
        else:
            x = x.contiguous(memory_format=torch.channels_last)
            run, pixels = self._layers, CPU_PIXELS_PER_PASS
        step = max(1, pixels // (x.shape[-2] * x.shape[-1]))
        if x.device.type != "cpu" or len(x) <= step or torch.jit.is_tracing():
            return run(x)
        parts = [run(x[i : i + step]) for i in range(0, len(x), step)]
        return [torch.cat(maps) for maps in zip(*parts, strict=True)]

    def _layers(self, x: torch.Tensor) -> list[torch.Tensor]:
        out = self.body(x)
        if self._order is None:
            return [out[layer] for layer in self.layers]
        return [out[i] for i in self._order]


def fuse_features(features: Sequence[torch.Tensor], pool_kernel: int = 3) -> torch.Tensor:
    """Average-pool each map (stride 1, same size), resize all to the finest grid, concatenate channels."""
    target = max((f.shape[-2:] for f in features), key=lambda s: s[0] * s[1])
    fused = []
    for f in features:
        if pool_kernel > 1:
            f = F.avg_pool2d(f, pool_kernel, stride=1, padding=pool_kernel // 2, count_include_pad=False)
        if f.shape[-2:] != target:
            f = F.interpolate(f, size=target, mode="bilinear", align_corners=False)
        fused.append(f)
    return torch.cat(fused, dim=1)


def global_pool(features: Sequence[torch.Tensor]) -> torch.Tensor:
    """Spatial mean of each feature map, concatenated: one vector per image (e.g. 512 + 1024 = 1536)."""
    return torch.cat([f.mean(dim=(2, 3)) for f in features], dim=1)
