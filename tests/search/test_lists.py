"""k-means lists and their float32 GEMM scan (ivf's path on CPUs without the fused kernel)."""

from __future__ import annotations

import torch

from mvtec_ad.search import lists


def test_kmeans_trains_on_a_sample_and_assigns_every_row(monkeypatch):
    monkeypatch.setattr(lists, "KMEANS_SAMPLE", 4)  # 5 lists x 4 rows train; all 600 are assigned
    g = torch.Generator().manual_seed(6)
    centres = torch.randn(5, 8, generator=g) * 20
    truth = torch.arange(600) % 5
    rows = centres[truth] + torch.randn(600, 8, generator=g)
    assign = lists.kmeans(rows, 5)
    assert assign.shape == (600,) and int(assign.max()) < 5
    assert torch.equal(lists.kmeans(rows, 5), assign)  # seeded
    # far tighter than the rows around their overall mean (random lists: the same; one merge of two
    # true clusters, which a random start allows: ~10x tighter; clean lists: ~400x)
    means = (
        torch.zeros(5, 8).index_add_(0, assign, rows)
        / torch.bincount(assign, minlength=5).clamp_min(1)[:, None]
    )
    inertia = (rows - means[assign]).square().sum(1).mean()
    assert inertia < (rows - rows.mean(0)).square().sum(1).mean() / 5


def test_gemm_lists_hold_every_row_once_and_skip_empty_lists():
    g = torch.Generator().manual_seed(7)
    bank = torch.randn(1000, 12, generator=g)
    table = lists.GemmLists(bank, lists=9)
    assert torch.equal(table.order.sort()[0], torch.arange(1000))  # each row exactly once
    assert sum(table.sizes) == 1000 and table.starts[0] == 0
    assert torch.equal(table.rows, bank[table.order])
    table.centroid_norms[0] = torch.inf  # as an empty list: never probed
    queries = table.centroids[:1] + 0.01  # nearest list 0, which no longer counts
    row = table.nearest_rows(queries, nprobe=1)
    listed = torch.cat([torch.full((n,), i) for i, n in enumerate(table.sizes)])
    assert int(listed[(table.order == row).nonzero()[0, 0]]) != 0


def test_gemm_lists_find_the_nearest_row_within_the_probed_lists():
    g = torch.Generator().manual_seed(8)
    bank = torch.randn(600, 6, generator=g)
    table = lists.GemmLists(bank, lists=5)
    queries = torch.randn(40, 6, generator=g)
    rows = table.nearest_rows(queries, nprobe=2)
    near = torch.cdist(queries, table.centroids).topk(2, largest=False).indices  # the two probed lists
    listed = torch.empty(600, dtype=torch.long)
    listed[table.order] = torch.cat([torch.full((n,), i) for i, n in enumerate(table.sizes)])
    for query, row, probed in zip(queries, rows, near, strict=True):
        allowed = torch.isin(listed, probed).nonzero()[:, 0]
        best = allowed[(bank[allowed] - query).norm(dim=1).argmin()]
        assert int(row) == int(best)
