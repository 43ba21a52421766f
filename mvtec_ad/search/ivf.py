"""ivf: an inverted file of our own, k-means lists of ~ROWS_PER_LIST rows, queries grouped by list.

Two scans of the same lists, one per kind of CPU: where the fused bf16 kernel runs (AVX-512 BF16)
the probed lists go through its register tiles and the best lane minima are re-ranked in float32;
on every other CPU (AVX2, ARM64) lists.GemmLists multiplies each list with the queries probing it
in one float32 GEMM. Either way a list is read once per batch rather than once per query.
"""

from __future__ import annotations

import torch

from mvtec_ad.errors import ConfigError
from mvtec_ad.search import native
from mvtec_ad.search.bf16 import kernel_nearest
from mvtec_ad.search.faiss_index import ROWS_PER_LIST
from mvtec_ad.search.lists import GemmLists
from mvtec_ad.search.nearest import nearest_neighbours, rerank

IVF_NPROBE = 24  # lists probed per query: recall@1 1.0000 on 8,000 magnetic_tile patches (16: 0.9989)


class IvfTable:
    """A bank [N, D] in k-means lists whose probed lists the fused kernel, or float32 GEMMs, scan."""

    def __init__(self, bank: torch.Tensor) -> None:
        if bank.device.type != "cpu":
            raise ConfigError(
                "--model.search ivf runs on the CPU only; on a GPU pass --model.search exact_bf16."
            )
        self.bank = bank.float()
        lists = max(1, round(len(bank) / ROWS_PER_LIST))
        lib = native.load()
        self.scan = "fused kernel" if lib is not None else "float32 GEMM"
        self.table: native.ListTable | GemmLists
        if lib is not None:
            self.table = native.ListTable(self.bank, self.bank.mean(0), lib, lists)
        else:
            self.table = GemmLists(self.bank, lists)
        self.lists = self.table.lists

    def nearest(self, queries: torch.Tensor, k: int, nprobe: int) -> tuple[torch.Tensor, torch.Tensor]:
        n = len(self.bank)
        if n == 0 or k > 1:
            return nearest_neighbours(queries, self.bank, k)
        if isinstance(self.table, native.ListTable):
            table = self.table
            return kernel_nearest(queries, self.bank, lambda q, keep: table.candidates(q, nprobe, keep))
        flat = queries.reshape(-1, queries.shape[-1]).float()
        found = self.table.nearest_rows(flat, nprobe).to(queries.device)
        distances, indices = rerank(flat, self.bank, found[:, None], 1)
        shape = (*queries.shape[:-1], 1)
        return distances.view(shape), indices.view(shape)
