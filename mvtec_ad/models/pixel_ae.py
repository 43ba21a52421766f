"""Pixel autoencoder with a "ResNet-3" encoder (seed report 2, part 1: Autoencoder + Custom Resnet3).

Trained from scratch on heavily augmented normal images (preset `pixel_ae` of
mvtec_ad.data.transforms): 3x3 stride-2 convs 3-32-64, one residual block 64-128 (1x1 shortcut),
a conv to 256 channels at 1/16 resolution, four stride-2 transposed convs back to 3 channels and
a sigmoid; 933,443 parameters, as in the seed's layer table. The loss is MSE on images cropped
by `edge_crop` pixels at each edge (transposed convs leave boundary artefacts); the anomaly map
is the per-pixel squared error averaged over channels, with the same edges cropped.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from mvtec_ad.data.dataset import Batch
from mvtec_ad.data.geometry import as_option
from mvtec_ad.errors import ConfigError
from mvtec_ad.evaluation.thresholds import ThresholdConfig
from mvtec_ad.models.components.detector import AnomalyOutput, Detector
from mvtec_ad.models.components.gradient_module import GradientModule
from mvtec_ad.models.components.map_head import AnomalyMapHead, cells_of

DOWNSAMPLING = 16  # four stride-2 stages: input sides must be multiples of this


def conv_bn_relu(cin: int, cout: int) -> list[nn.Module]:
    """Stride-2 3x3 conv that halves the side, BN, ReLU."""
    return [
        nn.Conv2d(cin, cout, 3, stride=2, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    ]


def deconv_bn_relu(cin: int, cout: int) -> list[nn.Module]:
    """Stride-2 3x3 transposed conv that exactly doubles the side (output_padding 1)."""
    return [
        nn.ConvTranspose2d(cin, cout, 3, stride=2, padding=1, output_padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    ]


class ResidualBlock(nn.Module):
    """Basic ResNet block: conv-BN-ReLU-conv-BN plus a 1x1 conv-BN shortcut, then ReLU."""

    def __init__(self, cin: int, cout: int, stride: int = 2) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential(
            nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)), inplace=True)
        return F.relu(self.bn2(self.conv2(out)) + self.shortcut(x), inplace=True)


class PixelAEModel(Detector):
    """Pure pixel autoencoder detector: images in [0, 1] (sides a multiple of 16) -> AnomalyOutput.

    `score` is the image-score rule on the edge-cropped error map: `mean` (the image's
    reconstruction error, the seed's aggregate), `max` or `topk`.
    """

    def __init__(
        self,
        edge_crop: int = 4,
        score: Literal["mean", "max", "topk"] = "mean",
        top_k: int = 10,
        sigma: float = 4.0,
        **geometry,
    ) -> None:
        """
        Args:
            edge_crop: pixels cropped at each edge for the loss and the map.
            score: image score rule on the error map (mean | max | topk); top_k for topk.
            sigma: Gaussian blur of the map.
            **geometry: the input geometry (image_size) of mvtec_ad.models.components.detector.Detector;
                its sides must be multiples of 16.
        """
        super().__init__(**geometry)
        height, width = self.network_size
        if height % DOWNSAMPLING or width % DOWNSAMPLING:
            option = "--model.tile_size" if self.tiler is not None else "--model.image_size"
            raise ConfigError(
                f"{option} {as_option(self.network_size)}: pixel_ae needs sides that are "
                f"multiples of {DOWNSAMPLING} (e.g. 224 or 128)."
            )
        self.edge_crop = edge_crop
        self.encoder = nn.Sequential(
            *conv_bn_relu(3, 32), *conv_bn_relu(32, 64), ResidualBlock(64, 128), *conv_bn_relu(128, 256)
        )
        self.decoder = nn.Sequential(
            *deconv_bn_relu(256, 128),
            *deconv_bn_relu(128, 64),
            *deconv_bn_relu(64, 32),
            nn.ConvTranspose2d(32, 3, 3, stride=2, padding=1, output_padding=1),
            nn.Sigmoid(),
        )
        self.head = AnomalyMapHead(sigma=sigma, score=score, top_k=top_k)

    def reconstruct(self, images: torch.Tensor) -> torch.Tensor:
        if images.shape[-1] % DOWNSAMPLING or images.shape[-2] % DOWNSAMPLING:
            raise ValueError(
                f"pixel_ae needs image sides that are multiples of {DOWNSAMPLING}, got "
                f"{tuple(images.shape[-2:])}: set --model.image_size accordingly (e.g. 224)."
            )
        return self.decoder(self.encoder(images))

    def crop(self, x: torch.Tensor) -> torch.Tensor:
        c = self.edge_crop
        return x[..., c : x.shape[-2] - c, c : x.shape[-1] - c] if c > 0 else x

    def loss(self, images: torch.Tensor, reconstruction: torch.Tensor) -> torch.Tensor:
        """MSE between the edge-cropped images and reconstructions."""
        return F.mse_loss(self.crop(reconstruction), self.crop(images))

    def error_map(self, images: torch.Tensor, reconstruction: torch.Tensor) -> torch.Tensor:
        """Per-pixel squared error averaged over channels, edge-cropped: [B, 1, H - 2c, W - 2c]."""
        return self.crop((images - reconstruction).pow(2).mean(1, keepdim=True))

    def anomaly_output(
        self, error: torch.Tensor, size: tuple[int, int], valid: torch.Tensor | None = None
    ) -> AnomalyOutput:
        """Score from the cropped error map (padding left out); the map padded back (edge values repeated) to `size`."""
        c = self.edge_crop
        full = F.pad(error, (c, c, c, c), mode="replicate") if c > 0 else error
        cells = cells_of(self.crop(valid) if valid is not None else None, tuple(error.shape[-2:]))
        return AnomalyOutput(self.head.image_score(error, cells), self.head(full, size, valid).map)

    def detect(self, images: torch.Tensor, valid: torch.Tensor | None = None) -> AnomalyOutput:
        return self.anomaly_output(self.error_map(images, self.reconstruct(images)), images.shape[-2:], valid)


class PixelAE(GradientModule):
    """ResNet-3 pixel autoencoder (seed report 2, part 1) as a LightningModule.

    Args:
        lr: Adam learning rate.
        early_stopping_patience: epochs without val_loss improvement before stopping.
        threshold, num_overlays: see mvtec_ad.models.components.anomaly_module.AnomalyModule.
        **model_args: PixelAEModel's (edge_crop, score, top_k, sigma, image_size).
    """

    detector_name = "pixel_ae"

    def __init__(
        self,
        lr: float = 1e-3,
        early_stopping_patience: int = 10,
        threshold: ThresholdConfig | None = None,
        num_overlays: int = 6,
        **model_args,
    ) -> None:
        model = PixelAEModel(**model_args)
        super().__init__(model, lr, early_stopping_patience, threshold=threshold, num_overlays=num_overlays)
        self.save_hyperparameters()

    def training_step(self, batch: Batch, batch_idx: int) -> torch.Tensor:
        images = self.model.network_input(self.model.pre_processor(batch.image))
        loss = self.model.loss(images, self.model.reconstruct(images))
        self.log("train_loss", loss, on_epoch=True, on_step=False, prog_bar=True, batch_size=len(batch))
        return loss

    def validation_step(self, batch: Batch, batch_idx: int) -> AnomalyOutput:
        images = self.model.network_input(self.model.pre_processor(batch.image))
        reconstruction = self.model.reconstruct(images)
        loss = self.model.loss(images, reconstruction)
        self.log("val_loss", loss, on_epoch=True, prog_bar=True, batch_size=len(batch), sync_dist=True)
        if not self.model.plain:  # padding or tiles: the whole image, as in test
            return self.detect_batch(batch)
        return self.model.anomaly_output(self.model.error_map(images, reconstruction), images.shape[-2:])
