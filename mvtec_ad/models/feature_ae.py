"""Autoencoder on frozen ResNet50 layer3 features (seed resnet50-layer3-autoencoder).

The same kind of autoencoder as DFR's on raw backbone features with a fixed bottleneck; map =
per-location squared error averaged over channels, score = mean of its 10 largest values,
operating threshold = mean + 3 std of the TRAINING scores.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from torch.utils.data import DataLoader

from mvtec_ad.errors import ConfigError
from mvtec_ad.evaluation.thresholds import ThresholdConfig
from mvtec_ad.features.backbone import FeatureExtractor, fuse_features
from mvtec_ad.models.components.anomaly_module import ThresholdBasis
from mvtec_ad.models.components.autoencoder import conv1x1_autoencoder
from mvtec_ad.models.components.detector import AnomalyOutput, Detector
from mvtec_ad.models.components.feature_autoencoder import FrozenFeatureAutoencoder
from mvtec_ad.models.components.map_head import AnomalyMapHead


class FeatureAEModel(Detector):
    """Pure layer3 feature autoencoder detector: images in [0, 1] -> AnomalyOutput. No Lightning inside.

    Several `layers` are resized to the finest grid and concatenated (no pooling); the seed uses
    ResNet50 layer3 alone. The autoencoder is conv1x1_autoencoder(C, latent_dim, hidden).
    """

    def __init__(
        self,
        backbone: str = "resnet50",
        layers: Sequence[str] = ("layer3",),
        weights: str = "imagenet",
        hidden: Sequence[int] = (512, 256),
        latent_dim: int = 128,
        top_k: int = 10,
        sigma: float = 4.0,
        **geometry,
    ) -> None:
        """
        Args:
            backbone, layers, weights: feature source (see mvtec_ad.features).
            hidden, latent_dim: autoencoder widths C-hidden-latent_dim-reversed(hidden)-C (1x1 convs).
            top_k: image score = mean of the k largest map values.
            sigma: Gaussian blur of the upsampled map.
            **geometry: the input geometry (image_size) of mvtec_ad.models.components.detector.Detector.
        """
        super().__init__(**geometry)
        self.extractor = FeatureExtractor(backbone, layers, weights)
        self.require_side(max(self.extractor.strides), self.extractor.stride_text)
        self.channels = sum(self.extractor.channels)
        self.autoencoder = conv1x1_autoencoder(self.channels, latent_dim, hidden)
        self.head = AnomalyMapHead(sigma=sigma, score="topk", top_k=top_k)

    def frozen_features(self, images: torch.Tensor) -> torch.Tensor:
        """Frozen backbone features: the autoencoder's input and target, fixed by the image (cacheable)."""
        with torch.no_grad():
            return fuse_features(self.extractor(images), pool_kernel=1)

    def normalise(self, frozen: torch.Tensor) -> torch.Tensor:
        return frozen  # the seed reconstructs the raw layer3 features

    def features(self, images: torch.Tensor) -> torch.Tensor:
        return self.frozen_features(images)

    def reconstruct(self, features: torch.Tensor) -> torch.Tensor:
        return self.autoencoder(features)

    @staticmethod
    def error_map(features: torch.Tensor, reconstruction: torch.Tensor) -> torch.Tensor:
        """Per-location squared error averaged over channels [B, 1, h, w] (the seed's E_map)."""
        return (features - reconstruction).pow(2).mean(1, keepdim=True)

    def score_features(self, features: torch.Tensor) -> torch.Tensor:
        """Image scores [B] of precomputed backbone features."""
        return self.head.image_score(self.error_map(features, self.reconstruct(features)))

    def detect(self, images: torch.Tensor, valid: torch.Tensor | None = None) -> AnomalyOutput:
        features = self.features(images)
        return self.head(self.error_map(features, self.reconstruct(features)), images.shape[-2:], valid)


class FeatureAE(FrozenFeatureAutoencoder):
    """Layer3 feature autoencoder (seed resnet50-layer3-autoencoder) as a LightningModule.

    Args:
        lr: Adam learning rate.
        early_stopping_patience: epochs without val_loss improvement before stopping.
        threshold_source: `train` fits the operating threshold on the scores of the unaugmented
            training images (the seed's mean + 3 std of training scores); `validation` on the
            validation scores like every other detector. `threshold` says how (method, k, ...).
        cache_features: keep each fixed image's backbone features in memory during a fit (see
            FrozenFeatureCache); later epochs then skip the backbone.
        threshold, num_overlays: see mvtec_ad.models.components.anomaly_module.AnomalyModule.
        **model_args: FeatureAEModel's (backbone, layers, weights, hidden, latent_dim, top_k, sigma,
            image_size).
    """

    detector_name = "feature_ae"

    def __init__(
        self,
        lr: float = 1e-3,
        early_stopping_patience: int = 10,
        threshold_source: Literal["train", "validation"] = "train",
        cache_features: bool = True,
        threshold: ThresholdConfig | None = None,
        num_overlays: int = 6,
        **model_args,
    ) -> None:
        if threshold_source not in ("train", "validation"):
            raise ConfigError(
                f"--model.threshold_source must be train or validation, got '{threshold_source}'."
            )
        model = FeatureAEModel(**model_args)
        super().__init__(model, lr, early_stopping_patience, cache_features, threshold, num_overlays)
        self.save_hyperparameters()
        self.threshold_source = threshold_source
        self._train_images: DataLoader | None = None

    def setup(self, stage: str) -> None:
        super().setup(stage)
        self._train_images = None

    @torch.no_grad()
    def training_scores(self) -> torch.Tensor:
        """Scores of every unaugmented training image under the current weights, in eval mode.

        Each process scores the whole training set (the loader is not sharded), so every
        process fits the same threshold without gathering.
        """
        if self._train_images is None:
            self._train_images = self.data.feature_dataloader()
        scores = []
        with self.trainer.precision_plugin.forward_context():
            for batch in self._train_images:
                if not self.model.plain:  # padding or tiles: the score of the whole image, as in test
                    scores.append(self(batch.image.to(self.device), batch.content).score)
                    continue
                features = self.frozen_features(batch, cached=self.cache_features)
                scores.append(self.model.score_features(self.model.normalise(features)))
        return torch.cat(scores)

    def threshold_basis(self, validation: ThresholdBasis) -> ThresholdBasis:
        """The seed's basis (training scores) unless threshold_source is validation.

        Computed at each validation epoch end, i.e. with exactly the weights the checkpoint
        callbacks save right after, so best.ckpt and last.ckpt carry their own threshold.
        """
        if self.threshold_source == "validation":
            return validation
        if self.trainer.sanity_checking:
            return None
        return self.training_scores(), None
