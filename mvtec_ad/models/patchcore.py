"""PatchCore (Roth et al. 2022): a patch memory bank reduced by a greedy coreset (beyond the seeds).

Fused patch features (3x3 average, coarser layer resized to the finer grid) of all training
images, reduced by a greedy k-center coreset; map = distance of every test patch to its nearest
bank patch; score = max of the map, optionally re-weighted as in the PatchCore paper, or the
highest mean over a small block of patches (window_max).

Optionally a second, coarse bank (`coarse_layers`, e.g. the stride-16/32 stages with 5x5 pooling)
from the same backbone pass: its map is brought to the fine grid and onto the fine bank's scale by
the mean and spread of both banks' distances on validation normals, and the two maps are averaged
into the map the image score is taken from. The anomaly map stays the fine bank's: on the panel
of benchmarks/recipes.py the coarse bank raised image AUROC (magnetic_tile 0.918 -> 0.927) but
blurred the map's regions (AUPRO lower on all six sets, strips 0.915 -> 0.875).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn

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
# normal validation images the banks' distance statistics are taken from (the first ones, in the
# loader's fixed order): ~50,000 patch distances at 320 px, and the pass costs seconds, not a minute
CALIBRATION_IMAGES = 32
CORESETS = ("auto", "exact", "probed")


class PatchCoreModel(Detector, ResizableBuffers):
    """Pure PatchCore detector: images in [0, 1] -> AnomalyOutput. Exportable, bank included."""

    resizable_buffers = ("memory_bank", "coarse_bank")

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
        coarse_layers: Sequence[str] = (),
        coarse_pool_kernel: int = 5,
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
            coarse_layers: layers of a second bank (empty: one bank), fused with `coarse_pool_kernel`
                pooling; its map joins the first's on the first's grid and scale (`combine`) for
                the image score; the anomaly map is the first bank's.
            coarse_pool_kernel: neighbourhood average of the coarse bank's features (5x5).
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
        if reweight and coarse_layers:
            raise ConfigError(
                "--model.reweight re-weights one bank's max patch score; leave --model.coarse_layers empty to use it."
            )
        self.layers, self.coarse_layers = list(layers), list(coarse_layers)
        self.score_from_map = not self.coarse_layers  # tiled: each tile's own two-bank score, max over tiles
        wanted = self.layers + [layer for layer in self.coarse_layers if layer not in self.layers]
        self.extractor = FeatureExtractor(backbone, wanted, weights)  # one backbone pass feeds both banks
        self.require_side(max(self.extractor.strides), self.extractor.stride_text)
        channels = dict(zip(wanted, self.extractor.channels, strict=True))
        self.pool_kernel = pool_kernel
        self.coarse_pool_kernel = coarse_pool_kernel
        self.coreset_ratio = coreset_ratio
        self.projection_dim = projection_dim
        self.reweight = reweight
        self.num_neighbors = num_neighbors
        self.bank_dtype = getattr(torch, bank_dtype)
        self.coreset_seed = coreset_seed
        self.coreset = coreset
        self.search = BankSearch(search, faiss_index, faiss_nprobe, ivf_nprobe)
        self.coarse_search = BankSearch(search, faiss_index, faiss_nprobe, ivf_nprobe)  # its own cache
        self.register_buffer("memory_bank", torch.empty(0, sum(channels[layer] for layer in self.layers)))
        self.register_buffer(
            "coarse_bank", torch.empty(0, sum(channels[layer] for layer in self.coarse_layers))
        )
        # mean and standard deviation of each bank's patch distances on validation normals (calibrate)
        self.register_buffer("bank_stats", torch.tensor([[0.0, 1.0], [0.0, 1.0]]))
        self.head = AnomalyMapHead(sigma=sigma, score=score, window=score_window)

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """Fused patch features [B, D, h, w] of the (first) bank."""
        return self.embed_banks(images)[0]

    def embed_banks(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Fused patch features of each bank, from one backbone pass: fine [B, D, h, w] (, coarse)."""
        maps = dict(zip(self.extractor.layers, self.extractor(images), strict=True))
        banks = [fuse_features([maps[layer] for layer in self.layers], self.pool_kernel)]
        if self.coarse_layers:
            banks.append(
                fuse_features([maps[layer] for layer in self.coarse_layers], self.coarse_pool_kernel)
            )
        return tuple(banks)

    def fit(
        self,
        patches: torch.Tensor,
        coarse: torch.Tensor | None = None,
        progress: Callable[[int, int], None] | None = None,
    ) -> None:
        """Coresets of all training patches [N, D, h, w] (and of the coarse bank's) become the banks.

        Patches that are NaN (padding, see PatchCore.embed) are left out. `progress(done, total)`
        counts the picks of both coresets (see greedy_coreset).
        """
        flat = [image_rows(p) for p in (patches, coarse) if p is not None]
        picks = [self.coreset_size(len(f)) for f in flat]
        done, total = 0, sum(picks)
        for i, (rows, n_select) in enumerate(zip(flat, picks, strict=True)):
            offset = done
            report = None if progress is None else lambda d, _n, o=offset: progress(o + d, total)
            bank = rows[self.coreset_picks(rows, n_select, report)] if n_select < len(rows) else rows
            setattr(self, "coarse_bank" if i else "memory_bank", bank.to(self.bank_dtype).contiguous())
            done += n_select

    def coreset_size(self, patches: int) -> int:
        """How many of `patches` training patches a bank keeps."""
        return patches if self.coreset_ratio >= 1.0 else max(1, math.ceil(self.coreset_ratio * patches))

    def coreset_picks(
        self, flat: torch.Tensor, n_select: int, progress: Callable[[int, int], None] | None
    ) -> torch.Tensor:
        """Indices of the `n_select` rows of `flat` [N, D] the greedy k-center coreset keeps."""
        if self.coreset_method(n_select) == "probed":
            return probed_coreset(flat, n_select, self.projection_dim, self.coreset_seed, progress=progress)
        # bf16 updates only where the device multiplies bf16 in hardware (AVX2 emulates it, ~10x
        # slower than float32); exact_fp32 asks for exactness, so its coreset stays float32 too
        exact = self.search.backend(flat.device) == "exact_fp32"
        precision = "bf16" if cpu.fast_bf16(flat.device) and not exact else "fp32"
        return greedy_coreset(
            flat, n_select, self.projection_dim, self.coreset_seed, precision=precision, progress=progress
        )

    def bank_maps(
        self, fine: torch.Tensor, coarse: torch.Tensor | None = None, valid: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
        """Fine queries [B, P, D], their nearest bank rows [B, P, 1] and each bank's raw map [B, 1, h, w].

        From embed_banks' features; every map is on the fine grid (the coarse one bilinearly resized,
        after its padding cells took its lowest image cell's value, so padding never leaks into it).
        Only the image's cells are searched (`valid` [B, 1, H, W], None = all); padding cells hold 0
        and nearest row 0, for the caller's fill_outside.
        """
        b, c, h, w = fine.shape
        queries = fine.permute(0, 2, 3, 1).reshape(b, h * w, c)
        cells = cells_of(valid, (h, w))
        distances, nearest = search_cells(self.search, queries, self.memory_bank, cells)  # [B, P, 1]
        maps = [distances.view(b, 1, h, w)]
        if coarse is not None:
            rows = coarse.permute(0, 2, 3, 1).reshape(b, -1, coarse.shape[1])
            coarse_cells = cells_of(valid, tuple(coarse.shape[-2:]))
            far, _ = search_cells(self.coarse_search, rows, self.coarse_bank, coarse_cells)
            far = fill_outside(far.view(b, 1, *coarse.shape[-2:]), coarse_cells)
            maps.append(F.interpolate(far, size=(h, w), mode="bilinear", align_corners=False))
        return queries, nearest, maps

    def normal_distances(self, canvas: torch.Tensor, content: torch.Tensor | None) -> list[torch.Tensor]:
        """Each bank's raw distances over the image cells of normal canvas images (what calibrate takes)."""
        valid = self.canvas_valid(canvas, content)
        images = self.network_input(canvas)
        if self.tiler is not None and valid is not None:
            valid = self.tiler.split(valid)
        _, _, maps = self.bank_maps(*self.embed_banks(images), valid=valid)
        cells = cells_of(valid, tuple(maps[0].shape[-2:]))
        return [m[cells] if cells is not None else m.flatten() for m in maps]

    def combine(self, maps: list[torch.Tensor]) -> torch.Tensor:
        """One raw map from the banks' maps: each moved onto the first bank's scale, then averaged.

        Bank i's distances d become mean_0 + (d - mean_i) * std_0 / std_i, so both banks weigh the
        same in the sum, and the map keeps the first bank's units (two identical banks give its map).
        """
        if len(maps) == 1:
            return maps[0]
        mean, std = self.bank_stats[:, 0], self.bank_stats[:, 1]
        scaled = [mean[0] + (m - mean[i]) * (std[0] / std[i]) for i, m in enumerate(maps)]
        return torch.stack(scaled).mean(0)

    def calibrate(self, maps: Sequence[Sequence[torch.Tensor]]) -> None:
        """bank_stats from each bank's raw distances on normal images: maps[i] = bank i's values (any shape)."""
        rows = []
        for values in maps:
            flat = torch.cat([v.flatten().float() for v in values])
            rows.append(torch.stack([flat.mean(), flat.std().clamp_min(1e-6)]))
        self.bank_stats = torch.stack(rows).to(self.bank_stats)

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
        queries, nearest, maps = self.bank_maps(*self.embed_banks(images), valid=valid)
        b, _, h, w = maps[0].shape
        cells = cells_of(valid, (h, w))
        raw_map = fill_outside(maps[0], cells)  # padding: no worst patch
        raw = raw_map.view(b, h * w)
        out = self.head(raw_map, images.shape[-2:], valid)
        if len(maps) > 1:  # the coarse bank votes on the score; the map stays the fine bank's (better AUPRO)
            return AnomalyOutput(
                self.head.image_score(fill_outside(self.combine(maps), cells), cells), out.map
            )
        if self.reweight and self.num_neighbors > 1:
            return AnomalyOutput(self.reweighted_score(queries, raw, nearest.view(b, h * w)), out.map)
        return out


def image_rows(patches: torch.Tensor) -> torch.Tensor:
    """Patch features [N, D, h, w] -> rows [M, D] of the image's patches (NaN rows, padding, left out)."""
    rows = patches.permute(0, 2, 3, 1).reshape(-1, patches.shape[1])
    image = ~rows[:, 0].isnan()
    return rows if bool(image.all()) else rows[image]


def search_cells(
    search: BankSearch, queries: torch.Tensor, bank: torch.Tensor, cells: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Nearest bank row of the queries [B, P, D] at image cells [B, 1, h, w] (None: all): ([B, P, 1], [B, P, 1]).

    Padding cells are not searched (a quarter to a half of a keep_aspect canvas of elongated
    images): they get distance 0 and row 0. An exported graph searches every cell (fixed shapes;
    the caller's fill_outside makes the maps equal).
    """
    if cells is None or torch.jit.is_tracing() or torch.onnx.is_in_onnx_export() or bool(cells.all()):
        return search(queries, bank)
    image = cells.reshape(queries.shape[0], -1)
    distances, nearest = search(queries[image].unsqueeze(0), bank)
    all_distances = distances.new_zeros(*queries.shape[:2], 1)
    all_nearest = nearest.new_zeros(*queries.shape[:2], 1)
    all_distances[image], all_nearest[image] = distances[0], nearest[0]
    return all_distances, all_nearest


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

    def embed(self, images: torch.Tensor, valid: torch.Tensor | None = None) -> tuple[torch.Tensor, ...]:
        """Each bank's patch features, NaN at padding cells: test never scores them, so the banks leave them out.

        On magnetic_tile's keep_aspect canvas that is 29% of the patches, and the coresets'
        work falls with the square of the patch count.
        """
        features = self.model.embed_banks(images)
        return tuple(
            f.masked_fill(~cells, math.nan)
            if (cells := cells_of(valid, tuple(f.shape[-2:]))) is not None
            else f
            for f in features
        )

    def fit_features(self, patches: torch.Tensor, coarse: torch.Tensor | None = None) -> None:
        start = time.perf_counter()
        with steps("Coreset selection", None, trainer=self._trainer) as bar:
            self.model.fit(patches, coarse, progress=bar.advance_to)
        self.coreset_seconds = time.perf_counter() - start
        total = patches.shape[0] * patches.shape[2] * patches.shape[3]
        image = int((~patches[:, 0].isnan()).sum())  # image patches (NaN: padding), counted without a copy
        padding = f" ({total - image} padding patches left out)" if image < total else ""
        rank_zero_info(
            f"patchcore: {self.model.memory_bank.shape[0]} of {image} image patches kept{padding} "
            f"({self.coreset_seconds:.1f} s)."
        )
        if coarse is not None:
            self.calibrate_banks(patches, coarse)

    def calibrate_banks(self, patches: torch.Tensor, coarse: torch.Tensor) -> None:
        """Both banks' distance statistics from the first CALIBRATION_IMAGES validation normals (on this process).

        Without validation normals (--data.val_split 0), from the training images' own distances, which
        are lower than a new image's (their patches helped choose the bank): a warning says so.
        """
        maps: list[list[torch.Tensor]] = [[], []]
        seen = 0
        with torch.no_grad():
            for batch in self.data.val_dataloader():
                normal = (
                    (batch.label == 0).nonzero().flatten()
                )  # protocol (ii)'s synthetic anomalies left out
                normal = normal[: CALIBRATION_IMAGES - seen]
                if len(normal) == 0:
                    if seen >= CALIBRATION_IMAGES:
                        break
                    continue
                seen += len(normal)
                canvas = self.model.pre_processor(batch.image[normal].to(self.device))
                content = None if batch.content is None else batch.content[normal].to(self.device)
                for i, values in enumerate(self.model.normal_distances(canvas, content)):
                    maps[i].append(values)
        if not maps[0]:
            rank_zero_warn(
                "patchcore: no normal validation image to scale the coarse bank by (--data.val_split is 0?); "
                "scaled by the training images' own distances, which favours the finer bank."
            )
            with torch.no_grad():
                maps = [
                    [search(image_rows(f[:CALIBRATION_IMAGES]).unsqueeze(0), bank)[0]]
                    for f, search, bank in (
                        (patches, self.model.search, self.model.memory_bank),
                        (coarse, self.model.coarse_search, self.model.coarse_bank),
                    )
                ]
        self.model.calibrate(maps)

    def extra_results(self) -> dict:
        return {
            "bank_patches": int(self.model.memory_bank.shape[0]),
            "coreset_seconds": self.coreset_seconds,
            # what fit ran (auto's choice), known from the bank's size also after a checkpoint load
            "coreset": self.model.coreset_method(len(self.model.memory_bank))
            if self.model.coreset_ratio < 1.0
            else None,
            "search": self.model.search.describe(),  # the backend the test's searches took
            **(
                {
                    "coarse_bank_patches": int(self.model.coarse_bank.shape[0]),
                    "coarse_search": self.model.coarse_search.describe(),
                    # mean and std of each bank's patch distances on validation normals (fine, coarse)
                    "bank_stats": [[round(float(v), 6) for v in row] for row in self.model.bank_stats],
                }
                if self.model.coarse_layers
                else {}
            ),
        }
