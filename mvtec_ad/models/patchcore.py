"""PatchCore (Roth et al. 2022): a patch memory bank reduced by a greedy coreset (beyond the seeds).

Fused patch features (3x3 average, coarser layer resized to the finer grid) of all training
images, reduced by a greedy k-center coreset; map = distance of every test patch to its nearest
bank patch; score = max of the map, optionally re-weighted as in the PatchCore paper, or the
highest mean over a small block of patches (window_max).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from typing import Literal

import torch
from lightning.pytorch.utilities import rank_zero_info

from mvtec_ad.errors import ConfigError
from mvtec_ad.evaluation.thresholds import ThresholdConfig
from mvtec_ad.features.backbone import FeatureExtractor, fuse_features
from mvtec_ad.models.components.buffers import ResizableBuffers
from mvtec_ad.models.components.coreset import greedy_coreset
from mvtec_ad.models.components.coreset_probed import EXACT_PICKS, probed_coreset
from mvtec_ad.models.components.detector import AnomalyOutput, Detector, fill_outside
from mvtec_ad.models.components.fit_once import FitOnceModule
from mvtec_ad.models.components.map_head import AnomalyMapHead, cells_of
from mvtec_ad.models.knn import BankDtype
from mvtec_ad.progress import steps
from mvtec_ad.search import cpu
from mvtec_ad.search.bank import FAISS_NPROBE, IVF_NPROBE, BankSearch, SearchName

CoresetName = Literal["auto", "exact", "probed"]
CORESETS = ("auto", "exact", "probed")


class PatchCoreModel(Detector, ResizableBuffers):
    """Pure PatchCore detector: images in [0, 1] -> AnomalyOutput. Exportable, bank included."""

    resizable_buffers = ("memory_bank",)

    def __init__(
        self,
        backbone: str = "wide_resnet50_2",
        layers: Sequence[str] = ("layer2", "layer3"),
        weights: str = "imagenet",
        pool_kernel: int = 3,
        coreset_ratio: float = 0.1,
        projection_dim: int = 128,
        reweight: bool = False,
        num_neighbors: int = 9,
        sigma: float = 4.0,
        bank_dtype: BankDtype = "float32",
        coreset_seed: int = 0,
        coreset: CoresetName = "auto",
        search: SearchName = "auto",
        faiss_index: str = "auto",
        faiss_nprobe: int = FAISS_NPROBE,
        ivf_nprobe: int = IVF_NPROBE,
        score: Literal["max", "window_max"] = "max",
        score_window: int = 3,
        **geometry,
    ) -> None:
        """
        Args:
            backbone, layers, weights: feature source (see mvtec_ad.features).
            pool_kernel: neighbourhood average of the patch features (3x3).
            coreset_ratio: share of all training patches kept in the bank (1.0 = no coreset).
            projection_dim: random projection the coreset is chosen on.
            reweight: PatchCore's re-weighted image score instead of the plain max of the map.
            num_neighbors: bank neighbours used by the re-weighting.
            sigma: Gaussian blur of the upsampled map.
            bank_dtype: float16 halves the bank (distances are still float32).
            coreset_seed: seed of the projection and the coreset's first pick.
            coreset: how the greedy k-center coreset is selected: exact (every pick lowers every
                patch's distance: the paper's sequence), probed (each pick lowers the patches of
                its nearest tiles only, as an IVF search would: ~5% of the work, the bank's largest
                and mean patch distance within ~1% of exact's, see coreset_probed), or auto (the
                default: probed once more than EXACT_PICKS patches are kept, else exact).
            search: nearest-neighbour backend (mvtec_ad.search): exact_fp32,
                exact_bf16 (bf16 ranking, float32 re-rank), ivf (k-means lists scanned by the fused
                bf16 kernel or by float32 GEMMs), faiss, or auto (the default: ivf for banks of 10k+
                rows on x86-64, faiss on ARM64, see mvtec_ad.search.bank). The exact coreset's distance
                updates run in bf16 where the device multiplies bf16 in hardware, unless search is
                exact_fp32; the probed coreset's in float32.
            faiss_index: faiss index_factory string (Flat, IVF256,Flat, HNSW32) or auto.
            faiss_nprobe: IVF lists probed per query (HNSW: efSearch of at least 4x this).
            ivf_nprobe: lists probed per query by search ivf (k-means lists of ~200 rows scanned
                by the fused bf16 kernel, queries grouped by list; float32 re-rank).
            score: image score from the patch map: max (the paper's) or window_max (the highest
                mean over score_window x score_window patches: one noisy patch cannot decide alone).
            score_window: block side of window_max (odd).
            **geometry: the input geometry (image_size) of mvtec_ad.models.components.detector.Detector.
        """
        super().__init__(**geometry)
        if not 0.0 < coreset_ratio <= 1.0:
            raise ConfigError(f"--model.coreset_ratio must be in (0, 1], got {coreset_ratio}.")
        if coreset not in CORESETS:
            raise ConfigError(f"--model.coreset must be one of {', '.join(CORESETS)}; got {coreset!r}.")
        if score not in ("max", "window_max"):
            raise ConfigError(f"--model.score must be max or window_max, got {score!r}.")
        if reweight and score != "max":
            raise ConfigError(
                "--model.reweight re-weights the max patch score; use it with --model.score max."
            )
        self.extractor = FeatureExtractor(backbone, layers, weights)
        self.require_side(max(self.extractor.strides), self.extractor.stride_text)
        self.pool_kernel = pool_kernel
        self.coreset_ratio = coreset_ratio
        self.projection_dim = projection_dim
        self.reweight = reweight
        self.num_neighbors = num_neighbors
        self.bank_dtype = getattr(torch, bank_dtype)
        self.coreset_seed = coreset_seed
        self.coreset = coreset
        self.search = BankSearch(search, faiss_index, faiss_nprobe, ivf_nprobe)
        self.register_buffer("memory_bank", torch.empty(0, sum(self.extractor.channels)))
        self.head = AnomalyMapHead(sigma=sigma, score=score, window=score_window)

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """Fused patch features [B, D, h, w]."""
        return fuse_features(self.extractor(images), self.pool_kernel)

    def fit(self, patches: torch.Tensor, progress: Callable[[int, int], None] | None = None) -> None:
        """Coreset of all training patches [N, D, h, w] becomes the memory bank (`progress`: see greedy_coreset)."""
        flat = patches.permute(0, 2, 3, 1).reshape(-1, patches.shape[1])
        if self.coreset_ratio < 1.0:
            n_select = max(1, math.ceil(self.coreset_ratio * flat.shape[0]))
            if self.coreset_method(n_select) == "probed":
                chosen = probed_coreset(
                    flat, n_select, self.projection_dim, self.coreset_seed, progress=progress
                )
            else:
                # bf16 updates only where the device multiplies bf16 in hardware (AVX2 emulates it, ~10x
                # slower than float32); exact_fp32 asks for exactness, so its coreset stays float32 too
                exact = self.search.backend(flat.device) == "exact_fp32"
                precision = "bf16" if cpu.fast_bf16(flat.device) and not exact else "fp32"
                chosen = greedy_coreset(
                    flat,
                    n_select,
                    self.projection_dim,
                    self.coreset_seed,
                    precision=precision,
                    progress=progress,
                )
            flat = flat[chosen]
        self.memory_bank = flat.to(self.bank_dtype).contiguous()

    def coreset_method(self, n_select: int) -> str:
        """exact or probed: the option, or auto's choice for a coreset of `n_select` patches."""
        if self.coreset != "auto":
            return self.coreset
        return "probed" if n_select > EXACT_PICKS else "exact"

    def reweighted_score(
        self, queries: torch.Tensor, raw: torch.Tensor, nearest: torch.Tensor
    ) -> torch.Tensor:
        """PatchCore's image score: the max patch distance, scaled down when its bank neighbour sits in a dense region.

        queries [B, P, D], raw [B, P] patch distances, nearest [B, P] bank index of each patch.
        Indexing by `gather` keeps the batch size out of the computation (dynamic-batch export).
        """
        worst = raw.argmax(1, keepdim=True)  # [B, 1]
        score = raw.gather(1, worst)[:, 0]
        query = queries.gather(1, worst.unsqueeze(-1).expand(-1, -1, queries.shape[-1]))  # [B, 1, D]
        neighbour = self.memory_bank[nearest.gather(1, worst)]  # [B, 1, D]
        _, support = self.search(neighbour, self.memory_bank, k=self.num_neighbors)  # [B, 1, n]
        distances = (query.unsqueeze(2) - self.memory_bank[support].float()).norm(dim=-1)[:, 0]
        weight = 1.0 - torch.softmax(distances, dim=1)[:, 0]
        return weight * score

    def detect(self, images: torch.Tensor, valid: torch.Tensor | None = None) -> AnomalyOutput:
        patches = self.embed(images)
        b, c, h, w = patches.shape
        queries = patches.permute(0, 2, 3, 1).reshape(b, h * w, c)
        distances, nearest = self.search(queries, self.memory_bank)  # [B, P, 1]
        raw_map = fill_outside(distances.view(b, 1, h, w), cells_of(valid, (h, w)))  # padding: no worst patch
        raw = raw_map.view(b, h * w)
        out = self.head(raw_map, images.shape[-2:], valid)
        if self.reweight and self.num_neighbors > 1:
            return AnomalyOutput(self.reweighted_score(queries, raw, nearest.view(b, h * w)), out.map)
        return out


class PatchCore(FitOnceModule):
    """PatchCore as a fit-once LightningModule: the coreset of every training patch becomes the bank.

    Args:
        threshold, num_overlays: see mvtec_ad.models.components.anomaly_module.AnomalyModule.
        **model_args: PatchCoreModel's (backbone, layers, weights, pool_kernel, coreset_ratio,
            projection_dim, reweight, num_neighbors, sigma, bank_dtype, coreset_seed, coreset, search,
            faiss_index, faiss_nprobe, ivf_nprobe, score, score_window, image_size).
    """

    detector_name = "patchcore"

    def __init__(self, threshold: ThresholdConfig | None = None, num_overlays: int = 6, **model_args) -> None:
        super().__init__(PatchCoreModel(**model_args), threshold=threshold, num_overlays=num_overlays)
        self.save_hyperparameters()
        self.coreset_seconds: float | None = None

    def embed(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return (self.model.embed(images),)

    def fit_features(self, patches: torch.Tensor) -> None:
        start = time.perf_counter()
        with steps("Coreset selection", None, trainer=self._trainer) as bar:
            self.model.fit(patches, progress=bar.advance_to)
        self.coreset_seconds = time.perf_counter() - start
        total = patches.shape[0] * patches.shape[2] * patches.shape[3]
        rank_zero_info(
            f"patchcore: {self.model.memory_bank.shape[0]} of {total} patches kept "
            f"({self.coreset_seconds:.1f} s)."
        )

    def extra_results(self) -> dict:
        return {
            "bank_patches": int(self.model.memory_bank.shape[0]),
            "coreset_seconds": self.coreset_seconds,
            # what fit ran (auto's choice), known from the bank's size also after a checkpoint load
            "coreset": self.model.coreset_method(len(self.model.memory_bank))
            if self.model.coreset_ratio < 1.0
            else None,
            "search": self.model.search.describe(),  # the backend the test's searches took
        }
