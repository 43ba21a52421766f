"""Nearest-neighbour search against brute force, in float32 and half precision."""

from __future__ import annotations

import pytest
import torch

from mvtec_ad.search.nearest import nearest_neighbours, squared_distances


def brute_force(queries, bank, k):
    d = torch.cdist(queries.double(), bank.double())
    return d.topk(k, dim=1, largest=False)


@pytest.mark.parametrize("k", [1, 3])
@pytest.mark.parametrize("chunk", [1, 50, 1 << 25])
def test_nearest_neighbours_match_brute_force(k, chunk):
    g = torch.Generator().manual_seed(k)
    queries, bank = torch.randn(37, 12, generator=g), torch.randn(23, 12, generator=g) + 0.5
    distances, indices = nearest_neighbours(queries, bank, k=k, chunk_elements=chunk)
    expected = brute_force(queries, bank, k)
    assert distances.shape == indices.shape == (37, k)
    assert torch.equal(indices, expected.indices)
    torch.testing.assert_close(distances.double(), expected.values, rtol=1e-4, atol=1e-4)


def test_nearest_neighbours_half_precision_bank_and_large_k():
    g = torch.Generator().manual_seed(0)
    queries, bank = torch.randn(30, 16, generator=g), torch.randn(9, 16, generator=g).half()
    distances, indices = nearest_neighbours(queries, bank, k=20)  # k above the bank size: all of it
    expected = brute_force(queries, bank.float(), 9)
    assert distances.dtype == torch.float32 and distances.shape == (30, 9)
    assert torch.equal(indices, expected.indices)
    torch.testing.assert_close(distances.double(), expected.values, rtol=1e-4, atol=1e-4)


def test_nearest_neighbours_distance_to_an_identical_row_is_zero():
    # uncentred features with large norms: the matmul formula alone would leave ~0.1 of rounding
    bank = torch.randn(500, 152, generator=torch.Generator().manual_seed(0)) * 10 + 50
    distances, indices = nearest_neighbours(bank[:100], bank)
    assert torch.equal(indices[:, 0], torch.arange(100))
    assert distances.abs().max() == 0


def test_squared_distances_match_cdist():
    a, b = torch.randn(7, 5), torch.randn(4, 5)
    torch.testing.assert_close(squared_distances(a, b), torch.cdist(a, b) ** 2, rtol=1e-4, atol=1e-4)
    assert (squared_distances(a, a).diagonal() >= 0).all()


def test_empty_bank_says_to_fit_or_load_a_checkpoint():
    with pytest.raises(RuntimeError, match="fit .* checkpoint"):
        nearest_neighbours(torch.randn(3, 4), torch.empty(0, 4))
