"""k-means lists of a memory bank (an inverted file), and their scan by float32 GEMMs in torch.

The ivf backend's portable path, for CPUs without the fused bf16 kernel (AVX2, ARM64): the
queries probing each list are gathered and multiplied with that list's rows in one GEMM, so a
list is read once per batch instead of once per query (faiss's IVFFlat scans per query). On 2
AVX2 cores patchcore's model throughput was 1.67x faiss IVF's with the same lists and probes
(docs/benchmarks.md).
"""

from __future__ import annotations

import torch

KMEANS_SAMPLE = 256  # training rows per k-means centroid
MAX_LISTS = 4096  # lists of the largest banks (~250 rows each at 1M rows)


def kmeans(rows: torch.Tensor, lists: int, iterations: int = 10, seed: int = 0) -> torch.Tensor:
    """Lloyd's k-means on rows [N, D] (float32) from a seeded random start: the list of each row [N].

    The centroids train on at most KMEANS_SAMPLE rows per list (as faiss does), so the cost grows
    with N, not N^2; every row is assigned to its nearest centroid at the end.
    """
    g = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(rows), generator=g)
    sample = rows[order[: KMEANS_SAMPLE * lists]]
    centroids = sample[:lists].clone()
    for _ in range(iterations):
        assign = _nearest_centroid(sample, centroids)
        sums = torch.zeros_like(centroids).index_add_(0, assign, sample)
        counts = torch.bincount(assign, minlength=lists)
        filled = counts > 0  # an empty list keeps its centroid (it stays empty or refills)
        centroids[filled] = sums[filled] / counts[filled].unsqueeze(1).float()
    return torch.cat([_nearest_centroid(part, centroids) for part in rows.split(65536)])


def _nearest_centroid(rows: torch.Tensor, centroids: torch.Tensor) -> torch.Tensor:
    return torch.addmm((centroids * centroids).sum(1), rows, centroids.T, alpha=-2.0).argmin(1)


def kmeans_lists(
    rows: torch.Tensor, lists: int, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """rows [N, D] (float32) in k-means lists: each row's list [N], rows per list [L], the lists' means [L, D]
    (an empty list's mean is 0), for L = lists clamped to [1, min(N, MAX_LISTS)]."""
    lists = max(1, min(lists, len(rows), MAX_LISTS))
    assign = kmeans(rows, lists, seed=seed)
    counts = torch.bincount(assign, minlength=lists)
    means = torch.zeros(lists, rows.shape[1]).index_add_(0, assign, rows) / counts.clamp_min(1)[:, None]
    return assign, counts, means


class GemmLists:
    """A float32 bank [N, D] in k-means lists, scanned list by list with one GEMM per list a batch."""

    def __init__(self, bank: torch.Tensor, lists: int, seed: int = 0) -> None:
        x = bank.detach().cpu().float()
        self.n, self.d = x.shape
        assign, counts, self.centroids = kmeans_lists(x, lists, seed)
        self.lists = len(counts)
        self.order = assign.argsort(stable=True)  # bank row of each listed row
        self.rows = x[self.order].contiguous()
        self.norms = self.rows.square().sum(1)
        self.sizes = counts.tolist()
        self.starts = [0, *counts.cumsum(0)[:-1].tolist()]
        # an empty list is never probed: its centroid is infinitely far
        self.centroid_norms = torch.where(counts > 0, self.centroids.square().sum(1), torch.inf)

    def nearest_rows(self, queries: torch.Tensor, nprobe: int) -> torch.Tensor:
        """The bank row [Q] (int64) nearest each query [Q, D] among the rows of its `nprobe` nearest lists."""
        q = queries.detach().cpu().float().contiguous()
        nprobe = min(nprobe, self.lists)
        near = torch.addmm(self.centroid_norms, q, self.centroids.T, alpha=-2.0)
        probes = near.topk(nprobe, dim=1, largest=False)[1].flatten()  # [Q * nprobe], query-major
        pairs = probes.argsort(stable=True)  # (query, probe) pairs grouped by list
        counts = torch.bincount(probes, minlength=self.lists).tolist()
        best = torch.full((len(probes),), torch.inf)  # per pair: its list's smallest ||b||^2 - 2 q.b
        found = torch.zeros(len(probes), dtype=torch.long)
        start = 0
        for index, count in enumerate(counts):
            if count == 0 or self.sizes[index] == 0:
                start += count
                continue
            pair = pairs[start : start + count]
            start += count
            first, size = self.starts[index], self.sizes[index]
            rows = self.rows[first : first + size]
            scores = torch.addmm(self.norms[first : first + size], q[pair // nprobe], rows.T, alpha=-2.0)
            value, at = scores.min(1)
            best[pair] = value
            found[pair] = at + first
        choice = best.view(-1, nprobe).argmin(1, keepdim=True)
        return self.order[found.view(-1, nprobe).gather(1, choice).squeeze(1)]
