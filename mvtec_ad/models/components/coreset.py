"""Greedy k-center coreset selection (PatchCore's memory-bank reduction), in torch.

The coreset is PatchCore's greedy k-center (farthest-point) sequence on a random projection,
computed exactly but in rounds instead of one pass over all points per pick: see greedy_coreset.
Distances come from one matmul per chunk: ||a - b||^2 = ||a||^2 - 2 a.b + ||b||^2, in float32, or
in bf16 with the norms inside the GEMM (search.bf16_operands), ~3x faster on CPUs with bf16 units.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Literal

import numpy as np
import torch

from mvtec_ad.search.bf16 import bf16_operands
from mvtec_ad.search.nearest import squared_distances

CORESET_CHUNK = 1 << 20  # row x pick distances held at once by the coreset (4 MB: stays in cache)
CANDIDATES = 1024  # rows the coreset examines per round
PARK_SAFETY = 0.9  # rows nearer a pick than this share of the guessed last pick distance^2 are parked,
RHO = 0.95  # but never rows within this share of the farthest row's distance^2


def random_projection(features: torch.Tensor, dim: int, seed: int) -> torch.Tensor:
    """Gaussian random projection to `dim` columns (Johnson-Lindenstrauss); unchanged when already narrower."""
    if features.shape[1] <= dim:
        return features.float()
    generator = torch.Generator().manual_seed(seed)
    matrix = torch.randn(features.shape[1], dim, generator=generator) / math.sqrt(dim)
    return features.float() @ matrix.to(features.device)


def _lower_to_centres(
    min_sq: torch.Tensor,
    rows: torch.Tensor,
    rows_sq: torch.Tensor,
    centres: torch.Tensor,
    chunk_elements: int,
) -> None:
    """min_sq = min(min_sq, squared distance of each row to its nearest centre), in place.

    float32 rows and centres use the norms `rows_sq`; bf16 ones are bf16_operands' left and
    right operands, whose product is the squared distance itself.
    """
    if len(centres) == 0:
        return
    if rows.dtype == torch.bfloat16:
        right = centres.T.contiguous()
        step = max(1, chunk_elements // len(centres))
        for s in range(0, rows.shape[0], step):
            part = (rows[s : s + step] @ right).amin(1).float().clamp_min_(0.0)
            torch.minimum(min_sq[s : s + step], part, out=min_sq[s : s + step])
        return
    c_sq = centres.pow(2).sum(1)
    c_m2 = (centres * -2.0).T
    step = max(1, chunk_elements // len(centres))
    for s in range(0, rows.shape[0], step):
        part = (rows[s : s + step] @ c_m2).add_(c_sq).amin(1)  # min of ||c||^2 - 2 r.c
        part.add_(rows_sq[s : s + step]).clamp_min_(0.0)
        torch.minimum(min_sq[s : s + step], part, out=min_sq[s : s + step])


def _last_gap_guess(gaps: torch.Tensor, t: int, n_select: int) -> float:
    """Squared distance the last pick will have, extrapolated from the power law of picks so far."""
    if t < 32 or float(gaps[t - 1]) <= 0.0:
        return -math.inf
    slope = math.log(float(gaps[t // 2]) / float(gaps[t - 1])) / math.log((t - 1) / (t // 2))
    return float(gaps[t - 1]) * ((t - 1) / n_select) ** max(slope, 0.0)


def _positive(limit: float) -> float:
    """Rows at distance 0 are never parked: they are picked last, when nothing else is left."""
    return limit if limit > 0.0 else -math.inf


def accept_round(
    values: torch.Tensor, rows: torch.Tensor, outside: float, room: int
) -> tuple[list[int], list[float]]:
    """Greedy among a round's candidates: positions (into `rows`) of the picks and their squared gaps.

    `values` are the candidates' squared distances to the picks so far, `rows` their coordinates,
    in ascending row order (ties go to the lowest, as argmax). The farthest candidate is picked,
    the others' values lowered by its distances to them, for as long as the best one stays farther
    than `outside` (the best row that is not a candidate) and fewer than `room` are taken; the
    first is always taken. Sequential, so it runs in NumPy on the host: ~1 us per operation.
    """
    value = values.cpu().numpy().copy()
    between = squared_distances(rows, rows).cpu().numpy()
    accepted: list[int] = []
    gaps: list[float] = []
    while len(accepted) < room:
        j = int(value.argmax())
        if accepted and not value[j] > outside:
            break
        gaps.append(float(value[j]))
        accepted.append(j)
        np.minimum(value, between[j], out=value)
        value[j] = -math.inf
    return accepted, gaps


def greedy_coreset(
    features: torch.Tensor,
    n_select: int,
    projection_dim: int = 128,
    seed: int = 0,
    candidates: int = CANDIDATES,
    chunk_elements: int = CORESET_CHUNK,
    precision: Literal["fp32", "bf16"] = "fp32",
    progress: Callable[[int, int], None] | None = None,
) -> torch.Tensor:
    """Indices of `n_select` rows chosen by greedy k-center on a random projection, in pick order.

    The first pick is a seeded random row; each next pick is the row farthest from everything
    picked so far: the same sequence as the one-pick-per-pass loop, computed in rounds.

    Each round takes the `candidates` rows farthest from the picks and runs the greedy among them
    alone (their distances to each other are known), for as long as the best candidate stays
    farther than the best row outside them: outsiders' distances can only shrink, so each accepted
    candidate is the global farthest row. One chunked matmul then lowers every row's distance by
    all the round's picks. A round accepts hundreds of picks on real features.

    Rows nearer a pick than the last pick is guessed to be (`_last_gap_guess`) are parked: no
    longer updated, since they will never be picked. Should the picks come down to a parked row's
    (stale, upper-bound) distance after all, the parked rows above a lower guess are caught up
    first, so the guess only changes the speed, never the result.

    precision "bf16" computes the distance updates with bf16 operands (float32 accumulation):
    the sequence then follows bf16-rounded distances (relative error ~2^-9 of each distance)
    and may differ from float32's in late, near-tied picks.

    `progress(picks done, n_select)`, when given, is called after every round (a progress bar).
    """
    n = features.shape[0]
    n_select = min(max(n_select, 1), n)
    x = random_projection(features, projection_dim, seed)
    x = x - x.mean(0)  # same distances; smaller norms keep the matmul formula precise
    x_sq = x.pow(2).sum(1)
    if precision == "bf16":
        rows_all, centre_rows = bf16_operands(x, x.new_zeros(x.shape[1]))
    elif precision == "fp32":
        rows_all, centre_rows = x, x
    else:
        raise ValueError(f"precision must be fp32 or bf16, got {precision!r}")
    first = int(torch.randint(n, (1,), generator=torch.Generator().manual_seed(seed)))
    dev = x.device
    picks = torch.full((n_select,), first, dtype=torch.long, device=dev)
    gaps = torch.full((n_select,), math.inf)  # squared distance of each pick to the earlier ones
    # active rows, their coordinates and their exact squared distance to the nearest pick (-inf: picked)
    active, xa, xa_sq = torch.arange(n, device=dev), rows_all, x_sq
    va = torch.full((n,), math.inf, device=dev)
    _lower_to_centres(va, xa, xa_sq, centre_rows[first : first + 1], chunk_elements)
    va[first] = -math.inf
    min_sq = va.clone()  # parked rows: the value they had at pick `parked_at`, at most `parked_max`
    parked_at = torch.zeros(n, dtype=torch.long, device=dev)
    parked_max, t = -math.inf, 1
    while t < n_select:
        guess = PARK_SAFETY * _last_gap_guess(gaps, t, n_select)
        park = va <= _positive(min(guess, RHO * float(va.max())))
        if park.any():
            min_sq[active[park]], parked_at[active[park]] = va[park], t
            parked_max = max(parked_max, float(va[park].max()))
            keep = ~park
            active, xa, xa_sq, va = active[keep], xa[keep], xa_sq[keep], va[keep]
        top, local = va.topk(min(candidates + 1, len(va)))
        if len(top) == 0 or float(top[0]) <= parked_max:  # a parked row may be the farthest
            limit = _positive(min(guess, RHO * float(top[0]))) if len(top) else -math.inf
            min_sq[active] = va
            parked = torch.ones(n, dtype=torch.bool, device=dev)
            parked[active] = False
            back = parked & (min_sq > limit)
            rows = back.nonzero().squeeze(1)
            since, order = parked_at[rows].sort()
            rows = rows[order]
            starts, counts = since.unique_consecutive(return_counts=True)
            for group, start in zip(rows.split(counts.tolist()), starts.tolist(), strict=True):
                stale = min_sq[group]
                _lower_to_centres(
                    stale, rows_all[group], x_sq[group], centre_rows[picks[start:t]], chunk_elements
                )
                min_sq[group] = stale
            parked_max = float(min_sq.masked_fill(~parked | back, -math.inf).max())
            active = torch.cat([active, rows]).sort().values
            xa, xa_sq, va = rows_all[active], x_sq[active], min_sq[active]
            continue
        outside = max(float(top[candidates]) if len(top) > candidates else -math.inf, parked_max)
        local, order = local[:candidates].sort()  # ascending rows: ties go to the lowest, as argmax
        accepted, accepted_gaps = accept_round(top[order], x[active[local]], outside, n_select - t)
        gaps[t : t + len(accepted)] = torch.tensor(accepted_gaps)
        new = local[torch.tensor(accepted, device=dev)]
        picks[t : t + len(new)] = active[new]
        t += len(new)
        if progress is not None:
            progress(t, n_select)
        if t < n_select:
            _lower_to_centres(va, xa, xa_sq, centre_rows[active[new]], chunk_elements)
            va[new] = -math.inf
    return picks
