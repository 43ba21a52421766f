"""BankSearch: the memory banks' nearest rows by one of five backends, and `auto`'s choice among them.

    auto        on a CPU, banks of FLAT_BELOW rows or more: ivf on x86-64 (its fused kernel where
                AVX-512 BF16 runs, else its float32 GEMM scan: 1.67x faiss IVF's model throughput on AVX2),
                faiss IVF on other CPUs (ARM64: ivf's GEMM scan was not measured there), exact_fp32
                where faiss is missing. Smaller banks exhaustively, exact_bf16 where bf16 runs in
                hardware, else exact_fp32. On a GPU: exact_bf16 from Ampere on, else exact_fp32.

Every backend returns float32 distances recomputed from the differences to the rows it found,
so a reported distance is always the exact distance to that row; the backends differ only in
which row they find (exact_bf16 misses the exact nearest row for ~1-4 in 10,000 queries on
magnetic_tile features, ivf at 24 probes for ~9, faiss IVF for a few in 1,000). What a backend
derives from the bank (a bf16 table, lists, a faiss index) is rebuilt whenever the bank changes
and never saved: checkpoints hold the bank alone.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch

from mvtec_ad.errors import ConfigError
from mvtec_ad.search import cpu, native
from mvtec_ad.search.bf16 import Bf16Table, bf16_nearest
from mvtec_ad.search.faiss_index import FAISS_NPROBE, FLAT_BELOW, FaissIndex, faiss_available, require_faiss
from mvtec_ad.search.ivf import IVF_NPROBE, IvfTable
from mvtec_ad.search.nearest import nearest_neighbours

SearchName = Literal["auto", "exact_fp32", "exact_bf16", "faiss", "ivf"]
SEARCHES = ("auto", "exact_fp32", "exact_bf16", "faiss", "ivf")
__all__ = ["FAISS_NPROBE", "IVF_NPROBE", "SEARCHES", "BankSearch", "SearchName"]


class BankSearch:
    """Nearest rows of a memory bank by the chosen backend; what a backend derives from the bank is cached.

    Not an nn.Module: its state is rebuilt from the bank (after fit, a checkpoint load or a
    device move) and never saved. Traced graphs (ONNX export) always take exact_fp32, which
    runs anywhere. So do per-item banks [B, N, D] (knn's neighbour images): faiss indexes one
    shared bank, and on banks of a few hundred rows bf16's re-rank cost more than it saved
    (knn test 54 s instead of 45 s on magnetic_tile).
    """

    def __init__(
        self,
        search: SearchName = "auto",
        faiss_index: str = "auto",
        faiss_nprobe: int = FAISS_NPROBE,
        ivf_nprobe: int = IVF_NPROBE,
    ) -> None:
        if search not in SEARCHES:
            raise ConfigError(f"--model.search must be one of {', '.join(SEARCHES)}; got {search!r}.")
        if faiss_nprobe < 1:
            raise ConfigError(f"--model.faiss_nprobe must be at least 1, got {faiss_nprobe}.")
        if ivf_nprobe < 1:
            raise ConfigError(f"--model.ivf_nprobe must be at least 1, got {ivf_nprobe}.")
        if search == "faiss":
            require_faiss()  # at build time, not at the first test batch
        self.name = search
        self.faiss_index = faiss_index
        self.faiss_nprobe = faiss_nprobe
        self.ivf_nprobe = ivf_nprobe
        self.last_backend: str | None = None
        self._key: tuple | None = None
        self._prepared: Bf16Table | FaissIndex | IvfTable | None = None

    def backend(self, device: torch.device, rows: int | None = None) -> str:
        """The backend that runs on `device` for a bank of `rows`: the chosen one, or what `auto` picks
        there (module docstring). `rows` None asks about a large bank."""
        if self.name != "auto":
            return self.name
        large = rows is None or rows >= FLAT_BELOW
        if device.type == "cpu" and large:
            if native.load() is not None or cpu.x86_64():
                return "ivf"
            if faiss_available():
                return "faiss"
        return "exact_bf16" if cpu.fast_bf16(device) else "exact_fp32"

    def _prepare(self, bank: torch.Tensor) -> Bf16Table | FaissIndex | IvfTable:
        key = (bank.data_ptr(), bank._version, tuple(bank.shape), bank.device, bank.dtype)
        if key != self._key:
            self._prepared = None  # free the old one before building the new
            backend = self.backend(bank.device, bank.shape[-2])
            build: Callable = {
                "exact_bf16": Bf16Table,
                "ivf": IvfTable,
            }.get(backend, lambda b: FaissIndex(b, self.faiss_index, self.faiss_nprobe))
            self._prepared, self._key = build(bank), key
        return self._prepared

    def __call__(
        self, queries: torch.Tensor, bank: torch.Tensor, k: int = 1
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Distances [..., Q, k] (ascending, float32) and indices of each query's k nearest bank rows."""
        if queries.shape[-1] != bank.shape[-1] and bank.shape[-2] > 0:
            raise ConfigError(
                f"The memory bank holds rows of {bank.shape[-1]} features, but the model's backbone gives "
                f"{queries.shape[-1]} per patch: the bank was built with other --model.backbone, "
                "--model.layers or --model.weights. Load the checkpoint with the options it was trained "
                "with, or fit again."
            )
        backend = self.backend(bank.device, bank.shape[-2])
        self.last_backend = backend
        exact = backend == "exact_fp32" or torch.jit.is_tracing() or torch.onnx.is_in_onnx_export()
        if exact or bank.dim() == 3:
            return nearest_neighbours(queries, bank, k)
        prepared = self._prepare(bank)
        if isinstance(prepared, Bf16Table):
            return bf16_nearest(queries, prepared, k)
        if isinstance(prepared, IvfTable):
            return prepared.nearest(queries, k, self.ivf_nprobe)
        return prepared.nearest(queries, k)

    def describe(self) -> str:
        """The backend of the last search, its index and settings (for benchmark tables and logs)."""
        name = self.last_backend or self.name
        if name == "exact_bf16" and isinstance(self._prepared, Bf16Table):
            name += ", fused kernel" if self._prepared.native is not None else ", torch GEMM"
        if name == "ivf" and isinstance(self._prepared, IvfTable):
            name += f" {self._prepared.lists} lists, nprobe {self.ivf_nprobe}, {self._prepared.scan}"
        if not name.startswith("faiss"):
            return name if self.name != "auto" else f"auto: {name}"
        spec = self._prepared.spec if isinstance(self._prepared, FaissIndex) else self.faiss_index
        return f"faiss {spec}, nprobe {self.faiss_nprobe}"
