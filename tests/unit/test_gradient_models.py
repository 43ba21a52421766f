"""Pixel autoencoder and layer3 feature autoencoder: size, shapes, and that training lowers the loss."""

import pytest
import torch
import torch.nn.functional as F

from mvtec_ad.data.datamodule import MVTecDataModule
from mvtec_ad.models.base import AnomalyOutput
from mvtec_ad.models.feature_ae import FeatureAEModel, fixed_images
from mvtec_ad.models.pixel_ae import PixelAEModel
from tests.conftest import TEST_IMAGE_SIZE


def test_pixel_ae_has_the_seeds_parameter_count():
    # seed report 2, "Structure and Number of Layers": Total params 933,443
    assert sum(p.numel() for p in PixelAEModel().parameters()) == 933_443


@pytest.mark.parametrize("size", [64, 224])
def test_pixel_ae_shapes_and_edge_crop(size):
    model = PixelAEModel(edge_crop=4).eval()
    images = torch.rand(2, 3, size, size)
    with torch.no_grad():
        reconstruction = model.reconstruct(images)
        out = model(images)
    assert reconstruction.shape == images.shape
    assert 0.0 <= float(reconstruction.min()) and float(reconstruction.max()) <= 1.0  # sigmoid
    assert isinstance(out, AnomalyOutput)
    assert out.score.shape == (2,) and out.map.shape == (2, 1, size, size)
    error = model.error_map(images, reconstruction)
    assert error.shape == (2, 1, size - 8, size - 8)
    assert out.score == pytest.approx(error.flatten(1).mean(1))  # score rule `mean` on the cropped map


def test_pixel_ae_rejects_sides_that_are_not_multiples_of_16():
    with pytest.raises(ValueError, match="multiples of 16"):
        PixelAEModel().reconstruct(torch.rand(1, 3, 60, 60))


@pytest.fixture(scope="module")
def feature_ae() -> FeatureAEModel:
    torch.manual_seed(0)
    return FeatureAEModel("efficientnet_lite0", ["blocks.4"], "none", hidden=[64], latent_dim=16)


@pytest.mark.parametrize("size", [64, 224])
def test_feature_ae_shapes(feature_ae, size):
    feature_ae.eval()
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


def one_step_lowers_loss(params, loss_fn, lr: float) -> tuple[float, float]:
    optimizer = torch.optim.Adam(params, lr=lr)
    before = loss_fn()
    optimizer.zero_grad()
    before.backward()
    optimizer.step()
    with torch.no_grad():
        return float(before), float(loss_fn())


def test_one_step_lowers_the_pixel_ae_loss():
    torch.manual_seed(0)
    model = PixelAEModel()
    model.eval()  # fixed BatchNorm statistics: the same batch gives the same loss before and after
    images = torch.rand(4, 3, 64, 64)
    before, after = one_step_lowers_loss(
        model.parameters(), lambda: model.loss(images, model.reconstruct(images)), 1e-3
    )
    assert after < before


def test_one_step_lowers_the_feature_ae_loss(feature_ae):
    torch.manual_seed(0)
    feature_ae.eval()
    features = feature_ae.features(torch.rand(4, 3, 64, 64))

    def loss() -> torch.Tensor:
        return F.mse_loss(feature_ae.reconstruct(features), features)

    before, after = one_step_lowers_loss(feature_ae.autoencoder.parameters(), loss, 1e-3)
    assert after < before


def test_feature_cache_only_for_datasets_whose_paths_fix_the_image(tiny_root):
    plain = MVTecDataModule(tiny_root, "fabric", image_size=TEST_IMAGE_SIZE)
    varied = MVTecDataModule(
        tiny_root, "fabric", image_size=TEST_IMAGE_SIZE, augmentation="favae", protocol="synthetic"
    )
    plain.setup("fit")
    varied.setup("fit")
    assert fixed_images(plain.train_set) and fixed_images(plain.val_set)
    assert not fixed_images(varied.train_set)  # augmented: a new image every epoch
    assert not fixed_images(varied.val_set)  # synthetic anomalies keep the normal image's path
    assert fixed_images(varied.train_features_set)
