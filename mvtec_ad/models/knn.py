"""Image kNN on pooled deep features (seed report 2), with a patch-level neighbour map.

Every training image's pooled layer features (ResNet50 layer2 + layer3: 512 + 1024 = 1536 values)
go into a bank; score = mean L2 distance to the k = 5 nearest training images. Map: each test
patch's distance to the nearest patch of those k images (SPADE-style), so the map localises the
defect the score found.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from lightning.pytorch.utilities import rank_zero_info

from mvtec_ad.evaluation.thresholds import ThresholdConfig
from mvtec_ad.features.backbone import FeatureExtractor, fuse_features, global_pool
from mvtec_ad.models.components.buffers import ResizableBuffers
from mvtec_ad.models.components.detector import AnomalyOutput, Detector
from mvtec_ad.models.components.fit_once import FitOnceModule
from mvtec_ad.models.components.map_head import AnomalyMapHead
from mvtec_ad.search.bank import FAISS_NPROBE, IVF_NPROBE, BankSearch, SearchName

BankDtype = Literal["float32", "float16"]


class KNNModel(Detector, ResizableBuffers):
    """Pure image-kNN detector: images in [0, 1] -> AnomalyOutput. Exportable, no Lightning inside."""

    resizable_buffers = ("image_bank", "patch_bank")
    score_from_map = False  # the score is the image kNN distance (tiled: the worst tile's)

    def __init__(
        self,
        backbone: str = "resnet50",
        layers: Sequence[str] = ("layer2", "layer3"),
        weights: str = "imagenet",
        k: int = 5,
        pool_kernel: int = 3,
        sigma: float = 4.0,
        bank_dtype: BankDtype = "float32",
        search: SearchName = "auto",
        faiss_index: str = "auto",
        faiss_nprobe: int = FAISS_NPROBE,
        ivf_nprobe: int = IVF_NPROBE,
        **geometry,
    ) -> None:
        """
        Args:
            backbone, layers, weights: feature source (see mvtec_ad.features).
            k: neighbours averaged into the image score (seed: 5).
            pool_kernel: 3x3 average of the patch features behind the map.
            sigma: Gaussian blur of the upsampled map.
            bank_dtype: float16 halves the patch bank's memory (distances are still float32).
            search, faiss_index, faiss_nprobe, ivf_nprobe: the nearest-neighbour backend of the image bank
                (see mvtec_ad.search); the patch search among the k neighbour
                images (a few hundred rows each) is always exact_fp32.
            **geometry: the input geometry (image_size) of mvtec_ad.models.components.detector.Detector.
        """
        super().__init__(**geometry)
        self.extractor = FeatureExtractor(backbone, layers, weights)
        self.require_side(max(self.extractor.strides), self.extractor.stride_text)
        self.k = k
        self.pool_kernel = pool_kernel
        self.search = BankSearch(search, faiss_index, faiss_nprobe, ivf_nprobe)
        self.bank_dtype = getattr(torch, bank_dtype)
        self.register_buffer("image_bank", torch.empty(0, sum(self.extractor.channels)))
        self.register_buffer("patch_bank", torch.empty(0, sum(self.extractor.channels), 0, 0))
        self.head = AnomalyMapHead(sigma=sigma, score="max")

    def embed(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Pooled image vectors [B, D] and fused patch features [B, D, h, w]."""
        features = self.extractor(images)
        return global_pool(features), fuse_features(features, self.pool_kernel)

    def fit(self, pooled: torch.Tensor, patches: torch.Tensor) -> None:
        self.image_bank = pooled.float()
        self.patch_bank = patches.to(self.bank_dtype)

    def detect(self, images: torch.Tensor, valid: torch.Tensor | None = None) -> AnomalyOutput:
        pooled, patches = self.embed(images)
        # one query per image ([B, 1, D]): batched calls never loop over the batch, so it exports
        distances, neighbours = self.search(pooled.unsqueeze(1), self.image_bank, k=self.k)
        b, c, h, w = patches.shape
        queries = patches.permute(0, 2, 3, 1).reshape(b, h * w, c)
        # nearest patch among the k neighbour images, one neighbour at a time: memory stays at one
        # image's patches per query image
        raw = torch.stack(
            [
                self.search(queries, self.patch_bank[j].permute(0, 2, 3, 1).reshape(b, h * w, c))[0]
                for j in neighbours[:, 0].unbind(1)
            ]
        ).amin(0)
        return AnomalyOutput(
            distances[:, 0].mean(1), self.head(raw.view(b, 1, h, w), images.shape[-2:], valid).map
        )


class KNN(FitOnceModule):
    """Image kNN (seed report 2) as a fit-once LightningModule.

    Args:
        threshold, num_overlays: see mvtec_ad.models.components.anomaly_module.AnomalyModule.
        **model_args: KNNModel's (backbone, layers, weights, k, pool_kernel, sigma, bank_dtype, search,
            faiss_index, faiss_nprobe, ivf_nprobe, image_size).
    """

    detector_name = "knn"

    def __init__(self, threshold: ThresholdConfig | None = None, num_overlays: int = 6, **model_args) -> None:
        super().__init__(KNNModel(**model_args), threshold=threshold, num_overlays=num_overlays)
        self.save_hyperparameters()

    def embed(self, images: torch.Tensor, valid: torch.Tensor | None = None) -> tuple[torch.Tensor, ...]:
        return self.model.embed(images)

    def fit_features(self, pooled: torch.Tensor, patches: torch.Tensor) -> None:
        self.model.fit(pooled, patches)
        rank_zero_info(f"knn: bank of {pooled.shape[0]} images x {pooled.shape[1]} values.")

    def extra_results(self) -> dict:
        return {"bank_images": int(self.model.image_bank.shape[0]), "search": self.model.search.describe()}
