"""FAVAE pieces: shapes through every module, the KL term, one training step, deterministic inference."""

import math

import pytest
import torch

from mvtec_ad.data.dataset import Batch
from mvtec_ad.errors import BackboneError
from mvtec_ad.models.favae import FAVAEModel, favae_loss, foreground_mask, kl_divergence

LITE0_LAYERS = ["blocks.1", "blocks.2", "blocks.4"]  # strides 4, 8, 16


@pytest.fixture(scope="module")
def model() -> FAVAEModel:
    torch.manual_seed(0)
    return FAVAEModel(
        "efficientnet_lite0", LITE0_LAYERS, "imagenet", working_size=64, latent_dim=100, image_size=64
    )


def test_shapes_through_every_module(model):
    x = torch.rand(2, 3, 64, 64)
    mu, logvar = model.encode(x)
    assert mu.shape == logvar.shape == (2, 100)
    reconstruction, stages = model.decode(mu)
    assert reconstruction.shape == x.shape and 0 <= reconstruction.min() and reconstruction.max() <= 1
    assert [s.shape[1:] for s in stages[:6]] == [
        (512, 4, 4),
        (512, 8, 8),
        (256, 8, 8),
        (256, 16, 16),
        (128, 16, 16),
        (128, 32, 32),
    ]
    p = model.run(x)
    assert [t.shape for t in p.teacher] == [(2, 24, 16, 16), (2, 40, 8, 8), (2, 112, 4, 4)]
    assert [a.shape for a in p.adapted] == [t.shape for t in p.teacher]
    assert model.raw_map(p).shape == (2, 1, 64, 64)
    model.eval()
    for size in [(64, 64), (128, 128), (96, 80)]:  # resized to 64 inside, maps at the input size
        out = model(torch.rand(2, 3, *size))
        assert out.score.shape == (2,) and out.map.shape == (2, 1, *size)
        assert torch.isfinite(out.map).all() and torch.isfinite(out.score).all()


def test_seed_teacher_vgg16_layers_fit_the_decoder():
    vgg = FAVAEModel(
        "vgg16", ["features.7", "features.14", "features.21"], "none", working_size=64, image_size=64
    )
    assert vgg.teacher.strides == [2, 4, 8] and vgg.teacher.channels == [128, 256, 512]
    p = vgg.run(torch.rand(1, 3, 64, 64))
    assert [a.shape for a in p.adapted] == [t.shape for t in p.teacher]
    assert [t.shape[-1] for t in p.teacher] == [32, 16, 8]


def test_teacher_layer_without_decoder_stage_is_refused():
    with pytest.raises(BackboneError, match="stride 32"):
        FAVAEModel("efficientnet_lite0", ["blocks.6"], "imagenet", working_size=64, image_size=64)


def test_feature_statistics_standardise_the_teacher(model):
    images = torch.rand(6, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    loader = [
        Batch(images[:4], torch.zeros(4, 1, 64, 64), torch.zeros(4), [""] * 4),
        Batch(images[4:], torch.zeros(2, 1, 64, 64), torch.zeros(2), [""] * 2),
    ]
    try:
        model.fit_feature_statistics(loader)
        for f in model.teacher_features(images):
            assert torch.allclose(f.mean((0, 2, 3)), torch.zeros(f.shape[1]), atol=1e-4)
            assert torch.allclose(f.std((0, 2, 3)), torch.ones(f.shape[1]), atol=1e-3)
    finally:
        for norm in model.feature_norms:  # back to the identity for the other tests
            norm.mean.zero_()
            norm.std.fill_(1.0)


def test_kl_is_zero_for_standard_normal_and_positive_otherwise():
    zeros = torch.zeros(3, 100)
    assert kl_divergence(zeros, zeros).tolist() == [0.0, 0.0, 0.0]
    mu = torch.tensor([[1.0, 0.0]])
    logvar = torch.tensor([[0.0, math.log(2.0)]])
    # -1/2 [(1 + 0 - 1 - 1) + (1 + ln 2 - 0 - 2)] = 1 - ln(2) / 2
    assert kl_divergence(mu, logvar).item() == pytest.approx(1 - math.log(2.0) / 2)
    assert (kl_divergence(torch.randn(4, 10), torch.randn(4, 10)) > 0).all()


def test_one_step_lowers_the_loss_on_a_fixed_batch(model):
    model.train()
    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    optimizer = torch.optim.Adam([q for q in model.parameters() if q.requires_grad], lr=1e-3)

    def loss() -> torch.Tensor:
        torch.manual_seed(0)  # the same reparameterisation noise both times
        return favae_loss(model.run(x))["loss"]

    before = loss()
    optimizer.zero_grad()
    before.backward()
    assert all(q.grad is None for q in model.teacher.parameters())  # the teacher stays frozen
    optimizer.step()
    assert loss().item() < before.item()


def test_inference_uses_the_mean(model):
    x = torch.rand(2, 3, 64, 64)
    mu, logvar = torch.randn(2, 100), torch.zeros(2, 100)
    model.train()
    assert not torch.equal(model.sample(mu, logvar), model.sample(mu, logvar))
    model.eval()
    assert torch.equal(model.sample(mu, logvar), mu)
    first, second = model(x), model(x)
    assert torch.equal(first.map, second.map) and torch.equal(first.score, second.score)


def test_foreground_mask_fills_holes_and_masks_the_map(model):
    images = torch.zeros(2, 3, 64, 64)
    images[0, :, 16:48, 16:48] = 0.9  # a bright square with a dark hole on a dark background
    images[0, :, 28:36, 28:36] = 0.0
    mask = foreground_mask(images, "dark", threshold=0.5)
    assert mask[0].sum() == 32 * 32 and mask[0, 0, 30, 30] == 1 and mask[0, 0, 5, 5] == 0
    assert mask[1].sum() == 64 * 64  # nothing found: keep the whole map
    assert torch.equal(foreground_mask(1 - images, "bright", threshold=0.5), mask)

    model.eval()
    model.background = "dark"
    try:
        masked = model.raw_map(model.run(images))
    finally:
        model.background = "none"
    assert (masked[0, 0, :16] == 0).all() and (masked[0, 0, 16:48, 16:48] > 0).all()
