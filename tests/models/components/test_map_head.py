"""The map head: score rules, map size, the Gaussian blur."""

import pytest
import torch
import torch.nn.functional as F

from mvtec_ad.errors import ConfigError
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


def test_window_max_scores_the_best_block_not_one_cell():
    raw = torch.zeros(3, 1, 6, 6)
    raw[0, 0, 0, 5] = 9.0  # one hot cell at the border
    raw[0, 0, 2:5, 1:4] = 4.0  # a 3x3 defect
    raw[1, 0, 0, 0] = 8.0  # a corner: its block holds 4 cells of the map, not 9
    raw[2] = 2.5  # constant map
    head = AnomalyMapHead(sigma=1.0, score="window_max", window=3)
    assert head(raw, (24, 24)).score.tolist() == pytest.approx([4.0, 2.0, 2.5])
    assert AnomalyMapHead(score="max")(raw, (6, 6)).score.tolist() == pytest.approx([9.0, 8.0, 2.5])
    ones = AnomalyMapHead(score="window_max", window=1)(raw, (6, 6)).score  # a 1x1 block is the max
    assert ones.tolist() == pytest.approx([9.0, 8.0, 2.5])
    with pytest.raises(ConfigError, match="score_window must be an odd number"):
        AnomalyMapHead(score="window_max", window=4)


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


@pytest.mark.parametrize("rule", ["max", "topk", "mean", "window_max"])
def test_padded_cells_never_raise_the_score_or_the_map(rule):
    # raw 8x8 map over a 32x32 input whose image covers the left 16 columns; the padding's cells
    # hold a huge value, as a detector may give to padding it has never seen
    torch.manual_seed(0)
    content = torch.rand(1, 1, 8, 4)
    raw = torch.cat([content, torch.full((1, 1, 8, 4), 100.0)], dim=3)
    valid = torch.zeros(1, 1, 32, 32, dtype=torch.bool)
    valid[..., :16] = True
    head = AnomalyMapHead(sigma=1.0, score=rule, top_k=4)
    out = head(raw, (32, 32), valid)
    alone = head(content, (32, 16))  # the image's own cells only
    assert out.score.item() == pytest.approx(alone.score.item(), rel=1e-6)
    assert out.map.max() <= content.max() + 1e-6  # nothing from the padding leaks in
    assert torch.all(out.map[..., 16:] == out.map[..., :16].min())  # padding: the image's lowest value


@pytest.mark.parametrize("sigma", [0.0, 1.0, 4.0])
@pytest.mark.parametrize(
    ("raw_size", "size"), [((28, 28), (224, 224)), ((7, 20), (56, 160)), ((3, 5), (30, 50))]
)
def test_matrix_upsample_blur_equals_interpolate_then_convolve(sigma, raw_size, size):
    # the fast path (two matmuls) against the direct one (interpolate, then two 1-D convolutions)
    torch.manual_seed(0)
    raw = torch.rand(3, 1, *raw_size) * 10
    head = AnomalyMapHead(sigma=sigma)
    direct = F.interpolate(raw, size=size, mode="bilinear", align_corners=False)
    direct = head.blur(direct)
    fast = head.upsample_blur(raw, size)
    assert fast.shape == (3, 1, *size)
    assert torch.allclose(fast, direct, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(fast, head.upsample_blur(raw.flip(-1), size), atol=1e-3)  # it reads the values


def test_matrix_path_keeps_constant_maps():
    head = AnomalyMapHead(sigma=4.0)
    out = head.upsample_blur(torch.full((2, 1, 28, 40), 2.5), (224, 320))
    assert torch.allclose(out, torch.full_like(out, 2.5), atol=1e-5)
