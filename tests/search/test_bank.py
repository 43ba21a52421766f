"""Search backends against brute force: exact ones find the same rows, approximate ones nearly all."""

from __future__ import annotations

import sys

import pytest
import torch

from mvtec_ad.errors import ConfigError, DependencyError
from mvtec_ad.models.patchcore import PatchCoreModel
from mvtec_ad.search import cpu, native
from mvtec_ad.search.bank import BankSearch
from mvtec_ad.search.bf16 import bf16_operands
from mvtec_ad.search.faiss_index import faiss_spec
from tests.helpers import tiny_dfr_kwargs


def brute_force(queries, bank, k=1):
    d = torch.cdist(queries.double(), bank.double())
    return d.topk(k, dim=-1, largest=False)


def clustered(n_bank, n_queries, dim=32, clusters=20, seed=0):
    """Points around `clusters` centres, far apart: nearest neighbours are well defined."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(clusters, dim, generator=g) * 8
    bank = centres[torch.randint(clusters, (n_bank,), generator=g)] + torch.randn(n_bank, dim, generator=g)
    queries = centres[torch.randint(clusters, (n_queries,), generator=g)] + torch.randn(
        n_queries, dim, generator=g
    )
    return queries + 3.0, bank + 3.0  # off-centre: the bf16 path centres them itself


def nearest_gap_ok(queries, bank, rel=1e-3):
    """Queries whose two nearest rows differ by more than `rel` (ties make 'the same row' ill-defined)."""
    d = brute_force(queries, bank, 2).values
    return (d[:, 1] - d[:, 0]) > rel * d[:, 0]


@pytest.fixture(params=["torch", "kernel"])
def bf16_path(request, monkeypatch):
    """exact_bf16 through torch's GEMM (as on AMX CPUs and GPUs) and through the fused kernel (AVX-512 BF16)."""
    if request.param == "torch":
        monkeypatch.setattr(native, "library", lambda: None)
    elif native.load() is None:
        pytest.skip(f"the fused kernel does not run here: {native.unsupported() or 'it could not be built'}")
    else:
        monkeypatch.setattr(native, "library", native.load)
    return request.param


def gaussian(n_bank, n_queries, dim=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n_queries, dim, generator=g) + 2.0, torch.randn(n_bank, dim, generator=g) + 2.0


@pytest.mark.parametrize("n_bank", [7, 300, 3001])  # 3001: the grouped bf16 candidates, padded columns
@pytest.mark.parametrize("name", ["exact_fp32", "exact_bf16"])
def test_exact_backends_find_the_brute_force_rows(name, n_bank, bf16_path):
    queries, bank = gaussian(n_bank, 1000, seed=n_bank)
    expected = brute_force(queries, bank)
    distances, indices = BankSearch(name)(queries, bank)
    assert indices.shape == distances.shape == (1000, 1)
    assert torch.equal(indices, expected.indices)
    assert int(indices.max()) < n_bank  # never a padded column
    torch.testing.assert_close(distances.double(), expected.values, rtol=1e-5, atol=1e-5)


def test_exact_fp32_on_clustered_rows_and_bf16_recall_there(bf16_path):
    """Tight clusters far from the bank's mean: neighbours much nearer than the norms, bf16's hard case."""
    queries, bank = clustered(3001, 2000, seed=1)
    expected = brute_force(queries, bank)
    clear = nearest_gap_ok(queries, bank)
    _, exact = BankSearch("exact_fp32")(queries, bank)
    assert torch.equal(exact[clear], expected.indices[clear])
    _, found = BankSearch("exact_bf16")(queries, bank)
    assert float((found == expected.indices).float().mean()) >= 0.99


def test_bf16_on_large_gaussian_banks_finds_the_exact_rows(bf16_path):
    queries, bank = gaussian(20_000, 2000, dim=152, seed=3)  # magnetic_tile's width, a bank of 20k
    _, indices = BankSearch("exact_bf16")(queries, bank)
    assert torch.equal(indices, brute_force(queries, bank).indices)


def test_bf16_distances_are_float32_distances_to_the_rows_found(bf16_path):
    queries, bank = gaussian(2000, 300, dim=48, seed=5)
    distances, indices = BankSearch("exact_bf16")(queries, bank, k=4)
    exact = (queries.unsqueeze(1) - bank[indices]).norm(dim=-1)  # float32, from the differences
    assert torch.equal(distances, exact)
    assert (distances[:, 1:] >= distances[:, :-1]).all()  # ascending
    expected = brute_force(queries, bank, 4)
    assert torch.equal(indices, expected.indices)


def test_bf16_batched_queries_and_per_item_banks(bf16_path):
    g = torch.Generator().manual_seed(1)
    queries, shared = torch.randn(3, 40, 16, generator=g), torch.randn(900, 16, generator=g)
    search = BankSearch("exact_bf16")
    distances, indices = search(queries, shared, k=2)
    assert distances.shape == indices.shape == (3, 40, 2)
    assert torch.equal(indices, brute_force(queries, shared, 2).indices)
    per_item = torch.randn(3, 50, 16, generator=g)  # one bank per item (knn's neighbour images)
    distances, indices = search(queries, per_item)
    expected = brute_force(queries, per_item)
    assert torch.equal(indices, expected.indices)
    torch.testing.assert_close(distances.double(), expected.values, rtol=1e-5, atol=1e-5)


def test_bf16_operands_multiply_to_squared_distances():
    g = torch.Generator().manual_seed(2)
    x, y = torch.randn(30, 20, generator=g) * 5 + 10, torch.randn(25, 20, generator=g) * 5 + 10
    centre = torch.cat([x, y]).mean(0)
    left, _ = bf16_operands(x, centre)
    _, right = bf16_operands(y, centre)
    assert left.dtype == torch.bfloat16 and left.shape[1] % 16 == 0
    got = left.float() @ right.float().T
    expected = torch.cdist(x.double(), y.double()) ** 2
    torch.testing.assert_close(got.double(), expected, rtol=2e-2, atol=0.5)


def test_a_changed_bank_is_searched_not_a_stale_copy(bf16_path):
    queries, bank = gaussian(800, 50, seed=7)
    search = BankSearch("exact_bf16")
    search(queries, bank)
    bank.copy_(bank.flip(0))  # in place, as a checkpoint load does
    _, indices = search(queries, bank)
    assert torch.equal(indices, brute_force(queries, bank).indices)


def test_unknown_search_and_bad_nprobe_name_the_option():
    with pytest.raises(
        ConfigError, match="--model.search must be one of auto, exact_fp32, exact_bf16, faiss"
    ):
        BankSearch("annoy")
    with pytest.raises(ConfigError, match="--model.faiss_nprobe"):
        BankSearch("exact_bf16", faiss_nprobe=0)
    with pytest.raises(ConfigError, match="--model.ivf_nprobe must be at least 1, got 0"):
        BankSearch("ivf", ivf_nprobe=0)


def test_faiss_missing_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "faiss", None)  # import faiss -> ImportError
    with pytest.raises(DependencyError, match=r"pip install faiss-cpu \(a dependency of mvtec_ad"):
        BankSearch("faiss")
    with pytest.raises(DependencyError, match="--model.search faiss"):
        PatchCoreModel(**tiny_dfr_kwargs(), search="faiss", image_size=64)


def test_faiss_auto_spec_follows_the_bank_size():
    assert faiss_spec("auto", 500) == "Flat"
    assert faiss_spec("auto", 48_000) == "IVF240,Flat"
    assert faiss_spec("HNSW32", 10) == "HNSW32"


def test_faiss_flat_is_exact():
    pytest.importorskip("faiss")
    queries, bank = clustered(3000, 400, seed=11)
    distances, indices = BankSearch("faiss", faiss_index="Flat")(queries, bank, k=3)
    expected = brute_force(queries, bank, 3)
    clear = nearest_gap_ok(queries, bank)
    assert torch.equal(indices[clear, 0], expected.indices[clear, 0])
    assert torch.equal(distances, (queries.unsqueeze(1) - bank[indices]).norm(dim=-1))


@pytest.mark.parametrize("index", ["IVF64,Flat", "HNSW32", "auto"])
def test_faiss_approximate_indexes_recall_at_1(index):
    pytest.importorskip("faiss")
    queries, bank = clustered(12_000, 2000, dim=32, clusters=64, seed=13)
    search = BankSearch("faiss", faiss_index=index, faiss_nprobe=16)
    distances, indices = search(queries, bank)
    expected = brute_force(queries, bank)
    recall = float((indices[:, 0] == expected.indices[:, 0]).float().mean())
    assert recall >= 0.99, (index, recall)
    assert torch.equal(distances[:, 0], (queries - bank[indices[:, 0]]).norm(dim=-1))  # fp32-exact
    assert search.describe().startswith("faiss ")


def test_faiss_bad_index_string_names_the_option():
    pytest.importorskip("faiss")
    with pytest.raises(ConfigError, match="--model.faiss_index 'IVFbogus'"):
        BankSearch("faiss", faiss_index="IVFbogus")(torch.randn(3, 8), torch.randn(100, 8))


def test_describe_names_the_bf16_implementation(bf16_path):
    g = torch.Generator().manual_seed(4)
    search = BankSearch("auto" if bf16_path == "kernel" else "exact_bf16")
    search(torch.randn(5, 8, generator=g), torch.randn(100, 8, generator=g))
    if bf16_path == "kernel":  # a CPU with AVX-512 BF16: auto picks exact_bf16
        assert search.describe() == "auto: exact_bf16, fused kernel"
    else:
        assert search.describe() == "exact_bf16, torch GEMM"


@pytest.fixture(params=["float32 GEMM", "fused kernel"])
def ivf_scan(request, monkeypatch):
    """ivf's two scans of the same lists: torch's float32 GEMMs (AVX2, ARM64) and the fused kernel (AVX-512 BF16)."""
    if request.param == "float32 GEMM":
        monkeypatch.setattr(native, "load", lambda: None)
    elif native.load() is None:
        pytest.skip(f"the fused kernel does not run here: {native.unsupported() or 'it could not be built'}")
    return request.param


def test_ivf_recall_at_1_on_clustered_rows_and_fp32_distances(ivf_scan):
    queries, bank = clustered(12_000, 2000, dim=32, clusters=64, seed=13)
    search = BankSearch("ivf", ivf_nprobe=16)
    distances, indices = search(queries, bank)
    expected = brute_force(queries, bank)
    recall = float((indices[:, 0] == expected.indices[:, 0]).float().mean())
    assert recall >= 0.99, recall
    assert torch.equal(distances[:, 0], (queries - bank[indices[:, 0]]).norm(dim=-1))  # fp32-exact
    assert search.describe() == f"ivf 60 lists, nprobe 16, {ivf_scan}"


def test_ivf_probing_every_list_is_exhaustive(ivf_scan):
    queries, bank = gaussian(3001, 500, dim=40, seed=8)
    _, indices = BankSearch("ivf", ivf_nprobe=1000)(queries, bank)  # more probes than lists: all
    assert torch.equal(indices, brute_force(queries, bank).indices)


def test_ivf_keeps_the_batch_shape_and_finds_k_rows_exactly(ivf_scan):
    queries, bank = gaussian(12_000, 600, dim=16, seed=3)
    batch = queries.view(3, 200, 16)
    distances, indices = BankSearch("ivf", ivf_nprobe=60)(batch, bank)  # every list: exhaustive
    assert distances.shape == indices.shape == (3, 200, 1)
    clear = nearest_gap_ok(queries, bank)  # bf16 ranks near-ties either way
    assert int(clear.sum()) > 550
    assert torch.equal(indices.view(-1)[clear], brute_force(queries, bank).indices[clear, 0])
    _, top3 = BankSearch("ivf")(batch, bank, k=3)  # k > 1 goes exhaustive
    assert torch.equal(top3.view(-1, 3), brute_force(queries, bank, 3).indices)


def test_auto_takes_ivf_on_x86_and_faiss_on_other_cpus_for_large_banks(monkeypatch):
    search, dev = BankSearch("auto"), torch.device("cpu")
    if native.load() is not None:
        assert search.backend(dev, 20_000) == "ivf"
    small = search.backend(dev, 9_999)  # a small bank is searched exhaustively
    assert small == ("exact_bf16" if cpu.fast_bf16(dev) else "exact_fp32")
    monkeypatch.setattr(native, "load", lambda: None)  # no kernel (AVX2, ARM, no compiler, MVTEC_AD_NATIVE=0)
    monkeypatch.setattr(cpu, "x86_64", lambda: True)
    assert search.backend(dev, 20_000) == "ivf"  # its float32 GEMM scan
    monkeypatch.setattr(cpu, "x86_64", lambda: False)  # ARM64: faiss
    assert search.backend(dev, 20_000) == "faiss"
    assert search.backend(dev, 9_999) == small
    monkeypatch.setitem(sys.modules, "faiss", None)  # faiss broken or removed: exhaustive, never an error
    assert search.backend(dev, 20_000) == small


@pytest.mark.parametrize("name", ["exact_fp32", "exact_bf16", "faiss", "ivf", "auto"])
def test_queries_of_another_width_than_the_bank_name_the_options(name):
    _, bank = clustered(12_000, 1, dim=32)
    queries = torch.randn(5, 48)
    with pytest.raises(
        ConfigError, match=r"rows of 32 features, but the model's backbone gives 48 per patch"
    ):
        BankSearch(name)(queries, bank)


@pytest.mark.parametrize("name", ["exact_bf16", "faiss", "ivf", "ivf, float32 GEMM", "auto"])
def test_every_approximate_backend_at_its_defaults_finds_the_nearest_row(name, monkeypatch):
    """recall@1 >= 0.999 on clustered rows, for each backend as `auto` and the configs run it."""
    if name == "ivf, float32 GEMM":  # ivf's scan on CPUs without the fused kernel
        name = "ivf"
        monkeypatch.setattr(native, "load", lambda: None)
    queries, bank = clustered(20_000, 4000, dim=64, clusters=64, seed=5)
    _, indices = BankSearch(name)(queries, bank)
    expected = brute_force(queries, bank)
    clear = nearest_gap_ok(queries, bank)
    recall = float((indices[clear, 0] == expected.indices[clear, 0]).float().mean())
    assert recall >= 0.999, (name, recall)
