"""The pixel autoencoder: the seed's size, shapes, the edge crop, and that training lowers the loss."""

import pytest
import torch

from mvtec_ad.models.components.detector import AnomalyOutput
from mvtec_ad.models.pixel_ae import PixelAEModel
from tests.helpers import one_step_lowers_loss


def test_pixel_ae_has_the_seeds_parameter_count():
    # seed report 2, "Structure and Number of Layers": Total params 933,443
    assert sum(p.numel() for p in PixelAEModel().parameters()) == 933_443


@pytest.mark.parametrize("size", [64, 224])
def test_pixel_ae_shapes_and_edge_crop(size):
    model = PixelAEModel(edge_crop=4, image_size=size).eval()
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


def test_one_step_lowers_the_pixel_ae_loss():
    torch.manual_seed(0)
    model = PixelAEModel()
    model.eval()  # fixed BatchNorm statistics: the same batch gives the same loss before and after
    images = torch.rand(4, 3, 64, 64)
    before, after = one_step_lowers_loss(
        model.parameters(), lambda: model.loss(images, model.reconstruct(images)), 1e-3
    )
    assert after < before
