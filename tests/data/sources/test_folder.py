"""Source folder: plain folders of good and defective images, masks found by a pattern, the shared splits."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from lightning.pytorch.cli import instantiate_class

from mvtec_ad.data.datamodule import AnomalyDataModule
from mvtec_ad.data.geometry import InputGeometry
from mvtec_ad.errors import ConfigError, DataError
from tests.helpers import SIZE, datamodule, write_image, write_mask

DEFECTS = {"scratch": 3, "dent": 2}
N_GOOD = 10


def make_tree(root: Path, pattern: str = "{stem}_mask.png") -> Path:
    """<root>/bolts/{good, scratch, dent, masks/<defect>/<pattern>} with 32 px PNGs; returns bolts/."""
    tree = root / "bolts"
    for i in range(N_GOOD):
        write_image(tree / "good" / f"g{i:02d}.png", value=10 + i)
    for defect, n in DEFECTS.items():
        for i in range(n):
            image = write_image(tree / defect / f"{defect}{i}.png", value=200 + i)
            write_mask(
                tree / "masks" / defect / pattern.format(stem=image.stem, suffix=".png", name=image.name)
            )
    return tree


def folder_module(tree: Path, **options) -> AnomalyDataModule:
    defaults = {
        "source": "folder",
        "good_dir": "good",
        "defect_dirs": list(DEFECTS),
        "mask_dirs": [f"masks/{d}" for d in DEFECTS],
        "good_test_share": 0.3,
        "val_split": 0.2,
    }
    return datamodule(tree, category=None, image_size=SIZE, **{**defaults, **options})


def paths(samples) -> set[Path]:
    return {s.path for s in samples}


@pytest.mark.parametrize("pattern", ["{stem}_mask.png", "{stem}.png", "{name}"])
def test_counts_category_and_masks_found_by_the_pattern(tmp_path, pattern):
    tree = make_tree(tmp_path, pattern)
    dm = folder_module(tree, mask_pattern=pattern)
    assert dm.category == "bolts"  # the good folder's parent
    assert (len(dm.train_set), len(dm.val_set)) == (6, 1)  # 10 good - 3 test/good = 7, 20% of 7 -> 1 val
    good = [s for s in dm.test_set.samples if s.label == 0]
    defective = [s for s in dm.test_set.samples if s.label == 1]
    assert len(good) == 3 and len(defective) == 5
    assert sorted(s.defect for s in defective) == ["dent", "dent", "scratch", "scratch", "scratch"]
    for s in defective:
        assert s.mask_path == tree / "masks" / s.defect / pattern.format(stem=s.path.stem, name=s.path.name)
    assert dm.has_masks()
    item = dm.test_set[dm.test_set.samples.index(defective[0])]
    assert item["label"] == 1 and item["mask"].sum() == (SIZE // 2) ** 2  # the quarter written by write_mask


def test_masks_beside_their_images_are_not_taken_for_images(tmp_path):
    tree = make_tree(tmp_path)
    for mask in (tree / "masks" / "dent").iterdir():
        mask.rename(tree / "dent" / mask.name)
    dm = folder_module(tree, mask_dirs=["masks/scratch", "dent"])
    dents = [s for s in dm.test_set.samples if s.defect == "dent"]
    assert [s.path.name for s in dents] == ["dent0.png", "dent1.png"]
    assert [s.mask_path.name for s in dents] == ["dent0_mask.png", "dent1_mask.png"]


def test_seeded_test_share_is_deterministic_and_disjoint_from_train(tmp_path):
    tree = make_tree(tmp_path)
    all_good = set((tree / "good").iterdir())

    def test_good(seed: int) -> set[Path]:
        dm = folder_module(tree, seed=seed)
        test = {s.path for s in dm.test_set.samples if s.label == 0}
        train_val = paths(dm.train_set.samples) | paths(dm.val_set.samples)
        assert not test & train_val and test | train_val == all_good
        return test

    assert test_good(1) == test_good(1)
    assert len({frozenset(test_good(seed)) for seed in range(4)}) > 1  # the seed chooses the share


def test_protocols_are_inherited(tmp_path):
    tree = make_tree(tmp_path)
    split = folder_module(tree, protocol="test_split", test_share=0.5)
    assert len(split.train_set) == 7  # every good image not in test/good trains
    assert {s.label for s in split.val_set.samples} == {0, 1}  # real anomalies in validation
    assert {s.label for s in split.test_set.samples} == {0, 1}
    assert len(split.val_set) + len(split.test_set) == 3 + 5
    synthetic = folder_module(tree, protocol="synthetic", val_split=0.4)
    assert sum(s.label for s in synthetic.val_set.samples) >= 1
    assert "test/good = 30% of good" in synthetic.protocol_description


def test_without_mask_folders_image_level_only(tmp_path):
    tree = make_tree(tmp_path)
    with pytest.raises(ConfigError, match="No --data.mask_dirs given"):
        folder_module(tree, mask_dirs=None)
    dm = folder_module(tree, mask_dirs=None, require_masks=False)
    assert len(dm.test_set) == 8 and not dm.has_masks()


def test_missing_mask_names_image_and_expected_file(tmp_path):
    tree = make_tree(tmp_path)
    (tree / "masks" / "dent" / "dent1_mask.png").unlink()
    with pytest.raises(DataError, match=r"(?s)1 defective test image.*--data.require_masks false") as error:
        folder_module(tree)
    assert str(tree / "dent" / "dent1.png") in str(error.value)
    assert str(tree / "masks" / "dent" / "dent1_mask.png") in str(error.value)


@pytest.mark.parametrize(
    ("options", "error", "message"),
    [
        (
            {"defect_dirs": ["scratch", "empty"], "mask_dirs": ["masks/scratch", "masks/dent"]},
            DataError,
            "--data.defect_dirs: no images in '.*empty'",
        ),
        ({"good_dir": "nothere"}, DataError, "--data.good_dir: folder '.*nothere' does not exist"),
        ({"defect_dirs": []}, ConfigError, "--data.defect_dirs is empty"),
        ({"mask_dirs": ["masks/scratch"]}, ConfigError, "--data.mask_dirs has 1 folder"),
        (
            {"mask_dirs": ["masks/scratch", "masks/nothere"]},
            DataError,
            "--data.mask_dirs: folder '.*nothere'",
        ),
        ({"good_test_share": 0.0}, ConfigError, "--data.good_test_share must be in"),
    ],
)
def test_bad_folders_name_the_option_and_folder(tmp_path, options, error, message):
    tree = make_tree(tmp_path)
    (tree / "empty").mkdir()
    with pytest.raises(error, match=message):
        folder_module(tree, **options)


@pytest.mark.parametrize(
    ("pattern", "message"),
    [
        ("{nope}.png", "unknown field"),
        ("mask.png", "same file for every image"),
        ("{stem", "not a valid pattern"),
    ],
)
def test_bad_mask_pattern_fails_when_constructed(tmp_path, pattern, message):
    with pytest.raises(ConfigError, match=rf"--data.mask_pattern .*{message}"):
        AnomalyDataModule(
            source="folder", good_dir="good", defect_dirs=["dent"], root=tmp_path, mask_pattern=pattern
        )


def test_example_config_reads_the_tree_it_describes(tmp_path):
    data = yaml.safe_load(Path("configs/data/folder_example.yaml").read_text())["data"]
    dm = instantiate_class((), {**data, "init_args": {**data["init_args"], "root": make_tree(tmp_path)}})
    dm.bind_input(InputGeometry.of(SIZE))
    dm.setup()
    assert isinstance(dm, AnomalyDataModule) and dm.source == "folder" and dm.has_masks()
    assert (len(dm.train_set) + len(dm.val_set), len(dm.test_set)) == (8, 2 + 5)
