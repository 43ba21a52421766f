"""Nearest-neighbour search and greedy k-center coreset selection on feature tensors, in torch.

Both run on the tensors' device in bounded-memory chunks. The coreset is the exact greedy
k-center (farthest-point) sequence on a random projection, as in PatchCore, but each pick only
touches the cells of points it can still change (triangle-inequality pruning over a balanced
partition), instead of every point: the same picks, far fewer distance evaluations.
"""

from __future__ import annotations

import math

import torch

CHUNK_ELEMENTS = 1 << 25  # query x bank distances held at once (32 M floats = 128 MB in float32)


def squared_distances(
    queries: torch.Tensor, bank: torch.Tensor, bank_sq: torch.Tensor | None = None
) -> torch.Tensor:
    """||q - b||^2 for every pair, via one matmul (clamped at 0 against rounding)."""
    q = queries.float()
    b = bank.float()
    b_sq = (b * b).sum(1) if bank_sq is None else bank_sq
    return ((q * q).sum(1, keepdim=True) - 2.0 * q @ b.T + b_sq).clamp_min_(0.0)


def nearest_neighbours(
    queries: torch.Tensor, bank: torch.Tensor, k: int = 1, chunk_elements: int = CHUNK_ELEMENTS
) -> tuple[torch.Tensor, torch.Tensor]:
    """Euclidean distances [Q, k] (ascending) and indices [Q, k] of each query's k nearest bank rows.

    Queries go in chunks so that at most `chunk_elements` distances exist at a time; the bank may
    be stored in half precision (distances are computed in float32).
    """
    if bank.shape[0] == 0:
        raise RuntimeError(
            "The memory bank is empty: fit the detector first or load a checkpoint (--ckpt_path)."
        )
    k = min(k, bank.shape[0])
    bank_sq = bank.float().pow(2).sum(1)
    step = max(1, chunk_elements // bank.shape[0])
    distances, indices = [], []
    for start in range(0, queries.shape[0], step):
        d2 = squared_distances(queries[start : start + step], bank, bank_sq)
        idx = d2.topk(k, dim=1, largest=False).indices if k > 1 else d2.argmin(1, keepdim=True)
        # the matmul form loses ~1e-3 of |q|^2 to cancellation: recompute the chosen distances directly
        chunk = queries[start : start + step].float()
        distances.append((chunk[:, None] - bank[idx].float()).norm(dim=2))
        indices.append(idx)
    return torch.cat(distances), torch.cat(indices)


def random_projection(features: torch.Tensor, dim: int, seed: int) -> torch.Tensor:
    """Gaussian random projection to `dim` columns (Johnson-Lindenstrauss); unchanged when already narrower."""
    if features.shape[1] <= dim:
        return features.float()
    generator = torch.Generator().manual_seed(seed)
    matrix = torch.randn(features.shape[1], dim, generator=generator) / math.sqrt(dim)
    return features.float() @ matrix.to(features.device)


def balanced_cells(points: torch.Tensor, cell_size: int) -> tuple[torch.Tensor, int]:
    """Slots of 2^L equal cells that group the points by recursive median splits; slot -> point is `% n`.

    Each node is split at the median of its projection on its principal direction (a few power
    iterations), so cells are compact. The slots are padded to fill the cells: slot values >= n
    are repeats of point `slot % n`.
    """
    n = points.shape[0]
    levels = max(0, math.ceil(math.log2(max(n / cell_size, 1))))
    cells = 1 << levels
    slots = torch.arange(cells * math.ceil(n / cells), device=points.device)
    generator = torch.Generator().manual_seed(0)
    for level in range(levels):
        nodes = 1 << level
        x = points[slots % n].view(nodes, -1, points.shape[1])
        centred = x - x.mean(1, keepdim=True)
        direction = torch.randn(nodes, points.shape[1], 1, generator=generator).to(points.device)
        for _ in range(4):  # power iteration towards the principal direction of each node
            direction = centred.transpose(1, 2) @ (centred @ direction)
            direction = direction / direction.norm(dim=1, keepdim=True).clamp_min(1e-12)
        projected = (centred @ direction).squeeze(2)
        # node sizes are (slots per cell) * 2^(levels - level): always even, so the median split is exact
        slots = slots.view(nodes, -1).gather(1, projected.argsort(dim=1)).view(-1)
    return slots, cells


def greedy_coreset(
    features: torch.Tensor,
    n_select: int,
    projection_dim: int = 128,
    seed: int = 0,
    cell_size: int = 64,
) -> torch.Tensor:
    """Indices of `n_select` rows chosen by greedy k-center on a random projection, in pick order.

    The first pick is a seeded random row; each next pick is the row farthest from everything
    picked so far. Cells whose bounding ball cannot hold a point closer to the new centre than
    that point's current distance are skipped (triangle inequality), so late picks are cheap.
    """
    n = features.shape[0]
    n_select = min(max(n_select, 1), n)
    x = random_projection(features, projection_dim, seed)
    slots, cells = balanced_cells(x, cell_size)
    index = slots % n  # the row behind every slot
    pts = x[index].view(cells, -1, x.shape[1])  # [M, S, d]
    flat = pts.view(-1, x.shape[1])
    sq = pts.pow(2).sum(2)  # [M, S]
    centres = pts.mean(1)  # [M, d]
    radius = (pts - centres[:, None]).norm(dim=2).amax(1)  # [M]
    # padding repeats and picked rows are -inf: never the farthest, never updated
    min_dist = torch.where(slots >= n, float("-inf"), float("inf")).view_as(sq).to(x.dtype)
    cell_max = min_dist.amax(1)
    first = int(torch.randint(n, (1,), generator=torch.Generator().manual_seed(seed)))
    slot = int((slots == first).nonzero()[0])
    picks = torch.empty(n_select, dtype=torch.long, device=x.device)
    for t in range(n_select):
        if t > 0:
            cell = int(cell_max.argmax())
            slot = cell * pts.shape[1] + int(min_dist[cell].argmax())
        picks[t] = index[slot]
        centre, centre_sq = flat[slot], sq.view(-1)[slot]
        min_dist.view(-1)[slot] = float("-inf")
        reachable = ((centres - centre).norm(dim=1) - radius < cell_max).nonzero().squeeze(1)
        dist = (sq[reachable] - 2.0 * (pts[reachable] @ centre) + centre_sq).clamp_min_(0.0).sqrt_()
        updated = torch.minimum(min_dist[reachable], dist)
        min_dist[reachable] = updated
        cell_max[reachable] = updated.amax(1)
    return picks
