"""DFR, Deep Feature Reconstruction (Yang et al. 2021; seed dfr-reproduction).

Backbone layers (ResNet50 layer2 + layer3 by default) are smoothed by a 3x3 average pool, resized
to the finest layer's grid and concatenated; a 1x1 convolutional autoencoder (C-400-200-d-200-400-C,
BatchNorm + ReLU) learns to reconstruct these features on normal images. The per-location L2
reconstruction error is the anomaly map; the image score is the mean of its top-k values (k = 10).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
from lightning.pytorch.utilities import rank_zero_info
from torch import nn

from mvtec_ad.errors import ConfigError
from mvtec_ad.evaluation.thresholds import ThresholdConfig
from mvtec_ad.features.backbone import FeatureExtractor, fuse_features
from mvtec_ad.models.components.autoencoder import HIDDEN, bottleneck_width, conv1x1_autoencoder
from mvtec_ad.models.components.detector import AnomalyOutput, Detector
from mvtec_ad.models.components.feature_autoencoder import FrozenFeatureAutoencoder
from mvtec_ad.models.components.map_head import AnomalyMapHead


def latent_dim_from_pca(covariance: torch.Tensor, variance: float) -> int:
    """Smallest number of principal components that explains `variance` of the total variance."""
    eigenvalues = torch.linalg.eigvalsh(covariance).flip(0).clamp_min(0)
    explained = torch.cumsum(eigenvalues, 0) / eigenvalues.sum()
    return int(torch.searchsorted(explained, torch.tensor(variance, dtype=explained.dtype)).item()) + 1


class DFRModel(Detector):
    """Pure DFR detector: images in [0, 1] -> AnomalyOutput. Exportable, no Lightning inside.

    `fit_statistics` must run once on normal images before training: it sets the channel
    normalisation and builds the autoencoder (with d from PCA unless d is given).
    """

    def __init__(
        self,
        backbone: str = "resnet50",
        layers: Sequence[str] = ("layer2", "layer3"),
        weights: str = "imagenet",
        pool_kernel: int = 3,
        latent_dim: int | None = None,
        pca_variance: float = 0.95,
        channel_norm: bool = True,
        top_k: int = 10,
        sigma: float = 4.0,
        **geometry,
    ) -> None:
        """
        Args:
            backbone, layers, weights: feature source (see mvtec_ad.features).
            pool_kernel: average-pool kernel applied to each layer before fusion.
            latent_dim: bottleneck width d; None = PCA on training features keeping `pca_variance`.
            pca_variance: share of the variance the PCA's d explains.
            channel_norm: normalise fused channels by their training mean/std.
            top_k: image score = mean of the k largest map values.
            sigma: Gaussian blur of the upsampled map.
            **geometry: the input geometry (image_size) of mvtec_ad.models.components.detector.Detector.
        """
        super().__init__(**geometry)
        self.requested_latent_dim = latent_dim
        self.pca_variance = pca_variance
        self.channel_norm = channel_norm
        self.extractor = FeatureExtractor(backbone, layers, weights)
        self.require_side(max(self.extractor.strides), self.extractor.stride_text)
        self.pool_kernel = pool_kernel
        self.channels = sum(self.extractor.channels)
        self.register_buffer("feature_mean", torch.zeros(1, self.channels, 1, 1))
        self.register_buffer("feature_std", torch.ones(1, self.channels, 1, 1))
        self.autoencoder: nn.Sequential | None = None
        self.head = AnomalyMapHead(sigma=sigma, score="topk", top_k=top_k)

    @property
    def latent_dim(self) -> int | None:
        """Bottleneck width d of the built autoencoder."""
        if self.autoencoder is None:
            return None
        return bottleneck_width([m.weight for m in self.autoencoder if isinstance(m, nn.Conv2d)])

    def build_autoencoder(self, latent_dim: int) -> None:
        device = self.feature_mean.device
        self.autoencoder = conv1x1_autoencoder(self.channels, latent_dim).to(device)

    def frozen_features(self, images: torch.Tensor) -> torch.Tensor:
        """Fused backbone features before channel normalisation: fixed by the image, so cacheable."""
        with torch.no_grad():
            return fuse_features(self.extractor(images), self.pool_kernel)

    def normalise(self, frozen: torch.Tensor) -> torch.Tensor:
        """Channel normalisation by the training statistics: the autoencoder's input and target."""
        return (frozen - self.feature_mean) / self.feature_std

    def features(self, images: torch.Tensor) -> torch.Tensor:
        return self.normalise(self.frozen_features(images))

    def reconstruct(self, features: torch.Tensor) -> torch.Tensor:
        if self.autoencoder is None:
            raise RuntimeError(
                "DFR autoencoder is not built: fit the model first or load a checkpoint (--ckpt_path)."
            )
        return self.autoencoder(features)

    @staticmethod
    def error_map(features: torch.Tensor, reconstruction: torch.Tensor) -> torch.Tensor:
        """Per-location L2 reconstruction error [B, 1, h, w]."""
        return (features - reconstruction).pow(2).sum(1, keepdim=True).sqrt()

    def detect(self, images: torch.Tensor, valid: torch.Tensor | None = None) -> AnomalyOutput:
        features = self.features(images)
        return self.head(self.error_map(features, self.reconstruct(features)), images.shape[-2:], valid)

    @torch.no_grad()
    def fit_statistics(self, frozen_batches: Iterable[torch.Tensor]) -> int:
        """One pass over the frozen features of normal images: channel mean/std and covariance (PCA d).

        Sums run in float64 over every feature vector, so the statistics are exact, not sampled.
        Returns the latent dimension the autoencoder was built with.
        """
        device = self.feature_mean.device
        dtype = torch.float32 if device.type == "mps" else torch.float64
        count, total = 0, torch.zeros(self.channels, dtype=dtype, device=device)
        outer = torch.zeros(self.channels, self.channels, dtype=dtype, device=device)
        for frozen in frozen_batches:
            x = frozen.to(device).permute(0, 2, 3, 1).reshape(-1, self.channels).to(dtype)
            count += x.shape[0]
            total += x.sum(0)
            outer += x.T @ x
        mean = total / count
        covariance = (outer - count * torch.outer(mean, mean)) / max(count - 1, 1)
        std = covariance.diagonal().clamp_min(1e-12).sqrt()
        if self.channel_norm:
            self.feature_mean.copy_(mean.view(1, -1, 1, 1).float())
            self.feature_std.copy_(std.view(1, -1, 1, 1).float())
            covariance = covariance / torch.outer(std, std)
        latent_dim = self.requested_latent_dim
        if latent_dim is None:
            latent_dim = latent_dim_from_pca(covariance, self.pca_variance)
            if latent_dim > HIDDEN[-1]:
                rank_zero_info(f"DFR: PCA asks for d={latent_dim}; capped at the hidden width {HIDDEN[-1]}.")
                latent_dim = HIDDEN[-1]
        self.build_autoencoder(latent_dim)
        return latent_dim


class DFR(FrozenFeatureAutoencoder):
    """DFR as a LightningModule: the statistics pass at the start of fit, then the autoencoder.

    Args:
        lr: Adam learning rate.
        early_stopping_patience: epochs without val_loss improvement before stopping.
        cache_features: keep each fixed image's fused features in memory during a fit (see
            FrozenFeatureCache); the statistics pass fills it, so no epoch runs the backbone on
            unaugmented training images. Costs C x h x w floats per image (ResNet50: 4.8 MB).
        threshold, num_overlays: see mvtec_ad.models.components.anomaly_module.AnomalyModule.
        **model_args: DFRModel's (backbone, layers, weights, pool_kernel, latent_dim, pca_variance,
            channel_norm, top_k, sigma, image_size).
    """

    detector_name = "dfr"

    def __init__(
        self,
        lr: float = 1e-3,
        early_stopping_patience: int = 10,
        cache_features: bool = True,
        threshold: ThresholdConfig | None = None,
        num_overlays: int = 6,
        **model_args,
    ) -> None:
        model = DFRModel(**model_args)
        super().__init__(model, lr, early_stopping_patience, cache_features, threshold, num_overlays)
        self.save_hyperparameters()

    def setup(self, stage: str) -> None:
        super().setup(stage)
        if stage != "fit" or self.model.autoencoder is not None or self.trainer.ckpt_path:
            return  # built already, or a checkpoint will provide it (on_load_checkpoint)
        if self.data.split_size("val") == 0:
            raise ConfigError("DFR needs normal validation images: set --data.val_split above 0 (e.g. 0.2).")
        self.model.to(self.trainer.strategy.root_device)
        # the unaugmented training images: when training sees exactly these, fill the cache now
        frozen = (
            self.frozen_features(batch, self._cache_training) for batch in self.data.feature_dataloader()
        )
        d = self.model.fit_statistics(frozen)
        rank_zero_info(f"DFR: {self.model.channels} fused channels, latent dim d={d}.")

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        if self.model.autoencoder is None:  # built from a config: take d from the checkpoint
            state = checkpoint["state_dict"]
            conv_weights = [v for k, v in state.items() if k.startswith("model.autoencoder.") and v.ndim == 4]
            self.model.build_autoencoder(bottleneck_width(conv_weights))
