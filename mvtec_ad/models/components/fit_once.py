"""Detectors without gradients (memory banks, scikit-learn estimators) as LightningModules.

One training epoch only embeds the training images; at its last batch the features of every
process are gathered, put back in dataset order (DistributedSampler pads and shuffles) and
fitted once, so validation (the operating threshold) and the checkpoint see the fitted model.
No optimizer; one checkpoint. The result is the same on 1 or N processes.
"""

from __future__ import annotations

import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.utilities import rank_zero_info

from mvtec_ad.data.dataset import Batch, unique_by_index
from mvtec_ad.evaluation.thresholds import ThresholdConfig
from mvtec_ad.models.components.anomaly_module import AnomalyModule
from mvtec_ad.models.components.detector import AnomalyOutput, Detector


class FitOnceModule(AnomalyModule):
    """Subclasses say what a training image contributes (`embed`) and how to fit on all of it (`fit_features`)."""

    fits_once = True  # its one training epoch only embeds the images (the progress bar says so)

    def __init__(
        self, model: Detector, threshold: ThresholdConfig | dict | None = None, num_overlays: int = 6
    ) -> None:
        super().__init__(model, threshold=threshold, num_overlays=num_overlays)
        self.automatic_optimization = False
        self.register_buffer("fitted", torch.tensor(False))
        # DistributedDataParallel refuses a module without a trainable parameter; this one is never used
        self.ddp_anchor = torch.nn.Parameter(torch.zeros(1))
        self._features: list[tuple[torch.Tensor, ...]] = []
        self._indices: list[torch.Tensor] = []

    def embed(self, images: torch.Tensor, valid: torch.Tensor | None = None) -> tuple[torch.Tensor, ...]:
        """Per-image tensors (first dimension = batch) that the fit needs.

        `valid` [B, 1, H, W] marks where the images are (keep_aspect pads them; None = everywhere):
        a detector that fits on patches may leave the padding out, as test never scores it.
        """
        raise NotImplementedError

    def fit_features(self, *features: torch.Tensor) -> None:
        """Fit on the gathered training features, in dataset order."""
        raise NotImplementedError

    def on_fit_start(self) -> None:
        if self.trainer.max_epochs != 1:
            rank_zero_info(
                f"{self.detector_name}: fits in one pass over the training images; max_epochs set to 1."
            )
            self.trainer.fit_loop.max_epochs = 1

    def on_train_epoch_start(self) -> None:
        self._features, self._indices = [], []

    def training_step(self, batch: Batch, batch_idx: int) -> None:
        if bool(self.fitted):
            return
        with torch.no_grad():
            canvas = self.model.pre_processor(batch.image)
            valid = self.model.canvas_valid(canvas, batch.content)
            if valid is not None and self.model.tiler is not None:
                valid = self.model.tiler.split(valid)
            features = tuple(f.detach() for f in self.embed(self.model.network_input(canvas), valid))
            if self.model.tiler is not None:  # one row per image, so gathering keeps dataset order
                features = tuple(self.model.tiler.per_image(f) for f in features)
            self._features.append(features)
        self._indices.append(batch.index)
        if self.trainer.is_last_batch:
            self._fit_once()

    def gathered_features(self) -> tuple[torch.Tensor, ...]:
        """Features of every process, one row per training image, sorted by dataset index."""
        index = torch.cat(self._indices).to(self.device)
        features = [torch.cat(parts) for parts in zip(*self._features, strict=True)]
        if self.trainer.world_size > 1:  # equal shapes on every rank: DistributedSampler pads
            index = self.all_gather(index).flatten(0, 1)
            features = [self.all_gather(f).flatten(0, 1) for f in features]
        return unique_by_index(index, *features)

    def _fit_once(self) -> None:
        if bool(self.fitted) or self.trainer.sanity_checking or not self._indices:
            return
        features = self.gathered_features()
        if self.model.tiler is not None:  # every tile of every image is a training sample
            features = tuple(f.flatten(0, 1) for f in features)
        self.fit_features(*features)
        self.fitted.fill_(True)
        self._features, self._indices = [], []

    def on_train_epoch_end(self) -> None:
        self._fit_once()  # when the epoch was cut short (limit_train_batches) before its last batch

    def validation_step(self, batch: Batch, batch_idx: int) -> AnomalyOutput | None:
        if self.trainer.sanity_checking:  # nothing is fitted before the training pass
            return None
        return super().validation_step(batch, batch_idx)

    def configure_optimizers(self) -> None:
        return None

    def configure_callbacks(self) -> list:
        return [*super().configure_callbacks(), FittedCheckpoint(filename="model")]


class FittedCheckpoint(ModelCheckpoint):
    """Saves a fit-once detector once it is fitted.

    The stock callback skips saving when the global step has not moved since its last save, and
    a detector without an optimizer never moves it.
    """

    def _should_skip_saving_checkpoint(self, trainer) -> bool:
        return (
            bool(trainer.fast_dev_run)
            or trainer.state.fn != "fit"
            or trainer.sanity_checking
            or not bool(trainer.lightning_module.fitted)
            or bool(self.best_model_path)  # saved already
        )
