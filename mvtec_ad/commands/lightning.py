"""LightningCLI's verbs (fit, validate, test, predict) plus `train`: fit, then test the best checkpoint.

Models and data are chosen by class_path in the config: a detector (an AnomalyModule subclass)
and a DataModule that keeps the data contract (mvtec_ad.data.AnomalyDataModule). With
--ckpt_path, LightningCLI builds the model with the checkpoint's hyperparameters (its input
geometry included), so `test` and `predict` see images as the model was trained on them.
"""

from __future__ import annotations

import os
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path

from jsonargparse import Namespace
from lightning.pytorch import LightningDataModule, Trainer
from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.plugins.io import CheckpointIO
from lightning.pytorch.utilities import rank_zero_warn

from mvtec_ad.checkpoints import check_detector_class, read_checkpoint
from mvtec_ad.errors import CheckpointError, ConfigError
from mvtec_ad.models.components.anomaly_module import AnomalyModule
from mvtec_ad.progress import with_progress_bar
from mvtec_ad.runs import AtomicCheckpointIO, RunLogger

SPECIAL_CKPT_PATHS = ("best", "last", "hpc", "registry")  # Lightning's names, not files
RUN_OPTIONS = ("num_overlays",)  # model options a checkpoint does not override


def plain(value: object) -> object:
    """A config or checkpoint value as plain data, so that equal settings compare equal."""
    if isinstance(value, Namespace):
        value = value.as_dict()
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items() if v is not None}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    return value


class AnomalyTrainer(Trainer):
    """Lightning's Trainer plus `train`: fit, then test the best checkpoint, in one run directory.

    By default it logs with RunLogger (a version folder no concurrent run can share) and writes
    checkpoints atomically (AtomicCheckpointIO): a kill or a full disk never leaves a broken one.
    On a terminal its loops show Rich progress bars (mvtec_ad.progress.RunProgressBar).
    """

    def __init__(self, *args, logger=None, plugins=None, callbacks=None, **kwargs) -> None:
        callbacks = with_progress_bar(callbacks, kwargs.get("enable_progress_bar"))
        if logger is None or logger is True:
            logger = RunLogger(save_dir=kwargs.get("default_root_dir") or os.getcwd())
        plugins = (
            [] if plugins is None else list(plugins) if isinstance(plugins, (list, tuple)) else [plugins]
        )
        if not any(isinstance(p, CheckpointIO) for p in plugins):
            plugins.append(AtomicCheckpointIO())
        super().__init__(*args, logger=logger, plugins=plugins, callbacks=callbacks, **kwargs)

    def train(
        self, model: AnomalyModule, datamodule: LightningDataModule, ckpt_path: str | None = None
    ) -> list:
        """Fit the model, then test the best checkpoint (or the final weights when none was kept).

        Args:
            ckpt_path: checkpoint to resume the fit from (e.g. .../checkpoints/last.ckpt).
        """
        self.fit(model, datamodule=datamodule, ckpt_path=ckpt_path)
        best = self.checkpoint_callback.best_model_path if self.checkpoint_callback else ""
        return self.test(model, datamodule=datamodule, ckpt_path=best or None)


class AnomalyCLI(LightningCLI):
    """LightningCLI with the `train` verb and the predictions writer of `predict`."""

    @staticmethod
    def subcommands() -> dict[str, set[str]]:
        return {**LightningCLI.subcommands(), "train": {"model", "datamodule"}}

    def _parse_ckpt_path(self) -> None:
        """The model is built with the checkpoint's hyperparameters (its geometry included), as Lightning does;
        here the file is read safely, and every config value the checkpoint replaces is named in a warning."""
        subcommand = self.config.get("subcommand")
        ckpt_path = self.config[subcommand].get("ckpt_path") if subcommand else None
        if not ckpt_path or not Path(ckpt_path).is_file():
            return
        checkpoint = read_checkpoint(ckpt_path)
        model = self.config[subcommand].model
        if model is not None and model.get("class_path"):
            check_detector_class(checkpoint, model.class_path, ckpt_path)
        hparams = dict(checkpoint.get("hyper_parameters") or {})
        hparams.pop("_instantiator", None)
        if not hparams:
            return
        configured = model.init_args.as_dict() if model is not None and model.get("init_args") else {}
        for name in RUN_OPTIONS:  # how this run reports, not what the model is: the config's value stays
            hparams.pop(name, None)
        stored = {k: v for k, v in hparams.items() if not k.startswith("_")}
        if "_class_path" in hparams:
            hparams = {"class_path": hparams.pop("_class_path"), "dict_kwargs": hparams}
        self.config = self.parser.parse_object({subcommand: {"model": hparams}}, self.config)
        replaced = [
            f"{k} {plain(configured[k])!r} -> {plain(v)!r}"
            for k, v in stored.items()
            if k in configured and plain(configured[k]) != plain(v)
        ]
        if replaced:
            rank_zero_warn(
                f"The checkpoint's hyperparameters replace the config's model options: {', '.join(replaced)}."
            )

    def before_instantiate_classes(self) -> None:
        config = self.config[self.subcommand]
        ckpt_path = config.get("ckpt_path")
        if self.subcommand == "predict":
            if not ckpt_path:
                raise CheckpointError(
                    "predict needs a trained model: pass --ckpt_path path/to/checkpoint.ckpt."
                )
            if config.get("return_predictions") is None:
                config.return_predictions = False  # the writer has them on disk; keep none in memory
        if ckpt_path and ckpt_path not in SPECIAL_CKPT_PATHS and not Path(ckpt_path).is_file():
            raise CheckpointError(f"Checkpoint '{ckpt_path}' (--ckpt_path) does not exist.")

    def instantiate_trainer(self, **kwargs) -> Trainer:
        """Lightning's, plus the writer of predictions.csv/json and heatmaps for every `predict` run."""
        trainer = super().instantiate_trainer(**kwargs)
        if self.subcommand == "predict":
            from mvtec_ad.report.predictions import PredictionWriter

            if not any(isinstance(c, PredictionWriter) for c in trainer.callbacks):
                trainer.callbacks.append(PredictionWriter())
        return trainer


# options that moved: the old spelling is an error that names the new one, not a parser dump
MOVED_OPTIONS = {"--data.image_size": "--model.image_size (the input size is the model's own)"}


def check_moved_options(args: Sequence[str]) -> None:
    for arg in args:
        name = arg.split("=", 1)[0]
        if name in MOVED_OPTIONS:
            raise ConfigError(f"{name} is now {MOVED_OPTIONS[name]}.")


def run_lightning_cli(args: Sequence[str] | None = None) -> AnomalyCLI:
    # frozen backbones are in eval mode on purpose; say so once here instead of warning every run
    warnings.filterwarnings("ignore", message=r".*module\(s\) in eval mode.*")
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\).*")
    check_moved_options(sys.argv[1:] if args is None else args)
    return AnomalyCLI(
        model_class=AnomalyModule,
        datamodule_class=LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        trainer_class=AnomalyTrainer,
        seed_everything_default=42,
        parser_kwargs={"parser_mode": "omegaconf"},
        save_config_kwargs={"overwrite": True},
        args=args,
    )
