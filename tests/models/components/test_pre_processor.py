"""The model's own input geometry: parsed once, kept in checkpoints, applied to batches of other sizes."""

import pytest
import torch

from mvtec_ad.data.geometry import InputGeometry
from mvtec_ad.errors import CheckpointError, ConfigError
from mvtec_ad.models.knn import KNN
from mvtec_ad.models.patchcore import PatchCoreModel
from tests.helpers import tiny_dfr_kwargs


def test_geometry_of_a_side_or_height_and_width():
    assert InputGeometry.of(64).size == (64, 64) and InputGeometry.of(64).image_size == 64
    assert InputGeometry.of([32, 96]).size == (32, 96) and InputGeometry.of((32, 96)).image_size == [32, 96]
    assert InputGeometry.of([48]).size == (48, 48)


@pytest.mark.parametrize("bad", [0, -5, [0, 64], [1, 2, 3], 64.0, True, "64"])
def test_bad_image_size_names_the_option(bad):
    with pytest.raises(ConfigError, match=r"--model.image_size"):
        InputGeometry.of(bad)


def test_a_batch_of_another_size_is_resized_in_and_its_maps_out():
    torch.manual_seed(0)
    model = PatchCoreModel(**tiny_dfr_kwargs(), coreset_ratio=1.0, image_size=64).eval()
    with torch.no_grad():
        model.fit(model.embed(torch.rand(4, 3, 64, 64)))
        images = torch.rand(2, 3, 64, 64)
        assert model.pre_processor(images) is images  # DataModule batches pass untouched
        bigger = torch.rand(2, 3, 80, 120)
        other = model(bigger)
        inside = model.detect(model.pre_processor(bigger))
    assert model.pre_processor(bigger).shape == (2, 3, 64, 64)
    assert other.score.shape == (2,) and other.map.shape == (2, 1, 80, 120)  # back at the caller's size
    assert torch.equal(other.score, inside.score)
    assert torch.equal(other.map, model.pre_processor.restore(inside.map, (80, 120)))


def test_geometry_travels_in_the_state_dict_and_a_mismatch_is_refused():
    trained = KNN(**tiny_dfr_kwargs(), image_size=64)
    state = trained.state_dict()
    assert state["model.pre_processor.image_size"].tolist() == [64, 64]
    KNN(**tiny_dfr_kwargs(), image_size=64).load_state_dict(state)
    with pytest.raises(CheckpointError, match=r"trained at image_size 64, but this model was built for 224"):
        KNN(**tiny_dfr_kwargs()).load_state_dict(state)


def test_load_from_checkpoint_builds_the_trained_geometry(tmp_path):
    import lightning as L

    model = KNN(**tiny_dfr_kwargs(), image_size=[48, 96])
    trainer = L.Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False)
    trainer.strategy.connect(model)
    path = tmp_path / "knn.ckpt"
    trainer.save_checkpoint(path)
    loaded = KNN.load_from_checkpoint(path, map_location="cpu")
    assert loaded.geometry == InputGeometry(48, 96)
