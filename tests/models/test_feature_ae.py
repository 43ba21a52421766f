"""The layer3 feature autoencoder: shapes, the seed's default, training lowers the loss, the feature cache."""

import pytest
import torch
import torch.nn.functional as F

from mvtec_ad.models.feature_ae import FeatureAEModel
from tests.helpers import datamodule, one_step_lowers_loss


def small_feature_ae(image_size: int) -> FeatureAEModel:
    torch.manual_seed(0)
    return FeatureAEModel(
        "efficientnet_lite0", ["blocks.4"], "none", hidden=[64], latent_dim=16, image_size=image_size
    )


@pytest.fixture(scope="module")
def feature_ae() -> FeatureAEModel:
    return small_feature_ae(64)


@pytest.mark.parametrize("size", [64, 224])
def test_feature_ae_shapes(size):
    feature_ae = small_feature_ae(size).eval()
    images = torch.rand(2, 3, size, size)
    with torch.no_grad():
        features = feature_ae.features(images)
        out = feature_ae(images)
    assert features.shape == (2, 112, size // 16, size // 16)
    assert out.score.shape == (2,) and out.map.shape == (2, 1, size, size)
    with torch.no_grad():
        error = feature_ae.error_map(features, feature_ae.reconstruct(features))
    top = error.flatten(1).topk(min(10, error[0].numel()), dim=1).values.mean(1)
    assert out.score == pytest.approx(top, rel=1e-5)  # the seed's mean of the 10 largest errors


def test_feature_ae_default_is_resnet50_layer3():
    model = FeatureAEModel(weights="none")
    assert model.extractor.layers == ["layer3"] and model.channels == 1024
    assert model.extractor.strides == [16]


def test_one_step_lowers_the_feature_ae_loss(feature_ae):
    torch.manual_seed(0)
    feature_ae.eval()
    features = feature_ae.features(torch.rand(4, 3, 64, 64))

    def loss() -> torch.Tensor:
        return F.mse_loss(feature_ae.reconstruct(features), features)

    before, after = one_step_lowers_loss(feature_ae.autoencoder.parameters(), loss, 1e-3)
    assert after < before


def test_feature_cache_only_for_datasets_whose_paths_fix_the_image(tiny_root):
    plain = datamodule(tiny_root)
    varied = datamodule(tiny_root, augmentation="favae", protocol="synthetic")
    assert plain.fixed_images("train") and plain.fixed_images("val")
    assert not varied.fixed_images("train")  # augmented: a new image every epoch
    assert not varied.fixed_images("val")  # synthetic anomalies keep the normal image's path
    assert varied.dataset("features").fixed_images
