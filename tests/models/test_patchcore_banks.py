"""PatchCore's coarse bank through a fit: scaled on validation normals only, never on test images."""

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mvtec_ad.models.patchcore import PatchCore
from tests.helpers import TEST_IMAGE_SIZE, datamodule, main_in_process, tiny_args

TWO_BANKS = ("--model.coarse_layers", "[blocks.4, blocks.6]", "--model.resize", "squash")


def fit(root: Path, out: Path, *extra: str) -> PatchCore:
    args = tiny_args(
        "configs/demo/patchcore.yaml", root, out, "--trainer.logger", "false", *TWO_BANKS, *extra
    )
    main_in_process(["fit", *args])
    (checkpoint,) = (out / "checkpoints").glob("model.ckpt")
    return PatchCore.load_from_checkpoint(checkpoint, map_location="cpu").eval()


def poisoned_copy(root: Path, to: Path) -> Path:
    """The tiny set with every washer test image replaced by noise."""
    shutil.copytree(root, to)
    rng = np.random.default_rng(0)
    for path in (to / "washer" / "test").rglob("*.png"):
        size = Image.open(path).size
        Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(path)
    return to


@pytest.mark.parametrize("protocol", ["official", "synthetic"])
def test_coarse_bank_is_scaled_on_validation_normals_and_never_on_test(protocol, tiny_root, tmp_path):
    extra = ("--data.protocol", protocol, "--data.val_split", "0.5")  # 6 images: some normal under (ii)
    module = fit(tiny_root, tmp_path / "run", *extra)
    model = module.model
    assert model.coarse_bank.shape[0] > 0 and model.coarse_bank.shape[1] == sum(model.extractor.channels[1:])

    # by hand: both banks' distances over the validation images that are normal (protocol (ii)'s
    # synthetic anomalies left out)
    dm = datamodule(tiny_root, "washer", TEST_IMAGE_SIZE, protocol=protocol, val_split=0.5)
    values: list[list[torch.Tensor]] = [[], []]
    normals = 0
    with torch.no_grad():
        for batch in dm.val_dataloader():
            keep = batch.label == 0
            normals += int(keep.sum())
            if not keep.any():
                continue
            for i, v in enumerate(model.normal_distances(model.pre_processor(batch.image[keep]), None)):
                values[i].append(v)
    assert 0 < normals < len(dm.val_set) if protocol == "synthetic" else normals == len(dm.val_set)
    expected = [[torch.cat(v).mean(), torch.cat(v).std()] for v in values]
    torch.testing.assert_close(model.bank_stats, torch.tensor(expected), rtol=1e-4, atol=1e-6)

    poisoned = fit(poisoned_copy(tiny_root, tmp_path / "poisoned"), tmp_path / "again", *extra)
    assert torch.equal(poisoned.model.bank_stats, model.bank_stats)
    assert torch.equal(poisoned.model.coarse_bank, model.coarse_bank)


def test_without_validation_normals_the_banks_are_scaled_on_training_images_with_a_warning(
    tiny_root, tmp_path
):
    with pytest.warns(UserWarning, match="no normal validation image to scale the coarse bank by"):
        module = fit(tiny_root, tmp_path / "run", "--data.val_split", "0")
    stats = module.model.bank_stats
    assert torch.isfinite(stats).all() and (stats[:, 1] > 0).all()
    assert not torch.equal(stats, torch.tensor([[0.0, 1.0], [0.0, 1.0]]))  # not the unfitted default
