"""The backbone on onnxruntime: torch's features, rebuilt when the weights change, torch where it must."""

import copy

import pytest
import torch

from mvtec_ad.errors import ConfigError
from mvtec_ad.features import engine
from mvtec_ad.features.backbone import FeatureExtractor

pytest.importorskip("onnxruntime")


def extractor(seed: int = 0) -> FeatureExtractor:
    torch.manual_seed(seed)
    return FeatureExtractor("efficientnet_lite0", ["blocks.2", "blocks.4"], "none")


def features(model: FeatureExtractor, images: torch.Tensor, on: str) -> list[torch.Tensor]:
    model.engine = on
    with torch.no_grad():
        return model(images)


def relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


def test_auto_runs_onnxruntime_with_torchs_features_at_any_size():
    model = extractor()
    assert model.engine == "onnxruntime"  # auto, where onnxruntime is installed
    for shape in [(3, 3, 64, 96), (1, 3, 96, 64)]:  # batch, height and width are free in the graph
        images = torch.rand(*shape, generator=torch.Generator().manual_seed(1))
        ort, ref = features(model, images, "onnxruntime"), features(model, images, "torch")
        assert model._onnx.ready
        for a, b in zip(ort, ref, strict=True):
            assert a.shape == b.shape
            assert relative(a, b) < 1e-4
            assert a.grad_fn is None


def test_loaded_weights_are_exported_again():
    model, other = extractor(0), extractor(1)
    images = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    before = features(model, images, "onnxruntime")  # exports seed 0's weights
    model.load_state_dict(other.state_dict())
    after = features(model, images, "onnxruntime")
    expected = features(other, images, "torch")
    assert relative(before[0], expected[0]) > 1e-2  # the weights differ
    for a, b in zip(after, expected, strict=True):
        assert relative(a, b) < 1e-4


def test_a_deep_copy_exports_its_own_weights():
    model = extractor()
    images = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(3))
    features(model, images, "onnxruntime")
    twin = copy.deepcopy(model)
    assert not twin._onnx.ready
    with torch.no_grad():
        twin.body.get_submodule(model.folded[0][0]).bias.add_(1.0)  # the copy's weights only
    changed = features(twin, images, "onnxruntime")
    assert relative(changed[0], features(twin, images, "torch")[0]) < 1e-4
    assert relative(changed[0], features(model, images, "onnxruntime")[0]) > 1e-3


def test_gradients_and_tracing_stay_on_torch():
    model = extractor()
    images = torch.rand(1, 3, 64, 64, requires_grad=True)
    out = model(images)
    assert out[0].grad_fn is not None  # torch ran it: gradients reach the input
    out[0].sum().backward()
    assert images.grad is not None and images.grad.abs().sum() > 0
    traced = torch.jit.trace(lambda x: tuple(model(x)), torch.rand(1, 3, 64, 64), check_trace=False)
    assert "aten::_convolution" in str(traced.graph) or "aten::conv2d" in str(traced.graph)


def test_the_setting(monkeypatch):
    monkeypatch.setenv(engine.ENV, "torch")
    assert extractor().engine == "torch"
    monkeypatch.setenv(engine.ENV, "tensorrt")
    with pytest.raises(ConfigError, match="MVTEC_AD_BACKBONE_ENGINE must be one of auto, torch, onnxruntime"):
        extractor()
    monkeypatch.setattr(engine.importlib.util, "find_spec", lambda name: None)
    monkeypatch.setenv(engine.ENV, "auto")
    assert engine.chosen_engine() == "torch"  # auto without onnxruntime
    monkeypatch.setenv(engine.ENV, "onnxruntime")
    with pytest.raises(ConfigError, match="pip install onnxruntime"):
        engine.chosen_engine()
