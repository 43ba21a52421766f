"""Command line: LightningCLI verbs (fit/validate/test/predict + train) and the extra tools (synth, demo).

    python -m mvtec_ad fit   --config configs/dfr.yaml --data.root datasets/mvtec --data.category bottle
    python -m mvtec_ad test  --config configs/dfr.yaml --ckpt_path lightning_logs/version_0/checkpoints/best.ckpt
    python -m mvtec_ad train --config configs/demo/dfr.yaml      # fit, then test on the best checkpoint
    python -m mvtec_ad synth --out datasets/demo                 # the procedural demo set
    python -m mvtec_ad demo                                      # synth + train every demo category + table
    python -m mvtec_ad predict --config ... --ckpt_path ... --data.path some/folder/
    python -m mvtec_ad benchmark --configs A.yaml B.yaml --data.root R --categories all --out results.csv
    python -m mvtec_ad stats --data.root R --out stats/
    python -m mvtec_ad export --config ... --ckpt_path ... --format onnx

One YAML config serves every LightningCLI verb; it is parsed in omegaconf mode, so `${...}`
interpolation works.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import warnings
from collections.abc import Sequence

from lightning.pytorch import LightningDataModule, Trainer
from lightning.pytorch.cli import LightningCLI

from mvtec_ad.backbones import BackboneError
from mvtec_ad.data.datamodule import MVTecDataModule
from mvtec_ad.data.layout import DatasetError
from mvtec_ad.models.base import AnomalyModule

EXTRA_COMMANDS = {
    "synth": "write the procedural demo set (MVTec layout)",
    "demo": "make the demo set, train every demo category, print a table",
    "benchmark": "train + test every config on every category; results.csv and results.md (resumable)",
    "stats": "dataset exploration: counts, sizes, anomaly areas, brightness; CSV, markdown and plots",
    "export": "export a checkpoint's detector to ONNX (scores and maps, preprocessing included)",
}

# verb -> "module:function" taking the remaining argv; imported only when the verb is used
EXTRA_ENTRY_POINTS = {
    "synth": "mvtec_ad.cli:synth_main",
    "demo": "mvtec_ad.demo_run:demo_main",
    "benchmark": "mvtec_ad.benchmark:benchmark_main",
    "stats": "mvtec_ad.stats:stats_main",
    "export": "mvtec_ad.export:export_main",
}


class AnomalyTrainer(Trainer):
    """Lightning's Trainer plus `train`: fit, then test the best checkpoint, in one run directory."""

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
    """LightningCLI with the `train` verb; models and data are chosen by class_path in the config."""

    @staticmethod
    def subcommands() -> dict[str, set[str]]:
        return {**LightningCLI.subcommands(), "train": {"model", "datamodule"}}

    def before_instantiate_classes(self) -> None:
        if self.subcommand == "predict":  # the checkpoint's image size; see mvtec_ad.predict
            from mvtec_ad.predict import prepare_predict_config

            prepare_predict_config(self.config.predict)

    def instantiate_trainer(self, **kwargs) -> Trainer:
        """Lightning's, plus the writer of predictions.csv/json and heatmaps for every `predict` run."""
        trainer = super().instantiate_trainer(**kwargs)
        if self.subcommand == "predict":
            from mvtec_ad.predict import PredictionWriter

            if not any(isinstance(c, PredictionWriter) for c in trainer.callbacks):
                trainer.callbacks.append(PredictionWriter())
        return trainer


def run_lightning_cli(args: Sequence[str] | None = None) -> AnomalyCLI:
    # frozen backbones are in eval mode on purpose; say so once here instead of warning every run
    warnings.filterwarnings("ignore", message=r".*module\(s\) in eval mode.*")
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\).*")
    return AnomalyCLI(
        model_class=AnomalyModule,
        datamodule_class=MVTecDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        trainer_class=AnomalyTrainer,
        seed_everything_default=42,
        parser_kwargs={"parser_mode": "omegaconf"},
        save_config_kwargs={"overwrite": True},
        args=args,
    )


def synth_main(argv: Sequence[str]) -> None:
    from mvtec_ad.data.demo import DEMO_CATEGORIES, make_demo_dataset

    parser = argparse.ArgumentParser(prog="python -m mvtec_ad synth", description=EXTRA_COMMANDS["synth"])
    parser.add_argument("--out", default="datasets/demo", help="output folder (default: datasets/demo)")
    parser.add_argument("--categories", nargs="+", default=list(DEMO_CATEGORIES), help="categories to write")
    parser.add_argument("--image_size", type=int, default=256)
    parser.add_argument("--n_train", type=int, default=60)
    parser.add_argument("--n_test_good", type=int, default=15)
    parser.add_argument("--n_test_defect", type=int, default=30)
    parser.add_argument("--seed", type=int, default=0)
    a = parser.parse_args(argv)
    out = make_demo_dataset(
        a.out, a.categories, a.image_size, a.n_train, a.n_test_good, a.n_test_defect, a.seed
    )
    print(f"Demo set written to {out} ({', '.join(a.categories)}).")


def print_usage() -> None:
    print(__doc__)
    print("Extra commands:")
    for name, text in EXTRA_COMMANDS.items():
        print(f"  {name:10s} {text}")
    print("\nLightning verbs (fit, validate, test, predict, train): `python -m mvtec_ad <verb> --help`.")


USER_ERRORS = (DatasetError, BackboneError)


def find_user_error(error: BaseException) -> BaseException | None:
    """The DatasetError/BackboneError behind `error` (jsonargparse and Lightning wrap them), if any."""
    seen: set[int] = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, USER_ERRORS):
            return error
        seen.add(id(error))
        error = error.__cause__ or error.__context__
    return None


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point. Errors in the user's data or weights print their message alone (exit 2);
    set MVTEC_AD_DEBUG=1 for the full traceback."""
    try:
        dispatch(argv)
    except Exception as error:
        user_error = find_user_error(error)
        if user_error is None or os.environ.get("MVTEC_AD_DEBUG"):
            raise
        print(f"error: {user_error}", file=sys.stderr)
        sys.exit(2)


def dispatch(argv: Sequence[str] | None = None) -> None:
    from_sys = argv is None
    argv = list(sys.argv[1:] if from_sys else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print_usage()
        return
    entry_point = EXTRA_ENTRY_POINTS.get(argv[0])
    if entry_point is None:
        run_lightning_cli(None if from_sys else argv)
        return
    module_name, function_name = entry_point.split(":")
    getattr(importlib.import_module(module_name), function_name)(argv[1:])
