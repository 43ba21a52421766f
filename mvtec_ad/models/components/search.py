"""The memory banks' nearest-neighbour search, by one of four backends.

    exact_fp32  one float32 GEMM per chunk of queries (nearest.nearest_neighbours); what export traces
    exact_bf16  the whole bank ranked in bf16, the best few candidates re-ranked in float32: by the
                fused kernel (native.py) on CPUs with AVX-512 BF16 and no AMX, else by torch's GEMM
    ivf         an inverted file: k-means lists of ~ROWS_PER_LIST rows, each query's `ivf_nprobe`
                nearest lists scanned by the fused kernel (queries grouped by list), float32 re-rank
    faiss       a faiss index (flat, IVF or HNSW) over the bank: the optional extra `.[faiss]`
    auto        ivf for banks of FLAT_BELOW rows or more where the fused kernel runs; else exact_bf16
                where the device multiplies bf16 natively (CPUs with AVX512-BF16 or AMX, CUDA GPUs
                from Ampere on); else exact_fp32: emulated bf16 is slower than float32

Every backend returns float32 distances recomputed from the differences to the rows it found,
so a reported distance is always the exact distance to that row; the backends differ only in
which row they find (exact_bf16 misses the exact nearest row for ~1-4 in 10,000 queries on
magnetic_tile features, ivf at 24 probes for ~9, faiss IVF for a few in 1,000). What a backend
derives from the bank (a bf16 table, lists, a faiss index) is rebuilt whenever the bank changes
and never saved: checkpoints hold the bank alone.
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable
from typing import Literal

import torch

from mvtec_ad.errors import ConfigError, DependencyError
from mvtec_ad.models.components import native
from mvtec_ad.models.components.nearest import (
    CHUNK_ELEMENTS,
    CPU_CHUNK_ELEMENTS,
    gather_rows,
    nearest_neighbours,
)

SearchName = Literal["auto", "exact_fp32", "exact_bf16", "faiss", "ivf"]
SEARCHES = ("auto", "exact_fp32", "exact_bf16", "faiss", "ivf")
RERANK = 8  # bf16 candidates re-ranked in float32 per query: recall@1 0.99996 on magnetic_tile
# (the fused kernel keeps the best 8 of its 32 lane minima: recall 0.9999 as with all 32, a sixth of the re-rank)
GROUP = 16  # bank rows whose smallest bf16 score is taken at once: a strided, vectorised minimum
NATIVE_CHUNK = 2048  # queries per fused-kernel call and re-rank (8 candidate rows each: 10 MB at D = 152)
FLAT_BELOW = 10_000  # `faiss_index: auto` searches smaller banks exhaustively (IndexFlatL2)
ROWS_PER_LIST = 200  # `faiss_index: auto` and ivf: about this many bank rows per IVF list
IVF_NPROBE = 24  # ivf's lists probed per query: recall@1 1.0000 on 8,000 magnetic_tile patches (16: 0.9989)


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


def _rerank(
    queries: torch.Tensor, bank: torch.Tensor, candidates: torch.Tensor, k: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact float32 distances to candidate rows [..., Q, r]; the k nearest of them, ascending."""
    distances = (queries.unsqueeze(-2) - gather_rows(bank, candidates)).norm(dim=-1)
    if k == 1:
        best = distances.argmin(-1, keepdim=True)
        return distances.gather(-1, best), candidates.gather(-1, best)
    distances, order = distances.topk(k, dim=-1, largest=False)  # sorted ascending
    return distances, candidates.gather(-1, order)


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


def _kernel_nearest(
    queries: torch.Tensor, bank: torch.Tensor, candidates: Callable[[torch.Tensor, int], torch.Tensor]
) -> tuple[torch.Tensor, torch.Tensor]:
    """The nearest row of each query [..., Q, D] from the fused kernel's `candidates(queries, RERANK)`,
    re-ranked in float32, in chunks of NATIVE_CHUNK queries: distances and indices [..., Q, 1]."""
    found = [
        _rerank(q, bank, candidates(q, RERANK), 1)
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
        return _kernel_nearest(queries, bank, table.native.candidates)
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
        d, i = _rerank(q, bank, candidates, k)
        distances.append(d)
        indices.append(i)
    shape = (*queries.shape[:-1], k)
    return torch.cat(distances).view(shape), torch.cat(indices).view(shape)


def fast_bf16(device: torch.device) -> bool:
    """Whether `device` multiplies bf16 matrices in hardware (else bf16 is emulated, slower than float32)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported(including_emulation=False)
    if device.type == "cpu":
        checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
        return any(getattr(torch.cpu, name, lambda: False)() for name in checks)
    return False


def require_faiss():
    """The faiss module, or a DependencyError naming the extra to install."""
    try:
        import faiss
    except ImportError as error:
        raise DependencyError(
            "--model.search faiss needs the faiss package: pip install -e '.[faiss]' "
            "(or pip install faiss-cpu), or pass --model.search exact_bf16."
        ) from error
    return faiss


def faiss_spec(index: str, n: int) -> str:
    """The faiss index_factory string of `index` for a bank of n rows ('auto': Flat, or IVF with ~200 rows a list)."""
    if index != "auto":
        return index
    if n < FLAT_BELOW:
        return "Flat"
    return f"IVF{max(1, round(n / ROWS_PER_LIST))},Flat"


class FaissIndex:
    """A faiss index over a bank [N, D] (on the host; faiss-gpu is not needed), built by index_factory."""

    def __init__(self, bank: torch.Tensor, index: str, nprobe: int) -> None:
        faiss = require_faiss()
        self.bank = bank.float()
        self.spec = faiss_spec(index, len(bank))
        rows = self.bank.detach().cpu().contiguous().numpy()
        try:
            self.index = faiss.index_factory(rows.shape[1], self.spec, faiss.METRIC_L2)
        except RuntimeError as error:
            raise ConfigError(
                f"--model.faiss_index {index!r}: faiss cannot build {self.spec!r} ({str(error).splitlines()[0]}); "
                "pass a faiss index_factory string such as Flat, IVF256,Flat or HNSW32, or auto."
            ) from error
        if not self.index.is_trained:
            self.index.train(rows)
        self.index.add(rows)
        inner = faiss.extract_index_ivf(self.index) if "IVF" in self.spec else None
        if inner is not None:
            inner.nprobe = nprobe
        if hasattr(self.index, "hnsw"):
            self.index.hnsw.efSearch = max(self.index.hnsw.efSearch, 4 * nprobe)

    def nearest(self, queries: torch.Tensor, k: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
        n = len(self.bank)
        if n == 0:
            return nearest_neighbours(queries, self.bank, k)
        k = min(k, n)
        flat = queries.reshape(-1, queries.shape[-1]).float()
        _, found = self.index.search(flat.detach().cpu().contiguous().numpy(), k)
        candidates = torch.from_numpy(found).to(queries.device)
        missing = (candidates < 0).any(1)  # fewer than k rows in the lists it probed
        candidates = candidates.clamp_min(0)
        distances, indices = _rerank(flat, self.bank, candidates, k)
        if bool(missing.any()):
            distances[missing], indices[missing] = nearest_neighbours(flat[missing], self.bank, k)
        shape = (*queries.shape[:-1], k)
        return distances.view(shape), indices.view(shape)


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
        return _kernel_nearest(queries, self.bank, lambda q, keep: self.table.candidates(q, nprobe, keep))


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
        faiss_nprobe: int = 16,
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
        if search == "ivf":
            IvfTable.require()
        self.name = search
        self.faiss_index = faiss_index
        self.faiss_nprobe = faiss_nprobe
        self.ivf_nprobe = ivf_nprobe
        self.last_backend: str | None = None
        self._key: tuple | None = None
        self._prepared: Bf16Table | FaissIndex | IvfTable | None = None

    def backend(self, device: torch.device, rows: int | None = None) -> str:
        """The backend that runs on `device` for a bank of `rows`: the chosen one, or what `auto` picks
        there: ivf for banks of FLAT_BELOW rows or more on a CPU the fused kernel runs on, else
        exact_bf16 where bf16 runs in hardware, else exact_fp32."""
        if self.name != "auto":
            return self.name
        if device.type == "cpu" and (rows is None or rows >= FLAT_BELOW) and native.load() is not None:
            return "ivf"
        return "exact_bf16" if fast_bf16(device) else "exact_fp32"

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
            name += f" {self._prepared.lists} lists, nprobe {self.ivf_nprobe}"
        if not name.startswith("faiss"):
            return name if self.name != "auto" else f"auto: {name}"
        spec = self._prepared.spec if isinstance(self._prepared, FaissIndex) else self.faiss_index
        return f"faiss {spec}, nprobe {self.faiss_nprobe}"
