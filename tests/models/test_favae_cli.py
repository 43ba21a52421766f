"""FAVAE through the CLI on the tiny demo set: train, test from a checkpoint, resume, TensorBoard images."""

import json
import math
from pathlib import Path

import pytest
import torch

from tests.helpers import TEST_IMAGE_SIZE, cli, events, tiny_args


def small(root: Path, out: Path, epochs: int) -> list[str]:
    return tiny_args(
        "configs/demo/favae.yaml",
        root,
        out,
        "--model.working_size",
        str(TEST_IMAGE_SIZE),
        "--data.train_batch_size",
        "4",
        "--model.log_images_every_n_epochs",
        "1",
        "--model.num_log_images",
        "2",
        "--trainer.max_epochs",
        str(epochs),
    )


def test_train_test_resume_through_the_cli(tiny_root, tmp_path):
    cli("train", *small(tiny_root, tmp_path / "run", epochs=2))
    run_dir = tmp_path / "run" / "lightning_logs" / "version_0"
    trained = json.loads((run_dir / "metrics.json").read_text())
    assert trained["detector"] == "favae" and trained["n_test"] == 12
    for key in ("image_auroc", "pixel_auroc", "pixel_aupro", "threshold"):
        assert math.isfinite(trained[key]), key
    checkpoints = run_dir / "checkpoints"
    assert {p.name for p in checkpoints.iterdir()} == {"best.ckpt", "last.ckpt"}

    # reconstructions of validation and test images, logged every epoch (period set to 1)
    acc = events(run_dir)
    for name in ("val", "test"):
        assert len(acc.Images(f"reconstructions/{name}")) == 2, name
    assert {"train_loss", "val_loss", "val_kl", "val_feature"} <= set(acc.Tags()["scalars"])

    # a fresh process builds the model from the config and takes everything else from the checkpoint
    cli(
        "test", *small(tiny_root, tmp_path / "again", epochs=2), "--ckpt_path", str(checkpoints / "best.ckpt")
    )
    tested = json.loads((tmp_path / "again" / "lightning_logs" / "version_0" / "metrics.json").read_text())
    for key in ("image_auroc", "pixel_auroc", "pixel_aupro", "threshold", "precision"):
        assert tested[key] == pytest.approx(trained[key], rel=1e-5), key

    # resume: one more epoch on top of last.ckpt, not three from scratch
    last = torch.load(checkpoints / "last.ckpt", weights_only=False)
    cli("fit", *small(tiny_root, tmp_path / "run", epochs=3), "--ckpt_path", str(checkpoints / "last.ckpt"))
    resumed_dir = tmp_path / "run" / "lightning_logs" / "version_1"
    resumed = torch.load(resumed_dir / "checkpoints" / "last.ckpt", weights_only=False)
    assert (last["epoch"], resumed["epoch"]) == (1, 2)
    assert resumed["global_step"] == last["global_step"] * 3 // 2
    assert len(events(resumed_dir).Scalars("train_loss")) == 1  # only the third epoch ran
