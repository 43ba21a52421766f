"""The DataModule: loaders, splits by seed, options, errors that name the option."""

from __future__ import annotations

import pytest
import torch

from mvtec_ad.data.datamodule import AnomalyDataModule
from mvtec_ad.data.dataset import Batch
from mvtec_ad.data.geometry import InputGeometry
from mvtec_ad.errors import ConfigError, DataError
from tests.helpers import datamodule, make_category


def test_datamodule_loaders_yield_batches(category_root):
    dm = AnomalyDataModule(
        root=category_root, category="widget", train_batch_size=2, eval_batch_size=3, val_split=0.25, seed=1
    )
    dm.bind_input(InputGeometry.of(16))  # what a 16 px detector does in its setup
    assert dm.has_masks() is False  # not set up yet
    dm.setup("fit")
    assert dm.has_masks() is True
    assert len(dm.train_set) == 3 and len(dm.val_set) == 1 and len(dm.test_set) == 5
    train_paths = {str(s.path) for s in dm.train_set.samples}
    val_paths = {str(s.path) for s in dm.val_set.samples}
    assert train_paths.isdisjoint(val_paths)
    assert train_paths | val_paths == {str(s.path) for s in dm.layout.train}

    train_batches = list(dm.train_dataloader())
    assert [len(b) for b in train_batches] == [2, 1]
    for b in train_batches:
        assert isinstance(b, Batch)
        assert b.image.shape[1:] == (3, 16, 16) and b.mask.shape[1:] == (1, 16, 16)
        assert (b.label == 0).all()
    assert {p for b in train_batches for p in b.path} == train_paths

    (val_batch,) = list(dm.val_dataloader())
    assert val_batch.path == sorted(val_paths)

    test_batches = list(dm.test_dataloader())
    assert [len(b) for b in test_batches] == [3, 2]
    labels = torch.cat([b.label for b in test_batches])
    assert set(labels.tolist()) == {0, 1}
    assert int((labels == 1).sum()) == 3 and int((labels == 0).sum()) == 2
    masks = torch.cat([b.mask for b in test_batches])
    assert masks[labels == 1].sum(dim=(1, 2, 3)).gt(0).all()
    assert masks[labels == 0].sum() == 0

    feature_paths = [p for b in dm.feature_dataloader() for p in b.path]
    assert feature_paths == [str(s.path) for s in dm.train_set.samples]  # unshuffled, in order
    assert [p for b in dm.predict_dataloader() for p in b.path] == [str(s.path) for s in dm.layout.test]


def test_datamodule_split_depends_only_on_seed(tmp_path):
    root = make_category(tmp_path / "data", n_train=20, n_good=1, defects={"crack": 1})

    def val_paths(seed: int) -> list[str]:
        dm = datamodule(root, category="widget", image_size=8, val_split=0.2, seed=seed)
        return [str(s.path) for s in dm.val_set.samples]

    assert len(val_paths(0)) == 4
    assert val_paths(0) == val_paths(0)
    assert len({tuple(val_paths(s)) for s in (0, 1, 2)}) > 1


def test_datamodule_val_split_zero_and_invalid(category_root):
    dm = datamodule(category_root, category="widget", image_size=8, val_split=0.0)
    assert len(dm.val_set) == 0 and len(dm.train_set) == 4
    assert list(dm.val_dataloader()) == []
    with pytest.raises(ConfigError, match="val_split"):
        AnomalyDataModule(root=category_root, category="widget", val_split=1.0).setup()


def test_datamodule_require_masks_passthrough(tmp_path):
    root = make_category(tmp_path / "data", masks=False)
    with pytest.raises(DataError, match="ground-truth mask"):
        AnomalyDataModule(root=root, category="widget").setup()
    dm = datamodule(root, category="widget", image_size=8, require_masks=False)
    assert dm.has_masks() is False
    batch = next(iter(dm.test_dataloader()))
    assert batch.mask.sum() == 0 and (batch.label == 1).any()


def test_datamodule_missing_category_names_option(category_root):
    with pytest.raises(DataError) as err:
        AnomalyDataModule(root=category_root, category="gadget").setup()
    assert "gadget" in str(err.value) and "widget" in str(err.value)
    assert "--data.category" in str(err.value)


def test_options_of_another_source_are_refused_naming_both(category_root):
    with pytest.raises(
        ConfigError, match=r"--data.defect_dirs is an option of source folder.*--data.source folder"
    ):
        AnomalyDataModule(root=category_root, category="widget", defect_dirs=["crack"])
    with pytest.raises(ConfigError, match=r"--data.split_csv is an option of source visa"):
        AnomalyDataModule(
            root=category_root, category="widget", source="folder", defect_dirs=["x"], split_csv="a.csv"
        )
    with pytest.raises(ConfigError, match="--data.source must be one of mvtec, folder, visa"):
        AnomalyDataModule(root=category_root, source="mvtech")
    with pytest.raises(ConfigError, match="--data.source folder needs --data.defect_dirs"):
        AnomalyDataModule(root=category_root, source="folder")


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("train_batch_size", 0, "--data.train_batch_size must be a positive number of images, got 0"),
        ("eval_batch_size", -2, "--data.eval_batch_size must be a positive number of images, got -2"),
        ("num_workers", -1, "--data.num_workers must be 0 or more"),
        ("augmentation", "heavy", "Unknown augmentation 'heavy' .--data.augmentation."),
    ],
)
def test_bad_options_fail_when_constructed_before_any_file_is_read(tmp_path, option, value, message):
    with pytest.raises(ConfigError, match=message):
        AnomalyDataModule(root=tmp_path / "nowhere", category="widget", **{option: value})


def test_test_batches_bring_masks_at_their_own_resolution_unless_told_input(category_root):
    dm = AnomalyDataModule(root=category_root, category="widget", eval_batch_size=8)
    dm.bind_input(InputGeometry.of([16, 24], resize="keep_aspect"))
    dm.setup("test")
    (batch,) = list(dm.test_dataloader())
    assert batch.image.shape[-2:] == (16, 24)
    assert batch.full_mask is not None and len(batch.full_mask) == len(batch)
    for i, mask in enumerate(batch.full_mask):
        assert tuple(mask.shape) == tuple(batch.original[i].tolist())  # the file's own size
        assert mask.dtype == torch.uint8 and int(mask.max()) == int(batch.label[i])
    assert batch.content.tolist() == [[16, 16]] * len(batch)  # square files fit a 16 x 24 canvas as 16 x 16
    dm = AnomalyDataModule(root=category_root, category="widget", pixel_resolution="input")
    dm.bind_input(InputGeometry.of(16))
    dm.setup("test")
    assert next(iter(dm.test_dataloader())).full_mask is None
    with pytest.raises(ConfigError, match=r"--data.pixel_resolution must be original .* or input"):
        AnomalyDataModule(root=category_root, category="widget", pixel_resolution="full")
