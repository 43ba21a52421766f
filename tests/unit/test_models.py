"""Shapes and arithmetic of the shared head, the DFR pieces and the threshold rules."""

import pytest
import torch

from mvtec_ad.backbones import fuse_features
from mvtec_ad.evaluation.thresholds import ThresholdConfig, fit_threshold
from mvtec_ad.models.base import AnomalyMapHead, gaussian_kernel1d
from mvtec_ad.models.feature_ae import (
    DFRModel,
    bottleneck_width,
    conv1x1_autoencoder,
    latent_dim_from_pca,
)


def test_head_topk_score_and_map_shape():
    raw = torch.zeros(2, 1, 8, 8)
    raw[0, 0, :2, :5] = torch.arange(10, dtype=torch.float32).view(2, 5)  # values 0..9
    raw[1, 0, 3, 3] = 7.0
    head = AnomalyMapHead(sigma=4.0, score="topk", top_k=4)
    out = head(raw, (32, 32))
    assert out.map.shape == (2, 1, 32, 32)
    assert out.score.tolist() == pytest.approx([(9 + 8 + 7 + 6) / 4, 7 / 4])
    assert AnomalyMapHead(score="max")(raw, (8, 8)).score.tolist() == pytest.approx([9.0, 7.0])


def test_blur_keeps_constant_maps_and_mass():
    head = AnomalyMapHead(sigma=4.0)
    const = torch.full((1, 1, 40, 40), 3.0)
    assert torch.allclose(head.blur(const), const, atol=1e-5)
    spike = torch.zeros(1, 1, 65, 65)
    spike[0, 0, 32, 32] = 1.0
    blurred = head.blur(spike)
    assert blurred.sum().item() == pytest.approx(1.0, abs=1e-4)  # far from borders: mass kept
    assert blurred[0, 0, 32, 32] == blurred.max()
    assert gaussian_kernel1d(4.0).numel() == 33


def test_fuse_features_resizes_to_finest_grid():
    a, b = torch.rand(2, 5, 28, 28), torch.rand(2, 7, 14, 14)
    fused = fuse_features([b, a], pool_kernel=3)
    assert fused.shape == (2, 12, 28, 28)
    # a constant map stays constant through pooling (count_include_pad=False) and resizing
    const = fuse_features([torch.ones(1, 1, 7, 7), torch.ones(1, 1, 14, 14)])
    assert torch.allclose(const, torch.ones_like(const))


def test_autoencoder_widths_and_linear_ends():
    ae = conv1x1_autoencoder(1536, 64)
    convs = [m for m in ae if isinstance(m, torch.nn.Conv2d)]
    assert [(c.in_channels, c.out_channels) for c in convs] == [
        (1536, 400),
        (400, 200),
        (200, 64),
        (64, 200),
        (200, 400),
        (400, 1536),
    ]
    assert bottleneck_width([c.weight for c in convs]) == 64
    assert isinstance(ae[-1], torch.nn.Conv2d)  # output is linear: normalised features can be negative
    assert ae(torch.rand(2, 1536, 4, 4)).shape == (2, 1536, 4, 4)


def test_latent_dim_from_pca():
    cov = torch.diag(torch.tensor([5.0, 3.0, 1.0, 1.0], dtype=torch.float64))
    assert latent_dim_from_pca(cov, 0.95) == 4
    assert latent_dim_from_pca(cov, 0.8) == 2
    assert latent_dim_from_pca(cov, 0.5) == 1


def test_dfr_model_output_contract():
    model = DFRModel("efficientnet_lite0", ["blocks.2", "blocks.4"], weights="none").eval()
    model.build_autoencoder(8)
    out = model(torch.rand(3, 3, 64, 64))
    assert out.score.shape == (3,)
    assert out.map.shape == (3, 1, 64, 64)
    assert (out.map >= 0).all()
    with pytest.raises(RuntimeError, match="not built"):
        DFRModel("efficientnet_lite0", ["blocks.2"], weights="none")(torch.rand(1, 3, 64, 64))


def test_threshold_rules():
    scores = torch.tensor([1.0, 2.0, 3.0, 4.0])
    assert fit_threshold(scores, None, ThresholdConfig()) == pytest.approx(2.5 + 3 * scores.std().item())
    assert fit_threshold(scores, None, ThresholdConfig("percentile", percentile=50)) == pytest.approx(2.5)
    assert fit_threshold(torch.tensor([2.0]), None, ThresholdConfig()) == 2.0
    labels = torch.tensor([0, 0, 1, 1])
    assert fit_threshold(scores, labels, ThresholdConfig("f1")) == 3.0
    # anomalies never enter the mean/std rule
    assert fit_threshold(scores, labels, ThresholdConfig()) == pytest.approx(
        1.5 + 3 * torch.tensor([1.0, 2.0]).std().item()
    )
    # f1 without anomalies falls back to mean + k std
    assert fit_threshold(scores, None, ThresholdConfig("f1")) == fit_threshold(
        scores, None, ThresholdConfig()
    )
