"""The greedy coreset equals the one-pick-per-pass loop on every case, edge and tie."""

from __future__ import annotations

import math

import pytest
import torch

from mvtec_ad.models.components import coreset
from mvtec_ad.models.components.coreset import greedy_coreset, random_projection


def naive_coreset(features: torch.Tensor, n_select: int, projection_dim: int = 128, seed: int = 0):
    """The textbook loop (one pass over all rows per pick) and the smallest relative gap between
    the farthest and the second-farthest row over its picks: below ~1e-7 float rounding may
    legitimately pick either, so the test data must stay well above that."""
    x = random_projection(features, projection_dim, seed)
    n = x.shape[0]
    first = int(torch.randint(n, (1,), generator=torch.Generator().manual_seed(seed)))
    d = torch.full((n,), math.inf)
    picks, idx, gap = [first], first, math.inf
    for _ in range(1, n_select):
        d = torch.minimum(d, (x - x[idx]).norm(dim=1))
        d[picks] = -math.inf
        idx = int(d.argmax())
        if n - len(picks) > 1:
            best, second = d.topk(2).values.tolist()
            gap = min(gap, (best - second) / best)
        picks.append(idx)
    return torch.tensor(picks), gap


CASES = [  # n, d, n_select, projection_dim, candidates, chunk_elements
    (300, 16, 300, 128, coreset.CANDIDATES, coreset.CORESET_CHUNK),  # d < projection_dim, n_select = N
    (500, 256, 120, 128, coreset.CANDIDATES, coreset.CORESET_CHUNK),  # projected
    (400, 64, 400, 32, 7, 1000),  # projected, n_select = N, small rounds, chunk boundaries
    (257, 40, 200, 128, 1, 37),  # one candidate per round: the plain greedy
    (700, 200, 250, 128, 64, 5000),
    (20, 3, 5, 128, 4, 10),
]


@pytest.mark.parametrize("n, d, n_select, projection_dim, candidates, chunk", CASES)
def test_coreset_equals_naive_loop(n, d, n_select, projection_dim, candidates, chunk):
    g = torch.Generator().manual_seed(n * d + n_select)
    features = torch.randn(n, d, generator=g) * torch.rand(d, generator=g) + 5 * torch.rand(d, generator=g)
    expected, gap = naive_coreset(features, n_select, projection_dim, seed=3)
    assert gap > 1e-6, "test data with a near-tie: pick another seed"
    got = greedy_coreset(
        features, n_select, projection_dim, seed=3, candidates=candidates, chunk_elements=chunk
    )
    assert got.dtype == torch.long and got.shape == (n_select,)
    assert torch.equal(got, expected)


def test_coreset_exact_when_the_parking_guess_is_far_too_high(monkeypatch):
    """A wrong guess of the last pick distance parks rows that are needed again: they are caught up."""
    monkeypatch.setattr(coreset, "_last_gap_guess", lambda gaps, t, n_select: math.inf)
    centres = []
    lower = coreset._lower_to_centres

    def spy(min_sq, rows, rows_sq, picked, chunk):
        centres.append(len(picked))
        lower(min_sq, rows, rows_sq, picked, chunk)

    monkeypatch.setattr(coreset, "_lower_to_centres", spy)
    features = torch.randn(300, 24, generator=torch.Generator().manual_seed(0))
    expected, gap = naive_coreset(features, 250, seed=1)
    assert gap > 1e-6
    assert torch.equal(greedy_coreset(features, 250, seed=1, candidates=4), expected)
    assert max(centres) > 4  # a catch-up (picks of several rounds at once) did happen


def test_farthest_points_first_on_a_line():
    # seed 1 starts at row 0 (x = 0); then 15 (farthest), 7 (7 from 0, 8 from 15), 3, 1
    line = torch.tensor([[0.0], [1.0], [3.0], [7.0], [15.0]])
    assert greedy_coreset(line, 5, seed=1).tolist() == [0, 4, 3, 2, 1]
    assert greedy_coreset(line, 3, seed=1).tolist() == [0, 4, 3]


def test_ties_go_to_the_lowest_index():
    # corners of a 6 x 2 rectangle and its centre; seed 0 starts at the centre (row 4), from which
    # all corners are equally far: row 0 first, as argmax would; then rows 2 and 3 tie (sqrt(10))...
    rectangle = torch.tensor([[0.0, 0.0], [0.0, 2.0], [6.0, 0.0], [6.0, 2.0], [3.0, 1.0]])
    assert greedy_coreset(rectangle, 5, seed=0).tolist() == [4, 0, 2, 1, 3]


def test_coreset_has_no_duplicates_even_with_duplicate_rows():
    rows = torch.randn(40, 8, generator=torch.Generator().manual_seed(0)).repeat(5, 1)  # each row 5 times
    for n_select in (40, 100, 200):
        picks = greedy_coreset(rows, n_select, seed=2, candidates=16)
        assert len(picks.unique()) == n_select
    assert set(greedy_coreset(rows, 40, seed=2).remainder(40).tolist()) == set(range(40))  # distinct first


def test_coreset_edge_sizes():
    features = torch.randn(10, 4)
    assert greedy_coreset(features, 0).shape == (1,)  # at least one pick
    assert sorted(greedy_coreset(features, 50).tolist()) == list(range(10))  # at most all rows
    assert greedy_coreset(features[:1], 1).tolist() == [0]


def coverage(features: torch.Tensor, picks: torch.Tensor) -> tuple[float, float]:
    """Largest and mean distance of a row to its nearest pick: what a k-center coreset minimises."""
    d = torch.cdist(features.double(), features[picks].double()).amin(1)
    return float(d.max()), float(d.mean())


def test_bf16_coreset_covers_as_well_as_float32():
    g = torch.Generator().manual_seed(4)
    centres = torch.randn(40, 96, generator=g) * 6
    features = centres[torch.randint(40, (6000,), generator=g)] + torch.randn(6000, 96, generator=g) + 20
    exact = greedy_coreset(features, 600, projection_dim=64, seed=1)
    fast = greedy_coreset(features, 600, projection_dim=64, seed=1, precision="bf16")
    assert fast.shape == (600,) and len(set(fast.tolist())) == 600  # distinct rows
    assert int(fast[0]) == int(exact[0])  # the same seeded first pick
    (max_exact, mean_exact), (max_fast, mean_fast) = coverage(features, exact), coverage(features, fast)
    assert max_fast <= 1.05 * max_exact and mean_fast <= 1.03 * mean_exact, (max_fast, max_exact)
    assert torch.equal(fast, greedy_coreset(features, 600, projection_dim=64, seed=1, precision="bf16"))


def test_coreset_precision_must_be_known():
    with pytest.raises(ValueError, match="precision must be fp32 or bf16"):
        greedy_coreset(torch.randn(10, 4), 3, precision="fp16")
