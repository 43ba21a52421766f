"""The Lightning base DFR and the layer3 feature AE share: an autoencoder on a frozen backbone's features."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from mvtec_ad.data.dataset import Batch
from mvtec_ad.evaluation.thresholds import ThresholdConfig
from mvtec_ad.models.components.detector import AnomalyOutput, Detector
from mvtec_ad.models.components.feature_cache import FrozenFeatureCache
from mvtec_ad.models.components.gradient_module import GradientModule


class FrozenFeatureAutoencoder(GradientModule):
    """Trains `self.model`'s autoencoder to reconstruct its frozen features on normal images.

    `self.model` provides frozen_features (cacheable), normalise, reconstruct, error_map and head.
    With `cache_features`, the frozen features of fixed images (`AnomalyData.fixed_images`) are
    computed once per fit, so later epochs cost only the autoencoder.
    """

    def __init__(
        self,
        model: Detector,
        lr: float,
        early_stopping_patience: int,
        cache_features: bool,
        threshold: ThresholdConfig | dict | None = None,
        num_overlays: int = 6,
    ) -> None:
        super().__init__(model, lr, early_stopping_patience, threshold=threshold, num_overlays=num_overlays)
        self.cache_features = cache_features
        self.feature_cache = FrozenFeatureCache()
        self._cache_training = self._cache_validation = False

    def setup(self, stage: str) -> None:
        super().setup(stage)
        if stage == "fit":  # an empty cache, and which of the fit's splits may use it
            self.feature_cache = FrozenFeatureCache()
            self._cache_training = self.cache_features and self.data.fixed_images("train")
            self._cache_validation = self.cache_features and self.data.fixed_images("val")
            if self.cache_features:
                self.fill_feature_cache()

    @torch.no_grad()
    def fill_feature_cache(self) -> None:
        """The frozen features of every unaugmented training image, in the feature loader's batches.

        Computed before the first step of every fit, fresh or resumed, so both read the very same
        numbers (features of other batch compositions differ by float rounding, which training
        would amplify); later passes (DFR's statistics, training, feature_ae's threshold) read them.
        The global generator is left as it was (iterating a DataLoader draws from it), so weights
        initialised afterwards are the same with the cache on or off.
        """
        self.model.to(self.trainer.strategy.root_device)
        with torch.random.fork_rng(devices=[]):
            for batch in self.data.feature_dataloader():
                self.frozen_features(batch, cached=True)

    def frozen_features(self, batch: Batch, cached: bool) -> torch.Tensor:
        """Frozen features of the batch's network inputs (its images, or all their tiles, image by image)."""
        images = self.model.pre_processor(batch.image.to(self.device))
        tiler = self.model.tiler
        if not cached:
            return self.model.frozen_features(self.model.network_input(images))
        if tiler is None:
            return self.feature_cache.get(images, batch.path, self.model.frozen_features)
        per_image = self.feature_cache.get(
            images, batch.path, lambda x: tiler.per_image(self.model.frozen_features(tiler.split(x)))
        )
        return per_image.flatten(0, 1)

    def training_step(self, batch: Batch, batch_idx: int) -> torch.Tensor:
        features = self.model.normalise(self.frozen_features(batch, self._cache_training))
        loss = F.mse_loss(self.model.reconstruct(features), features)
        self.log("train_loss", loss, on_epoch=True, on_step=False, prog_bar=True, batch_size=len(batch))
        return loss

    def validation_step(self, batch: Batch, batch_idx: int) -> AnomalyOutput:
        features = self.model.normalise(self.frozen_features(batch, self._cache_validation))
        reconstruction = self.model.reconstruct(features)
        loss = F.mse_loss(reconstruction, features)
        self.log("val_loss", loss, on_epoch=True, prog_bar=True, batch_size=len(batch), sync_dist=True)
        if not self.model.plain:  # padding or tiles: the whole image, as in test
            return self.detect_batch(batch)
        return self.model.head(self.model.error_map(features, reconstruction), batch.image.shape[-2:])
