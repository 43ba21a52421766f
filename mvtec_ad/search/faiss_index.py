"""faiss indexes over a memory bank (Flat, IVF, HNSW by index_factory), float32 re-rank of what they find."""

from __future__ import annotations

import torch

from mvtec_ad.errors import ConfigError, DependencyError
from mvtec_ad.search.nearest import nearest_neighbours, rerank

FLAT_BELOW = 10_000  # `faiss_index: auto` searches smaller banks exhaustively (IndexFlatL2)
ROWS_PER_LIST = 200  # `faiss_index: auto` and ivf: about this many bank rows per IVF list
# lists probed per query: on magnetic_tile's 47.8k-row bank recall@1 0.9994 at 24, 0.9970 at 16
# (1.8x faster than 24, below the 0.999 every backend must reach), 0.9998 at 32
FAISS_NPROBE = 24


def faiss_available() -> bool:
    """Whether faiss can be imported here (a base dependency, but a broken or missing install must not stop `auto`)."""
    try:
        require_faiss()
    except DependencyError:
        return False
    return True


def require_faiss():
    """The faiss module, or a DependencyError saying how to install it (a base dependency: faiss-cpu)."""
    try:
        import faiss
    except ImportError as error:
        raise DependencyError(
            f"--model.search faiss needs the faiss package, which did not import ({error}): "
            "pip install faiss-cpu (a dependency of mvtec_ad; pip install -e . reinstalls it), "
            "or pass --model.search exact_fp32."
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
        distances, indices = rerank(flat, self.bank, candidates, k)
        if bool(missing.any()):
            distances[missing], indices[missing] = nearest_neighbours(flat[missing], self.bank, k)
        shape = (*queries.shape[:-1], k)
        return distances.view(shape), indices.view(shape)
