"""pixel_ae and feature_ae through the CLI on the tiny set: fit, resume from last.ckpt + test, retest."""

import json
import math
from pathlib import Path

import pytest
import torch

from mvtec_ad.commands.lightning import run_lightning_cli
from mvtec_ad.evaluation.thresholds import fit_threshold
from mvtec_ad.models.feature_ae import FeatureAE
from tests.helpers import cli, datamodule, tiny_args

# the in-process runs pass args while pytest's own argv is set; Lightning warns about that mix
pytestmark = pytest.mark.filterwarnings("ignore:LightningCLI's args parameter")

METRICS = ("image_auroc", "pixel_auroc", "pixel_aupro", "threshold", "precision", "recall")


def args(config: str, root: Path, out: Path, epochs: int) -> list[str]:
    return tiny_args(
        config,
        root,
        out,
        "--data.train_batch_size",
        "4",
        "--trainer.max_epochs",
        str(epochs),
        "--trainer.enable_model_summary",
        "false",
    )


def run_dir(out: Path) -> Path:
    return out / "lightning_logs" / "version_0"


def fit_resume_test_retest(config: str, root: Path, tmp: Path, *extra: str) -> tuple[dict, Path]:
    """fit 1 epoch; `train` resumed from its last.ckpt to 2 epochs (fit + test); `test` the best in a new process.

    fit and train run the CLI in this process (each interpreter start costs seconds of import);
    the test that must reproduce the metrics from the checkpoint alone runs in a fresh one.
    """
    run_lightning_cli(["fit", *args(config, root, tmp / "first", 1), *extra])
    first_dir = run_dir(tmp / "first") / "checkpoints"
    assert {p.name for p in first_dir.iterdir()} == {"best.ckpt", "last.ckpt"}
    first = torch.load(first_dir / "last.ckpt", weights_only=False)
    assert first["epoch"] == 0

    run_lightning_cli(
        [
            "train",
            *args(config, root, tmp / "resumed", 2),
            *extra,
            "--ckpt_path",
            str(first_dir / "last.ckpt"),
        ]
    )
    resumed = torch.load(run_dir(tmp / "resumed") / "checkpoints" / "last.ckpt", weights_only=False)
    assert resumed["epoch"] == 1 and resumed["global_step"] == 2 * first["global_step"]  # one more epoch
    trained = json.loads((run_dir(tmp / "resumed") / "metrics.json").read_text())
    assert trained["n_test"] == 12
    best = Path(trained["checkpoint"])  # the resumed run's best, or still the first run's when not beaten
    assert best.name == "best.ckpt" and best.is_file()
    for key in ("image_auroc", "pixel_auroc", "pixel_aupro", "threshold"):
        assert trained[key] is not None and math.isfinite(trained[key]), key

    cli("test", *args(config, root, tmp / "retest", 1), *extra, "--ckpt_path", str(best))
    tested = json.loads((run_dir(tmp / "retest") / "metrics.json").read_text())
    for key in METRICS:
        assert tested[key] == (None if trained[key] is None else pytest.approx(trained[key], rel=1e-5)), key
    return trained, best


def test_pixel_ae_fit_resume_test(tiny_root, tmp_path):
    trained, _ = fit_resume_test_retest(
        "configs/demo/pixel_ae.yaml", tiny_root, tmp_path, "--data.samples_per_epoch", "16"
    )
    assert trained["detector"] == "pixel_ae"


def test_feature_ae_fit_resume_test_and_training_threshold(tiny_root, tmp_path):
    trained, best = fit_resume_test_retest("configs/demo/feature_ae.yaml", tiny_root, tmp_path)
    assert trained["detector"] == "feature_ae"

    # the stored threshold is the model's rule over the training images' scores under the stored weights
    model = FeatureAE.load_from_checkpoint(best).eval()
    dm = datamodule(tiny_root, "washer", val_split=0.2, seed=42)
    with torch.no_grad():
        scores = torch.cat([model(batch.image).score for batch in dm.feature_dataloader()])
    assert len(scores) == len(dm.train_set)
    config = model.evaluator.threshold_config  # the model's own rule (the config's, or the default)
    assert float(model.threshold) == pytest.approx(fit_threshold(scores, None, config), rel=1e-4)
    assert trained["threshold"] == pytest.approx(float(model.threshold), rel=1e-6)
