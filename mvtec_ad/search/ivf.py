"""ivf: an inverted file of our own, k-means lists of ~ROWS_PER_LIST rows scanned by the fused bf16 kernel.

The queries probing each list are gathered into the kernel's register tiles, so a list is read
once per batch rather than once per query; the best lane minima are re-ranked in float32.
CPUs with AVX-512 BF16 only (it needs the kernel).
"""

from __future__ import annotations

import ctypes

import torch

from mvtec_ad.errors import ConfigError
from mvtec_ad.search import native
from mvtec_ad.search.bf16 import kernel_nearest
from mvtec_ad.search.faiss_index import ROWS_PER_LIST
from mvtec_ad.search.nearest import nearest_neighbours

IVF_NPROBE = 24  # lists probed per query: recall@1 1.0000 on 8,000 magnetic_tile patches (16: 0.9989)


class IvfTable:
    """A bank [N, D] in k-means lists of ~ROWS_PER_LIST rows whose probed lists the fused kernel scans."""

    def __init__(self, bank: torch.Tensor) -> None:
        if bank.device.type != "cpu":
            raise ConfigError(
                "--model.search ivf runs on the CPU only; on a GPU pass --model.search exact_bf16."
            )
        lib = self.require()
        self.bank = bank.float()
        self.lists = max(1, round(len(bank) / ROWS_PER_LIST))
        self.table = native.ListTable(self.bank, self.bank.mean(0), lib, self.lists)

    @staticmethod
    def require() -> ctypes.CDLL:
        """The fused kernel, or a ConfigError saying why ivf cannot run and what to pass instead."""
        lib = native.load()
        if lib is None:
            raise ConfigError(
                "--model.search ivf needs the fused bf16 kernel: a CPU with AVX-512 BF16, a C compiler and "
                f"{native.OFF} unset ({native.unsupported() or 'it could not be built'}); "
                "pass --model.search exact_bf16 or faiss."
            )
        return lib

    def nearest(self, queries: torch.Tensor, k: int, nprobe: int) -> tuple[torch.Tensor, torch.Tensor]:
        n = len(self.bank)
        if n == 0 or k > 1:
            return nearest_neighbours(queries, self.bank, k)
        return kernel_nearest(queries, self.bank, lambda q, keep: self.table.candidates(q, nprobe, keep))
