"""The data contract: AnomalyDataModule keeps it, anything else is refused with what it lacks."""

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader

from mvtec_ad.commands.lightning import AnomalyTrainer
from mvtec_ad.data.contract import AnomalyData, require_anomaly_data
from mvtec_ad.data.datamodule import AnomalyDataModule
from mvtec_ad.data.dataset import collate_batch
from mvtec_ad.errors import ConfigError
from mvtec_ad.models.knn import KNN
from tests.helpers import TEST_IMAGE_SIZE, datamodule, tiny_dfr_kwargs


class LoadersOnly(L.LightningDataModule):
    """A DataModule that has loaders but none of the rest of the contract."""

    def train_dataloader(self):
        return []


def test_anomaly_datamodule_keeps_the_contract(tiny_root):
    dm = datamodule(tiny_root)
    assert isinstance(dm, AnomalyData) and require_anomaly_data(dm, "knn") is dm
    described = dm.describe()
    assert (described.category, described.protocol, described.root) == ("fabric", "official", str(tiny_root))
    assert dm.split_size("train") == len(dm.train_set) and dm.split_size("val") == len(dm.val_set)
    assert dm.preview_batch("test", 3).index.tolist() == [0, 6, 11]  # spread over the split
    preview = dm.preview_batch("test", 50)
    assert len(preview) == 12 and set(preview.label.tolist()) == {0, 1}  # good and defective alike
    assert preview.image.shape[-2:] == (TEST_IMAGE_SIZE, TEST_IMAGE_SIZE)


def test_a_datamodule_without_the_contract_is_named_with_what_it_lacks():
    with pytest.raises(ConfigError, match=r"LoadersOnly lacks .*bind_input.*feature_dataloader"):
        require_anomaly_data(LoadersOnly(), "knn")
    with pytest.raises(ConfigError, match="knn needs a DataModule"):
        require_anomaly_data(None, "knn")


def test_fitting_with_a_foreign_datamodule_fails_before_any_batch(tmp_path):
    trainer = AnomalyTrainer(default_root_dir=tmp_path, logger=False, enable_progress_bar=False, max_epochs=1)
    with pytest.raises(ConfigError, match="knn needs a DataModule that provides"):
        trainer.fit(KNN(**tiny_dfr_kwargs(), image_size=TEST_IMAGE_SIZE), datamodule=LoadersOnly())


def test_an_unbound_datamodule_says_who_sets_the_geometry(tiny_root):
    dm = AnomalyDataModule(tiny_root, "fabric")
    dm.setup()
    assert len(dm.splits.test) == 12  # the splits need no geometry
    with pytest.raises(ConfigError, match=r"no input geometry.*bind_input"):
        dm.test_dataloader()


def test_a_detector_tests_on_plain_dataloaders_too(tiny_root, tmp_path):
    """No DataModule at all: the model's own geometry is what the loader must deliver; pixel metrics still apply."""
    dm = datamodule(tiny_root, "washer")
    model = KNN(**tiny_dfr_kwargs(), image_size=TEST_IMAGE_SIZE)
    trainer = AnomalyTrainer(default_root_dir=tmp_path, enable_progress_bar=False, max_epochs=1, logger=False)
    trainer.fit(model, train_dataloaders=dm.train_dataloader(), val_dataloaders=dm.val_dataloader())
    loader = DataLoader(dm.test_set, batch_size=5, collate_fn=collate_batch)
    trainer.test(model, dataloaders=loader)
    assert model.test_results["n_test"] == 12 and model.test_results["category"] is None
    assert model.test_results["pixel_auroc"] is not None and torch.isfinite(model.threshold)
