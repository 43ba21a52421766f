"""Autoencoders on frozen deep features: DFR and the layer3 feature autoencoder.

DFR (Yang et al. 2021; seed dfr-reproduction): backbone layers (ResNet50 layer2 + layer3 by
default) are smoothed by a 3x3 average pool, resized to the finest layer's grid and concatenated;
a 1x1 convolutional autoencoder (C-400-200-d-200-400-C, BatchNorm + ReLU) learns to reconstruct
these features on normal images. The per-location L2 reconstruction error is the anomaly map; the
image score is the mean of its top-k values (k = 10).

Feature AE (seed resnet50-layer3-autoencoder): the same kind of autoencoder on raw ResNet50
layer3 features with a fixed bottleneck; map = per-location squared error averaged over channels,
score = mean of its 10 largest values, operating threshold = mean + 3 std of the TRAINING scores.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint
from lightning.pytorch.utilities import rank_zero_info
from torch import nn
from torch.utils.data import DataLoader

from mvtec_ad.backbones import FeatureExtractor, fuse_features
from mvtec_ad.data.dataset import AnomalyDataset, Batch
from mvtec_ad.evaluation.thresholds import ThresholdConfig
from mvtec_ad.models.base import AnomalyMapHead, AnomalyModule, AnomalyOutput

HIDDEN = (400, 200)


def conv1x1_autoencoder(channels: int, latent_dim: int, hidden: Sequence[int] = HIDDEN) -> nn.Sequential:
    """1x1 conv encoder/decoder C-h1-h2-d-h2-h1-C; BN + ReLU after every layer but the bottleneck and output."""
    widths = [channels, *hidden, latent_dim, *reversed(hidden), channels]
    layers: list[nn.Module] = []
    for i, (cin, cout) in enumerate(zip(widths[:-1], widths[1:], strict=True)):
        layers.append(nn.Conv2d(cin, cout, kernel_size=1))
        is_linear = i in (len(hidden), len(widths) - 2)  # bottleneck and output stay linear
        if not is_linear:
            layers += [nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]
    return nn.Sequential(*layers)


def bottleneck_width(conv_weights: Sequence[torch.Tensor]) -> int:
    """d of a conv1x1_autoencoder from its conv weights in order: the middle conv's input width.

    Works on a built module and on a checkpoint's state dict alike.
    """
    return conv_weights[len(conv_weights) // 2].shape[1]


def latent_dim_from_pca(covariance: torch.Tensor, variance: float) -> int:
    """Smallest number of principal components that explains `variance` of the total variance."""
    eigenvalues = torch.linalg.eigvalsh(covariance).flip(0).clamp_min(0)
    explained = torch.cumsum(eigenvalues, 0) / eigenvalues.sum()
    return int(torch.searchsorted(explained, torch.tensor(variance, dtype=explained.dtype)).item()) + 1


class DFRModel(nn.Module):
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
        top_k: int = 10,
        sigma: float = 4.0,
    ) -> None:
        super().__init__()
        self.extractor = FeatureExtractor(backbone, layers, weights)
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

    def forward(self, images: torch.Tensor) -> AnomalyOutput:
        features = self.features(images)
        return self.head(self.error_map(features, self.reconstruct(features)), images.shape[-2:])

    @torch.no_grad()
    def fit_statistics(
        self,
        frozen_batches: Iterable[torch.Tensor],
        channel_norm: bool,
        latent_dim: int | None,
        pca_variance: float,
    ) -> int:
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
        if channel_norm:
            self.feature_mean.copy_(mean.view(1, -1, 1, 1).float())
            self.feature_std.copy_(std.view(1, -1, 1, 1).float())
            covariance = covariance / torch.outer(std, std)
        if latent_dim is None:
            latent_dim = latent_dim_from_pca(covariance, pca_variance)
            if latent_dim > HIDDEN[-1]:
                rank_zero_info(f"DFR: PCA asks for d={latent_dim}; capped at the hidden width {HIDDEN[-1]}.")
                latent_dim = HIDDEN[-1]
        self.build_autoencoder(latent_dim)
        return latent_dim


def fixed_images(dataset: object) -> bool:
    """True when each path of `dataset` always yields the same image, so its features may be cached.

    An AnomalyDataset without a transform; not an augmented one, nor synthetic-anomaly wrappers.
    """
    return isinstance(dataset, AnomalyDataset) and dataset.transform is None


class FeatureAEModel(nn.Module):
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
    ) -> None:
        super().__init__()
        self.extractor = FeatureExtractor(backbone, layers, weights)
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

    def forward(self, images: torch.Tensor) -> AnomalyOutput:
        features = self.features(images)
        return self.head(self.error_map(features, self.reconstruct(features)), images.shape[-2:])


class FrozenFeatureCache:
    """Backbone features of images that a path fully determines, each computed once per fit.

    The backbone is frozen, so an image's features never change during a fit: later epochs read
    them from memory (on the model's device) and skip the backbone. Only datasets that pass
    `fixed_images` may use it; augmented or synthetic-anomaly images are recomputed every time.
    """

    def __init__(self) -> None:
        self.entries: dict[str, torch.Tensor] = {}

    def __len__(self) -> int:
        return len(self.entries)

    def get(
        self, images: torch.Tensor, paths: Sequence[str], compute: Callable[[torch.Tensor], torch.Tensor]
    ) -> torch.Tensor:
        """Features of `images`, computing (with `compute`) only those whose path is not stored yet."""
        missing = [i for i, path in enumerate(paths) if path not in self.entries]
        if missing:
            computed = compute(images[missing])
            # clone outside inference mode: validation-time entries must stay usable by training steps
            with torch.inference_mode(False):
                for i, features in zip(missing, computed, strict=True):
                    self.entries[paths[i]] = features.clone()
        return torch.stack([self.entries[path] for path in paths])


class FrozenFeatureAutoencoder(AnomalyModule):
    """What DFR and the feature AE share: an autoencoder trained on a frozen backbone's features.

    `self.model` provides frozen_features (cacheable), normalise, reconstruct, error_map and head.
    With `cache_features`, the frozen features of fixed images (see `fixed_images`) are computed
    once per fit, so later epochs cost only the autoencoder.
    """

    def __init__(self, threshold: ThresholdConfig | None = None, num_overlays: int = 6) -> None:
        super().__init__(threshold=threshold, num_overlays=num_overlays)
        self.feature_cache = FrozenFeatureCache()
        self._cache_training = self._cache_validation = False

    def plan_feature_cache(self) -> None:
        """Start an empty cache and decide which of the fit's datasets may use it."""
        datamodule = self.trainer.datamodule
        cache = self.hparams.cache_features
        self.feature_cache = FrozenFeatureCache()
        self._cache_training = cache and fixed_images(getattr(datamodule, "train_set", None))
        self._cache_validation = cache and fixed_images(getattr(datamodule, "val_set", None))

    def setup(self, stage: str) -> None:
        if stage == "fit":
            self.plan_feature_cache()

    def frozen_features(self, batch: Batch, cached: bool) -> torch.Tensor:
        images = batch.image.to(self.device)
        if cached:
            return self.feature_cache.get(images, batch.path, self.model.frozen_features)
        return self.model.frozen_features(images)

    def training_step(self, batch: Batch, batch_idx: int) -> torch.Tensor:
        features = self.model.normalise(self.frozen_features(batch, self._cache_training))
        loss = F.mse_loss(self.model.reconstruct(features), features)
        self.log("train_loss", loss, on_epoch=True, on_step=False, prog_bar=True, batch_size=len(batch))
        return loss

    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        features = self.model.normalise(self.frozen_features(batch, self._cache_validation))
        reconstruction = self.model.reconstruct(features)
        loss = F.mse_loss(reconstruction, features)
        self.log("val_loss", loss, on_epoch=True, prog_bar=True, batch_size=len(batch), sync_dist=True)
        error = self.model.error_map(features, reconstruction)
        self.collect_validation_scores(self.model.head.image_score(error), batch.label, batch.index)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.model.autoencoder.parameters(), lr=self.hparams.lr)

    def configure_callbacks(self) -> list:
        return [
            EarlyStopping(monitor="val_loss", patience=self.hparams.early_stopping_patience, mode="min"),
            ModelCheckpoint(monitor="val_loss", mode="min", filename="best", save_last=True),
        ]


class DFR(FrozenFeatureAutoencoder):
    """Deep Feature Reconstruction (seed dfr-reproduction) as a LightningModule.

    Args:
        backbone, layers, weights: feature source (see mvtec_ad.backbones).
        pool_kernel: average-pool kernel applied to each layer before fusion.
        latent_dim: bottleneck width d; None = PCA on training features keeping `pca_variance`.
        channel_norm: normalise fused channels by their training mean/std.
        top_k: image score = mean of the k largest map values.
        sigma: Gaussian blur of the upsampled map.
        lr: Adam learning rate.
        early_stopping_patience: epochs without val_loss improvement before stopping.
        cache_features: keep each fixed image's fused features in memory during a fit (see
            FrozenFeatureCache); the statistics pass fills it, so no epoch runs the backbone on
            unaugmented training images. Costs C x h x w floats per image (ResNet50: 4.8 MB).
    """

    detector_name = "dfr"

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
        lr: float = 1e-3,
        early_stopping_patience: int = 10,
        cache_features: bool = True,
        threshold: ThresholdConfig | None = None,
        num_overlays: int = 6,
    ) -> None:
        super().__init__(threshold=threshold, num_overlays=num_overlays)
        self.save_hyperparameters()
        self.model = DFRModel(backbone, layers, weights, pool_kernel, top_k, sigma)

    def setup(self, stage: str) -> None:
        super().setup(stage)
        if stage != "fit" or self.model.autoencoder is not None or self.trainer.ckpt_path:
            return  # built already, or a checkpoint will provide it (on_load_checkpoint)
        datamodule = self.trainer.datamodule
        if datamodule is None or not hasattr(datamodule, "feature_dataloader"):
            raise RuntimeError("DFR needs a DataModule with feature_dataloader() to fit its statistics.")
        if len(datamodule.val_set) == 0:
            raise ValueError("DFR needs normal validation images: set --data.val_split above 0 (e.g. 0.2).")
        self.model.to(self.trainer.strategy.root_device)
        # the unaugmented training images: when training sees exactly these, fill the cache now
        frozen = (
            self.frozen_features(batch, self._cache_training) for batch in datamodule.feature_dataloader()
        )
        d = self.model.fit_statistics(
            frozen, self.hparams.channel_norm, self.hparams.latent_dim, self.hparams.pca_variance
        )
        rank_zero_info(f"DFR: {self.model.channels} fused channels, latent dim d={d}.")

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        if self.model.autoencoder is None:  # built from a config: take d from the checkpoint
            state = checkpoint["state_dict"]
            conv_weights = [v for k, v in state.items() if k.startswith("model.autoencoder.") and v.ndim == 4]
            self.model.build_autoencoder(bottleneck_width(conv_weights))


class FeatureAE(FrozenFeatureAutoencoder):
    """Layer3 feature autoencoder (seed resnet50-layer3-autoencoder) as a LightningModule.

    Args:
        backbone, layers, weights: feature source (see mvtec_ad.backbones).
        hidden, latent_dim: autoencoder widths C-hidden-latent_dim-reversed(hidden)-C (1x1 convs).
        top_k: image score = mean of the k largest map values.
        sigma: Gaussian blur of the upsampled map.
        lr: Adam learning rate.
        early_stopping_patience: epochs without val_loss improvement before stopping.
        threshold_source: `train` fits the operating threshold on the scores of the unaugmented
            training images (the seed's mean + 3 std of training scores); `validation` on the
            validation scores like every other detector. `threshold` says how (method, k, ...).
        cache_features: keep each fixed image's backbone features in memory during a fit (see
            FrozenFeatureCache); later epochs then skip the backbone.
    """

    detector_name = "feature_ae"

    def __init__(
        self,
        backbone: str = "resnet50",
        layers: Sequence[str] = ("layer3",),
        weights: str = "imagenet",
        hidden: Sequence[int] = (512, 256),
        latent_dim: int = 128,
        top_k: int = 10,
        sigma: float = 4.0,
        lr: float = 1e-3,
        early_stopping_patience: int = 10,
        threshold_source: Literal["train", "validation"] = "train",
        cache_features: bool = True,
        threshold: ThresholdConfig | None = None,
        num_overlays: int = 6,
    ) -> None:
        super().__init__(threshold=threshold, num_overlays=num_overlays)
        self.save_hyperparameters()
        self.model = FeatureAEModel(backbone, layers, weights, hidden, latent_dim, top_k, sigma)
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
            datamodule = getattr(self.trainer, "datamodule", None)
            if datamodule is None or not hasattr(datamodule, "feature_dataloader"):
                raise RuntimeError(
                    "feature_ae with threshold_source=train needs a DataModule with feature_dataloader()."
                )
            self._train_images = datamodule.feature_dataloader()
        scores = []
        with self.trainer.precision_plugin.forward_context():
            for batch in self._train_images:
                features = self.frozen_features(batch, cached=self.hparams.cache_features)
                scores.append(self.model.score_features(self.model.normalise(features)))
        return torch.cat(scores)

    def threshold_scores(self) -> tuple[torch.Tensor, torch.Tensor | None] | None:
        """The seed's basis (training scores) unless threshold_source is validation.

        Computed at each validation epoch end, i.e. with exactly the weights the checkpoint
        callbacks save right after, so best.ckpt and last.ckpt carry their own threshold.
        """
        if self.hparams.threshold_source == "validation":
            return super().threshold_scores()
        if self.trainer.sanity_checking:
            return None
        return self.training_scores(), None
