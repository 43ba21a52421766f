"""The fused bf16 search kernel (kernels/bf16_lanemin.c): built on first use, loaded with ctypes.

On CPUs with AVX-512 BF16 but no AMX (AMD Zen 4/5, Intel Cooper Lake) torch's bf16 GEMM reaches
~250 GFLOP/s on 2 cores and writes every score; the fused kernel reaches ~380 and writes none
(docs/benchmarks.md). On AMX CPUs oneDNN's GEMM is faster still, so exact_bf16 keeps it there;
ivf needs the kernel on any CPU. The kernel is compiled once per source version with the system
C compiler (`cc`, or $CC) into the user's cache folder; without a compiler search falls back to
the torch path with one warning, and MVTEC_AD_NATIVE=0 turns the kernel off silently. Nothing is
downloaded and no compiled file ships in the package. dlopen runs a library's constructors, so a
cached build is opened only if it is this user's own, in a folder no one else can write, and its
sha256 is the one recorded beside it at build time; anything else is rebuilt (in a private
temporary folder where the cache folder is not safe).
"""

from __future__ import annotations

import _ctypes
import ctypes
import functools
import hashlib
import os
import platform
import shutil
import stat
import subprocess
import tempfile
import warnings
from pathlib import Path

import torch

from mvtec_ad.search import cpu
from mvtec_ad.search.lists import kmeans_lists

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
OFF = "MVTEC_AD_NATIVE"  # "0" turns the kernel off
LOAD_ADVICE = "Check that $CC (or cc) builds working shared libraries"


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


class KernelError(Exception):
    """Why the kernel could not be built or loaded, and the advice that fits that cause (one warning line)."""

    def __init__(self, why: str, advice: str) -> None:
        super().__init__(why)
        self.advice = advice


def library_name() -> str:
    """The cached file's name, keyed by the source and flags: a changed kernel never meets an old build."""
    key = hashlib.sha256(SOURCE.read_bytes() + " ".join(FLAGS).encode()).hexdigest()[:16]
    return f"bf16_lanemin-{key}.so"


def hash_file(library: Path) -> Path:
    """Where the sha256 of `library` is recorded when it is built: `<name>.so.sha256` beside it."""
    return library.with_name(library.name + ".sha256")


def sha256(path: Path) -> str:
    """The hex sha256 of a file's bytes."""
    return hashlib.sha256(path.read_bytes()).hexdigest()


def others_could_write(path: Path) -> str | None:
    """Why someone other than this user could have written `path` (a link, another owner, group- or
    world-writable), else None."""
    st = path.lstat()  # a link is judged, not followed: whoever owns the link chooses what it names
    if stat.S_ISLNK(st.st_mode):
        return "a symbolic link"
    if st.st_uid != os.getuid():
        return f"owned by another user (uid {st.st_uid})"
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        return f"writable by others (mode {stat.S_IMODE(st.st_mode):o})"
    return None


def unsafe_folder(folder: Path) -> str | None:
    """Why the cache folder cannot be trusted with code (others could plant or swap files in it), else None;
    a missing folder is created private (0700)."""
    try:
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        return others_could_write(folder)
    except OSError as error:
        return f"not usable ({error.strerror or error})"


def unverified(library: Path) -> str | None:
    """Why a cached library must not be opened (dlopen runs its constructors), else None: it and its recorded
    hash must be this user's own, writable by no one else, and its sha256 the recorded one."""
    record = hash_file(library)
    try:
        for path in (library, record):
            if why := others_could_write(path):
                return f"{path.name} is {why}"
        if record.read_text().strip() != sha256(library):
            return f"{library.name} does not match the sha256 recorded when it was built"
    except OSError as error:
        return f"{library.name} or its hash cannot be read ({error.strerror or error})"
    return None


def compiler() -> str:
    """The C compiler to build with: $CC, else cc or gcc on the PATH."""
    found = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if not found:
        raise KernelError("no C compiler found", "Install a C compiler (gcc) or set CC")
    return found


def write_atomically(target: Path, data: bytes) -> None:
    """Write `data` to `target` through a private temporary file beside it, renamed: never half-written."""
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as file:
            file.write(data)
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def build(library: Path) -> None:
    """Compile SOURCE into `library` and record its sha256 beside it, each through a temporary file renamed,
    the hash last: an interrupted build leaves no hash that vouches for a half-written library."""
    cc = compiler()
    fd, tmp = tempfile.mkstemp(prefix=f".{library.name}.", dir=library.parent)
    os.close(fd)
    try:
        try:
            done = subprocess.run(
                [cc, *FLAGS, str(SOURCE), "-o", tmp], capture_output=True, text=True, timeout=120
            )
        except (OSError, subprocess.SubprocessError) as error:
            raise KernelError(
                f"{cc} could not run ({error})", "Install a C compiler (gcc) or set CC"
            ) from error
        if done.returncode != 0:
            last = (done.stderr.strip().splitlines() or [f"exit status {done.returncode}"])[-1]
            raise KernelError(
                f"{cc} failed: {last}", "Set CC to a compiler with AVX-512 BF16 (gcc 10+, clang 9+)"
            )
        os.chmod(tmp, 0o700)  # the linker's mode follows the umask, which may let the group write
        digest = sha256(Path(tmp))
        os.replace(tmp, library)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    write_atomically(hash_file(library), digest.encode() + b"\n")


def opened(library: Path) -> ctypes.CDLL:
    """The library dlopened, if it is the kernel version this module drives. Only for verified files (or one
    just built): dlopen runs the file's constructors."""
    try:
        lib = ctypes.CDLL(str(library))
    except OSError as error:
        raise KernelError(f"{library.name} could not be loaded ({error})", LOAD_ADVICE) from error
    try:
        version = lib.mvad_kernel_version()
    except AttributeError:
        version = None
    if version != VERSION:
        _ctypes.dlclose(lib._handle)  # else dlopen of a rebuild at the same path returns this one again
        raise KernelError(f"{library.name} is kernel version {version}, expected {VERSION}", LOAD_ADVICE)
    return lib


def cached(folder: Path) -> ctypes.CDLL:
    """The kernel from a trusted cache folder: the cached build if it verifies and loads, else built once."""
    library = folder / library_name()
    if unverified(library) is None:
        try:
            return opened(library)
        except KernelError:
            pass  # this user's build, yet not the kernel: built afresh below
    build(library)
    return opened(library)


def built_privately() -> ctypes.CDLL:
    """The kernel built into a fresh private folder (mkdtemp: 0700) and loaded from there; the folder is
    removed at once (the loaded library stays mapped)."""
    with tempfile.TemporaryDirectory(prefix="mvtec_ad-kernel-") as folder:
        library = Path(folder) / library_name()
        build(library)
        return opened(library)


def library() -> ctypes.CDLL | None:
    """The kernel where exact_bf16 search should use it (a CPU with AVX-512 BF16 and no AMX), else None."""
    return None if amx() else load()


@functools.lru_cache(maxsize=1)
def load() -> ctypes.CDLL | None:
    """The loaded kernel, built on first use; None where the CPU cannot run it, or (with one warning
    saying why) where it cannot be built or loaded. Nothing from a cache others could write is run."""
    if unsupported() is not None:
        return None  # not this CPU's kernel: nothing to warn about
    folder = cache_dir().resolve()
    unsafe = unsafe_folder(folder)
    try:
        lib = built_privately() if unsafe else cached(folder)
    except KernelError as error:
        return fall_back(str(error), error.advice)
    except OSError as error:  # the cache cannot be written: full, read-only
        return fall_back(str(error), "Set MVTEC_AD_CACHE to a folder you can write")
    if unsafe:
        warnings.warn(
            f"the kernel cache {folder} is {unsafe}, so nothing in it is loaded and the fused kernel is "
            "built afresh in a private temporary folder at each run. Set MVTEC_AD_CACHE to a folder of "
            "your own that no one else can write (or chmod go-w this one) to keep the build.",
            RuntimeWarning,
            stacklevel=2,
        )
    return declared(lib)


def fall_back(why: str, advice: str) -> None:
    """Say once why search takes the torch path, and what would fix it."""
    warnings.warn(
        f"exact_bf16 search runs on torch's GEMM, slower on this CPU: the fused kernel could not be "
        f"built or loaded ({why}). {advice}, or set {OFF}=0 to silence this.",
        RuntimeWarning,
        stacklevel=3,
    )


def declared(lib: ctypes.CDLL) -> ctypes.CDLL:
    """The kernel with its entry points' argument types declared for ctypes."""
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
    return operand.bfloat16().contiguous().view(torch.int32)  # pairs need a unit stride, whatever the layout


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


class ListTable:
    """A bank [N, D] cut into k-means lists, each laid out as the kernel's tiles: an inverted file
    whose probed lists are scanned by the fused kernel, queries grouped by list."""

    def __init__(self, bank: torch.Tensor, centre: torch.Tensor, lib: ctypes.CDLL, lists: int, seed: int = 0):
        self.lib = lib
        x = bank.detach().cpu().float() - centre.cpu()
        self.n, self.d = x.shape
        self.k2 = (self.d + 1) // 2
        assign, counts, self.centroids = kmeans_lists(x, lists, seed)
        self.lists = len(counts)
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
