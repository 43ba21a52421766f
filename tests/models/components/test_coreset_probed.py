"""The probed coreset: exact greedy's sequence where it updates exactly, a bank that covers as well where it probes."""

from __future__ import annotations

import math

import pytest
import torch

from mvtec_ad.errors import ConfigError
from mvtec_ad.models.components import coreset_probed
from mvtec_ad.models.components.coreset import greedy_coreset, random_projection
from mvtec_ad.models.components.coreset_probed import probed_coreset, tile_order
from mvtec_ad.models.patchcore import PatchCoreModel

from .test_coreset import CASES, naive_coreset


def case_features(n: int, d: int, n_select: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(n * d + n_select)
    return torch.randn(n, d, generator=g) * torch.rand(d, generator=g) + 5 * torch.rand(d, generator=g)


@pytest.mark.parametrize("n, d, n_select, projection_dim, candidates, chunk", CASES)
@pytest.mark.parametrize(
    "exact_picks, probe_share, tile_rows",
    [(10**6, coreset_probed.PROBE_SHARE, coreset_probed.TILE_ROWS), (0, 1.0, 8), (5, 1.0, 3)],
    ids=["dense", "tiles pruned by the triangle inequality", "dense then pruned"],
)
def test_exact_where_every_update_is(
    n, d, n_select, projection_dim, candidates, chunk, exact_picks, probe_share, tile_rows
):
    """Dense updates, or every tile probed (only the triangle inequality skips any): the textbook sequence."""
    features = case_features(n, d, n_select)
    expected, gap = naive_coreset(features, n_select, projection_dim, seed=3)
    assert gap > 1e-6
    got = probed_coreset(
        features,
        n_select,
        projection_dim,
        seed=3,
        probe_share=probe_share,
        exact_picks=exact_picks,
        candidates=candidates,
        tile_rows=tile_rows,
    )
    assert got.dtype == torch.long and got.shape == (n_select,)
    assert torch.equal(got, expected)


def clustered(n: int, d: int, seed: int = 0) -> torch.Tensor:
    """Blobs of different spreads around 48 centres: clustered like patch features."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(48, d, generator=g) * 3
    labels = torch.randint(48, (n,), generator=g)
    return centres[labels] + torch.randn(n, d, generator=g) * (0.3 + torch.rand(48, 1, generator=g))[labels]


def coverage(x: torch.Tensor, picks: torch.Tensor) -> tuple[float, float]:
    """Largest and mean distance of a row to its nearest pick."""
    d = torch.cat([torch.cdist(x[s : s + 4096], x[picks]).amin(1) for s in range(0, len(x), 4096)])
    return float(d.max()), float(d.mean())


def test_probing_covers_the_rows_as_exact_greedy_does():
    """Most updates probed (picks 256 on, 1/16 of 64 tiles each): the bank covers the rows within a few %
    of exact greedy's largest and mean distance, with no row picked twice."""
    features = clustered(16384, 40)
    n_select = 1600
    exact = greedy_coreset(features, n_select, seed=1)
    probed = probed_coreset(features, n_select, seed=1, exact_picks=256, probe_share=1 / 16)
    assert len(set(probed.tolist())) == n_select
    assert torch.equal(probed[:256], exact[:256])  # the dense start is exact greedy's
    assert not torch.equal(probed, exact)  # the probed part is not: this test exercises probing
    x = random_projection(features, 128, 1)
    (exact_max, exact_mean), (probed_max, probed_mean) = coverage(x, exact), coverage(x, probed)
    assert probed_max <= 1.05 * exact_max and probed_mean <= 1.02 * exact_mean
    # and far better than a bank of as many random rows
    random_rows = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))[:n_select]
    assert probed_max < 0.8 * coverage(x, random_rows)[0]


def test_tiles_hold_every_row_once_and_nearby_rows_together():
    x = clustered(5000, 24)
    order, padding, size = tile_order(x, tile_rows=64)
    tiles = len(order) // size
    assert tiles == 128 and size == math.ceil(5000 / 128) and len(order) == tiles * size
    assert sorted(order[~padding].tolist()) == list(range(5000))  # every row once
    assert int(padding.sum()) == tiles * size - 5000  # the rest are twins, masked
    tiled = x[order].view(tiles, size, -1)
    radius = (tiled - tiled.mean(1, keepdim=True)).norm(dim=2).amax(1)
    random_tiles = x[torch.randperm(5000)[: tiles * (5000 // tiles)]].view(tiles, -1, x.shape[1])
    random_radius = (random_tiles - random_tiles.mean(1, keepdim=True)).norm(dim=2).amax(1)
    assert float(radius.median()) < 0.5 * float(random_radius.median())


def test_patchcore_auto_probes_large_coresets_only_and_exact_is_the_option():
    model = PatchCoreModel(backbone="efficientnet_lite0", layers=["blocks.2"], weights="none", image_size=32)
    assert model.coreset_method(coreset_probed.EXACT_PICKS) == "exact"
    assert model.coreset_method(coreset_probed.EXACT_PICKS + 1) == "probed"
    exact = PatchCoreModel(
        backbone="efficientnet_lite0", layers=["blocks.2"], weights="none", image_size=32, coreset="exact"
    )
    assert exact.coreset_method(10**6) == "exact"
    with pytest.raises(ConfigError, match=r"--model.coreset must be one of auto, exact, probed; got 'fast'"):
        PatchCoreModel(backbone="efficientnet_lite0", layers=["blocks.2"], weights="none", coreset="fast")


def test_metrics_name_the_coreset_that_ran_also_after_a_checkpoint_load():
    """The method follows from the bank's size (n_select), so a test run from a checkpoint reports it too."""
    from mvtec_ad.models.patchcore import PatchCore

    module = PatchCore(backbone="efficientnet_lite0", layers=["blocks.2"], weights="none", image_size=32)
    width = module.model.memory_bank.shape[1]
    module.model.memory_bank = torch.zeros(coreset_probed.EXACT_PICKS + 1, width)
    assert module.extra_results()["coreset"] == "probed"
    module.model.memory_bank = torch.zeros(coreset_probed.EXACT_PICKS, width)
    assert module.extra_results()["coreset"] == "exact"
    module.model.coreset_ratio = 1.0  # every patch kept: no coreset ran
    assert module.extra_results()["coreset"] is None
