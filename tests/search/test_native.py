"""The fused bf16 search kernel: its lane minima against a torch reference, its build, cache and fallback."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path

import pytest
import torch

from mvtec_ad.search import native
from mvtec_ad.search.bank import BankSearch
from mvtec_ad.search.bf16 import Bf16Table


def kernel_or_skip():
    why = native.unsupported()
    if why is not None:
        pytest.skip(f"the fused kernel does not run here: {why}")
    lib = native.load()
    if lib is None:
        pytest.skip("the fused kernel could not be built here (see the warning)")
    return lib


def reference_minima(queries, bank, centre):
    """Per query and lane l (rows t * 32 + l), the smallest norm - 2 x.q of the bf16-rounded operands, in float64."""
    x = (bank - centre).bfloat16().double()
    q = ((queries - centre) * -2.0).bfloat16().double()
    scores = (x * x).sum(1) + q @ x.T  # [Q, N]
    tiles = -(-len(bank) // 32)
    padded = torch.full((len(queries), tiles * 32), float("inf"), dtype=torch.float64)
    padded[:, : len(bank)] = scores
    return padded.view(len(queries), tiles, 32).amin(1), scores


@pytest.mark.parametrize(("n", "q", "d"), [(7, 5, 16), (100, 13, 33), (3001, 50, 128), (64, 24, 2)])
def test_lane_minima_match_the_reference_and_name_their_rows(n, q, d):
    """n below one tile, not a multiple of 32, odd D (a padded column), queries not a multiple of 12."""
    lib = kernel_or_skip()
    g = torch.Generator().manual_seed(n)
    bank, queries = torch.randn(n, d, generator=g) + 1.5, torch.randn(q, d, generator=g) + 1.5
    centre = bank.mean(0)
    table = native.LaneMinTable(bank, centre, lib)
    rows = table.candidates(queries)
    assert rows.shape == (q, 32) and rows.dtype == torch.long
    assert int(rows.min()) >= 0 and int(rows.max()) < n  # padding rows are never returned
    expected, scores = reference_minima(queries, bank, centre)
    lanes = torch.arange(32)
    real = lanes < n  # lanes that hold at least one real row
    found = scores.gather(1, rows)  # the score of each returned row
    torch.testing.assert_close(found[:, real], expected[:, real], rtol=2e-5, atol=2e-4)
    assert torch.equal(rows[:, real] % 32, lanes[real].expand(q, -1))  # lane l's row is one of t * 32 + l


def test_ties_go_to_the_first_tile_and_empty_queries_work():
    lib = kernel_or_skip()
    bank = torch.ones(96, 8)  # three tiles of identical rows: every lane ties
    table = native.LaneMinTable(bank, bank.mean(0), lib)
    rows = table.candidates(torch.ones(3, 8))
    assert torch.equal(rows, torch.arange(32).expand(3, -1))  # strict < keeps the first tile
    assert table.candidates(torch.empty(0, 8)).shape == (0, 32)


def test_queries_with_a_strided_last_dim_give_the_contiguous_answer():
    """Queries read off NCHW feature maps (permute + reshape: the channel stride is h * w, not 1)."""
    lib = kernel_or_skip()
    g = torch.Generator().manual_seed(4)
    bank, maps = torch.randn(200, 16, generator=g), torch.randn(1, 16, 3, 5, generator=g)
    queries = maps.permute(0, 2, 3, 1).reshape(-1, 16)
    assert queries.stride(-1) != 1
    table = native.LaneMinTable(bank, bank.mean(0), lib)
    assert torch.equal(table.candidates(queries), table.candidates(queries.contiguous()))


def test_queries_of_another_width_are_refused():
    lib = kernel_or_skip()
    table = native.LaneMinTable(torch.randn(40, 16), torch.zeros(16), lib)
    with pytest.raises(ValueError, match=r"queries of shape \(3, 12\) against a memory bank of 16-dim rows"):
        table.candidates(torch.randn(3, 12))


def test_threads_split_queries_without_changing_answers():
    lib = kernel_or_skip()
    g = torch.Generator().manual_seed(3)
    bank, queries = torch.randn(2000, 64, generator=g), torch.randn(300, 64, generator=g)
    table = native.LaneMinTable(bank, bank.mean(0), lib)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = table.candidates(queries)
        torch.set_num_threads(2)
        two = table.candidates(queries)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(one, two)


@pytest.fixture
def fresh_kernel(monkeypatch, tmp_path):
    """native.load with an empty cache folder and no memory of an earlier load."""
    monkeypatch.setenv("MVTEC_AD_CACHE", str(tmp_path / "cache"))
    native.load.cache_clear()
    yield tmp_path / "cache"
    native.load.cache_clear()


def test_build_is_cached_atomically_and_reused(fresh_kernel):
    kernel_or_skip()
    library = fresh_kernel / native.library_name()
    record = native.hash_file(library)
    assert sorted(fresh_kernel.iterdir()) == [library, record]  # no temporary file left
    assert library.name.startswith("bf16_lanemin-") and record.name == library.name + ".sha256"
    assert record.read_text().strip() == hashlib.sha256(library.read_bytes()).hexdigest()
    assert fresh_kernel.stat().st_mode & 0o077 == 0 and library.stat().st_mode & 0o022 == 0  # private
    stamps = library.stat().st_mtime_ns, record.stat().st_mtime_ns
    native.load.cache_clear()
    assert native.load() is not None
    assert (library.stat().st_mtime_ns, record.stat().st_mtime_ns) == stamps  # not rebuilt


def test_no_compiler_falls_back_to_torch_with_one_warning(fresh_kernel, monkeypatch):
    if native.unsupported() is not None:
        pytest.skip(f"the fused kernel does not run here: {native.unsupported()}")
    monkeypatch.setenv("CC", str(fresh_kernel / "no-such-compiler"))
    with pytest.warns(RuntimeWarning, match="Install a C compiler"):
        assert native.load() is None
    assert not fresh_kernel.exists() or not any(fresh_kernel.iterdir())  # no half-written library left
    monkeypatch.setattr(native, "library", native.load)  # as on a CPU without AMX
    g = torch.Generator().manual_seed(0)
    bank, queries = torch.randn(500, 32, generator=g), torch.randn(40, 32, generator=g)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the warning was said once, at the first load
        _, indices = BankSearch("exact_bf16")(queries, bank)
    assert Bf16Table(bank).native is None
    assert torch.equal(indices, torch.cdist(queries, bank).argmin(1, keepdim=True))


def test_opt_out_turns_the_kernel_off_silently(fresh_kernel, monkeypatch):
    monkeypatch.setenv(native.OFF, "0")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert native.load() is None
    assert native.unsupported() == f"{native.OFF}=0"


def test_list_table_holds_every_row_once_in_its_lists_tiles():
    lib = kernel_or_skip()
    g = torch.Generator().manual_seed(5)
    bank = torch.randn(1000, 24, generator=g)
    table = native.ListTable(bank, bank.mean(0), lib, lists=7)
    real = table.perm[table.perm >= 0]
    assert torch.equal(real.sort()[0], torch.arange(1000))  # each row exactly once
    assert int(table.list_tile[0]) == 0 and (table.list_tile[1:] >= table.list_tile[:-1]).all()
    assert table.tiles == int(table.list_tile[-1]) and table.rows.shape[0] == table.tiles
    assert (table.norms[table.perm < 0] == 1e30).all()  # padding rows never win a lane
    rows = table.candidates(torch.randn(30, 24, generator=g), nprobe=2)
    assert rows.shape == (30, 32) and int(rows.min()) >= 0 and int(rows.max()) < 1000


def test_list_table_refuses_queries_of_another_width():
    lib = kernel_or_skip()
    table = native.ListTable(torch.randn(100, 16), torch.zeros(16), lib, lists=3)
    with pytest.raises(ValueError, match=r"queries of shape \(3, 18\) against a memory bank of 16-dim rows"):
        table.candidates(torch.randn(3, 18), nprobe=2)


def needs_kernel():
    """Skip where load() cannot build and run the real kernel (another CPU, no C compiler)."""
    if native.unsupported() is not None:
        pytest.skip(f"the fused kernel does not run here: {native.unsupported()}")
    if shutil.which("cc") is None and shutil.which("gcc") is None and not os.environ.get("CC"):
        pytest.skip("no C compiler here")


def shared_library(folder: Path, name: str, source: str) -> Path:
    """A shared library compiled from C `source` with the system compiler (skips where there is none)."""
    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        pytest.skip("no C compiler here")
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}.c").write_text(source)
    subprocess.run(
        [cc, "-shared", "-fPIC", str(folder / f"{name}.c"), "-o", str(folder / f"{name}.so")], check=True
    )
    return folder / f"{name}.so"


def planted(folder: Path, marker: Path) -> bytes:
    """A library whose constructor (run by dlopen) creates `marker`, with the kernel's symbols and version."""
    source = f"""#include <stdio.h>
__attribute__((constructor)) static void planted(void) {{
    FILE *f = fopen({json.dumps(str(marker))}, "w");
    if (f) fclose(f);
}}
int mvad_kernel_version(void) {{ return {native.VERSION}; }}
void mvad_bf16_lanemin(void) {{}}
void mvad_bf16_lanemin_lists(void) {{}}
"""
    return shared_library(folder, "planted", source).read_bytes()


def plant(cache: Path, data: bytes, record: bool) -> Path:
    """`data` under the kernel's name in a private cache folder; with `record`, its true sha256 beside it."""
    cache.mkdir(mode=0o700, parents=True, exist_ok=True)
    library = cache / native.library_name()
    library.write_bytes(data)
    if record:
        native.hash_file(library).write_text(hashlib.sha256(data).hexdigest())
    return library


def test_only_this_users_unchanged_build_is_trusted(tmp_path, monkeypatch):
    """The checks run before any dlopen: no recorded hash, another hash, a writable file, another owner."""
    marker = tmp_path / "constructor-ran"
    data = planted(tmp_path / "src", marker)
    library = plant(tmp_path / "cache", data, record=False)
    assert "cannot be read" in native.unverified(library)  # no hash recorded: not built by load()
    native.hash_file(library).write_text("0" * 64)
    assert "does not match the sha256" in native.unverified(library)
    native.hash_file(library).write_text(hashlib.sha256(data).hexdigest())
    assert native.unverified(library) is None
    library.chmod(0o666)
    assert "writable by others (mode 666)" in native.unverified(library)
    library.chmod(0o700)
    monkeypatch.setattr(os, "getuid", lambda: os.stat(library).st_uid + 1)
    assert "owned by another user" in native.unverified(library)
    assert not marker.exists()  # nothing was opened to check it


def test_cache_folders_others_can_write_are_not_trusted(tmp_path, monkeypatch):
    cache = tmp_path / "new" / "cache"
    assert native.unsafe_folder(cache) is None and cache.stat().st_mode & 0o777 == 0o700  # created private
    cache.chmod(0o777)
    assert native.unsafe_folder(cache) == "writable by others (mode 777)"
    cache.chmod(0o770)
    assert native.unsafe_folder(cache) == "writable by others (mode 770)"
    cache.chmod(0o755)
    monkeypatch.setattr(os, "getuid", lambda: os.stat(cache).st_uid + 1)
    assert native.unsafe_folder(cache).startswith("owned by another user")


def test_what_dlopen_and_dlsym_raise_becomes_a_kernel_error(tmp_path):
    """Random bytes (dlopen fails) and a library without mvad_kernel_version (dlsym fails): no traceback."""
    junk = tmp_path / "junk.so"
    junk.write_bytes(os.urandom(4096))
    with pytest.raises(native.KernelError, match="could not be loaded"):
        native.opened(junk)
    other = shared_library(tmp_path, "other", "int other(void) { return 0; }\n")
    with pytest.raises(native.KernelError, match="is kernel version None"):
        native.opened(other)


@pytest.mark.parametrize("kind", ["constructor", "random bytes"])
def test_a_planted_or_corrupt_cached_library_is_rebuilt_unopened(fresh_kernel, tmp_path, kind):
    needs_kernel()
    marker = tmp_path / "constructor-ran"
    data = planted(tmp_path / "src", marker) if kind == "constructor" else os.urandom(20000)
    library = plant(fresh_kernel, data, record=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # rebuilt as on first use: nothing to warn about
        lib = native.load()
    assert lib is not None and lib.mvad_kernel_version() == native.VERSION
    assert not marker.exists()  # the planted constructor never ran
    assert library.read_bytes() != data and native.unverified(library) is None  # the real kernel, recorded


def test_a_world_writable_cache_folder_is_not_used(fresh_kernel, tmp_path, monkeypatch):
    """Even a planted library with its true hash beside it: others could swap files in that folder."""
    needs_kernel()
    marker = tmp_path / "constructor-ran"
    data = planted(tmp_path / "src", marker)
    library = plant(fresh_kernel, data, record=True)
    fresh_kernel.chmod(0o777)
    private = tmp_path / "tmp"
    private.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(private))
    with warnings.catch_warnings(record=True) as said:
        warnings.simplefilter("always")
        lib = native.load()
    assert lib is not None and lib.mvad_kernel_version() == native.VERSION
    assert not marker.exists()
    assert [str(w.message).split(",")[0] for w in said] == [
        f"the kernel cache {fresh_kernel.resolve()} is writable by others (mode 777)"
    ]
    assert library.read_bytes() == data  # nothing written into that folder
    assert not any(private.iterdir())  # the private build folder is gone, the library stays loaded


def test_a_truncated_cached_library_is_rebuilt_not_a_crash(fresh_kernel):
    """Truncated after its build (it was SIGBUS in dlopen): opened in another process, as a new run would."""
    needs_kernel()
    fresh_kernel.mkdir(mode=0o700)
    library = fresh_kernel / native.library_name()
    native.build(library)
    whole = library.read_bytes()
    library.write_bytes(whole[: len(whole) // 2])
    run = "import warnings; warnings.simplefilter('error'); from mvtec_ad.search import native; "
    run += "print(native.load().mvad_kernel_version())"
    env = {**os.environ, "MVTEC_AD_CACHE": str(fresh_kernel)}
    done = subprocess.run([sys.executable, "-c", run], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == str(native.VERSION)
    assert len(library.read_bytes()) == len(whole) and native.unverified(library) is None


def test_a_recorded_library_without_the_version_symbol_is_rebuilt(fresh_kernel, tmp_path):
    """This user's own file, hash and all, that is not the kernel: dlsym fails, so it is built afresh."""
    needs_kernel()
    data = shared_library(tmp_path / "src", "other", "int other(void) { return 0; }\n").read_bytes()
    library = plant(fresh_kernel, data, record=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        lib = native.load()
    assert lib is not None and lib.mvad_kernel_version() == native.VERSION
    assert library.read_bytes() != data and native.unverified(library) is None


@pytest.mark.parametrize(
    ("script", "says"),
    [
        ("echo \"cc1: error: unrecognized command-line option '-mavx512bf16'\" >&2; exit 1", "unrecognized"),
        ('for a; do out=$a; done; head -c 3000 /dev/urandom > "$out"', "could not be loaded"),
    ],
)
def test_a_compiler_that_fails_is_not_told_to_install_gcc(fresh_kernel, tmp_path, monkeypatch, script, says):
    """A corrupt cached file and a compiler that exists but fails, or builds junk: one line naming that."""
    monkeypatch.setattr(native, "unsupported", lambda: None)  # fake compilers: runs on any CPU
    compiler = tmp_path / "fake-cc"
    compiler.write_text(f"#!/bin/sh\n{script}\n")
    compiler.chmod(0o755)
    monkeypatch.setenv("CC", str(compiler))
    plant(fresh_kernel, os.urandom(20000), record=False)
    with warnings.catch_warnings(record=True) as said:
        warnings.simplefilter("always")
        assert native.load() is None
    assert len(said) == 1 and says in str(said[0].message)
    assert "Install a C compiler" not in str(said[0].message)
