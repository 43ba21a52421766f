"""Source mvtec_ad2: MVTec AD 2's folders (train, validation, test_public, private splits) into splits."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml
from lightning.pytorch.cli import instantiate_class

from mvtec_ad.data.datamodule import AnomalyDataModule
from mvtec_ad.data.geometry import InputGeometry
from mvtec_ad.data.sources.mvtec_ad2 import TEST_SPLITS, scan_mvtec_ad2, split_samples
from mvtec_ad.errors import ConfigError, DataError
from tests.data.sources.mvtec_ad2_tree import AD2_COUNTS, make_ad2_category
from tests.helpers import SIZE, datamodule


@pytest.fixture
def ad2_root(tmp_path) -> Path:
    return make_ad2_category(tmp_path / "mvtec_ad_2")


def relative(samples, root: Path) -> list[str]:
    return [s.path.relative_to(root / "fabric").as_posix() for s in samples]


def test_splits_come_from_their_own_folders(ad2_root):
    dm = datamodule(ad2_root, source="mvtec_ad2", val_split=0.5)  # val_split does not cut train here
    train, val, test = dm.train_set.samples, dm.val_set.samples, dm.test_set.samples
    assert (len(train), len(val), len(test)) == (
        AD2_COUNTS["train"],
        AD2_COUNTS["validation"],
        AD2_COUNTS["good"] + AD2_COUNTS["bad"],
    )
    assert all(p.startswith("train/good/") for p in relative(train, ad2_root))
    assert all(p.startswith("validation/good/") for p in relative(val, ad2_root))
    assert all(s.label == 0 for s in train + val)
    assert not {s.path for s in val} & {s.path for s in train}  # validation never holds a train file
    assert "validation/good" in dm.protocol_description and "held out" not in dm.protocol_description


def test_test_public_labels_and_masks(ad2_root):
    test = datamodule(ad2_root, source="mvtec_ad2").test_set.samples
    good = [s for s in test if s.label == 0]
    bad = [s for s in test if s.label == 1]
    assert relative(good, ad2_root) == [
        f"test_public/good/{i:03d}_regular.png" for i in range(AD2_COUNTS["good"])
    ]
    assert len(bad) == AD2_COUNTS["bad"] and all(s.defect == "bad" for s in bad)
    for s in bad:
        assert s.path.parent.name == "bad"
        assert s.mask_path == ad2_root / "fabric/test_public/ground_truth/bad" / f"{s.path.stem}_mask.png"
    assert all(s.mask_path is None for s in good)


def test_only_official_file_names_are_images(ad2_root):
    """MVTec's loader globs [0-9][0-9][0-9]*.png: other files in the folders are not samples."""
    shutil.copy(ad2_root / "fabric/train/good/000_regular.png", ad2_root / "fabric/train/good/thumb.png")
    (ad2_root / "fabric/test_private/notes.txt").write_text("not an image")
    layout = scan_mvtec_ad2(ad2_root, "fabric")
    assert len(layout.train) == AD2_COUNTS["train"]
    assert len(split_samples(ad2_root, "fabric", "test_private")) == AD2_COUNTS["test_private"]


def test_protocols_keep_their_meaning(ad2_root):
    split = datamodule(ad2_root, source="mvtec_ad2", protocol="test_split", test_share=0.5)
    assert len(split.train_set) == AD2_COUNTS["train"]  # all of train/good
    assert {s.path.parent.parent.name for s in split.val_set.samples} == {"test_public"}
    synthetic = datamodule(ad2_root, source="mvtec_ad2", protocol="synthetic")
    assert [s.path for s in synthetic.val_set.base.samples] == [
        s.path for s in scan_mvtec_ad2(ad2_root, "fabric").val
    ]
    assert any(s.label == 1 for s in synthetic.val_set.samples)


@pytest.mark.parametrize("split", ["test_private", "test_private_mixed"])
def test_predict_split_reads_a_private_split_unlabelled(ad2_root, split):
    dm = AnomalyDataModule(root=ad2_root, category="fabric", source="mvtec_ad2", predict_split=split)
    dm.setup("predict")
    suffix = "regular" if split == "test_private" else "mixed"
    assert relative(dm.predict_samples, ad2_root) == [
        f"{split}/{i:03d}_{suffix}.png" for i in range(AD2_COUNTS[split])
    ]
    assert all(s.label == -1 and s.mask_path is None for s in dm.predict_samples)


def test_predict_split_default_is_test_public(ad2_root):
    dm = datamodule(ad2_root, source="mvtec_ad2")
    dm.setup("predict")
    assert dm.predict_samples is None  # predict reads the test split: test_public, labelled
    assert len(dm.predict_dataloader().dataset) == AD2_COUNTS["good"] + AD2_COUNTS["bad"]


def test_unknown_split_lists_the_valid_ones(ad2_root):
    with pytest.raises(ConfigError) as err:
        AnomalyDataModule(root=ad2_root, category="fabric", source="mvtec_ad2", predict_split="test_privat")
    message = str(err.value)
    assert "--data.predict_split 'test_privat'" in message and "\n" not in message
    assert all(name in message for name in TEST_SPLITS)


def test_predict_split_belongs_to_mvtec_ad2(ad2_root):
    with pytest.raises(ConfigError, match="--data.predict_split is an option of source mvtec_ad2"):
        AnomalyDataModule(root=ad2_root, category="fabric", predict_split="test_private")
    with pytest.raises(ConfigError, match="--data.path and --data.predict_split"):
        AnomalyDataModule(root=ad2_root, source="mvtec_ad2", path=str(ad2_root), predict_split="test_private")


def test_missing_validation_names_the_folder(ad2_root):
    shutil.rmtree(ad2_root / "fabric" / "validation")
    with pytest.raises(DataError) as err:
        datamodule(ad2_root, source="mvtec_ad2")
    message = str(err.value)
    assert "validation/good" in message and str(ad2_root / "fabric" / "validation" / "good") in message
    assert "\n" not in message


def test_missing_mask_and_missing_private_split(ad2_root):
    (ad2_root / "fabric/test_public/ground_truth/bad/001_regular_mask.png").unlink()
    with pytest.raises(DataError, match="001_regular.png"):
        scan_mvtec_ad2(ad2_root, "fabric")
    layout = scan_mvtec_ad2(ad2_root, "fabric", require_masks=False)
    assert not layout.has_masks
    shutil.rmtree(ad2_root / "fabric" / "test_private_mixed")
    with pytest.raises(DataError, match="test_private_mixed"):
        split_samples(ad2_root, "fabric", "test_private_mixed")


def test_unknown_category_lists_those_present(ad2_root):
    make_ad2_category(ad2_root, "can", {"train": 1, "validation": 1, "good": 1, "bad": 0})
    with pytest.raises(DataError, match="Categories there: can, fabric"):
        scan_mvtec_ad2(ad2_root, "vial")


def test_example_config_reads_an_ad2_tree(tmp_path):
    root = make_ad2_category(tmp_path / "mvtec_ad_2", "can")
    data = yaml.safe_load(Path("configs/data/mvtec_ad2.yaml").read_text())["data"]
    dm = instantiate_class((), {**data, "init_args": {**data["init_args"], "root": root}})
    dm.bind_input(InputGeometry.of(SIZE))
    dm.setup()
    assert isinstance(dm, AnomalyDataModule) and dm.source == "mvtec_ad2" and dm.category == "can"
    assert (len(dm.train_set), len(dm.val_set)) == (AD2_COUNTS["train"], AD2_COUNTS["validation"])
