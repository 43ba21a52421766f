"""The map head: score rules, map size, the Gaussian blur."""

import pytest
import torch

from mvtec_ad.models.components.map_head import AnomalyMapHead, gaussian_kernel1d


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
