"""A fit killed mid-way and resumed from last.ckpt ends with exactly the weights and metrics of an uninterrupted one."""

import json
from pathlib import Path

import pytest
import torch
from lightning.pytorch import Callback, seed_everything

from mvtec_ad.commands.lightning import AnomalyTrainer
from mvtec_ad.data.datamodule import AnomalyDataModule
from mvtec_ad.models.dfr import DFR
from mvtec_ad.models.pixel_ae import PixelAE
from tests.helpers import TEST_IMAGE_SIZE, tiny_dfr_kwargs

EPOCHS = 3


class CrashAt(Callback):
    """Kills the fit at the start of an epoch, after last.ckpt of the one before was written."""

    def __init__(self, epoch: int | None) -> None:
        self.epoch = epoch

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        if trainer.current_epoch == self.epoch:
            raise RuntimeError("simulated kill")


DETECTORS = {
    "dfr": (
        lambda: DFR(**tiny_dfr_kwargs(), image_size=TEST_IMAGE_SIZE, early_stopping_patience=50),
        {"train_batch_size": 4, "val_split": 0.25},
    ),
    "pixel_ae": (
        lambda: PixelAE(image_size=TEST_IMAGE_SIZE, early_stopping_patience=50),
        {"train_batch_size": 4, "augmentation": "pixel_ae", "samples_per_epoch": 12},
    ),
}


def train(name: str, root: Path, out: Path, crash: int | None = None, ckpt_path: str | None = None):
    """fit + test like `python -m mvtec_ad train`: the seed set first, a fresh model and DataModule."""
    build, data = DETECTORS[name]
    seed_everything(0)
    model = build()
    trainer = AnomalyTrainer(
        max_epochs=EPOCHS,
        default_root_dir=out,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[CrashAt(crash)],
    )
    trainer.train(model, AnomalyDataModule(root, "washer", eval_batch_size=8, **data), ckpt_path=ckpt_path)
    return model, json.loads((Path(trainer.log_dir) / "metrics.json").read_text())


@pytest.mark.parametrize("name", list(DETECTORS))
def test_kill_and_resume_equals_the_uninterrupted_fit(name, tiny_root, tmp_path):
    straight, expected = train(name, tiny_root, tmp_path / "straight")

    with pytest.raises(RuntimeError, match="simulated kill"):
        train(name, tiny_root, tmp_path / "killed", crash=2)
    (last,) = (tmp_path / "killed").rglob("last.ckpt")
    assert torch.load(last, weights_only=True)["epoch"] == 1
    resumed, metrics = train(name, tiny_root, tmp_path / "killed", ckpt_path=str(last))

    for key in ("checkpoint",):  # paths of the two runs
        expected.pop(key), metrics.pop(key)
    assert metrics == expected  # every metric, to the last bit
    a, b = straight.state_dict(), resumed.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
