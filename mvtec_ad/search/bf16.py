"""bf16 ranking of a memory bank, float32 re-rank: the exact_bf16 backend (and the operands the coreset uses).

Both operands are centred and carry the squared norms as hi + lo bf16 pairs, so one GEMM gives
squared distances with an error relative to the distance, not the norms. The ranking runs on the
fused kernel (native.py) on CPUs with AVX-512 BF16 and no AMX, else on torch's bf16 GEMM; the best
few candidates are re-ranked in float32, so every reported distance is exact to its row.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from mvtec_ad.search import native
from mvtec_ad.search.nearest import CHUNK_ELEMENTS, CPU_CHUNK_ELEMENTS, nearest_neighbours, rerank

RERANK = 8  # bf16 candidates re-ranked in float32 per query: recall@1 0.99996 on magnetic_tile
# (the fused kernel keeps the best 8 of its 32 lane minima: recall 0.9999 as with all 32, a sixth of the re-rank)
GROUP = 16  # bank rows whose smallest bf16 score is taken at once: a strided, vectorised minimum
NATIVE_CHUNK = 2048  # queries per fused-kernel call and re-rank (8 candidate rows each: 10 MB at D = 152)


def _bf16_pair(values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """float32 -> bf16 hi + lo whose sum keeps ~16 significant bits (a norm added inside the GEMM)."""
    hi = values.bfloat16()
    return hi, (values - hi.float()).bfloat16()


def _bf16_parts(rows: torch.Tensor, centre: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """The pieces both bf16 operands are made of: centred rows (float32), squared norm hi, lo, ones, zero padding."""
    x = rows.float() - centre
    sq_hi, sq_lo = _bf16_pair((x * x).sum(-1, keepdim=True))
    pad = (-(x.shape[-1] + 4)) % 16
    return x, sq_hi, sq_lo, torch.ones_like(sq_hi), x.new_zeros((*x.shape[:-1], pad)).bfloat16()


def _left_of(x, sq_hi, sq_lo, ones, zeros) -> torch.Tensor:
    return torch.cat([x.bfloat16(), ones, ones, sq_hi, sq_lo, zeros], -1)


def bf16_left(rows: torch.Tensor, centre: torch.Tensor) -> torch.Tensor:
    """The left operand of bf16_operands alone (queries: the right one would be thrown away)."""
    return _left_of(*_bf16_parts(rows, centre))


def bf16_operands(rows: torch.Tensor, centre: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Left and right bf16 operands L, R of rows [..., N, D] with L_i . R_j = ||x_i - x_j||^2.

    Rows are centred first (smaller values round less) and both squared norms ride in the GEMM
    as hi + lo pairs, accumulated in float32: the product is the squared distance itself, so
    its bf16 rounding is relative to the distance, not to the norms. K is padded to a multiple
    of 16 (the bf16 kernels' block).
    """
    parts = _bf16_parts(rows, centre)
    x, sq_hi, sq_lo, ones, zeros = parts
    right = torch.cat([(x * -2.0).bfloat16(), sq_hi, sq_lo, ones, ones, zeros], -1)
    return _left_of(*parts), right


class Bf16Table:
    """A bank [N, D] prepared for bf16 search: its centre and, on a CPU the fused kernel serves, that
    kernel's table; else torch's right operand, columns padded to GROUP."""

    def __init__(self, bank: torch.Tensor) -> None:
        self.bank = bank.float()
        self.centre = self.bank.mean(0)
        lib = native.library() if bank.device.type == "cpu" and len(bank) else None
        self.native = native.LaneMinTable(self.bank, self.centre, lib) if lib is not None else None
        if self.native is not None:
            return
        _, right = bf16_operands(self.bank, self.centre)
        pad = (-len(right)) % GROUP
        filler = right.new_zeros(pad, right.shape[1])
        filler[:, self.bank.shape[1]] = 1e30  # a squared norm no real row has: padding never ranks first
        right = torch.cat([right, filler])
        self.table = right.T.contiguous()  # [K, N + pad]
        self.groups = self.table.shape[1] // GROUP


def _grouped_candidates(scores: torch.Tensor, groups: int, r: int) -> torch.Tensor:
    """Column indices [R, GROUP + r - 1] of low bf16 scores [R, GROUP * groups]: every member of the
    best group and the best member of each of the next r - 1 groups.

    Group c holds columns c, c + groups, c + 2 groups, ...: its minimum is one elementwise
    minimum over GROUP contiguous slices, which vectorises (a full top-r over 50k columns costs
    6x more on a CPU). The whole best group is re-ranked, so a near-tie inside it cannot hide
    the nearest row behind its bf16-rounded twin.

    The scores are compared as their int16 bit patterns: for bf16 values >= 0 the order is the
    same, and integer minima run 3x faster than bf16 ones on a CPU. A negative score (the
    rounding of a distance ~0) ranks before every positive one, so near-duplicates stay
    candidates; the order among negatives is reversed, which the fp32 re-rank settles.
    """
    keys = scores.view(torch.int16) if scores.dtype == torch.bfloat16 else scores
    strided = keys.view(keys.shape[0], GROUP, groups)
    best_groups = strided.amin(1).topk(r, dim=1, largest=False)[1]  # [R, r]
    members = strided.gather(2, best_groups.unsqueeze(1).expand(-1, GROUP, -1))  # [R, GROUP, r]
    others = members[:, :, 1:].argmin(1) * groups + best_groups[:, 1:]  # [R, r - 1]
    first = torch.arange(GROUP, device=scores.device) * groups + best_groups[:, :1]  # [R, GROUP]
    return torch.cat([first, others], 1)


def kernel_nearest(
    queries: torch.Tensor, bank: torch.Tensor, candidates: Callable[[torch.Tensor, int], torch.Tensor]
) -> tuple[torch.Tensor, torch.Tensor]:
    """The nearest row of each query [..., Q, D] from the fused kernel's `candidates(queries, RERANK)`,
    re-ranked in float32, in chunks of NATIVE_CHUNK queries: distances and indices [..., Q, 1]."""
    found = [
        rerank(q, bank, candidates(q, RERANK), 1)
        for q in queries.reshape(-1, queries.shape[-1]).float().split(NATIVE_CHUNK)
    ]
    shape = (*queries.shape[:-1], 1)
    return torch.cat([d for d, _ in found]).view(shape), torch.cat([i for _, i in found]).view(shape)


def bf16_nearest(
    queries: torch.Tensor, table: Bf16Table, k: int = 1, chunk_elements: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """k nearest rows of a prepared shared bank, as nearest_neighbours returns them (queries [..., Q, D])."""
    bank = table.bank
    n = len(bank)
    if n == 0:
        return nearest_neighbours(queries, bank, k)  # its error: fit first
    k = min(k, n)
    if table.native is not None:
        if k > 1:  # lane minima hold one row per lane: k > 1 (a few queries in practice) goes exact
            return nearest_neighbours(queries, bank, k)
        return kernel_nearest(queries, bank, table.native.candidates)
    if chunk_elements is None:
        chunk_elements = CPU_CHUNK_ELEMENTS if bank.device.type == "cpu" else CHUNK_ELEMENTS
    flat = queries.reshape(-1, queries.shape[-1]).float()
    r = min(n, k + RERANK - 1)
    grouped = k == 1 and table.groups >= 4 * r
    step = max(1, chunk_elements // table.table.shape[1])
    distances, indices = [], []
    block: torch.Tensor | None = None  # one score block for every chunk (fresh ones fragment the heap)
    for start in range(0, len(flat), step):
        q = flat[start : start + step]
        left = bf16_left(q, table.centre)
        if block is None:
            block = left.new_empty(len(left), table.table.shape[1])
        scores = torch.mm(left, table.table, out=block[: len(left)])  # [R, N + pad] bf16 squared distances
        if grouped:
            # padded columns of the best group become the last real row: a true candidate twice
            candidates = _grouped_candidates(scores, table.groups, r).clamp_max_(n - 1)
        else:
            candidates = scores[:, :n].topk(r, dim=1, largest=False)[1]
        d, i = rerank(q, bank, candidates, k)
        distances.append(d)
        indices.append(i)
    shape = (*queries.shape[:-1], k)
    return torch.cat(distances).view(shape), torch.cat(indices).view(shape)
