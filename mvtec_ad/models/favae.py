"""FAVAE: a convolutional VAE whose decoder features are matched to a frozen teacher's (seed favae).

At a working size of 128 px a seven-conv encoder (BN, LeakyReLU 0.2) gives the mean and
log-variance of a 100-d latent; a mirrored decoder of seven transposed convs reconstructs the
image. Adapters (1x1 conv, ReLU, 1x1 conv) map decoder stages onto the teacher's features at the
same stride (VGG16 `features.7/14/21` by default). Loss = pixel MSE + alpha * KL + feature MSE. The
anomaly map is the teacher-vs-adapted feature discrepancy, upsampled and summed over layers; the
image score is its maximum.

Beyond the seed, teacher features are standardised per channel with training-set statistics
(`feature_norm`): raw features of std ~10 take the adapters thousands of Adam steps to reach, and
channels then count by their variability on normal images (demo washer, 12 epochs at 64 px:
image AUROC 0.81 -> 0.99).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Literal, NamedTuple

import torch
import torch.nn.functional as F
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_only
from torch import nn
from torchvision.utils import make_grid

from mvtec_ad.data.dataset import Batch
from mvtec_ad.errors import BackboneError, ConfigError
from mvtec_ad.evaluation.thresholds import ThresholdConfig
from mvtec_ad.features.backbone import FeatureExtractor
from mvtec_ad.models.components.detector import AnomalyOutput, Detector
from mvtec_ad.models.components.gradient_module import GradientModule
from mvtec_ad.models.components.map_head import AnomalyMapHead

# (in, out, kernel, stride) of the encoder's conv blocks; the latent conv follows them
ENCODER = ((3, 128, 4, 2), (128, 128, 4, 2), (128, 256, 3, 1))
ENCODER += ((256, 256, 4, 2), (256, 512, 3, 1), (512, 512, 4, 2))
# the decoder mirrors them between its first block (latent -> 512 channels) and the output conv
DECODER = tuple((cout, cin, kernel, stride) for cin, cout, kernel, stride in reversed(ENCODER[1:]))
DECODER_TAPS = {16: 0, 8: 1, 4: 3, 2: 5}  # decoder block whose output lies at each stride
Background = Literal["none", "dark", "bright"]


def conv_block(cin: int, cout: int, kernel: int, stride: int, transposed: bool = False) -> nn.Sequential:
    """(Transposed) conv + BatchNorm + LeakyReLU 0.2; kernel 4 / stride 2 halves (doubles) the side."""
    conv = (nn.ConvTranspose2d if transposed else nn.Conv2d)(cin, cout, kernel, stride, padding=1)
    return nn.Sequential(conv, nn.BatchNorm2d(cout), nn.LeakyReLU(0.2, inplace=True))


def adapter(cin: int, cout: int) -> nn.Sequential:
    """1x1 conv, ReLU, 1x1 conv: decoder features -> the teacher layer's channels."""
    return nn.Sequential(nn.Conv2d(cin, cout, 1), nn.ReLU(inplace=True), nn.Conv2d(cout, cout, 1))


def kl_divergence(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, sigma^2) || N(0, I)) summed over latent dims, per image [B]."""
    return -0.5 * (1 + logvar - mu.pow(2) - logvar.exp()).flatten(1).sum(1)


def foreground_mask(images: torch.Tensor, background: Background, threshold: float) -> torch.Tensor:
    """Object mask [B,1,H,W] (1 = object): gray level threshold, then holes filled.

    Holes are background pixels the image border cannot reach: a geodesic dilation from the border
    (H + W steps of a 3x3 max-pool), pure torch so the model stays exportable. An image whose mask
    comes out empty keeps its whole map.
    """
    gray = (images * images.new_tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)).sum(1, keepdim=True)
    is_background = gray <= threshold if background == "dark" else gray >= threshold
    border = torch.ones_like(gray, dtype=torch.bool)
    border[..., 1:-1, 1:-1] = False
    outside = (is_background & border).float()
    allowed = is_background.float()
    for _ in range(sum(gray.shape[-2:])):
        outside = F.max_pool2d(outside, 3, stride=1, padding=1) * allowed
    mask = 1.0 - outside
    empty = mask.flatten(1).amax(1) == 0
    return torch.where(empty.view(-1, 1, 1, 1), torch.ones_like(mask), mask)


class ChannelStandardiser(nn.Module):
    """(x - mean) / std per channel; the identity until its statistics are set."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(1, channels, 1, 1))
        self.register_buffer("std", torch.ones(1, channels, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


class FAVAEPass(NamedTuple):
    """Everything one pass computes, at the working size: what the loss and the map are made of."""

    image: torch.Tensor  # input resized to the working size
    reconstruction: torch.Tensor
    mu: torch.Tensor  # [B, latent]
    logvar: torch.Tensor
    teacher: list[torch.Tensor]  # standardised teacher features of the input, one per layer
    adapted: list[torch.Tensor]  # adapted decoder features, same shapes


class FAVAEModel(Detector):
    """Pure FAVAE detector: images in [0, 1] of any size -> AnomalyOutput at that size. No Lightning.

    The input is resized to `working_size` (a multiple of 16) inside; teacher layers must lie at
    stride 2, 4, 8 or 16, where the decoder has a stage to adapt.
    """

    def __init__(
        self,
        backbone: str = "vgg16",
        layers: Sequence[str] = ("features.7", "features.14", "features.21"),
        weights: str = "imagenet",
        working_size: int = 128,
        latent_dim: int = 100,
        pixel_weight: float = 0.0,
        background: Background = "none",
        background_threshold: float = 0.2,
        sigma: float = 4.0,
        **geometry,
    ) -> None:
        """
        Args:
            backbone, layers, weights: the frozen teacher (see mvtec_ad.features); layers at stride 2-16.
            working_size: side the model resizes its input to (multiple of 16); maps come back at the input size.
            latent_dim: size of the latent vector.
            pixel_weight: weight of the pixel error added to the feature-discrepancy map (0 = none).
            background, background_threshold: mask the map outside the object: `dark` or `bright`
                background below/above this gray level (0-1), holes filled; `none` = off.
            sigma: Gaussian blur of the upsampled map.
            **geometry: the input geometry (image_size) of mvtec_ad.models.components.detector.Detector.
        """
        super().__init__(**geometry)
        if working_size % 16 or working_size < 32:
            raise ConfigError(
                f"--model.working_size must be a multiple of 16 and at least 32, got {working_size}."
            )
        self.teacher = FeatureExtractor(backbone, layers, weights)
        for layer, stride in zip(self.teacher.layers, self.teacher.strides, strict=True):
            if stride not in DECODER_TAPS:
                raise BackboneError(
                    f"FAVAE adapts decoder features at strides {sorted(DECODER_TAPS)}; layer '{layer}' of "
                    f"'{backbone}' has stride {stride}. Choose other --model.layers."
                )
        self.working_size = working_size
        self.pixel_weight = pixel_weight
        self.background = background
        self.background_threshold = background_threshold
        bottom = working_size // 16  # side after four halvings: the latent conv covers it all
        self.encoder = nn.Sequential(
            *(conv_block(*spec) for spec in ENCODER), nn.Conv2d(512, 2 * latent_dim, bottom)
        )
        first = nn.Sequential(
            nn.ConvTranspose2d(latent_dim, 512, bottom), nn.BatchNorm2d(512), nn.LeakyReLU(0.2, inplace=True)
        )
        last = nn.Sequential(nn.ConvTranspose2d(128, 3, 4, 2, padding=1), nn.Sigmoid())
        self.decoder = nn.ModuleList([first, *(conv_block(*spec, transposed=True) for spec in DECODER), last])
        self.feature_norms = nn.ModuleList(ChannelStandardiser(c) for c in self.teacher.channels)
        self.taps = [DECODER_TAPS[s] for s in self.teacher.strides]
        self.adapters = nn.ModuleList(
            adapter(self.decoder[t][0].out_channels, c)
            for t, c in zip(self.taps, self.teacher.channels, strict=True)
        )
        self.head = AnomalyMapHead(sigma=sigma, score="max")

    def resize(self, images: torch.Tensor) -> torch.Tensor:
        """Images at the working size."""
        if images.shape[-2:] == (self.working_size, self.working_size):
            return images
        return F.interpolate(images, size=(self.working_size,) * 2, mode="bilinear", align_corners=False)

    def teacher_features(self, images: torch.Tensor) -> list[torch.Tensor]:
        """Frozen teacher features of working-size images, standardised per channel."""
        with torch.no_grad():
            return [norm(f) for norm, f in zip(self.feature_norms, self.teacher(images), strict=True)]

    @torch.no_grad()
    def fit_feature_statistics(self, loader: Iterable[Batch]) -> None:
        """Set each teacher channel's mean/std from every location of the loader's images (float64 sums)."""
        device = self.head.kernel.device
        dtype = torch.float32 if device.type == "mps" else torch.float64
        counts = [0] * len(self.feature_norms)
        moments = [torch.zeros(2, c, dtype=dtype, device=device) for c in self.teacher.channels]
        for batch in loader:
            images = self.network_input(self.pre_processor(batch.image.to(device)))
            for i, f in enumerate(self.teacher(self.resize(images))):
                f = f.to(dtype)
                moments[i] += torch.stack([f.sum((0, 2, 3)), f.pow(2).sum((0, 2, 3))])
                counts[i] += f.numel() // f.shape[1]
        for norm, (total, total_sq), n in zip(self.feature_norms, moments, counts, strict=True):
            mean = total / n
            variance = (total_sq - n * mean**2) / max(n - 1, 1)
            norm.mean.copy_(mean.view_as(norm.mean))
            norm.std.copy_(variance.clamp_min(1e-12).sqrt().view_as(norm.std))

    def encode(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Latent mean and log-variance [B, latent] of working-size images."""
        mu, logvar = self.encoder(images).flatten(1).chunk(2, dim=1)
        return mu, logvar

    def sample(self, mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
        """Reparameterisation while training; the mean at inference, so eval-mode output is deterministic."""
        return mu + torch.randn_like(mu) * (0.5 * logvar).exp() if self.training else mu

    def decode(self, z: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Reconstruction and the decoder stage outputs, by stage index."""
        x, stages = z[:, :, None, None], []
        for block in self.decoder:
            x = block(x)
            stages.append(x)
        return x, stages

    def run(self, images: torch.Tensor) -> FAVAEPass:
        """One pass at the working size: encode, sample, decode, adapt, and the teacher's features."""
        images = self.resize(images)
        mu, logvar = self.encode(images)
        reconstruction, stages = self.decode(self.sample(mu, logvar))
        adapted = [a(stages[t]) for a, t in zip(self.adapters, self.taps, strict=True)]
        return FAVAEPass(images, reconstruction, mu, logvar, self.teacher_features(images), adapted)

    def raw_map(self, p: FAVAEPass) -> torch.Tensor:
        """Working-size map [B,1,S,S]: channel-mean squared feature error, upsampled, summed over layers.

        Plus `pixel_weight` times the channel-mean squared pixel error; times the object mask when
        background masking is on.
        """
        size = p.image.shape[-2:]
        amap = sum(
            F.interpolate(
                (t - a).pow(2).mean(1, keepdim=True), size=size, mode="bilinear", align_corners=False
            )
            for t, a in zip(p.teacher, p.adapted, strict=True)
        )
        if self.pixel_weight:
            amap = amap + self.pixel_weight * (p.image - p.reconstruction).pow(2).mean(1, keepdim=True)
        if self.background != "none":
            amap = amap * foreground_mask(p.image, self.background, self.background_threshold)
        return amap

    def detect(self, images: torch.Tensor, valid: torch.Tensor | None = None) -> AnomalyOutput:
        return self.head(self.raw_map(self.run(images)), images.shape[-2:], valid)


def favae_loss(p: FAVAEPass, kl_weight: float = 1.0) -> dict[str, torch.Tensor]:
    """Loss terms, each summed per image and averaged over the batch; `loss` = pixel + a*KL + feature.

    Sums, as the seed's reference implementation and the VAE's evidence bound have them: with
    per-element means a KL summed over 100 latent dims would swamp the reconstruction terms.
    """
    pixel = (p.reconstruction - p.image).pow(2).flatten(1).sum(1).mean()
    kl = kl_divergence(p.mu, p.logvar).mean()
    feature = sum((a - t).pow(2).flatten(1).sum(1).mean() for t, a in zip(p.teacher, p.adapted, strict=True))
    return {"loss": pixel + kl_weight * kl + feature, "pixel": pixel, "kl": kl, "feature": feature}


class FAVAE(GradientModule):
    """Feature-augmented VAE (seed favae) as a LightningModule.

    Args:
        kl_weight: alpha, the weight of the KL term.
        feature_norm: standardise teacher channels with training-set statistics (fitted once at
            the start of fit); False = the seed's raw-feature MSE.
        lr, weight_decay: Adam.
        early_stopping_patience: epochs without val_loss improvement before stopping.
        log_images_every_n_epochs, num_log_images: TensorBoard snapshots of reconstructions of
            fixed validation and test images.
        threshold, num_overlays: see mvtec_ad.models.components.anomaly_module.AnomalyModule.
        **model_args: FAVAEModel's (backbone, layers, weights, working_size, latent_dim,
            pixel_weight, background, background_threshold, sigma, image_size).
    """

    detector_name = "favae"

    def __init__(
        self,
        kl_weight: float = 1.0,
        feature_norm: bool = True,
        lr: float = 1e-3,
        weight_decay: float = 1e-5,
        early_stopping_patience: int = 20,
        log_images_every_n_epochs: int = 10,
        num_log_images: int = 8,
        threshold: ThresholdConfig | None = None,
        num_overlays: int = 6,
        **model_args,
    ) -> None:
        model = FAVAEModel(**model_args)
        super().__init__(model, lr, early_stopping_patience, weight_decay, threshold, num_overlays)
        self.save_hyperparameters()
        self.kl_weight = kl_weight
        self.feature_norm = feature_norm
        self.log_images_every_n_epochs = log_images_every_n_epochs
        self.num_log_images = num_log_images

    def setup(self, stage: str) -> None:
        super().setup(stage)
        if stage != "fit" or not self.feature_norm or self.trainer.ckpt_path:
            return  # off, or the checkpoint brings the statistics
        self.model.to(self.trainer.strategy.root_device)
        self.model.fit_feature_statistics(self.data.feature_dataloader())

    def _step(self, batch: Batch, stage: str) -> tuple[torch.Tensor, FAVAEPass]:
        """Loss of one batch, its terms logged per epoch as {stage}_loss, {stage}_pixel, _kl, _feature."""
        p = self.model.run(self.model.network_input(self.model.pre_processor(batch.image)))
        terms = favae_loss(p, self.kl_weight)
        logged = {f"{stage}_{name}": value for name, value in terms.items()}
        self.log_dict(logged, on_step=False, on_epoch=True, batch_size=len(batch), sync_dist=stage == "val")
        return terms["loss"], p

    def training_step(self, batch: Batch, batch_idx: int) -> torch.Tensor:
        return self._step(batch, "train")[0]

    def validation_step(self, batch: Batch, batch_idx: int) -> AnomalyOutput:
        _, p = self._step(batch, "val")
        if not self.model.plain:  # padding or tiles: the whole image, as in test
            return self.detect_batch(batch)
        return self.model.head(self.model.raw_map(p), batch.image.shape[-2:])

    def on_train_epoch_end(self) -> None:
        every = self.log_images_every_n_epochs
        if every > 0 and (self.current_epoch + 1) % every == 0:
            self.log_reconstructions()

    @rank_zero_only
    def log_reconstructions(self) -> None:
        """Inputs (top row) over their mean reconstructions, for fixed validation and test images."""
        tensorboard = next((lg for lg in self.trainer.loggers if isinstance(lg, TensorBoardLogger)), None)
        if tensorboard is None or self.trainer.datamodule is None:
            return
        was_training = self.model.training
        self.model.eval()
        for name in ("val", "test"):
            batch = self.data.preview_batch(name, self.num_log_images)
            if batch is None:
                continue
            with torch.no_grad():
                p = self.model.run(self.model.pre_processor(batch.image.to(self.device)))
            grid = make_grid(torch.cat([p.image, p.reconstruction]).cpu(), nrow=len(batch), padding=2)
            tensorboard.experiment.add_image(f"reconstructions/{name}", grid, self.global_step)
        self.model.train(was_training)
