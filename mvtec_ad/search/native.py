"""The fused bf16 search kernel (kernels/bf16_lanemin.c): built on first use, loaded with ctypes.

On CPUs with AVX-512 BF16 but no AMX (AMD Zen 4/5, Intel Cooper Lake) torch's bf16 GEMM reaches
~250 GFLOP/s on 2 cores and writes every score; the fused kernel reaches ~380 and writes none
(README, Benchmarks). On AMX CPUs oneDNN's GEMM is faster still, so exact_bf16 keeps it there;
ivf needs the kernel on any CPU. The kernel is compiled once per source version with the system
C compiler (`cc`, or $CC) into the user's cache folder; without a compiler search falls back to
the torch path with one warning, and MVTEC_AD_NATIVE=0 turns the kernel off silently. Nothing is
downloaded and no compiled file ships in the package.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import warnings
from pathlib import Path

import torch

from mvtec_ad.search import cpu

SOURCE = Path(__file__).with_name("kernels") / "bf16_lanemin.c"
FLAGS = (
    "-O3",
    "-mavx512f",
    "-mavx512bw",
    "-mavx512bf16",
    "-fopenmp",
    "-shared",
    "-fPIC",
)  # no -march=native: a cache may be shared
VERSION = 2  # mvad_kernel_version() of the source this module drives
NQ = 12  # queries per register tile (the kernel's NQ)
TILE = 32  # bank rows per register tile (the kernel's TILE): candidates per query
KMEANS_SAMPLE = 256  # training rows per k-means centroid
MAX_LISTS = 4096  # lists of the largest banks (~250 rows each at 1M rows)
OFF = "MVTEC_AD_NATIVE"  # "0" turns the kernel off


def cache_dir() -> Path:
    """Where built kernels live: $MVTEC_AD_CACHE, else $XDG_CACHE_HOME/mvtec_ad, else ~/.cache/mvtec_ad."""
    if os.environ.get("MVTEC_AD_CACHE"):
        return Path(os.environ["MVTEC_AD_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "mvtec_ad"


def unsupported() -> str | None:
    """Why the kernel cannot run in this process (None: it can): opted out, not x86-64, no AVX-512 BF16."""
    if os.environ.get(OFF, "1") == "0":
        return f"{OFF}=0"
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return f"not an x86-64 CPU ({platform.machine()})"
    if cpu.simulated():
        return f"{cpu.OVERRIDE}={cpu.simulated()}: the CPU is seen as plain AVX2"
    if not cpu.has_avx512_bf16():
        return "the CPU has no AVX-512 BF16"
    return None


def amx() -> bool:
    """Whether the CPU has AMX tiles: there oneDNN's bf16 GEMM (~1,200 GFLOP/s on 2 cores) beats the kernel."""
    return cpu.has_amx()


def build(target: Path) -> None:
    """Compile SOURCE into the shared library `target`, atomically (a temporary file beside it, renamed)."""
    compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if not compiler:
        raise RuntimeError("no C compiler found (install gcc, or set CC)")
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=target.parent)
    os.close(fd)
    try:
        done = subprocess.run(
            [compiler, *FLAGS, str(SOURCE), "-o", tmp], capture_output=True, text=True, timeout=120
        )
        if done.returncode != 0:
            raise RuntimeError(f"{compiler} failed: {done.stderr.strip().splitlines()[-1:]}")
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def library() -> ctypes.CDLL | None:
    """The kernel where exact_bf16 search should use it (a CPU with AVX-512 BF16 and no AMX), else None."""
    return None if amx() else load()


@functools.lru_cache(maxsize=1)
def load() -> ctypes.CDLL | None:
    """The loaded kernel, built on first use; None where the CPU cannot run it, or (with one warning
    saying why) where it cannot be built or loaded."""
    if unsupported() is not None:
        return None  # not this CPU's kernel: nothing to warn about
    key = hashlib.sha256(SOURCE.read_bytes() + " ".join(FLAGS).encode()).hexdigest()[:16]
    target = cache_dir() / f"bf16_lanemin-{key}.so"
    try:
        if not target.exists():
            build(target)
        lib = ctypes.CDLL(str(target))
        if lib.mvad_kernel_version() != VERSION:
            raise RuntimeError(f"{target} is version {lib.mvad_kernel_version()}, expected {VERSION}")
    except (OSError, RuntimeError, subprocess.SubprocessError) as error:
        warnings.warn(
            f"exact_bf16 search runs on torch's GEMM, slower on this CPU: the fused kernel could not be "
            f"built or loaded ({error}). Install a C compiler (gcc) or set {OFF}=0 to silence this.",
            RuntimeWarning,
            stacklevel=2,
        )
        return None
    lib.mvad_bf16_lanemin.restype = None
    lib.mvad_bf16_lanemin.argtypes = [
        ctypes.c_void_p,
        ctypes.c_void_p,
        ctypes.c_int64,
        ctypes.c_void_p,
        ctypes.c_int64,
        ctypes.c_int64,
        ctypes.c_void_p,
        ctypes.c_void_p,
        ctypes.c_int,
    ]
    lib.mvad_bf16_lanemin_lists.restype = None
    pointer, int64 = ctypes.c_void_p, ctypes.c_int64
    lib.mvad_bf16_lanemin_lists.argtypes = [pointer, pointer, pointer, int64, pointer, pointer, pointer]
    lib.mvad_bf16_lanemin_lists.argtypes += [int64, int64, pointer, pointer, ctypes.c_int]
    return lib


def tile_layout(rows: torch.Tensor) -> torch.Tensor:
    """bf16 rows [tiles * 32, 2 * k2] as the kernel reads them: [tiles, pair, half, lane, 2], one
    64-byte vector per (tile, column pair, half of 16 rows)."""
    k2 = rows.shape[1] // 2
    return rows.view(-1, 2, 16, k2, 2).permute(0, 3, 1, 2, 4).contiguous()


def query_operand(queries: torch.Tensor, centre: torch.Tensor, d: int, k2: int) -> torch.Tensor:
    """Queries [Q, d] as the kernel's right operand: bf16 pairs of -2 (q - centre), one int32 a pair [Q, k2].

    Refuses queries of another width than the bank's (padding would crop or mis-pair them silently).
    """
    if queries.dim() != 2 or queries.shape[1] != d:
        raise ValueError(
            f"queries of shape {tuple(queries.shape)} against a memory bank of {d}-dim rows: "
            "the features must come from the backbone and layers the bank was fitted with."
        )
    operand = torch.nn.functional.pad((queries.detach().cpu().float() - centre) * -2.0, (0, 2 * k2 - d))
    return operand.bfloat16().view(torch.int32)


class LaneMinTable:
    """A float32 bank [N, D] laid out for the kernel: centred bf16 rows in tiles of 32, their norms."""

    def __init__(self, bank: torch.Tensor, centre: torch.Tensor, lib: ctypes.CDLL) -> None:
        self.lib = lib
        self.n, self.d = bank.shape
        self.k2 = (self.d + 1) // 2
        self.tiles = max(1, -(-self.n // TILE))
        pad_rows, pad_cols = self.tiles * TILE - self.n, 2 * self.k2 - self.d
        rows = torch.nn.functional.pad(bank.detach().cpu().float() - centre.cpu(), (0, pad_cols)).bfloat16()
        norms = rows.float().square().sum(1)
        self.norms = torch.cat([norms, norms.new_full((pad_rows,), 1e30)]).contiguous()
        rows = torch.cat([rows, rows.new_zeros(pad_rows, 2 * self.k2)])
        self.rows = tile_layout(rows)
        self.centre = centre.cpu()

    def candidates(self, queries: torch.Tensor, keep: int = TILE) -> torch.Tensor:
        """Rows [Q, keep] (int64): the `keep` best of the lane minima (per lane l, the row t * 32 + l
        with the smallest bf16 distance to the query), for queries [Q, D]."""
        q, keep = len(queries), min(keep, TILE)
        operand = torch.nn.functional.pad(
            query_operand(queries, self.centre, self.d, self.k2), (0, 0, 0, (-q) % NQ)
        )
        # NQ queries interleaved per column pair: [query tiles, k2, NQ]
        operand = operand.view(-1, NQ, self.k2).transpose(1, 2).contiguous()
        qtiles = len(operand)
        best = torch.empty(qtiles * NQ, TILE)
        idx = torch.empty(qtiles * NQ, TILE, dtype=torch.int32)
        threads = max(1, min(torch.get_num_threads(), qtiles))
        self.lib.mvad_bf16_lanemin(
            self.rows.data_ptr(),
            self.norms.data_ptr(),
            self.tiles,
            operand.data_ptr(),
            qtiles,
            self.k2,
            best.data_ptr(),
            idx.data_ptr(),
            threads,
        )
        rows = idx[:q].long() * TILE + torch.arange(TILE)
        if keep < TILE:
            rows = rows.gather(1, best[:q].topk(keep, dim=1, largest=False, sorted=True)[1])
        return rows.clamp_max_(self.n - 1)  # a lane with padding rows only points at a real row


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


class ListTable:
    """A bank [N, D] cut into k-means lists, each laid out as the kernel's tiles: an inverted file
    whose probed lists are scanned by the fused kernel, queries grouped by list."""

    def __init__(self, bank: torch.Tensor, centre: torch.Tensor, lib: ctypes.CDLL, lists: int, seed: int = 0):
        self.lib = lib
        x = bank.detach().cpu().float() - centre.cpu()
        self.n, self.d = x.shape
        self.k2 = (self.d + 1) // 2
        self.lists = max(1, min(lists, self.n, MAX_LISTS))
        assign = kmeans(x, self.lists, seed=seed)
        counts = torch.bincount(assign, minlength=self.lists)
        self.centroids = (
            torch.zeros(self.lists, self.d).index_add_(0, assign, x) / counts.clamp_min(1)[:, None]
        )
        tiles_per = (counts + TILE - 1) // TILE
        self.list_tile = torch.cat([tiles_per.new_zeros(1), tiles_per.cumsum(0)]).contiguous()
        self.tiles = int(self.list_tile[-1])
        order = assign.argsort(stable=True)  # rows by list
        starts = torch.cat([counts.new_zeros(1), counts.cumsum(0)[:-1]])
        slot = self.list_tile[:-1][assign[order]] * TILE + (torch.arange(self.n) - starts[assign[order]])
        self.perm = torch.full((self.tiles * TILE,), -1, dtype=torch.long)
        self.perm[slot] = order
        rows = torch.nn.functional.pad(x, (0, 2 * self.k2 - self.d)).bfloat16()
        padded = rows.new_zeros(self.tiles * TILE, 2 * self.k2)
        padded[slot] = rows[order]
        norms = torch.full((self.tiles * TILE,), 1e30)
        norms[slot] = rows[order].float().square().sum(1)
        self.norms = norms.contiguous()
        self.rows = tile_layout(padded)
        self.centre = centre.cpu()

    def candidates(self, queries: torch.Tensor, nprobe: int, keep: int = TILE) -> torch.Tensor:
        """Rows [Q, keep] (int64): the `keep` best of the lane minima (smallest bf16 distance per lane)
        over the rows of the `nprobe` lists nearest each query [Q, D]; a lane that saw no row
        repeats the query's best row."""
        q = len(queries)
        operand = query_operand(queries, self.centre, self.d, self.k2).contiguous()
        x = queries.detach().cpu().float() - self.centre
        near = torch.addmm((self.centroids * self.centroids).sum(1), x, self.centroids.T, alpha=-2.0)
        probes = near.topk(min(nprobe, self.lists), dim=1, largest=False)[1]  # [Q, nprobe]
        key = (probes * q + torch.arange(q)[:, None]).flatten().sort()[0]  # by list, then query
        probe_q = (key % q).to(torch.int32).contiguous()
        probe_ptr = torch.cat([key.new_zeros(1), torch.bincount(key // q, minlength=self.lists).cumsum(0)])
        best = torch.empty(q, TILE)
        idx = torch.empty(q, TILE, dtype=torch.int32)
        threads = max(1, min(torch.get_num_threads(), q))
        self.lib.mvad_bf16_lanemin_lists(
            self.rows.data_ptr(),
            self.norms.data_ptr(),
            self.list_tile.data_ptr(),
            self.lists,
            probe_ptr.contiguous().data_ptr(),
            probe_q.data_ptr(),
            operand.data_ptr(),
            q,
            self.k2,
            best.data_ptr(),
            idx.data_ptr(),
            threads,
        )
        slots = idx.long() * TILE + torch.arange(TILE)
        rows = torch.where(idx >= 0, self.perm[slots.clamp_min(0)], -1)
        lanes = best.topk(min(keep, TILE), dim=1, largest=False, sorted=True)[1]  # best first: a real row
        rows = rows.gather(1, lanes)
        return torch.where(rows >= 0, rows, rows[:, :1])
