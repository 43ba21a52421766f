"""The fused bf16 search kernel: its lane minima against a torch reference, its build, cache and fallback."""

from __future__ import annotations

import warnings

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
    built = list(fresh_kernel.iterdir())
    assert len(built) == 1 and built[0].name.startswith("bf16_lanemin-") and built[0].suffix == ".so"
    stamp = built[0].stat().st_mtime_ns
    native.load.cache_clear()
    assert native.load() is not None
    assert list(fresh_kernel.iterdir()) == built and built[0].stat().st_mtime_ns == stamp  # not rebuilt


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


def test_kmeans_trains_on_a_sample_and_assigns_every_row(monkeypatch):
    monkeypatch.setattr(native, "KMEANS_SAMPLE", 4)  # 5 lists x 4 rows train; all 600 are assigned
    g = torch.Generator().manual_seed(6)
    centres = torch.randn(5, 8, generator=g) * 20
    truth = torch.arange(600) % 5
    rows = centres[truth] + torch.randn(600, 8, generator=g)
    assign = native.kmeans(rows, 5)
    assert assign.shape == (600,) and int(assign.max()) < 5
    assert torch.equal(native.kmeans(rows, 5), assign)  # seeded
    # far tighter than the rows around their overall mean (random lists: the same; one merge of two
    # true clusters, which a random start allows: ~10x tighter; clean lists: ~400x)
    means = (
        torch.zeros(5, 8).index_add_(0, assign, rows)
        / torch.bincount(assign, minlength=5).clamp_min(1)[:, None]
    )
    inertia = (rows - means[assign]).square().sum(1).mean()
    assert inertia < (rows - rows.mean(0)).square().sum(1).mean() / 5


def test_list_table_refuses_queries_of_another_width():
    lib = kernel_or_skip()
    table = native.ListTable(torch.randn(100, 16), torch.zeros(16), lib, lists=3)
    with pytest.raises(ValueError, match=r"queries of shape \(3, 18\) against a memory bank of 16-dim rows"):
        table.candidates(torch.randn(3, 18), nprobe=2)
